"""How fast is MAPPA on one machine, next to what a user would pick instead? Prints one table.

    pip install trl==1.16.0 && python bench.py          # CPU, a few minutes (TRL: row 3 only)
    python bench.py --quick                              # smoke run
    python bench.py --device cuda                        # adds the 1.5B / 7B-class 4-bit rows

Rows: (1) rollout, generation batched across episodes vs one episode at a time; (2) the coach,
logit vs generate mode, and its share of a step; (3) a MAPPA step (3 agents + coach + 3 updates)
vs a TRL GRPOTrainer step (1 agent, LoRA), per 1,000 generated tokens; (4) peak memory, 1 adapter
vs 3 adapters + coach; (5) model sizes; (6) the code sandbox, sequential vs parallel.

How it measures: the two sides of a comparison run in the same process on the same model and
settings, interleaved (A, B, A, B, ...) so load on a shared machine hits both alike, after one
warm-up; we report the median and [min-max] of the repetitions. Every repetition is re-seeded
and starts from the same adapter weights and optimiser state, so it does the same work. Peak
memory is measured in a fresh child process per configuration (peak RSS never goes down).
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time
from types import SimpleNamespace

import torch

import bench_report
import bench_sizes
from bench_measure import rates, repeat, seconds, spread
from bench_sizes import GPU_SIZES

TRL_PIN = "trl==1.16.0"


# ---------------------------------------------------------------------------- the MAPPA pieces

def make_ctx(args, agents=None):
    """The shared base + one adapter per agent + optimisers, with tiny-preset settings."""
    from agents import MATH, add_adapters, adapter_parameters, load_base, make_optimizers
    from config import PRESETS, Config
    from sandbox import Limits

    agents = agents or MATH
    cfg = Config(**{**PRESETS["tiny"], "model": args.model, "device": args.device,
                    "max_new_tokens": args.max_new_tokens, "gen_batch_size": args.batch})
    tokenizer, base = load_base(cfg.model, args.four_bit, cfg.device)
    model = add_adapters(base, agents, r=cfg.lora_r, alpha=cfg.lora_alpha)
    optimizers, _ = make_optimizers(model, agents, cfg.lr)
    params = [p for a in agents for p in adapter_parameters(model, a.name)]
    return SimpleNamespace(model=model, tokenizer=tokenizer, cfg=cfg, agents=agents, optimizers=optimizers,
                           limits=Limits(timeout_s=cfg.code_timeout), params=params,
                           snapshot=([p.detach().clone() for p in params],
                                     {k: copy.deepcopy(o.state_dict()) for k, o in optimizers.items()}),
                           base_params=sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n))


def restore(ctx) -> None:
    """Reset adapters and optimisers to the snapshot, so every repetition does the same work."""
    weights, states = ctx.snapshot
    with torch.no_grad():
        for p, w in zip(ctx.params, weights):
            p.copy_(w)
    for k, state in states.items():
        ctx.optimizers[k].load_state_dict(copy.deepcopy(state))


def episodes(args) -> list:
    """args.batch episodes: batch/2 built-in problems x 2 samples, as the tiny preset draws them."""
    from tasks import builtin_problems
    from train import new_episodes
    return new_episodes(builtin_problems("train", max(1, args.batch // 2)), 2)[:args.batch]


def run_rollout(ctx, eps, batch_size: int, agents=None) -> list:
    from rollout import rollout
    torch.manual_seed(ctx.cfg.seed)
    return rollout(ctx.model, ctx.tokenizer, agents or ctx.agents, eps, temperature=ctx.cfg.temperature,
                   max_new_tokens=ctx.cfg.max_new_tokens, batch_size=batch_size, limits=ctx.limits)


def action_tokens(eps) -> int:
    return sum(len(a.action_ids) for ep in eps for a in ep.actions)


def mappa_step(ctx, args, coach) -> dict:
    """One training step as train.train runs it: rollout -> grade -> coach (None: outcome reward)
    -> rewards -> one update per agent. Times itself, after restore()."""
    from reward import assign_rewards, grade
    from train import update_agent

    restore(ctx)
    eps = episodes(args)
    t0 = time.perf_counter()
    run_rollout(ctx, eps, ctx.cfg.gen_batch_size)
    t1 = time.perf_counter()
    for ep in eps:
        grade(ep, ctx.agents)
    items = [(ep, a) for ep in eps for a in ep.actions]
    if coach is not None:
        for (_, a), s in zip(items, coach.score(items)):
            a.score = s
    assign_rewards(eps, "process" if coach is not None else "outcome")
    t2 = time.perf_counter()
    for agent in ctx.agents:
        update_agent(ctx.model, agent.name, [a for _, a in items if a.agent == agent.name],
                     ctx.optimizers[agent.name], ctx.cfg)
    if ctx.model.device.type == "cuda":
        torch.cuda.synchronize()
    t3 = time.perf_counter()
    return {"seconds": t3 - t0, "tokens": action_tokens(eps), "rollout": t1 - t0, "coach": t2 - t1,
            "update": t3 - t2}


def coach(ctx, mode: str, max_new_tokens: int | None = None):
    from reward import LLMCoach
    return LLMCoach(ctx.model, ctx.tokenizer, ctx.agents, mode, True, max_new_tokens or ctx.cfg.coach_max_new_tokens,
                    ctx.cfg.coach_batch_size)


# ---------------------------------------------------------------------------- the rows

def bench_rollout(ctx, args) -> dict:
    """Row 1: one batched rollout of args.batch episodes vs the same episodes one at a time."""
    def batched():
        eps = run_rollout(ctx, episodes(args), args.batch)
        return {"tokens": action_tokens(eps), "eps": eps}

    def one_by_one():
        eps = episodes(args)
        for ep in eps:
            run_rollout(ctx, [ep], 1)
        return {"tokens": action_tokens(eps)}

    runs = repeat({"batched": batched, "single": one_by_one}, args.reps, device=args.device)
    a, b = spread(rates(runs["batched"], "tokens")), spread(rates(runs["single"], "tokens"))
    ctx.last_episodes = runs["batched"][-1]["eps"]
    return {"batched_tok_s": a, "single_tok_s": b, "ratio": a["median"] / b["median"],
            "tokens": [r["tokens"] for r in runs["batched"]][:1] + [r["tokens"] for r in runs["single"]][:1]}


def bench_coach(ctx, args) -> dict:
    """Row 2: score every action of one rollout batch, logit mode vs generate mode.

    A random model ends its coach rationale after a token or two, far shorter than a real coach's
    (SPEC §3: "explain briefly, then end with PROCESS_SCORE"), so generate mode is also measured
    with its rationale forced to args.coach_tokens tokens (stop tokens removed). A random model
    never writes a score line, so every action also gets the format retry; it is timed apart."""
    import reward
    import rollout
    eps = getattr(ctx, "last_episodes", None) or run_rollout(ctx, episodes(args), args.batch)
    items = [(ep, a) for ep in eps for a in ep.actions]
    calls, plain, plain_stops = [], reward.generate, rollout.stop_ids

    def timed_generate(*a, **k):  # record each coach generate call: (tokens, seconds)
        t0 = time.perf_counter()
        outs = plain(*a, **k)
        calls.append((sum(len(ids) for ids, _ in outs), time.perf_counter() - t0))
        return outs

    def score(mode, forced):
        def fn():
            torch.manual_seed(0)
            calls.clear()
            c = coach(ctx, mode, args.coach_tokens if forced else None)
            rollout.stop_ids = (lambda m, t: {len(t) + 1}) if forced else plain_stops  # never sampled
            try:
                scores = c.score(items)
            finally:
                rollout.stop_ids = plain_stops
            out = {"actions": len(items), "scored": sum(s is not None for s in scores),
                   "tokens": calls[0][0] if calls else 0, "retry_s": sum(s for _, s in calls[1:])}
            if forced:  # the rationale only: a real coach's score line parses without a retry
                out["seconds"] = calls[0][1]
            return out
        return fn

    reward.generate = timed_generate
    try:
        runs = repeat({"logit": score("logit", False), "generate": score("generate", False),
                       "forced": score("generate", True)}, args.reps, device=args.device)
    finally:
        reward.generate = plain
    per = {m: spread([r["seconds"] / r["actions"] for r in runs[m]]) for m in runs}
    return {"logit_s_action": per["logit"], "generate_s_action": per["generate"], "forced_s_action": per["forced"],
            "ratio": per["forced"]["median"] / per["logit"]["median"],
            "ratio_as_is": per["generate"]["median"] / per["logit"]["median"], "actions": len(items),
            "generate_tokens_per_action": runs["generate"][0]["tokens"] / len(items),
            "generate_scored": runs["generate"][0]["scored"], "coach_tokens": args.coach_tokens,
            "retry_s_action": spread([r["retry_s"] / r["actions"] for r in runs["forced"]])}


def bench_steps(ctx, args) -> dict:
    """Row 3 (and row 2's share of a step): MAPPA steps with the logit coach, alternating with TRL
    GRPOTrainer steps on the same model and settings when TRL is installed.

    Not timed as a step: MAPPA with the generate coach. A random model's rationale never parses,
    so every action is unscored and the update does nothing (SPEC §3); its share of a step is
    derived instead from row 2's forced-rationale cost (see step_share)."""
    from agents import agent_input
    from tasks import builtin_problems

    c = coach(ctx, "logit")
    mappa, state = [], {"i": 0}

    def step():
        run = mappa_step(ctx, args, c)
        if state["i"] > 0:  # the first is the warm-up
            mappa.append(run)
        state["i"] += 1

    solver = ctx.agents[0]
    prompts = [[{"role": "system", "content": solver.role},
                {"role": "user", "content": agent_input(solver, p.problem, {}, {})}]
               for p in builtin_problems("train", max(1, args.batch // 2))]
    trl_runs, trl_error = None, None
    try:
        import bench_trl
        trl_runs = bench_trl.grpo_step_runs(
            args.model, args.device, args.four_bit, prompts, num_generations=2,
            max_completion_length=ctx.cfg.max_new_tokens, lr=ctx.cfg.lr, beta=ctx.cfg.beta,
            lora_r=ctx.cfg.lora_r, lora_alpha=ctx.cfg.lora_alpha,
            gradient_checkpointing=ctx.cfg.gradient_checkpointing, steps=1 + args.reps, between=step,
            out_dir=os.path.join(args.tmp, "trl"))[1:]
    except ImportError as e:
        trl_error = f"not measured: TRL missing ({e.name}); pip install {TRL_PIN}"
    if trl_runs is None:
        for _ in range(1 + args.reps):
            step()
    out = {"logit": {"s_per_1k": spread([r["seconds"] / r["tokens"] * 1000 for r in mappa]),
                     "step_s": spread(seconds(mappa)), "tokens": mappa[0]["tokens"],
                     "coach_share": spread([r["coach"] / r["seconds"] for r in mappa]),
                     "parts": {k: statistics.median(r[k] for r in mappa) for k in ("rollout", "coach", "update")}},
           "trl_error": trl_error}
    if trl_runs:
        out["trl"] = {"s_per_1k": spread([r["seconds"] / r["tokens"] * 1000 for r in trl_runs]),
                      "step_s": spread(seconds(trl_runs)), "tokens": trl_runs[0]["tokens"]}
        out["ratio"] = out["trl"]["s_per_1k"]["median"] / out["logit"]["s_per_1k"]["median"]
    return out


def step_share(steps: dict, coach_row: dict) -> float:
    """The generate coach's share of a step, derived: the logit step's rollout and update, and the
    forced-rationale coach cost of row 2 for the same number of actions."""
    parts = steps["logit"]["parts"]
    gen = coach_row["forced_s_action"]["median"] * coach_row["actions"]
    return gen / (parts["rollout"] + parts["update"] + gen)


def bench_sandbox_row(args) -> dict:
    """Row 6: issue 4's sandbox benchmark, called defensively (sandbox.py is owned elsewhere)."""
    n, k, t = (8, 2, 1.0) if args.quick else (32, 4, 2.0)
    try:
        import sandbox
        return sandbox.bench_sandbox(n=n, n_timeouts=k, timeout_s=t)
    except Exception as e:  # absent or changed API: say so in the table rather than fail the bench
        return {"error": f"not measured: sandbox.bench_sandbox failed ({type(e).__name__}: {e})"[:200]}


# ---------------------------------------------------------------------------- the command

class UsageError(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (house style)
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse(argv=None) -> argparse.Namespace:
    p = UsageError(description="Benchmark MAPPA (rollout, coach, step vs TRL GRPO, memory, sizes, sandbox).")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--model", default="tiny", help="model of rows 1-4: tiny, tiny-50m, a Hub name or folder")
    p.add_argument("--sizes", default="", help="row 5, comma-separated: tiny, tiny-50m, 1.5b, 7b "
                   "(default: all; --quick: tiny)")
    p.add_argument("--reps", type=int, default=0, help="repetitions after the warm-up (default 5; --quick 2)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 reps, tiny only, small sandbox row")
    p.add_argument("--batch", type=int, default=8, help="episodes per rollout batch")
    p.add_argument("--max-new-tokens", type=int, default=48, help="cap on each action's length (tiny preset)")
    p.add_argument("--coach-tokens", type=int, default=128, help="row 2: rationale length of the forced generate coach")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--prompt-tokens", type=int, default=0, help="row 5 prompt length (default: 128 CPU, 512 GPU)")
    p.add_argument("--new-tokens", type=int, default=0, help="row 5 generated length (default: 64 CPU, 512 GPU)")
    p.add_argument("--4bit", dest="four_bit", action=argparse.BooleanOptionalAction, default=None,
                   help="4-bit NF4 base (default: on with CUDA)")
    p.add_argument("--only", default="", help="rows to run, comma-separated: rollout,coach,step,memory,sizes,sandbox")
    p.add_argument("--json", default="", help="also write every number to this file")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device} but CUDA is not available")
    if args.four_bit is None:
        args.four_bit = args.device.startswith("cuda")
    args.reps = args.reps or (2 if args.quick else 5)
    import tiny
    known = set(tiny.SIZES) | set(GPU_SIZES)
    args.sizes = [s for s in (args.sizes or ("tiny" if args.quick else ",".join([*tiny.SIZES, *GPU_SIZES]))).split(",") if s]
    rows = {"rollout", "coach", "step", "memory", "sizes", "sandbox"}
    args.only = set(args.only.split(",")) if args.only else rows
    for bad, what in ((set(args.sizes) - known, "--sizes"), (args.only - rows, "--only")):
        if bad:
            p.error(f"{what}: unknown {', '.join(sorted(bad))}")
    if min(args.reps, args.batch, args.max_new_tokens) < 1 or args.threads < 0:
        p.error("--reps, --batch and --max-new-tokens must be >= 1, --threads >= 0")
    return args


def main(argv=None) -> None:
    import tempfile
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print("BENCH_CHILD " + json.dumps(bench_sizes.run_child(args)), flush=True)
        return
    results, params, t0 = {}, None, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mappa-bench-") as tmp:
        args.tmp = tmp
        if args.only & {"rollout", "coach", "step"}:
            ctx = make_ctx(args)
            params = ctx.base_params
            for name, fn in (("rollout", bench_rollout), ("coach", bench_coach), ("step", bench_steps)):
                if name in args.only:
                    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
                    results[name] = fn(ctx, args)
            if "coach" in results and "step" in results:
                results["step"]["generate_share"] = step_share(results["step"], results["coach"])
            del ctx
        if "memory" in args.only:
            print("[bench] memory ...", file=sys.stderr, flush=True)
            results["memory"] = {k: bench_sizes.child(args, f"memory:{k}") for k in ("1", "3", "3:nocoach")}
        if "sizes" in args.only:
            print("[bench] sizes ...", file=sys.stderr, flush=True)
            results["sizes"] = bench_sizes.size_rows(args)
        if "sandbox" in args.only:
            print("[bench] sandbox ...", file=sys.stderr, flush=True)
            results["sandbox"] = bench_sandbox_row(args)
    rows = bench_report.table(results, args)
    print(bench_report.header(args, params))
    print(bench_report.markdown(rows))
    for row in rows:
        if row[4]:
            print(f"target {row[0][2:]}: {row[3]} (want {row[4]}) -> {row[5]}")
    print(f"total {time.perf_counter() - t0:.0f} s, load avg at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v if not isinstance(v, set) else sorted(v) for k, v in vars(args).items()},
                       "results": results, "table": rows}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
