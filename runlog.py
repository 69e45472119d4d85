"""What a run tells a person: a per-agent table on the console each step, one JSON object per step
in metrics.jsonl, and a few sample episodes per step (with coach scores) in samples.jsonl."""
import json
import math
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


def rollout_metrics(episodes: list[Episode], agents) -> dict:
    """Per-agent action statistics and episode accuracy of one rollout batch."""
    m = {"episode/accuracy": mean([float(bool(ep.correct)) for ep in episodes]),
         "episode/count": len(episodes)}
    if episodes and episodes[0].workdir is not None:  # data task: success rate, metric means, fair means
        m |= {f"data/{k}": v for k, v in workspace.outcome_summary(episodes).items()}
    for agent in agents:
        acts = [a for ep in episodes for a in ep.actions if a.agent == agent.name]
        p = agent.name + "/"
        m[p + "actions"] = len(acts)
        m[p + "reward_mean"] = mean([a.reward for a in acts])
        m[p + "score_mean"] = mean([a.score for a in acts])
        m[p + "unscored"] = sum(a.score is None for a in acts)
        m[p + "length"] = mean([len(a.action_ids) for a in acts])
        m[p + "truncated"] = mean([float(a.truncated) for a in acts])
        if agent.uses_code:
            m[p + "tool_use"] = mean([float(a.tool_status is not None) for a in acts])
    return m


def format_table(metrics: dict, agents) -> str:
    """The per-agent console table for one step."""
    head = (f"step {metrics['step']}  accuracy {metrics['episode/accuracy']:.3f}  "
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


class RunLog:
    """Appends to metrics.jsonl and samples.jsonl in the run folder and prints the table."""

    def __init__(self, run_dir: Path, agents, n_samples: int = 2, quiet: bool = False):
        self.run_dir, self.agents, self.n_samples, self.quiet = Path(run_dir), agents, n_samples, quiet

    def log(self, metrics: dict, episodes: list[Episode]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        with open(self.run_dir / "samples.jsonl", "a") as f:
            for ep in episodes[:self.n_samples]:
                f.write(json.dumps(episode_record(ep, metrics["step"])) + "\n")
        if not self.quiet:
            print(format_table(metrics, self.agents))
            print("\n".join(sample_lines(episodes, self.agents)), flush=True)
