"""The PPO ratio at step 1 in a given dtype, on a real model (issue 25 goal 3, issue 29 item 3).

    python -m bench.ratio --model /work/models/qwen2.5-coder-0.5b-instruct --dtype bf16 --threads 2

Samples `--actions` solver actions, then reports in nats per action token (max and mean |delta|):
  same layout   the training pass vs the old-policy pass on the same micro-batches (what
                update_agent does now; the ratio exp(delta) at the first step)
  other layout  the same log-probs batched otherwise (fixed order, other micro-batches: what the
                old-policy pass did before) -- the gap the one-layout rule removes
  sampling      the rollout's recorded log-probs vs the training pass (the KL term's input when
                one epoch skips the old-policy pass)
and, back to back, the seconds and peak RSS of one training pass (forward + backward) over the
actions with the forwards under autocast (the fix of issue 29 item 1) and without (peft then
casts every LoRA input to fp32), interleaved, 2 reps each; and the seconds of sampling 64 tokens
for 2 x --actions rows with the KV cache written in place (generation.GrowingLayer) and with
transformers' torch.cat cache, interleaved, 2 reps each (the same tokens either way).
"""
import argparse
import json

import torch


def gaps(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> dict:
    d = (a - b).abs()[mask > 0]
    return {"max": d.max().item(), "mean": d.mean().item(), "ratio_max": (d.max().exp() - 1).item()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--dtype", default="bf16", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--actions", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from agents import MATH, acting_as, add_adapters, agent_input, load_base
    from rollout import Action, generate, render
    from tasks.problems import BUILTIN, builtin_problems
    from train import layout_logprobs, micro_batches, sampled_logprobs

    tokenizer, base = load_base(args.model, False, "cpu", args.dtype)
    model = add_adapters(base, MATH, r=8, alpha=16)
    solver = MATH[0]
    problems = builtin_problems("train", args.actions, steps=BUILTIN["builtin-easy"])
    prompts = [render(tokenizer, [{"role": "system", "content": solver.role},
                                  {"role": "user", "content": agent_input(solver, q.problem, {}, {})}]) for q in problems]
    torch.manual_seed(0)
    lps = []
    with acting_as(model, "solver"):
        outs = generate(model, tokenizer, prompts, args.max_new_tokens, 1.0, len(prompts), logprobs=lps)
    acts = [Action("solver", 0, [], pr, ids, "", t, logprobs=lp) for pr, (ids, t), lp in zip(prompts, outs, lps)]
    T = max(len(a.action_ids) for a in acts)
    mask = torch.zeros(len(acts), T)
    for i, a in enumerate(acts):
        mask[i, :len(a.action_ids)] = 1
    order = torch.randperm(len(acts)).tolist()
    layout = micro_batches(order, 16, args.micro)
    other = micro_batches(list(range(len(acts))), 16, args.micro)
    with acting_as(model, "solver"):
        with torch.no_grad():
            old = layout_logprobs(model, acts, layout, T, 1.0)
            moved = layout_logprobs(model, acts, other, T, 1.0)
        model.train()
        new = layout_logprobs(model, acts, layout, T, 1.0)  # grad mode, as the training pass
        model.eval()
    out = {"model": args.model, "dtype": args.dtype, "actions": len(acts), "tokens": int(mask.sum()),
           "threads": torch.get_num_threads(),
           "same_layout": gaps(new.detach(), old, mask), "other_layout": gaps(moved, old, mask),
           "sampling": gaps(sampled_logprobs(acts, T), new.detach(), mask)}
    out["autocast_ab"] = autocast_ab(model, base, acts, T)
    out["cache_ab"] = cache_ab(model, tokenizer, prompts * 2, 64)
    print(json.dumps(out, indent=1))


def autocast_ab(model, base, acts, T) -> dict:
    """Training-pass seconds and peak RSS with and without autocast around the forwards."""
    import time

    from agents import acting_as
    from bench.measure import peak_memory_mb, reset_peak
    from train import action_logprobs
    import types
    wrapped = base.forward
    plain = types.MethodType(type(base).forward, base) if getattr(base, "_mappa_autocast", None) else None
    lora = [m for m in model.modules() if hasattr(m, "lora_A")]
    res = {"on": [], "off": []}
    if plain is None:  # fp32: no autocast to compare
        return {}
    model.train()
    for _ in range(2):
        for mode in ("on", "off"):
            base.forward = wrapped if mode == "on" else plain
            for m in lora:  # off: peft's own input casting, as before the fix
                m.cast_input_dtype_enabled = mode == "off"
            reset_peak("cpu")
            t0 = time.perf_counter()
            with acting_as(model, "solver"):
                action_logprobs(model, acts, T, len(acts), 1.0).sum().backward()
            res[mode].append((time.perf_counter() - t0, peak_memory_mb("cpu")))
            model.zero_grad(set_to_none=True)
    base.forward = wrapped
    for m in lora:
        m.cast_input_dtype_enabled = False
    model.eval()
    return {k: {"s": min(t for t, _ in v), "peak_rss_mb": max(p for _, p in v)} for k, v in res.items()}



def cache_ab(model, tokenizer, prompts, new_tokens) -> dict:
    """Sampling seconds with the in-place KV cache and with transformers' own, interleaved."""
    import time

    import generation
    from agents import acting_as
    from rollout import generate
    own, res, toks = generation.new_cache, {"in_place": [], "torch_cat": []}, {}
    try:
        for _ in range(2):
            for mode in res:
                generation.new_cache = own if mode == "in_place" else (lambda m: None)
                torch.manual_seed(1)
                t0 = time.perf_counter()
                with acting_as(model, "solver"):
                    toks[mode] = generate(model, tokenizer, prompts, new_tokens, 1.0, len(prompts))
                res[mode].append(time.perf_counter() - t0)
    finally:
        generation.new_cache = own
    return {k: min(v) for k, v in res.items()} | {"same_tokens": toks["in_place"] == toks["torch_cat"],
                                                  "rows": len(prompts), "new_tokens": new_tokens}


if __name__ == "__main__":
    main()
