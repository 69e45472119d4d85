"""Rows 1-3 and 6 of the benchmark, and the MAPPA pieces a step is made of (bench/__init__.py
says what each row measures and how)."""
import copy
import os
import statistics
import time
from types import SimpleNamespace

import torch

from bench.measure import now, rates, repeat, seconds, spread
from runlog import Progress

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
    from rollout import new_episodes
    from tasks.problems import builtin_problems
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
    t0 = now()
    run_rollout(ctx, eps, ctx.cfg.gen_batch_size)
    t1 = now()
    for ep in eps:
        grade(ep, ctx.agents)
    items = [(ep, a) for ep in eps for a in ep.actions]
    if coach is not None:
        for (_, a), s in zip(items, coach.score(items)):
            a.score = s
    assign_rewards(eps, "process" if coach is not None else "outcome")
    t2 = now()
    for agent in ctx.agents:
        update_agent(ctx.model, agent.name, [a for _, a in items if a.agent == agent.name],
                     ctx.optimizers[agent.name], ctx.cfg)
    if ctx.model.device.type == "cuda":
        torch.cuda.synchronize(ctx.model.device)
    t3 = now()
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
        t0 = now()
        outs = plain(*a, **k)
        calls.append((sum(len(ids) for ids, _ in outs), now() - t0))
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
    from tasks.problems import builtin_problems

    c = coach(ctx, "logit")
    mappa, state = [], {"i": 0}

    def step():
        with torch.random.fork_rng():  # TRL's sampling must not depend on how much RNG MAPPA's step drew
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
        from bench import trl_peer
        trl_runs = trl_peer.grpo_step_runs(
            args.model, args.device, args.four_bit, prompts, num_generations=2,
            max_completion_length=ctx.cfg.max_new_tokens, lr=ctx.cfg.lr, beta=ctx.cfg.beta,
            lora_r=ctx.cfg.lora_r, lora_alpha=ctx.cfg.lora_alpha,
            gradient_checkpointing=ctx.cfg.gradient_checkpointing, steps=1 + args.reps, between=step,
            out_dir=os.path.join(args.tmp, "trl"))[1:]
    except ImportError as e:
        trl_error = f"not measured: TRL missing ({e.name}); pip install {TRL_PIN}"
    if trl_runs is None:
        progress = Progress()
        for i in range(1 + args.reps):
            progress(f"[bench] step: {'warm-up' if i == 0 else f'rep {i}/{args.reps}'}")
            step()
        progress.done()
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
    """Row 6: the code sandbox, sequential vs parallel (bench_sandbox)."""
    n, k, t = (8, 2, 1.0) if args.quick else (32, 4, 2.0)
    try:
        return bench_sandbox(n=n, n_timeouts=k, timeout_s=t)
    except Exception as e:  # a sandbox that fails here: say so in the table rather than lose the other rows
        return {"error": f"not measured: bench_sandbox failed ({type(e).__name__}: {e})"[:200]}


def bench_sandbox(n: int = 32, n_timeouts: int = 4, timeout_s: float = 2.0) -> dict:
    """Wall time of n actions (n_timeouts of them loop forever), run sequentially, with
    run_many's default workers, and with one worker per core."""
    import sandbox
    lim, cores = sandbox.Limits(timeout_s=timeout_s), os.cpu_count() or 1
    codes = ["while True: pass"] * n_timeouts + ["print(sum(range(10**5)))"] * (n - n_timeouts)
    with sandbox.workspace() as wd:
        feats = sandbox.sandbox_features()
        t0 = time.monotonic()
        seq = [sandbox.run_code(c, wd, lim) for c in codes]
        t1 = time.monotonic()
        par = sandbox.run_many([(c, wd) for c in codes], lim)
        t2 = time.monotonic()
        per_core = sandbox.run_many([(c, wd) for c in codes], lim, max_workers=cores)
        t3 = time.monotonic()
    if not [r.status for r in seq] == [r.status for r in par] == [r.status for r in per_core]:
        raise RuntimeError("bench_sandbox: sequential and parallel runs disagree")
    quick = [r.seconds for r in seq if r.status == "ok"]
    return {"n": n, "n_timeouts": n_timeouts, "timeout_s": timeout_s, "mode": feats["mode"], "cores": cores,
            "workers": sandbox.default_workers(n), "sequential_s": round(t1 - t0, 2), "parallel_s": round(t2 - t1, 2),
            "speedup": round((t1 - t0) / max(t2 - t1, 1e-9), 2), "parallel_cores_s": round(t3 - t2, 2),
            "quick_action_ms": round(1000 * sum(quick) / max(1, len(quick)), 1)}
