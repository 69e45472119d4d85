"""What a run tells a person: a per-agent table on the console each step, one JSON object per step
in metrics.jsonl, a few sample episodes per step (with coach scores) in samples.jsonl, the same
metrics in an experiment tracker (--report-to), and a progress line per stage on a terminal."""
import importlib
import json
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

from rollout import Episode
from tasks import workspace

# column title, metric suffix, format
COLUMNS = [("actions", "actions", "{:.0f}"), ("reward", "reward_mean", "{:.3f}"), ("score", "score_mean", "{:.2f}"),
           ("unscored", "unscored", "{:.0f}"), ("KL", "kl", "{:.4f}"), ("len", "length", "{:.1f}"),
           ("trunc", "truncated", "{:.2f}"), ("tool", "tool_use", "{:.2f}"), ("loss", "loss", "{:+.4f}"),
           ("skipped", "skipped", "{:.0f}")]


def mean(xs) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def rollout_metrics(episodes: list[Episode], agents, coached: bool = True) -> dict:
    """Per-agent action statistics and episode accuracy of one rollout batch. coached=False (the coach
    did not run: --reward outcome, in-training eval) leaves out score_mean and unscored."""
    m = {"episode/accuracy": mean([float(bool(ep.correct)) for ep in episodes]),
         "episode/count": len(episodes)}
    if episodes and episodes[0].workdir is not None:  # data task: success rate, metric means, fair means
        m |= {f"data/{k}": v for k, v in workspace.outcome_summary(episodes).items()}
    elif episodes:  # math: the grader reads only the final agent's \boxed{} (a format the team must learn)
        m["format/boxed"] = mean([float(ep.answer is not None) for ep in episodes])
    if coached:  # does the coach still tell right from wrong? (coach bias shows as this falling)
        m["coach/judge_auc"] = judge_auc(episodes, agents[-1].name)
    for agent in agents:
        acts = [a for ep in episodes for a in ep.actions if a.agent == agent.name]
        p = agent.name + "/"
        m[p + "actions"] = len(acts)
        m[p + "reward_mean"] = mean([a.reward for a in acts])
        if coached:
            m[p + "score_mean"] = mean([a.score for a in acts])
            m[p + "unscored"] = sum(a.score is None for a in acts)
        m[p + "length"] = mean([len(a.action_ids) for a in acts])
        m[p + "truncated"] = mean([float(a.truncated) for a in acts])
        if agent.uses_code:
            m[p + "tool_use"] = mean([float(a.tool_status is not None) for a in acts])
    return m


def judge_auc(episodes: list[Episode], final: str) -> float:
    """The coach as a judge: P(the final agent's score in a correct episode > in a wrong one), ties
    half (Mann-Whitney U = sklearn's roc_auc_score; naive: mean([r > w] + 0.5 [r == w] for r in
    right for w in wrong)). 0.5 is chance; nan unless both outcomes occur among scored actions."""
    pairs = [(a.score, bool(ep.correct)) for ep in episodes
             if (a := ep.final_action(final)) is not None and a.score is not None]
    if len({ok for _, ok in pairs}) < 2:
        return float("nan")
    from sklearn.metrics import roc_auc_score  # lazy: only where a coach ran
    return float(roc_auc_score([ok for _, ok in pairs], [s for s, _ in pairs]))


def json_safe(metrics: dict) -> dict:
    """NaN and infinities become null: bare NaN is not JSON (json.dumps writes it; strict readers fail)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}


def format_table(metrics: dict, agents) -> str:
    """The per-agent console table for one step."""
    extra = "".join(f"{label} {metrics[key]:.3f}  " for label, key in (("boxed", "format/boxed"), ("coach AUC", "coach/judge_auc"))
                    if isinstance(metrics.get(key), float) and not math.isnan(metrics[key]))
    head = (f"step {metrics['step']}  accuracy {metrics['episode/accuracy']:.3f}  {extra}"
            f"time {metrics['time/step']:.1f}s (rollout {metrics['time/rollout']:.1f}, "
            f"coach {metrics['time/coach']:.1f}, update {metrics['time/update']:.1f})")
    width = max(len(a.name) for a in agents) + 2
    lines = [head, "agent".ljust(width) + "".join(title.rjust(10) for title, _, _ in COLUMNS)]
    for agent in agents:
        cells = []
        for _, key, fmt in COLUMNS:
            v = metrics.get(f"{agent.name}/{key}")
            cells.append(("-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)).rjust(10))
        lines.append(agent.name.ljust(width) + "".join(cells))
    return "\n".join(lines)


def episode_record(ep: Episode, step: int | None = None) -> dict:
    """A JSON-able episode: task, answer, outcome and every action with its input and coach score."""
    task = ep.task.__dict__ if hasattr(ep.task, "answer") and isinstance(ep.task.answer, str) else {"id": ep.task.id}
    actions = []
    for a in ep.actions:
        d = asdict(a)
        for key in ("prompt_ids", "action_ids", "logprobs"):  # token-level: not for the sample log
            d.pop(key)
        d["tokens"] = len(a.action_ids)
        actions.append(d)
    return {"step": step, "task": dict(task), "text": ep.text, "answer": ep.answer, "correct": ep.correct,
            "outcome": ep.outcome, "error": ep.error, "actions": actions}


def sample_lines(episodes: list[Episode], agents, width: int = 100) -> list[str]:
    """One sample action per agent, with its coach score, as short console lines."""
    lines = []
    for agent in agents:
        act = next((a for ep in episodes for a in ep.actions if a.agent == agent.name), None)
        if act is not None:
            score = "unscored" if act.score is None else f"{act.score:.1f}"
            text = " ".join(act.text.split())
            lines.append(f"  [{agent.name} | coach {score}] {text[:width]}")
    return lines


class Progress:
    """A status line for long work ("step 3/20: coach, 24 actions"), rewritten in place with \\r when
    the stream is a terminal, so a CPU step is never silent for a minute. Not a terminal (a log file,
    CI, a pipe): silent, as the step table and metrics.jsonl say what happened."""

    def __init__(self, stream=None, enabled: bool = True):
        self.stream = stream if stream is not None else sys.stderr
        self.on = enabled and getattr(self.stream, "isatty", lambda: False)()
        self.width = 0

    def __call__(self, text: str) -> None:
        if self.on:
            self.stream.write("\r" + text.ljust(self.width))
            self.stream.flush()
            self.width = len(text)

    def done(self) -> None:
        """Clear the line, before a normal line is printed."""
        if self.on and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


# --report-to: the module each tracker needs, and the package that provides it
TRACKERS = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "trackio": ("trackio", "trackio")}


def tracker_module(name: str):
    """The tracker's module (imported only when asked for); UserError naming the pip package if absent."""
    from config import UserError
    module, package = TRACKERS[name]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"--report-to {name} needs the {package} package: pip install {package} "
                        "(or --report-to none)") from None


class Tracker:
    """metrics.jsonl's numbers, each step, in TensorBoard (RUN/tensorboard), W&B or trackio (project
    "mappa" or $WANDB_PROJECT / $TRACKIO_PROJECT; the run named after its folder). Started at the
    first step logged, so only the process that logs (rank 0) starts it."""

    def __init__(self, name: str, run_dir: Path, config: dict):
        self.name, self.run_dir, self.config, self.run = name, run_dir, config, None

    def log(self, metrics: dict) -> None:
        values = {k: v for k, v in metrics.items() if k != "step" and isinstance(v, (int, float))}
        step = metrics["step"]
        if self.run is None:
            module = tracker_module(self.name)
            if self.name == "tensorboard":
                self.run = module.SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            else:
                project = os.environ.get(f"{self.name.upper()}_PROJECT", "mappa")
                module.init(project=project, name=self.run_dir.name, config=self.config)
                self.run = module
        if self.name == "tensorboard":
            for k, v in values.items():
                self.run.add_scalar(k, v, step)
            self.run.flush()
        else:
            self.run.log(values, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.close() if self.name == "tensorboard" else self.run.finish()
            self.run = None


class RunLog:
    """Appends to metrics.jsonl and samples.jsonl in the run folder, prints the table and reports to
    the tracker (--report-to)."""

    def __init__(self, run_dir: Path, agents, n_samples: int = 2, quiet: bool = False,
                 report_to: str = "none", config: dict | None = None):
        self.run_dir, self.agents, self.n_samples, self.quiet = Path(run_dir), agents, n_samples, quiet
        self.tracker = Tracker(report_to, self.run_dir, config or {}) if report_to != "none" else None

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()

    def log(self, metrics: dict, episodes: list[Episode]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(json_safe(metrics), allow_nan=False) + "\n")
        if self.tracker is not None:
            self.tracker.log(metrics)
        with open(self.run_dir / "samples.jsonl", "a") as f:
            for ep in episodes[:self.n_samples]:
                f.write(json.dumps(episode_record(ep, metrics["step"])) + "\n")
        if not self.quiet:
            print(format_table(metrics, self.agents))
            print("\n".join(sample_lines(episodes, self.agents)), flush=True)


def interrupted(run_dir: Path | None) -> str:
    """The one line for Ctrl-C (train.py): where the run in run_dir stopped and how to go on."""
    import checkpoint  # lazy: only on an interrupt
    if run_dir is None or not (run_dir / "config.json").exists():
        return "interrupted before the run started; nothing was written"
    if not checkpoint.holds_run(run_dir):
        return f"interrupted before the first step; the same command starts again (it reuses {run_dir})"
    try:
        at = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"] + 1
    except (OSError, ValueError, IndexError, KeyError, TypeError):  # a line cut by the interrupt
        at = "?"
    done = checkpoint.checkpoints(run_dir)
    if not done:
        return f"interrupted at step {at}, before the first checkpoint; start again: --out-dir {run_dir} --overwrite"
    return f"interrupted at step {at}; resume with: python train.py --resume {run_dir} (from {done[-1].name})"
