"""Model sizes for the benchmark (rows 4-5): throughput and peak memory of one shared base + 3 adapters.

The tiny presets load through agents.load_base (the path real models take). The realistic sizes
are Qwen2.5-1.5B and Qwen2.5-7B shapes built with `from_config` (random weights: there is no
Hub here) and quantized to 4-bit NF4 in place, so the numbers say what fits on a card without a
download. Random weights change nothing about speed or memory: generation is forced to a fixed
length (min_new_tokens), so the work per repetition is fixed.

Each size, and each configuration of the memory row, runs in its own child process
(python -m bench --child size:<name> | memory:<adapters>[:nocoach]), so its peak memory is its own.
"""
import gc
import json
import os
import subprocess
import sys
import time

import torch

from bench import measure, rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
GPU_SIZES = ("1.5b", "7b")  # measured only where CUDA is present

# Shapes of the public Qwen2.5 configs (config.json of Qwen/Qwen2.5-1.5B-Instruct and -7B-Instruct).
REALISTIC = {
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}


def quantize_linears_(model, compute_dtype, device) -> int:
    """Swap every nn.Linear except the LM head for a bitsandbytes NF4 Linear4bit (double quant),
    as `from_pretrained(quantization_config=BitsAndBytesConfig(load_in_4bit=True, ...))` would.
    Layer by layer, so the full-precision copy of only one layer is alive at a time. Returns the
    number of layers swapped."""
    from bitsandbytes.nn import Linear4bit, Params4bit

    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or name == "lm_head":
                continue
            q = Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                           compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
                           device="meta")
            # Params4bit quantizes when it is moved to a device (bitsandbytes Params4bit.to).
            q.weight = Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                  quant_type="nf4").to(device)
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data.to(device), requires_grad=False)
            setattr(parent, name, q)
            swapped += 1
    model.is_loaded_in_4bit = True  # peft reads this to pick its 4-bit LoRA layer
    return swapped


def random_model(size: str, device: str, load_in_4bit: bool):
    """A randomly initialised Qwen2 of a REALISTIC shape (or any dict of Qwen2Config overrides),
    in 4-bit NF4 with bf16 compute (CUDA) / fp32 compute (CPU), or unquantized."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    import agents
    shape = REALISTIC[size] if isinstance(size, str) else size
    compute = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    config = Qwen2Config(max_position_embeddings=4096, **shape)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=compute)
    if load_in_4bit:
        quantize_linears_(model, compute, device)
        agents.guard_bnb_cpu_repack(model)
    model.requires_grad_(False)
    model.generation_config.pad_token_id = 0
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return model


def synthetic_actions(n: int, prompt_tokens: int, action_tokens: int, vocab: int, seed: int = 0) -> list:
    """n rollout.Actions with random prompts/actions of fixed lengths and random rewards."""
    from rollout import Action

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(0, vocab, (prompt_tokens,), generator=g).tolist()
        action = torch.randint(0, vocab, (action_tokens,), generator=g).tolist()
        out.append(Action("solver", 0, [], prompt, action, "", truncated=False,
                          reward=torch.rand((), generator=g).item()))
    return out


@torch.no_grad()
def fixed_length_generate(model, prompts: torch.Tensor, new_tokens: int) -> int:
    """Sample exactly new_tokens per row (EOS suppressed by min_new_tokens), KV cache on, eval
    mode, as rollout.generate runs. prompts [B, P] -> number of tokens generated (B * new_tokens)."""
    from transformers import GenerationConfig

    model.eval()
    gen = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, top_k=0,
                           top_p=1.0, temperature=1.0, pad_token_id=0, eos_token_id=1)
    out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), generation_config=gen)
    return (out.shape[1] - prompts.shape[1]) * out.shape[0]


def measure_size(size: str, device: str, *, batch: int, prompt_tokens: int, new_tokens: int, reps: int,
                 load_in_4bit: bool, gradient_checkpointing: bool, coach_tokens: int = 128) -> dict:
    """With 3 adapters on one base: generation tokens/s (batch x new_tokens, fixed length), seconds
    per update of one agent on `batch` actions of prompt_tokens + new_tokens, and peak memory;
    then at this size the batch speed-up of generation and the logit-vs-generate coach ratio."""
    from models import tiny
    from agents import MATH, add_adapters, load_base, make_optimizers
    from config import Config
    from train import update_agent

    baseline = measure.peak_memory_mb(device)
    t0 = time.perf_counter()
    if size in tiny.SIZES:
        _, base = load_base(size, load_in_4bit, device)
    else:
        base = random_model(size, device, load_in_4bit)
    load_s = time.perf_counter() - t0
    params = sum(p.numel() * (2 if p.dtype == torch.uint8 else 1) for p in base.parameters())
    model = add_adapters(base, MATH, r=16, alpha=32)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizers, _ = make_optimizers(model, MATH, lr=1e-5)
    cfg = Config(micro_batch_size=4, minibatch_size=batch, gradient_checkpointing=gradient_checkpointing)
    vocab = model.config.vocab_size
    prompts = torch.randint(0, vocab, (batch, prompt_tokens), generator=torch.Generator().manual_seed(0))
    prompts = prompts.to(model.device)
    actions = synthetic_actions(batch, prompt_tokens, new_tokens, vocab)
    measure.reset_peak(device)

    def gen(rows, n):  # n of the prompts, `rows` at a time; the rate is per token either way
        def fn():
            torch.manual_seed(0)
            model.set_adapter("solver")
            return {"tokens": sum(fixed_length_generate(model, prompts[i:i + rows], new_tokens)
                                  for i in range(0, n, rows))}
        return fn

    def update():
        update_agent(model, "solver", actions, optimizers["solver"], cfg)
        return {}

    runs = measure.repeat({"gen": gen(batch, batch), "update": update}, reps, device=device)
    out = {"size": size, "params_m": round(params / 1e6, 1), "device": device, "4bit": load_in_4bit,
           "batch": batch, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "load_s": round(load_s, 1),
           "gen_tok_s": measure.spread(measure.rates(runs["gen"], "tokens")),
           "update_s": measure.spread(measure.seconds(runs["update"])), "baseline_mb": round(baseline),
           "peak_mb": round(measure.peak_memory_mb(device))}
    if device.startswith("cuda"):  # what the caching allocator held: what a card must have free
        out["reserved_mb"] = round(torch.cuda.max_memory_reserved(torch.device(device)) / 2**20)
    # The two speed ratios of the targets at this size (peak memory is already taken above):
    # batch-`batch` generation vs one sequence at a time, and a logit-coach pass (one forward,
    # logits of the last 2 positions) vs a coach writing a coach_tokens rationale.
    with torch.no_grad(), model.disable_adapter():
        def logit():
            model(input_ids=prompts, logits_to_keep=2)
            return {}
        ratios = measure.repeat({"gen1": gen(1, min(batch, 2)), "logit": logit,
                               "rationale": lambda: {"tokens": fixed_length_generate(model, prompts, coach_tokens)}},
                              reps, device=device)
    one = measure.spread(measure.rates(ratios["gen1"], "tokens"))
    out.update(gen1_tok_s=one, batch_speedup=out["gen_tok_s"]["median"] / one["median"], coach_tokens=coach_tokens,
               logit_s=measure.spread(measure.seconds(ratios["logit"])),
               rationale_s=measure.spread(measure.seconds(ratios["rationale"])))
    out["coach_ratio"] = out["rationale_s"]["median"] / out["logit_s"]["median"]
    return out


def memory_child(args, adapters: int, with_coach: bool) -> dict:
    """Row 4, in a child process: two MAPPA steps (rollout of all agents, 3 updates) with 3 adapters
    and the logit coach (or none: outcome reward), or with ONE adapter that every agent acts and
    learns through and no coach. The work is otherwise the same, so the differences are the
    adapters and the coach pass."""
    import rollout
    import train
    from agents import MATH, acting_as
    baseline = measure.peak_memory_mb(args.device)
    ctx = rows.make_ctx(args, MATH if adapters == 3 else MATH[:1])
    if adapters == 1:
        shared = MATH[0].name
        one = lambda model, name: acting_as(model, shared if name else None)  # noqa: E731
        rollout.acting_as = train.acting_as = one
        ctx.agents, ctx.optimizers = MATH, {a.name: ctx.optimizers[shared] for a in MATH}
    c = rows.coach(ctx, "logit") if with_coach else None
    measure.reset_peak(args.device)
    for _ in range(2):  # the second step runs with the optimiser state allocated
        run = rows.mappa_step(ctx, args, c)
    return {"baseline_mb": baseline, "peak_mb": measure.peak_memory_mb(args.device), "tokens": run["tokens"],
            "reserved_mb": measure.peak_reserved_mb(args.device)}


def child(args, spec: str) -> dict:
    """Run `python -m bench --child spec` in a fresh process with the same settings; its JSON result."""
    cmd = [sys.executable, "-m", "bench", "--child", spec, "--device", args.device, "--model", args.model, "--reps", str(args.reps), "--batch", str(args.batch),
           "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads),
           "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
           "--coach-tokens", str(args.coach_tokens), "--scope", args.scope, "--steps", str(args.steps),
           "--cap-gib", str(args.cap_gib), "--prefill-tokens", str(args.prefill_tokens),
           "--micro-batch-size", str(args.micro_batch_size), "--4bit" if args.four_bit else "--no-4bit"]
    env = dict(os.environ)  # the repository on the path: `-m bench` works from any cwd (--model ./folder)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    if spec.startswith("memory"):
        # Large allocations straight from mmap, so freed tensors go back to the OS and peak RSS
        # tracks live memory; glibc's default heap keeps freed memory and adds 50-100 MiB of
        # allocation-order noise between configurations (measured; mallopt(3) M_MMAP_THRESHOLD).
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("BENCH_CHILD "):
            return json.loads(line[len("BENCH_CHILD "):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"child {spec} failed (exit {proc.returncode}): {tail[:200]}"}


def size_rows(args) -> list[dict]:
    """Row 5: each size in its own child; the GPU sizes only where CUDA is present."""
    out = []
    for size in args.sizes:
        if size in GPU_SIZES and not args.device.startswith("cuda"):
            out.append({"size": size, "error": "not measured (no GPU)"})
        else:
            out.append({"size": size, **child(args, f"size:{size}")})
    return out


def run_child(args) -> dict:
    """What `python -m bench --child size:<name> | memory:<adapters>[:nocoach]` measures, in this process."""
    kind, _, what = args.child.partition(":")
    if kind == "memory":  # memory:<adapters>[:nocoach]
        adapters, _, rest = what.partition(":")
        return memory_child(args, int(adapters), with_coach=adapters == "3" and rest != "nocoach")
    cuda = args.device.startswith("cuda")
    return measure_size(
        what, args.device, batch=args.batch, prompt_tokens=args.prompt_tokens or (512 if cuda else 128),
        new_tokens=args.new_tokens or (512 if cuda else 64), reps=min(args.reps, 3),
        load_in_4bit=args.four_bit, gradient_checkpointing=cuda, coach_tokens=args.coach_tokens)
