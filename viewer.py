"""Read a run: its training curves as a PNG, and one episode in the terminal.

    python eval.py plot RUN... [--out curves.png] [--smooth 5]
    python eval.py show RUN [--step N] [--episode I] [--agent NAME] [--input]
    python eval.py show RUN --eval [--base] [--task ID]     # an episode that eval.py saved

`plot` reads RUN/metrics.jsonl; `show` reads RUN/samples.jsonl (a few episodes per training step),
RUN/eval-episodes.jsonl (--eval) or RUN/eval-base-episodes.jsonl (--eval --base). matplotlib and
rich are optional extras, imported only here and only when needed.
"""
import io
import json
import math
from pathlib import Path

from config import OneLineParser, UserError, fail

# (panel title, metric suffix per agent); "unscored share" is unscored / actions
PANELS = [("reward (0-1)", "reward_mean"), ("KL to the base model", "kl"), ("action length (tokens)", "length"),
          ("unscored share", "unscored"), ("code tool use", "tool_use")]
SHARES = ("unscored share", "code tool use", "episode accuracy")  # drawn on a fixed 0..1 axis


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a .jsonl file (blank lines skipped); UserError naming file:line."""
    if not path.is_file():
        raise UserError(f"{path} not found; is this a run folder (train.py) or an evaluated one (eval.py)?")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); is this a file train.py or eval.py wrote?") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as e:  # JSONDecodeError, or an integer past Python's digit limit
                raise UserError(f"{path}:{lineno}: malformed JSON ({getattr(e, 'msg', e)}); was the run killed mid-write?") from None
            if not isinstance(rows[-1], dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object per line, got "
                                f"{type(rows[-1]).__name__}; is this a file train.py or eval.py wrote?")
    return rows


def metrics_records(path: Path) -> list[dict]:
    """read_jsonl of a metrics.jsonl, each line checked to carry its integer "step"."""
    rows = read_jsonl(path)
    for i, r in enumerate(rows):
        if not isinstance(r.get("step"), int) or isinstance(r.get("step"), bool):
            raise UserError(f"{path}: record {i + 1} has no integer \"step\"; is this a metrics.jsonl train.py wrote?")
    return rows


def training_curves(records: list[dict]) -> dict[str, dict[str, tuple[list, list]]]:
    """Curves from metrics.jsonl records: {panel title: {label: (steps, values)}}.

    Agents are found from the `<agent>/reward_mean` keys, so any pipeline plots. The last panel,
    "episode accuracy", holds the rollout accuracy and any in-training eval (`eval/avg@k`)."""
    agents = list(dict.fromkeys(k.split("/")[0] for r in records for k in r if k.endswith("/reward_mean")))
    panels: dict[str, dict[str, tuple[list, list]]] = {title: {} for title, _ in PANELS}
    panels["episode accuracy"] = {}

    def add(panel, label, step, value):
        if value is not None:
            steps, values = panels[panel].setdefault(label, ([], []))
            steps.append(step)
            values.append(float(value))

    for r in records:
        for title, suffix in PANELS:
            for a in agents:
                v = r.get(f"{a}/{suffix}")
                if suffix == "unscored" and v is not None:
                    v = v / r[f"{a}/actions"] if r.get(f"{a}/actions") else None
                add(title, a, r["step"], v)
        add("episode accuracy", "rollout", r["step"], r.get("episode/accuracy"))
        for key in r:
            if key.startswith("eval/avg@"):
                add("episode accuracy", key, r["step"], r[key])
    return panels


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over the last `window` finite values (nan stays nan):
    out[i] = mean(finite values among values[max(0, i - window + 1) : i + 1])."""
    out = []
    for i, v in enumerate(values):
        recent = [x for x in values[max(0, i - window + 1):i + 1] if math.isfinite(x)]
        out.append(sum(recent) / len(recent) if math.isfinite(v) and recent else float("nan"))
    return out


def plot_runs(run_dirs: list[Path], out: Path, window: int = 1) -> Path:
    """Draw every run's curves into one PNG: one panel per metric, a colour per agent, a line
    style per run. Returns `out`."""
    fig = draw_runs(run_dirs, window)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def draw_runs(run_dirs: list[Path], window: int = 1):
    """The matplotlib Figure of plot_runs. A short run gets a marker on every point (a line through
    one point draws nothing) and a tick at each of its steps (no fractional steps)."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise UserError("plotting needs matplotlib (an optional extra): pip install matplotlib") from None
    curves = {d: training_curves(metrics_records(d / "metrics.jsonl")) for d in run_dirs}
    titles = list(next(iter(curves.values())))
    fig = Figure(figsize=(15, 8.5), layout="constrained")
    axes = fig.subplots(2, 3).flatten()
    styles, colors = ["-", "--", ":", "-."], {}
    for ax, title in zip(axes, titles):
        for i, (d, panels) in enumerate(curves.items()):
            for label, (steps, values) in panels[title].items():
                color = colors.setdefault(label, f"C{len(colors) % 10}")
                name = label if len(run_dirs) == 1 else f"{d.name}: {label}"
                ax.plot(steps, smooth(values, window), styles[i % len(styles)], color=color, label=name,
                        marker="o" if len(steps) <= 30 else None, markersize=4)
        ax.set_title(title)
        ax.set_xlabel("step")
        shown = sorted({x for panels in curves.values() for steps, _ in panels[title].values() for x in steps})
        if 0 < len(shown) <= 10:
            ax.set_xticks(shown)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if title in SHARES:
            ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(", ".join(d.name for d in run_dirs) + (f" (moving average over {window} steps)" if window > 1 else ""))
    return fig


# ---------------------------------------------------------------------------------- one episode
def pick_episode(records: list[dict], *, step: int | None = None, index: int = 0, task: str | None = None) -> dict:
    """One episode record: those of `step` (training samples; default the last step saved) or
    of `task`, then the index-th of them. UserError, saying what there is, when none matches."""
    steps = sorted({r["step"] for r in records if r.get("step") is not None})
    if steps and step is None and task is None:
        step = steps[-1]
    chosen = [r for r in records if (step is None or r.get("step") == step)
              and (task is None or str(r.get("task", {}).get("id")) == task)]
    if not chosen:
        where = f"step {step}" if step is not None else f"task {task!r}"
        have = f"steps {steps[0]}..{steps[-1]}" if steps else f"{len(records)} episodes"
        raise UserError(f"no saved episode for {where}; this file has {have}")
    if not 0 <= index < len(chosen):
        raise UserError(f"--episode {index} is out of range: {len(chosen)} episodes match (0..{len(chosen) - 1})")
    return chosen[index]


def _score(score) -> str:
    return "unscored" if score is None else f"{score:.1f}/10"


def episode_view(record: dict, agent: str | None = None, show_input: bool = False):
    """A rich renderable of one episode: the task, then every action (of `agent` only, if given)
    with its tool output, coach score and, in generate mode, the coach's rationale."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text  # model text goes in as Text: "[x]" in it must not read as markup

    task = record.get("task", {})
    verdict = {True: "correct", False: "wrong", None: "not graded"}[record.get("correct")]
    head = [f"task {task.get('id', '?')}"] + ([f"kind {task['kind']}"] if task.get("kind") else []) \
        + ([f"step {record['step']}"] if record.get("step") is not None else [])
    outcome = [f"answer {record.get('answer')!r}"] + ([f"gold {task['answer']!r}"] if "answer" in task else []) \
        + [verdict] + [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in (record.get("outcome") or {}).items()]
    parts = [Panel(Text(record.get("text", "")), title=Text(" · ".join(head)), subtitle=Text(" · ".join(outcome)),
                   border_style="blue")]
    for a in record.get("actions", []):
        if agent is not None and a["agent"] != agent:
            continue
        body = []
        if show_input:
            seen = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in a.get("messages", []) if m["role"] != "system")
            body.append(Panel(Text(seen), title="what it saw", border_style="dim"))
        body.append(Text(a["text"] or "(empty action)"))
        if a.get("tool_status") is not None:
            body.append(Panel(Text(a.get("tool_output") or ""), title=Text(f"tool output · {a['tool_status']}"),
                              border_style="yellow"))
        if a.get("coach_text") is not None:  # generate mode only
            body.append(Panel(Text(a["coach_text"] or "(empty reply)"), title="coach's rationale",
                              border_style="magenta"))
        title = f"{a['agent']} · action {a['turn'] + 1} · coach {_score(a.get('score'))}"
        sub = f"{a.get('tokens', '?')} token{'' if a.get('tokens') == 1 else 's'}" + (" · cut off by the length limit" if a.get("truncated") else "")
        parts.append(Panel(Group(*body), title=Text(title), subtitle=Text(sub), border_style="green"))
    if agent is not None and len(parts) == 1:
        raise UserError(f"agent {agent!r} has no action in this episode; agents here: "
                        + ", ".join(dict.fromkeys(a["agent"] for a in record.get("actions", []))))
    return Group(*parts)


def render_text(renderable, width: int = 100) -> str:
    """A rich renderable as plain text (no colour codes): for tests and for piping."""
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False).print(renderable)
    return buf.getvalue()


def episodes_file(run: Path, eval_: bool, base: bool) -> Path:
    """Where `show` reads: a .jsonl file given directly, or the run's samples / eval episodes."""
    if run.is_file():
        return run
    return run / ("eval-base-episodes.jsonl" if base else "eval-episodes.jsonl" if eval_ or base else "samples.jsonl")


# ---------------------------------------------------------------------------------- the CLI
def main(argv: list[str]) -> None:
    """`plot RUN...` or `show RUN ...`; bad input: one line, exit code 2."""
    command, rest = argv[0], argv[1:]
    p = OneLineParser(prog=f"eval.py {command}")
    try:
        if command == "plot":
            p.add_argument("run_dirs", nargs="+", metavar="RUN", help="run folder(s); several share one figure")
            p.add_argument("--out", default=None, help="PNG path (default: RUN/curves.png of the first run)")
            p.add_argument("--smooth", type=int, default=1, help="moving average over this many steps")
            args = p.parse_args(rest)
            if args.smooth < 1:
                raise UserError("--smooth must be >= 1")
            runs = [Path(d) for d in args.run_dirs]
            out = plot_runs(runs, Path(args.out) if args.out else runs[0] / "curves.png", args.smooth)
            print(f"wrote {out}")
            return
        p.add_argument("run", metavar="RUN", help="run folder, or an episodes .jsonl file")
        p.add_argument("--step", type=int, default=None, help="training step (default: the last one saved)")
        p.add_argument("--episode", type=int, default=0, help="which of the matching episodes (0-based)")
        p.add_argument("--task", default=None, help="only episodes of this task id")
        p.add_argument("--agent", default=None, help="only this agent's actions")
        p.add_argument("--eval", dest="eval_", action="store_true", help="an episode saved by eval.py")
        p.add_argument("--base", action="store_true", help="an episode of eval.py's untrained pipeline")
        p.add_argument("--input", action="store_true", help="also show what each agent saw")
        p.add_argument("--width", type=int, default=None, help="columns (default: the terminal's)")
        args = p.parse_args(rest)
        try:
            from rich.console import Console
        except ImportError:
            raise UserError("show needs rich (an optional extra): pip install rich") from None
        record = pick_episode(read_jsonl(episodes_file(Path(args.run), args.eval_, args.base)),
                              step=args.step, index=args.episode, task=args.task)
        Console(width=args.width).print(episode_view(record, args.agent, args.input))
    except UserError as e:
        fail(str(e))
