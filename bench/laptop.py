"""Row 7 (`--only laptop`): one step of the laptop shape on a real model, each phase measured
against this machine's own matmul rate and memory bandwidth, measured in the same run (issue 25).

    python -m bench --only laptop --model /work/models/qwen2.5-coder-0.5b-instruct \\
        --batch 16 --max-new-tokens 256 --threads 2 --reps 1 --dtype auto

The step is train.py's: 16 episodes (8 builtin-easy problems x 2 samples) -> rollout -> grade ->
the team's own base as coach (logit mode) -> one update per agent, the laptop preset's update
settings (LoRA r 8, minibatch 16, micro-batch 16 -> 4 here to bound activations). FLOPs are
counted as 2 x params x tokens for a forward, 3x that for a training pass (the body's
non-embedding parameters for every token; the output head only where logits are taken); a decode
step is compared with reading every weight once at the measured bandwidth. TRL's GRPOTrainer
(LoRA, the same model, dtype, 16 completions of the solver prompts, max 256 tokens, beta, one
optimiser step) runs in the same process after it: seconds per 1,000 generated tokens.
"""
import os
import time

import torch

from bench.measure import now


def machine_rates(dtype_names=("bf16", "fp32"), n: int = 2048, reps: int = 5) -> dict:
    """This machine's matmul GFLOPS per dtype (best of reps, n^3) and memory bandwidth (GB/s,
    bytes read + written by a 512 MiB copy, best of reps), with the threads torch has now."""
    from precision import DTYPES
    out = {}
    for name in dtype_names:
        a, b = (torch.randn(n, n).to(DTYPES[name]) for _ in range(2))
        a @ b  # warm-up
        best = min(_timed(lambda: a @ b) for _ in range(reps))
        out[f"{name}_gflops"] = 2 * n ** 3 / best / 1e9
    x = torch.empty(128 * 2 ** 20)
    y = torch.empty_like(x)
    y.copy_(x)
    best = min(_timed(lambda: y.copy_(x)) for _ in range(reps))
    out["bandwidth_gbs"] = 2 * x.numel() * 4 / best / 1e9
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def body_params(model) -> tuple[int, int]:
    """(non-embedding, non-head parameters; output head parameters) of the base, LoRA excluded."""
    body = head = 0
    for n, p in model.named_parameters():
        if "lora_" in n or "embed_tokens" in n:
            continue
        if "lm_head" in n:
            head += p.numel()
        else:
            body += p.numel()
    return body, head


def run(args) -> dict:
    """One laptop-shape step, timed per phase; then the TRL peer on the same model."""
    import generation
    from agents import MATH, add_adapters, load_base, make_optimizers
    from config import PRESETS, Config
    from precision import dtype_name, resolve_dtype
    from reward import LLMCoach, assign_rewards, grade
    from rollout import new_episodes, rollout
    from sandbox import Limits
    from tasks.problems import BUILTIN, builtin_problems
    from train import update_agent

    cfg = Config(**{**PRESETS["laptop"], "model": args.model, "max_new_tokens": args.max_new_tokens,
                    "coach": "logit", "micro_batch_size": 4, "dtype": args.dtype, "device": args.device})
    if getattr(args, "trl_only", False):
        problems = builtin_problems("train", max(1, args.batch // 2), steps=BUILTIN["builtin-easy"])
        return {"trl": trl_run(args, cfg, problems, None), "rates": machine_rates(), "threads": torch.get_num_threads()}
    dtype = resolve_dtype(cfg.dtype, args.device)
    rates = machine_rates()
    t_load = now()
    tokenizer, base = load_base(cfg.model, args.four_bit, args.device, cfg.dtype)
    model = add_adapters(base, MATH, r=cfg.lora_r, alpha=cfg.lora_alpha)
    load_s = now() - t_load
    optimizers, _ = make_optimizers(model, MATH, cfg.lr)
    body, head = body_params(model)
    coach = LLMCoach(model, tokenizer, MATH, "logit", True, batch_size=cfg.coach_batch_size,
                     answer_for_all=cfg.coach_answer_for_all, compact=cfg.coach_compact, prefill_tokens=cfg.prefill_tokens)
    problems = builtin_problems("train", max(1, args.batch // 2), steps=BUILTIN["builtin-easy"])
    eps = new_episodes(problems, 2)[:args.batch]
    torch.manual_seed(0)
    generation.PHASES.clear()
    t0 = now()
    rollout(model, tokenizer, MATH, eps, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.gen_batch_size, limits=Limits(timeout_s=cfg.code_timeout), prefill_tokens=cfg.prefill_tokens)
    t1 = now()
    for ep in eps:
        grade(ep, MATH)
    items = [(ep, a) for ep in eps for a in ep.actions]
    coach_tokens = sum(len(coach.tokenizer.apply_chat_template(coach.prompt(ep, a), tokenize=True, return_dict=False))
                       for ep, a in items)
    t2a = now()
    for (_, a), s in zip(items, coach.score(items)):
        a.score = s
    assign_rewards(eps, "process")
    t2 = now()
    update_tokens = update_action_tokens = 0
    for agent in MATH:
        acts = [a for _, a in items if a.agent == agent.name]
        trained = [a for a in acts if a.reward is not None and not a.truncated]
        update_tokens += sum(len(a.prompt_ids) + len(a.action_ids) for a in trained)
        update_action_tokens += sum(len(a.action_ids) for a in trained)
        update_agent(model, agent.name, acts, optimizers[agent.name], cfg)
    t3 = now()
    P = dict(generation.PHASES)
    gen_tokens = sum(len(a.action_ids) for _, a in items)
    peak = {"bf16": rates["bf16_gflops"], "fp32": rates["fp32_gflops"]}.get(dtype_name(dtype), rates["fp32_gflops"]) * 1e9
    weight_bytes = (body + head) * torch.finfo(dtype).bits / 8
    step_s = t3 - t0
    out = {"dtype": dtype_name(dtype), "threads": torch.get_num_threads(), "rates": rates, "load_s": load_s,
           "episodes": len(eps), "actions": len(items), "generated_tokens": gen_tokens, "body_params": body,
           "head_params": head, "step_s": step_s, "s_per_episode": step_s / len(eps),
           "s_per_1k": step_s / gen_tokens * 1000, "correct": sum(bool(ep.correct) for ep in eps),
           "parts": {"prefill": P.get("prefill_s", 0), "decode": P.get("decode_s", 0), "sandbox": P.get("sandbox_s", 0),
                     "rollout_other": (t1 - t0) - P.get("prefill_s", 0) - P.get("decode_s", 0) - P.get("sandbox_s", 0),
                     "coach": t2 - t2a, "grade_other": t2a - t1, "update": t3 - t2},
           "prefill_tokens": P.get("prefill_tokens", 0), "decode_steps": P.get("decode_steps", 0),
           "coach_tokens": coach_tokens, "update_tokens": update_tokens, "update_action_tokens": update_action_tokens}
    # fractions of the machine: achieved FLOP/s over the measured matmul rate; decode vs one weight read
    out["prefill_frac"] = 2 * body * out["prefill_tokens"] / max(out["parts"]["prefill"], 1e-9) / peak
    out["coach_frac"] = 2 * body * coach_tokens / max(out["parts"]["coach"], 1e-9) / peak
    # update: training pass (3x) + reference pass (1x) per token; the head only on action tokens
    out["update_frac"] = 4 * 2 * (body * update_tokens + head * update_action_tokens) / max(out["parts"]["update"], 1e-9) / peak
    out["decode_step_s"] = out["parts"]["decode"] / max(out["decode_steps"], 1)
    out["weight_read_s"] = weight_bytes / (rates["bandwidth_gbs"] * 1e9)
    out["decode_vs_read"] = out["decode_step_s"] / out["weight_read_s"]
    if not args.no_trl:
        out["trl"] = trl_run(args, cfg, problems, tokenizer)
        if "s_per_1k" in out["trl"]:
            out["trl_ratio"] = out["trl"]["s_per_1k"] / out["s_per_1k"]
    return out


def trl_run(args, cfg, problems, tokenizer) -> dict:
    """TRL's GRPOTrainer on the solver's prompts: 1 warm-up step, then 1 timed (a step is minutes here)."""
    from agents import MATH, agent_input
    try:
        from bench import trl_peer
    except ImportError as e:
        return {"error": f"TRL missing ({e.name})"}
    solver = MATH[0]
    prompts = [[{"role": "system", "content": solver.role},
                {"role": "user", "content": agent_input(solver, p.problem, {}, {})}] for p in problems]
    try:
        runs = trl_peer.grpo_step_runs(args.model, args.device, args.four_bit, prompts, num_generations=2,
                                       max_completion_length=cfg.max_new_tokens, lr=cfg.lr, beta=cfg.beta,
                                       lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, gradient_checkpointing=False,
                                       steps=2, out_dir=os.path.join(args.tmp, "trl"), dtype=cfg.dtype,
                                       micro_batch=cfg.micro_batch_size)
    except ImportError as e:
        return {"error": f"TRL missing ({e.name})"}
    r = runs[-1]
    return {"step_s": r["seconds"], "tokens": r["tokens"], "s_per_1k": r["seconds"] / r["tokens"] * 1000}


def markdown(r: dict) -> str:
    """The row's table: per-part seconds, shares and fractions of the machine."""
    if "parts" not in r:  # --trl-only
        return f"TRL GRPOTrainer alone ({r['threads']} threads): {r['trl']}; machine {r['rates']}"
    p, s = r["parts"], r["step_s"]
    rates = r["rates"]
    lines = [f"laptop step: {r['episodes']} episodes, {r['actions']} actions, {r['generated_tokens']} generated tokens, "
             f"dtype {r['dtype']}, {r['threads']} threads; machine: bf16 {rates['bf16_gflops']:.0f} GFLOPS, "
             f"fp32 {rates['fp32_gflops']:.0f} GFLOPS, copy bandwidth {rates['bandwidth_gbs']:.1f} GB/s",
             "", "| part | seconds | share | vs this machine |", "|---|---|---|---|"]
    notes = {"prefill": f"{r['prefill_frac']:.0%} of the matmul rate ({r['prefill_tokens']:.0f} tokens)",
             "decode": f"{r['decode_vs_read']:.2f}x one weight read per step ({r['decode_steps']:.0f} steps, "
                       f"{r['decode_step_s'] * 1000:.0f} ms vs {r['weight_read_s'] * 1000:.0f} ms)",
             "coach": f"{r['coach_frac']:.0%} of the matmul rate ({r['coach_tokens']} prompt tokens)",
             "update": f"{r['update_frac']:.0%} of the matmul rate ({r['update_tokens']} tokens x (3 + 1 reference) passes)"}
    for k, v in p.items():
        lines.append(f"| {k} | {v:.1f} | {v / s:.0%} | {notes.get(k, '')} |")
    lines.append(f"| **step** | **{s:.1f}** | | **{r['s_per_episode']:.1f} s/episode**, {r['s_per_1k']:.1f} s per 1k generated tokens, "
                 f"{r['correct']}/{r['episodes']} correct |")
    t = r.get("trl")
    if t:
        lines.append("")
        lines.append(f"TRL GRPOTrainer (LoRA, same model and dtype, {t.get('tokens', '?')} tokens): "
                     + (f"{t['step_s']:.1f} s/step, {t['s_per_1k']:.1f} s per 1k tokens; TRL / MAPPA = "
                        f"{r['trl_ratio']:.2f}x" if "s_per_1k" in t else t.get("error", "")))
    return "\n".join(lines)
