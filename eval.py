"""Evaluate a trained team (and the untrained pipeline) on held-out tasks.

    python eval.py RUN_DIR                 # the run's agents, k samples per problem at T = 0.6
    python eval.py RUN_DIR --base          # the same base model with every adapter off

Prints a table and writes RUN_DIR/eval.json (eval-base.json for --base).
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import datatask
import sandbox
from agents import PIPELINES, ModelLoadError, add_adapters, load_base
from coach_api import make_coach
from config import Config, OneLineParser, UserError, fail, load_config
from reward import grade
from rollout import rollout
from runlog import mean
from tasks import DataError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate(model, tokenizer, cfg: Config, agents, *, k: int = 4, temperature: float = 0.6,
             limit: int | None = None, data: str | None = None, coach=None, use_adapters: bool = True,
             seed: int = 0, progress: bool = False) -> dict:
    """Roll out k episodes per held-out task; return {"summary": {...}, "tasks": [...]}."""
    from train import load_tasks, new_episodes

    torch.manual_seed(seed)
    tasks = load_tasks(cfg.task, data or cfg.eval_data, "eval")[:limit]
    limits = sandbox.Limits(timeout_s=cfg.code_timeout, memory_mb=cfg.code_memory_mb)
    episodes = []
    chunk = max(1, cfg.gen_batch_size // k)
    for start in range(0, len(tasks), chunk):
        batch = new_episodes(tasks[start:start + chunk], k)
        rollout(model, tokenizer, agents, batch, temperature=temperature, max_new_tokens=cfg.max_new_tokens,
                batch_size=cfg.gen_batch_size, limits=limits, use_adapters=use_adapters)
        for ep in batch:
            grade(ep, agents)
        if coach is not None:
            items = [(ep, a) for ep in batch for a in ep.actions]
            for (_, a), s in zip(items, coach.score(items)):
                a.score = s
        datatask.remove_workspaces(batch)  # data task: graded and coached, the files are done with
        episodes += batch
        if progress:
            print(f"  evaluated {min(start + chunk, len(tasks))}/{len(tasks)} tasks", file=sys.stderr, flush=True)
    return summarize(episodes, agents, k)


def summarize(episodes, agents, k: int) -> dict:
    by_task: dict[str, list] = {}
    for ep in episodes:
        by_task.setdefault(ep.task.id, []).append(ep)
    summary = {
        f"avg@{k}": mean([float(bool(ep.correct)) for ep in episodes]),
        f"pass@{k}": mean([pass_at_k(len(eps), sum(bool(e.correct) for e in eps), k) for eps in by_task.values()]),
        "tasks": len(by_task), "episodes": len(episodes),
    }
    if episodes and episodes[0].workdir is not None:  # data task: success, metrics, fair means
        summary |= datatask.outcome_summary(episodes)
    for agent in agents:
        acts = [a for ep in episodes for a in ep.actions if a.agent == agent.name]
        summary[f"{agent.name}/score_mean"] = mean([a.score for a in acts])
        summary[f"{agent.name}/length"] = mean([len(a.action_ids) for a in acts])
        if agent.uses_code:
            summary[f"{agent.name}/tool_use"] = mean([float(a.tool_status is not None) for a in acts])
    tasks_out = [{"id": tid, "correct": [bool(e.correct) for e in eps], "answers": [e.answer for e in eps]}
                 | ({"outcomes": [e.outcome for e in eps]} if eps[0].workdir is not None else {})
                 for tid, eps in by_task.items()]
    return {"summary": summary, "tasks": tasks_out}


def format_results(results: dict[str, dict]) -> str:
    """A table with one column per evaluated pipeline (and the difference to the first)."""
    names = list(results)
    keys = list(dict.fromkeys(k for r in results.values() for k in r["summary"]))
    width = max(len(k) for k in keys) + 2
    lines = ["metric".ljust(width) + "".join(n[-14:].rjust(16) for n in names)
             + ("".join(f"{'Δ ' + n[-12:]:>16}" for n in names[1:]))]
    for key in keys:
        vals = [r["summary"].get(key) for r in results.values()]
        cells = "".join((f"{v:.3f}" if isinstance(v, float) else str(v)).rjust(16) for v in vals)
        deltas = "".join((f"{v - vals[0]:+.3f}" if isinstance(v, float) and isinstance(vals[0], float) else "").rjust(16)
                         for v in vals[1:])
        lines.append(key.ljust(width) + cells + deltas)
    return "\n".join(lines)


def main(argv=None) -> None:
    p = OneLineParser(description="Evaluate a MAPPA run on held-out tasks.")
    p.add_argument("run_dir", help="run folder written by train.py")
    p.add_argument("--base", action="store_true", help="evaluate the untrained pipeline (adapters off)")
    p.add_argument("--k", type=int, default=4, help="samples per task (avg@k, pass@k)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N tasks only")
    p.add_argument("--data", default=None, help="held-out tasks (default: the run's --eval-data)")
    p.add_argument("--coach", action=argparse.BooleanOptionalAction, default=True, help="score actions with the coach")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--task", choices=sorted(PIPELINES), default=None, help="check that the run is of this task")
    try:
        args = p.parse_args(argv)
        if args.k < 1 or args.temperature < 0 or (args.limit is not None and args.limit < 1):
            raise UserError("--k and --limit must be >= 1 and --temperature >= 0")
        run_dir = Path(args.run_dir)
        cfg = load_config(run_dir)
        if args.task and args.task != cfg.task:
            raise UserError(f"{run_dir} is a {cfg.task} run, not {args.task}; drop --task or pick another run")
        if not args.base and not (run_dir / "adapters").is_dir():
            raise UserError(f"{run_dir} has no trained adapters yet (no adapters/ folder); use --base or wait for a checkpoint")
        agents = PIPELINES[cfg.task]
        tokenizer, base = load_base(cfg.model, cfg.load_in_4bit, cfg.device)
        model = add_adapters(base, agents, r=cfg.lora_r, alpha=cfg.lora_alpha,
                             init_from=None if args.base else run_dir / "adapters")
        coach = make_coach(cfg, model, tokenizer, agents) if args.coach else None  # the run's coach, local or --coach-url
        t0 = time.perf_counter()
        result = evaluate(model, tokenizer, cfg, agents, k=args.k, temperature=args.temperature, limit=args.limit,
                          data=args.data, coach=coach, use_adapters=not args.base, seed=args.seed, progress=True)
    except (UserError, DataError, ModelLoadError) as e:
        fail(str(e))
    name = "base" if args.base else run_dir.name
    result["settings"] = {"k": args.k, "temperature": args.temperature, "limit": args.limit,
                          "data": args.data or cfg.eval_data, "base": args.base, "seconds": time.perf_counter() - t0}
    out = run_dir / ("eval-base.json" if args.base else "eval.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_results({name: result}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
