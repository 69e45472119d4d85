"""Does MAPPA make the laptop team better? Untrained pipeline vs trained teams, on the real loop.

    python -m experiments.laptop                          # process arm, 3 seeds; results/laptop/
    python -m experiments.laptop --arms process,outcome,mixed --seeds 3
    python -m experiments.laptop --steps 5 --seeds 1 --problems 8 --k 1   # a quick look

Each (arm, seed) is one `python train.py --preset laptop --reward ARM --seed S` run: the real
Qwen2.5-Coder-0.5B-Instruct with three LoRA adapters, the 1.5B of the same family as the coach
(logit mode, never trained), code run in the sandbox. Then `eval.py RUNS --base` evaluates the
untrained pipeline and every trained team on the same held-out problems (avg@k at T 0.6; the coach
scores them too with --eval-coach). Runs go `--jobs` at a time (default 1: a 2-core laptop is
busy with one run).

Writes results/laptop/: summary.json and summary.md (held-out accuracy per arm, mean and spread over
seeds; rollouts until the training accuracy first reaches --target; the coach's view of the final
answers before and after), curves.png (per-agent coach score and accuracy against rollouts).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def train_all(runs: list[tuple[str, int, Path]], args) -> None:
    """Start every missing run, `args.jobs` at a time; a finished run (its eval or last checkpoint) is kept."""
    todo = [r for r in runs if not (r[2] / "metrics.jsonl").exists() or
            len((r[2] / "metrics.jsonl").read_text().splitlines()) < args.steps]
    live: list[tuple[subprocess.Popen, str]] = []
    while todo or live:
        while todo and len(live) < args.jobs:
            arm, seed, out = todo.pop(0)
            if (out / "config.json").exists():  # an interrupted run goes on with its own settings
                cmd = [sys.executable, "train.py", "--resume", str(out), "--steps", str(args.steps)]
            else:
                cmd = [sys.executable, "train.py", "--preset", args.preset, "--reward", arm, "--seed", str(seed),
                       "--steps", str(args.steps), "--out-dir", str(out), *args.train_args]
            out.parent.mkdir(parents=True, exist_ok=True)
            live.append((run(cmd, out.parent / f"{out.name}.log"), f"{arm} seed {seed}"))
            print(f"[laptop] training {arm} seed {seed} -> {out}", file=sys.stderr, flush=True)
        time.sleep(2)
        for p, name in list(live):
            if p.poll() is not None:
                live.remove((p, name))
                print(f"[laptop] {name} finished (exit {p.returncode})", file=sys.stderr, flush=True)
                if p.returncode:
                    raise SystemExit(f"training {name} failed; see its .log next to the run folder")


def curves(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def rollouts_to(rows: list[dict], target: float, per_step: int, window: int = 5) -> int | None:
    """Rollouts (episodes) until the moving average of training accuracy first reaches target."""
    acc = [r["episode/accuracy"] for r in rows]
    for i in range(len(acc)):
        if statistics.fmean(acc[max(0, i - window + 1):i + 1]) >= target:
            return (i + 1) * per_step
    return None


def spread(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    return f"{statistics.fmean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def summarize(runs, args) -> dict:
    base = json.loads((runs[0][2] / "eval-base.json").read_text())["summary"]
    key = f"avg@{args.k}"
    out = {"base": {"accuracy": base[key], "judge_auc": base.get("coach/judge_auc"),
                    "score_when_right": base.get("coach/score_correct"),
                    "score_when_wrong": base.get("coach/score_wrong")}, "arms": {}}
    for arm in args.arms:
        mine = [r for r in runs if r[0] == arm]
        evals = [json.loads((d / "eval.json").read_text())["summary"] for _, _, d in mine]
        rows = [curves(d) for _, _, d in mine]
        per_step = rows[0][0]["episode/count"] if rows and rows[0] else 0
        out["arms"][arm] = {
            "accuracy": [e[key] for e in evals], "gain": [e[key] - base[key] for e in evals],
            "judge_auc": [e.get("coach/judge_auc") for e in evals],
            "score_when_right": [e.get("coach/score_correct") for e in evals],
            "score_when_wrong": [e.get("coach/score_wrong") for e in evals],
            "rollouts_to_target": [rollouts_to(r, args.target, per_step) for r in rows],
            "train_accuracy_first5": [statistics.fmean(x["episode/accuracy"] for x in r[:5]) for r in rows],
            "train_accuracy_last5": [statistics.fmean(x["episode/accuracy"] for x in r[-5:]) for r in rows],
        }
    return out


def table(result: dict, args) -> str:
    lines = [f"Held-out accuracy (avg@{args.k}, T 0.6, {args.problems} builtin-easy eval problems), "
             "seeds per arm: " + ", ".join(f"{a} {n}" for a, n in args.seeds.items()) + f"; {args.steps} steps each.", "",
             "| team | accuracy | gain over untrained | coach judge AUC | coach's final score when right / wrong "
             f"| rollouts to train acc {args.target} | train acc first/last 5 steps |", "|---|---|---|---|---|---|---|",
             f"| untrained pipeline | {result['base']['accuracy']:.3f} | | {spread([result['base']['judge_auc']])} | "
             f"{spread([result['base']['score_when_right']])} / {spread([result['base']['score_when_wrong']])} | | |"]
    for arm, r in result["arms"].items():
        reach = [x for x in r["rollouts_to_target"] if x is not None]
        lines.append(f"| MAPPA, {arm} reward | {spread(r['accuracy'])} | {spread(r['gain'])} | "
                     f"{spread(r['judge_auc'])} | {spread(r['score_when_right'])} / {spread(r['score_when_wrong'])} | "
                     f"{len(reach)}/{len(r['rollouts_to_target'])} reached"
                     f"{', median ' + str(int(statistics.median(reach))) if reach else ''} | "
                     f"{spread(r['train_accuracy_first5'])} -> {spread(r['train_accuracy_last5'])} |")
    return "\n".join(lines) + "\n"


def plot(runs, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["episode/accuracy", "solver/score_mean", "executor/score_mean", "verifier/score_mean"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    colors = {"process": "C0", "outcome": "C1", "mixed": "C2"}
    for arm, seed, d in runs:
        rows = curves(d)
        x = [r["step"] * r["episode/count"] for r in rows]
        for ax, key in zip(axes, keys):
            y = [r.get(key) for r in rows]
            if any(v is not None and v == v for v in y):
                ax.plot(x, y, color=colors.get(arm, "C3"), alpha=0.6, label=f"{arm} s{seed}")
    for ax, key in zip(axes, keys):
        ax.set_title(key)
        ax.set_xlabel("rollouts")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.laptop", description=__doc__.split("\n")[0])
    p.add_argument("--arms", default="process", help="comma-separated rewards: process, outcome, mixed")
    p.add_argument("--seeds", default="3", help="seeds per arm (0, 1, ...): one number, or one per arm (e.g. 3,2,1)")
    p.add_argument("--steps", type=int, default=20, help="training steps per run (the preset's default)")
    p.add_argument("--problems", type=int, default=100, help="held-out problems for the evaluation")
    p.add_argument("--k", type=int, default=4, help="samples per held-out problem")
    p.add_argument("--target", type=float, default=0.3, help="training accuracy for 'rollouts to target'")
    p.add_argument("--jobs", type=int, default=1, help="runs at once")
    p.add_argument("--preset", default="laptop", choices=["laptop", "tiny"], help="train.py's preset (tiny: a smoke run of this script)")
    p.add_argument("--eval-coach", action="store_true", help="let the coach score the eval episodes too (slower)")
    p.add_argument("--out", default="results/laptop", help="results folder")
    p.add_argument("train_args", nargs="*", help="extra train.py flags after --, e.g. -- --lr 1e-3")
    args = p.parse_args(argv)
    args.arms = [a for a in args.arms.split(",") if a]
    try:
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        p.error("--seeds takes a number or a comma-separated list of numbers")
    seeds = seeds * len(args.arms) if len(seeds) == 1 else seeds
    if not set(args.arms) <= {"process", "outcome", "mixed"} or len(seeds) != len(args.arms) or \
            min(seeds + [args.steps, args.problems, args.k, args.jobs]) < 1:
        p.error("--arms takes process, outcome, mixed; --seeds one number or one per arm; "
                "--seeds, --steps, --problems, --k, --jobs must be >= 1")
    args.seeds = dict(zip(args.arms, seeds))
    out = ROOT / args.out
    runs = [(arm, s, out / "runs" / f"{arm}-s{s}") for arm in args.arms for s in range(args.seeds[arm])]
    train_all(runs, args)
    print("[laptop] evaluating the untrained pipeline and every trained team", file=sys.stderr, flush=True)
    cmd = [sys.executable, "eval.py", *[str(d) for _, _, d in runs], "--base", "--limit", str(args.problems),
           "--k", str(args.k)] + ([] if args.eval_coach else ["--no-coach"])
    if run(cmd, out / "eval.log").wait():
        raise SystemExit(f"eval.py failed; see {out / 'eval.log'}")
    result = summarize(runs, args) | {"settings": {k: v for k, v in vars(args).items()}}
    (out / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "summary.md").write_text(table(result, args))
    plot(runs, out / "curves.png")
    print(table(result, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
