"""Can this coach judge? Judge AUC per agent on held-out actions of the untrained pipeline.

    python -m experiments.coach_judge                         # results/coach/: 0.5B team; the 1.5B and the 0.5B as coach
    python -m experiments.coach_judge --prompts compact,paper  # also the paper's full prompt (not measured yet)
    python -m experiments.coach_judge --problems 4 --k 1 --generate 0 --out /tmp/judge   # a quick look

A coach's scores are rewards only if they separate good actions from bad ones. We measure that
before any training (issue 26): the untrained team acts on held-out problems, every action gets a
label -- does the answer IT commits to equal the reference? (the grader on the action's own last
\\boxed{}, else its last number, the code's output first for a code agent; the episode's outcome
for the final agent) -- and each (coach model, prompt) scores every action. AUC 0.5 is chance.

Prompts (reward.coach_messages): `paper` -- the full prompt, the reference shown to the final
agent's coach only (the paper's choice); `paper-ref` -- the same with the reference for every
agent; `compact` -- task, action, code output and reference only, for every agent
(--coach-compact --coach-answer-for-all).

Resumable: the rollouts (rollouts.jsonl) and each coach's scores (scores-*.json) are written as
they finish and reused; summary.json / summary.md are rebuilt from them. Writes results/coach/.
"""
import argparse
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = {"paper": dict(answer_for_all=False, compact=False),
           "paper-ref": dict(answer_for_all=True, compact=False),
           "compact": dict(answer_for_all=True, compact=True)}
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def committed_answer(action) -> str | None:
    """The answer an action commits to: its last \\boxed{}, else (a code agent) the last number its
    code printed, else the last number it wrote."""
    from tasks.grader import extract_boxed
    boxed = extract_boxed(action.text)
    if boxed is not None:
        return boxed
    for text in (action.tool_output or "", action.text):
        numbers = _NUMBER.findall(text)
        if numbers:
            return numbers[-1].replace(",", "")
    return None


def labels(episodes, final: str) -> list[tuple[str, bool]]:
    """(agent, right) for every action, in episode order."""
    from tasks.grader import is_equiv
    out = []
    for ep in episodes:
        for a in ep.actions:
            right = bool(ep.correct) if a.agent == final else is_equiv(committed_answer(a), ep.task.answer)
            out.append((a.agent, right))
    return out


def auc(scores: list[float], right: list[bool]) -> float:
    """P(score of a right action > score of a wrong one), ties half; nan unless both occur."""
    if all(right) or not any(right):
        return float("nan")
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(right, scores))


def load_model(name: str, dtype: str):
    from agents import load_base
    tokenizer, model = load_base(name, False, "cpu", dtype)
    return tokenizer, model.eval()


def cached_model(name: str, dtype: str, cache: dict):
    """(tokenizer, model) of `name`, loaded once while consecutive measurements use it."""
    if cache.get("name") != name:
        cache.clear()  # one coach in memory at a time
        cache.update(name=name, pair=load_model(name, dtype))
    return cache["pair"]


def rollouts(args, out: Path):
    """The untrained team's episodes on the held-out problems (cached in rollouts.jsonl)."""
    from agents import PIPELINES
    from config import Config
    from rollout import Action, Episode
    from tasks.problems import Problem
    path = out / "rollouts.jsonl"
    if not path.exists():
        import eval as evaluation
        from runlog import episode_record
        tokenizer, model = load_model(args.team, args.dtype)
        cfg = Config(model=args.team, eval_data="builtin-easy", max_new_tokens=args.max_new_tokens,
                     gen_batch_size=args.batch, code_timeout=5.0)
        t0 = time.perf_counter()
        eps = evaluation.run_episodes(model, tokenizer, cfg, PIPELINES["math"], k=args.k, temperature=args.temperature,
                                      limit=args.problems, split=args.split, use_adapters=False, seed=args.seed, progress=True,
                                      desc="rollouts")
        path.with_suffix(".tmp").write_text("".join(json.dumps(episode_record(e)) + "\n" for e in eps))
        path.with_suffix(".tmp").rename(path)
        print(f"[judge] {len(eps)} episodes in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        del model
    fields = {f.name for f in dataclasses.fields(Action)}
    episodes = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        task = Problem(id=r["task"]["id"], problem=r["task"]["problem"], answer=r["task"]["answer"])
        ep = Episode(task=task, text=r["text"], answer=r["answer"], correct=r["correct"])
        ep.actions = [Action(**{k: v for k, v in a.items() if k in fields}, prompt_ids=[], action_ids=[])
                      for a in r["actions"]]
        for a in ep.actions:
            a.score = None
        episodes.append(ep)
    return episodes


def score_all(episodes, coach_name: str, prompt: str, args, out: Path, cache: dict) -> dict:
    """Every action's logit-mode score from one (coach, prompt); cached in scores-*.json."""
    from agents import PIPELINES
    from reward import LLMCoach
    path = out / f"scores-{Path(coach_name).name}-{prompt}.json"
    if path.exists():
        return json.loads(path.read_text())
    tokenizer, model = cached_model(coach_name, args.dtype, cache)
    coach = LLMCoach(model, tokenizer, PIPELINES["math"], "logit", batch_size=args.coach_batch, **PROMPTS[prompt])
    items = [(ep, a) for ep in episodes for a in ep.actions]
    t0 = time.perf_counter()
    scores = []
    for start in range(0, len(items), args.coach_batch):  # a line per batch: a long wait shows progress
        scores += coach.score(items[start:start + args.coach_batch])
        print(f"[judge] {coach_name} / {prompt}: {len(scores)}/{len(items)} actions, "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    result = {"coach": coach_name, "prompt": prompt, "scores": scores, "seconds": time.perf_counter() - t0}
    path.write_text(json.dumps(result) + "\n")
    return result


def parse_rate(episodes, coach_name: str, prompt: str, args, out: Path, cache: dict) -> dict:
    """Generate mode on the first --generate actions: the share whose reply has a score line,
    before and after the one format retry (SPEC §3)."""
    from agents import PIPELINES
    from reward import LLMCoach, parse_score
    path = out / f"generate-{Path(coach_name).name}-{prompt}.json"
    if path.exists():
        return json.loads(path.read_text())
    tokenizer, model = cached_model(coach_name, args.dtype, cache)
    coach = LLMCoach(model, tokenizer, PIPELINES["math"], "generate", max_new_tokens=args.generate_tokens,
                     batch_size=args.coach_batch, **PROMPTS[prompt])
    items = [(ep, a) for ep in episodes for a in ep.actions][:args.generate]
    t0 = time.perf_counter()
    scores = coach.score(items)
    first = [parse_score((a.coach_text or "").split("\n[after the format retry]")[0]) for _, a in items]
    result = {"coach": coach_name, "prompt": prompt, "n": len(items), "seconds": time.perf_counter() - t0,
              "parsed_first": sum(s is not None for s in first) / len(items),
              "parsed_after_retry": sum(s is not None for s in scores) / len(items),
              "replies": [a.coach_text for _, a in items[:4]]}
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def summarize(episodes, runs: list[dict], gens: list[dict], out: Path) -> None:
    from agents import PIPELINES
    agents = [a.name for a in PIPELINES["math"]]
    lab = labels(episodes, agents[-1])
    rows = []
    for r in runs:
        row = {"coach": Path(r["coach"]).name, "prompt": r["prompt"], "s_per_action": r["seconds"] / len(lab)}
        for agent in agents:
            pairs = [(s, ok) for s, (ag, ok) in zip(r["scores"], lab) if ag == agent and s is not None]
            row[agent] = auc([s for s, _ in pairs], [ok for _, ok in pairs])
            row[f"{agent}_n"] = f"{sum(ok for _, ok in pairs)}/{len(pairs)}"
            right = [s for s, ok in pairs if ok]
            wrong = [s for s, ok in pairs if not ok]
            row[f"{agent}_means"] = [sum(right) / max(1, len(right)), sum(wrong) / max(1, len(wrong))]
        rows.append(row)
    acc = sum(bool(e.correct) for e in episodes) / len(episodes)
    summary = {"episodes": len(episodes), "accuracy": acc, "rows": rows, "generate": gens}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"Judge AUC per agent ({len(episodes)} held-out episodes of the untrained team, accuracy {acc:.2f}; "
             "label: the action's own committed answer against the reference; logit mode)", "",
             "| coach | prompt | " + " | ".join(agents) + " | s / action |", "|---|---|" + "---|" * (len(agents) + 1)]
    for row in rows:
        cells = [f"{row[a]:.3f} ({row[a + '_n']} right)" for a in agents]
        lines.append(f"| {row['coach']} | {row['prompt']} | " + " | ".join(cells) + f" | {row['s_per_action']:.2f} |")
    for g in gens:
        lines.append(f"\nGenerate mode, {Path(g['coach']).name} / {g['prompt']}, {g['n']} actions: score line in "
                     f"{g['parsed_first']:.0%} of first replies, {g['parsed_after_retry']:.0%} after the format retry "
                     f"({g['seconds']:.0f} s)")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    plot(runs, lab, agents, out / "judge.png")
    print("\n".join(lines))


def plot(runs: list[dict], lab: list[tuple[str, bool]], agents: list[str], path: Path) -> None:
    """One panel per (coach, agent): the coach's scores of right and of wrong actions."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(runs), len(agents), figsize=(3.2 * len(agents), 2.4 * len(runs)), squeeze=False)
    for row, r in zip(axes, runs):
        for ax, agent in zip(row, agents):
            pairs = [(s, ok) for s, (ag, ok) in zip(r["scores"], lab) if ag == agent and s is not None]
            for ok, color, name in ((True, "C2", "right"), (False, "C3", "wrong")):
                ax.hist([s for s, o in pairs if o == ok], bins=20, range=(0, 10), alpha=0.6, color=color, label=name)
            ax.set_title(f"{Path(r['coach']).name.replace('-instruct', '')}: {agent}", fontsize=8)
            ax.set_xlabel("coach score", fontsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--team", default="qwen2.5-coder-0.5b-instruct", help="the team's base model")
    p.add_argument("--coaches", default="qwen2.5-coder-1.5b-instruct,qwen2.5-coder-0.5b-instruct",
                   help="comma-separated coach models (the team's own base = the self-coach)")
    p.add_argument("--prompts", default="compact", help=f"comma-separated: {', '.join(PROMPTS)}")
    p.add_argument("--problems", type=int, default=24, help="held-out builtin-easy problems")
    p.add_argument("--k", type=int, default=2, help="episodes per problem")
    p.add_argument("--temperature", type=float, default=1.0, help="the team's sampling temperature (training's)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch", type=int, default=48, help="rows per generate call (64 ran out of 24 GB beside other jobs)")
    p.add_argument("--coach-batch", type=int, default=16)
    p.add_argument("--generate", type=int, default=24, help="actions for the generate-mode parse rate (0: skip)")
    p.add_argument("--generate-tokens", type=int, default=128)
    p.add_argument("--split", default="eval", help="builtin-easy split (eval: held out from training)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "results" / "coach"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.dtype = "auto"  # bf16 on a CPU that has it (2.5x fp32 matmuls), as train.py
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    episodes = rollouts(args, out)
    cache: dict = {}
    runs, gens = [], []
    for coach_name in args.coaches.split(","):
        for prompt in args.prompts.split(","):
            runs.append(score_all(episodes, coach_name, prompt, args, out, cache))
            summarize(episodes, runs, gens, out)
        if args.generate:
            parse_rate(episodes, coach_name, args.prompts.split(",")[0], args, out, cache)
        gens = [json.loads(p.read_text()) for p in sorted(out.glob("generate-*.json"))]  # this and earlier runs'
        summarize(episodes, runs, gens, out)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
