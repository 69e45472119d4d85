"""The credit-assignment experiment: per-action process rewards vs one outcome reward, on a laptop.

    python -m experiments.credit                     # 3 arms x 3 seeds; writes results/credit/
    python -m experiments.credit --arms process --seeds 1 --steps 10   # a quick look

A team of agents writes one line together, each agent its own part, on a tiny random model. Each
action's quality is checkable exactly -- the share of its tokens that are of the agent's kind --
so a deterministic rule scorer stands in for the LLM coach (it has the coach's interface,
`.score(items) -> scores 0..10`); everything else is the real loop, `train.train`. The episode
succeeds only if every part is right (quality at least `--right`), so an upstream mistake ruins
the outcome even when a downstream agent did its part. docs/credit.md shows and reads the results.

Three arms (`Config.reward`): process (each action's own rule score / 10), outcome (every action
gets the episode's 0/1 outcome), mixed (half each). Plotted per arm, mean and spread over seeds:
each agent's rule score and the episode success rate against the number of rollouts so far.
"""
import json
import os
import string
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from models import tiny
from agents import Agent
from config import PRESETS, Config, UserError, build_parser, fail, opt
from runlog import Progress
from tasks.problems import Problem

# The team: who acts, in order, and what kind of token its part must be made of.
TEAM = (
    Agent("writer", "Writer", "You are the Writer. Write the words of the line: words only.",
          "{task}"),
    Agent("marker", "Marker", "You are the Marker. Close the Writer's line: punctuation marks only.",
          "{task}\nThe Writer wrote: {writer}"),
)
KINDS = {"writer": "word", "marker": "mark"}
ARMS = ("process", "outcome", "mixed")
MODEL_VERSION = 1  # bump when ensure_model's recipe changes, so the cached folder is rebuilt


@dataclass
class Experiment:
    arms: str = opt("process,outcome,mixed", "comma-separated reward arms")
    seeds: int = opt(3, "seeds per arm (0, 1, ...)")
    steps: int = opt(60, "training steps per run")
    episodes: int = opt(32, "episodes (rollouts) per step")
    lr: float = opt(2e-3, "LoRA learning rate")
    beta: float = opt(0.01, "KL penalty coefficient (the real loop's default)")
    right: float = opt(0.75, "an action is right when its quality (share of its kind, length rule applied) is at least this")
    target: float = opt(0.3, "success rate whose rollout cost the table reports")
    workers: int = opt(2, "runs in parallel, one CPU thread each")
    out: str = opt("results/credit", "where the plot, the table and the curves (metrics.json) go")
    runs: str = opt("runs/credit", "where the run folders (logs, adapters) go")
    replot: bool = opt(False, "only redraw the plot and table from <out>/metrics.json")


# --------------------------------------------------------------------------------------------
# The model, the rule scorer, the tasks


def ensure_model(mean_tokens: int = 4) -> Path:
    """Build (once) the experiment's tiny random Qwen2 and return its folder (loaded by from_pretrained).

    Why not the plain "tiny" preset: its output-head rows are so small (init std 0.02) that no
    hidden state can push any token much above the rest -- a LoRA cannot make it prefer a kind of
    token, so nothing learns. Scaling the head by 8 gives a peaked, context-dependent distribution
    like a real LM's; the end-of-turn bias is then raised by sigma^2/2 (the log-mean-exp of the
    other, now spread-out logits) so actions still end after ~mean_tokens tokens.
    """
    folder = tiny.cache_root() / f"credit-v{tiny.RECIPE_VERSION}.{MODEL_VERSION}-m{mean_tokens}"
    if (folder / "config.json").exists():
        return folder
    from rollout import render

    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model("tiny", tokenizer, mean_action_tokens=mean_tokens)
    head = model.get_output_embeddings().weight
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        eos_row = head[eos].clone()
        head.mul_(8.0)
        head[eos] = eos_row
        ids = torch.tensor([render(tokenizer, [{"role": "user", "content": "Line 1"}])])
        logits = model(ids).logits[0, -1]
        others = torch.cat([logits[:eos], logits[eos + 1:]])
        bias = logits[eos] - others.mean()  # the EOS logit is ~this bias for any hidden state
        head[eos] = eos_row * (1 + others.var() / 2 / bias)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:  # atomic, as in tiny.ensure_tiny_model: parallel workers may race to build it
        tmp.rename(folder)
    except OSError:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def token_kinds(tokenizer) -> list[str]:
    """The kind of every token id: word (ASCII letters, maybe after a space), mark (ASCII
    punctuation only), digit, special, or other."""
    special = set(tokenizer.all_special_ids)
    kinds = []
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i]).strip()
        if i in special:
            kinds.append("special")
        elif text.isascii() and text.isalpha():
            kinds.append("word")
        elif text and all(c in string.punctuation for c in text):
            kinds.append("mark")
        elif text.isdigit():
            kinds.append("digit")
        else:
            kinds.append("other")
    return kinds


class RuleCoach:
    """The coach for this experiment: an action's quality is the share of its tokens (the
    end-of-turn token aside) that are of its agent's kind, times min(1, max_len / length): a part
    is short. Its score is 10 x quality; an empty action scores 0. Exact and deterministic, with
    the LLM coach's interface.

    Why the length rule: as an agent learns, its favourite tokens crowd out the end-of-turn token
    and its actions grow into loops that hit the length limit -- and cut-off actions get no loss,
    so it stops learning, while the next agent's input suddenly changes under it."""

    def __init__(self, kinds: list[str], agent_kinds: dict[str, str] = KINDS, max_len: int = 8):
        self.kinds, self.agent_kinds, self.max_len = kinds, agent_kinds, max_len

    def quality(self, action) -> float:
        tokens = [self.kinds[t] for t in action.action_ids if self.kinds[t] != "special"]
        if not tokens:
            return 0.0
        share = sum(k == self.agent_kinds[action.agent] for k in tokens) / len(tokens)
        return share * min(1.0, self.max_len / len(tokens))

    def score(self, items) -> list[float]:
        return [10 * self.quality(a) for _, a in items]


def rule_grader(coach: RuleCoach, right: float):
    """grader(episode, agents): the episode succeeds when every action is right (quality >= right).

    It also records each action's rule score: in the outcome arm the coach is never called, and
    this is how the log still shows how well each agent does its part (logged, not trained on)."""
    def grade(episode, agents) -> None:
        qualities = {}
        for a in episode.actions:
            q = coach.quality(a)
            a.score = 10 * q
            qualities[f"{a.agent}/{a.turn}"] = q
        episode.outcome = qualities
        episode.correct = len(episode.actions) == len(agents) and all(q >= right for q in qualities.values())
    return grade


def make_tasks(n: int = 64) -> list[Problem]:
    """Tasks only name the line; what is right is the same for every task (the rules)."""
    return [Problem(f"line-{i}", f"Line {i}", "") for i in range(n)]


# --------------------------------------------------------------------------------------------
# Running the arms


def run_config(exp: Experiment, arm: str, seed: int, model: Path) -> Config:
    """The real loop's Config for one run: the tiny preset with the experiment's batch and lr."""
    return Config(**{**PRESETS["tiny"], "model": str(model), "reward": arm, "outcome_weight": 0.5,
                     "seed": seed, "steps": exp.steps, "problems_per_step": exp.episodes // 2,
                     "samples_per_problem": 2, "max_new_tokens": 24, "lr": exp.lr, "beta": exp.beta,
                     "minibatch_size": exp.episodes, "micro_batch_size": exp.episodes,
                     "save_every": exp.steps, "keep_checkpoints": 1, "log_samples": 1, "threads": 1,
                     "out_dir": str(Path(exp.runs) / f"{arm}-seed{seed}"), "overwrite": True})


def run_one(job: tuple) -> list[dict]:
    """Train one (arm, seed) and return its metrics, one dict per step."""
    exp, arm, seed = job
    import train
    from transformers import AutoTokenizer

    model = ensure_model()
    coach = RuleCoach(token_kinds(AutoTokenizer.from_pretrained(model)))
    cfg = run_config(exp, arm, seed, model)
    run_dir = train.train(cfg, coach=coach, agents=TEAM, tasks=make_tasks(), grader=rule_grader(coach, exp.right),
                          quiet=True)
    keep = ("step", "episode/accuracy", "time/step", "/score_mean", "/reward_mean", "/length", "/truncated")
    with open(run_dir / "metrics.jsonl") as f:
        return [{k: v for k, v in json.loads(line).items() if k.endswith(keep)} for line in f if line.strip()]


def run_all(exp: Experiment, arms: list[str]) -> dict[str, list[list[dict]]]:
    """arm -> one metrics list per seed; runs go to `exp.workers` processes."""
    jobs = [(exp, arm, seed) for arm in arms for seed in range(exp.seeds)]
    ensure_model()  # once, before the workers race for it
    # One CPU thread per run: the tiny model's ops are too small to split, and on a busy 2-core
    # machine two threads per process spin-waited for each other -- 10x slower in our measurements.
    progress, results = Progress(), []  # "credit: 3/12 runs done" on a terminal; silent otherwise
    progress(f"credit: 0/{len(jobs)} runs done")

    def collect(done):  # in job order, as each finishes
        for (_, arm, seed), metrics in zip(jobs, done):
            results.append(metrics)
            progress(f"credit: {len(results)}/{len(jobs)} runs done (last: {arm}, seed {seed})")

    if exp.workers == 1:
        torch.set_num_threads(1)
        collect(map(run_one, jobs))
    else:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(exp.workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            collect(pool.imap(run_one, jobs, chunksize=1))
    progress.done()
    out = {arm: [] for arm in arms}
    for (_, arm, _), metrics in zip(jobs, results):
        out[arm].append(metrics)
    return out


# --------------------------------------------------------------------------------------------
# Curves, the table, the plot


def series(runs: list[list[dict]], key: str):
    """One metric of every seed's run as an array [seeds, steps]."""
    import numpy as np
    return np.array([[m[key] for m in run] for run in runs], dtype=float)


def trailing_mean(x, window: int):
    """Mean over the last `window` steps (fewer at the start), along the last axis. [..., S] -> [..., S]

    Naive loop: out[..., s] = x[..., max(0, s - window + 1): s + 1].mean(-1)"""
    import numpy as np
    c = np.cumsum(np.concatenate([np.zeros(x.shape[:-1] + (1,)), x], axis=-1), axis=-1)
    s = np.arange(1, x.shape[-1] + 1)
    lo = np.maximum(0, s - window)
    return (c[..., s] - c[..., lo]) / (s - lo)


def rollouts_to(success, target: float, episodes: int, window: int = 5) -> int | None:
    """Rollouts until the success rate, averaged over the last `window` steps, first reaches
    `target` (success: [steps]); None if it never does."""
    import numpy as np
    hit = np.nonzero(trailing_mean(success, window) >= target)[0]
    return int(hit[0] + 1) * episodes if len(hit) else None


def table(results: dict[str, list[list[dict]]], exp: Experiment, window: int = 5) -> str:
    """The markdown results table: per arm, the rollouts needed to reach the target success rate
    and where each agent and the episode end up (last `window` steps), mean +- std over seeds."""
    def pm(x):
        return f"{x.mean():.2f} ± {x.std():.2f}"

    names = [a.name for a in TEAM]
    head = (f"| reward | rollouts to {exp.target:.0%} success: mean (each seed) | success, last {window} steps | "
            + " | ".join(f"{n} score, last {window} steps" for n in names) + " |")
    lines = [head, "|" + "---|" * (3 + len(names))]
    for arm, runs in results.items():
        success = series(runs, "episode/accuracy")
        reach = [rollouts_to(s, exp.target, exp.episodes, window) for s in success]
        done = [r for r in reach if r is not None]
        cost = f"{sum(done) / len(done):.0f}" if len(done) == len(reach) else \
            f"not reached by {len(reach) - len(done)} of {len(reach)}"
        cost += " (" + ", ".join("—" if r is None else str(r) for r in reach) + ")"
        finals = [pm(series(runs, f"{n}/score_mean")[:, -window:].mean(1)) for n in names]
        lines.append(f"| {arm} | {cost} | {pm(success[:, -window:].mean(1))} | " + " | ".join(finals) + " |")
    lines.append(f"\n{exp.seeds} seeds x {exp.steps} steps x {exp.episodes} episodes per arm; mean ± std over "
                 f"seeds. Rollouts to {exp.target:.0%}: episodes until the success rate, averaged over the last "
                 f"{window} steps, first reaches it. Scores are the rule's, 0-10; an action is right at "
                 f"{10 * exp.right:g} and an episode succeeds when every action is right.")
    return "\n".join(lines)


def plot(results: dict[str, list[list[dict]]], exp: Experiment, path: Path, window: int = 5) -> None:
    """One panel per agent (its rule score) and one for the episode success rate, against
    rollouts; a line per arm (mean over seeds) and a band (min..max over seeds), all smoothed
    over the last `window` steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [(f"{a.name}/score_mean", f"{a.title}: rule score of its actions (0-10)") for a in TEAM]
    panels.append(("episode/accuracy", "episode success rate"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), constrained_layout=True)
    for ax, (key, title) in zip(axes, panels):
        for arm, runs in results.items():
            y = trailing_mean(series(runs, key), window)
            x = np.arange(1, y.shape[1] + 1) * exp.episodes
            ax.plot(x, y.mean(0), label=arm)
            ax.fill_between(x, y.min(0), y.max(0), alpha=0.2)
        if key == "episode/accuracy":
            ax.axhline(exp.target, color="grey", lw=0.8, ls="--")
            ax.set_ylim(0, 1)
        else:
            ax.set_ylim(0, 10)
        ax.set_title(title)
        ax.set_xlabel("rollouts (episodes)")
        ax.grid(alpha=0.3)
    axes[0].legend(title=f"reward ({exp.seeds} seeds)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    try:
        values = vars(build_parser(Experiment, __doc__.splitlines()[0]).parse_args(argv))
        exp = Experiment(**values)
        arms = [a.strip() for a in exp.arms.split(",") if a.strip()]
        if not arms or set(arms) - set(ARMS):
            raise UserError(f"--arms takes a comma-separated list of {', '.join(ARMS)}; got '{exp.arms}'")
        if exp.seeds < 1 or exp.steps < 1 or exp.episodes < 2 or exp.episodes % 2 or exp.workers < 1:
            raise UserError("--seeds, --steps and --workers must be >= 1, and --episodes an even number >= 2")
        if not (exp.lr > 0 and exp.beta >= 0 and 0 < exp.right <= 1 and 0 < exp.target <= 1):
            raise UserError("--lr must be > 0, --beta >= 0, and --right and --target in (0, 1]")
    except UserError as e:
        fail(str(e))
    out = Path(exp.out)
    if exp.replot:  # the saved curves and settings; nothing is trained
        if not (out / "metrics.json").is_file():
            fail(f"--replot needs {out / 'metrics.json'} from an earlier run of python -m experiments.credit")
        saved = json.loads((out / "metrics.json").read_text())
        exp, results, minutes = Experiment(**saved["experiment"]), saved["results"], saved["minutes"]
        arms = list(results)
    else:
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        results = run_all(exp, arms)
        minutes = (time.perf_counter() - t0) / 60
        (out / "metrics.json").write_text(json.dumps({"experiment": exp.__dict__, "minutes": minutes, "results": results}))
    md = table(results, exp)
    (out / "table.md").write_text(md + "\n")
    plot(results, exp, out / "credit.png")
    print(md)
    print(f"\n{len(arms)} arms x {exp.seeds} seeds x {exp.steps} steps in {minutes:.1f} min "
          f"({exp.workers} workers); wrote {out / 'credit.png'}, {out / 'table.md'}")


if __name__ == "__main__":
    main()
