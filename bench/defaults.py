"""Row 7: MAPPA steps at train.py's defaults on a real-size random model, memory per phase (issue 29).

What `bench --device cuda`'s other rows never did: the real default lengths (1,024-token actions,
the executor's ~3.1k-token second-turn prompt, the coach on ~3.8k-token prompts, bench/plan.py's
LENGTHS), the RESERVED memory of each phase (rollout prefill, decode, coach, update) next to the
allocated one, and the CUDA context. The model is a Qwen2.5 1.5B or 7B shape (bench/sizes.py)
with random weights, 4-bit, three adapters; the coach is the base with adapters off, in generate
mode as by default. Prompts are random tokens of the planned lengths sharing an agent's system
head; every action runs to its cap (no stop token can be sampled), the worst case for memory.

scope "full": one whole default step (4 generate stages over all episodes, the coach on every
action, 3 updates). scope "peak" (bench/gpu_check.sh): per phase only its largest chunk -- the
executor's second turn, one coach batch, one agent's update on 2 micro-batches of its longest
actions -- so a 7B step fits a 15-minute GPU lease; seconds per full step are then derived from
the measured chunks (an upper bound: every stage is costed as the longest one).
"""
import inspect
import json
import math
import sys
import time
from types import SimpleNamespace

import torch

from bench import measure, plan

TOY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True)  # the CPU smoke test's shape


def shape_of(size: str) -> dict:
    from bench.sizes import REALISTIC
    return TOY if size == "toy" else REALISTIC[size]


def synthetic_prompts(n: int, length: int, head: int, vocab: int, seed: int) -> list[list[int]]:
    """n random prompts of `length` tokens whose first `head` tokens are shared (an agent's system
    prompt: rollout and the coach run a shared head once, rollout.prefix_forward)."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(2, vocab, (min(head, length - 1),), generator=g).tolist()
    return [first + torch.randint(2, vocab, (length - len(first),), generator=g).tolist() for _ in range(n)]


def synthetic_actions(agent: str, n: int, prompt: int, new: int, vocab: int, seed: int) -> list:
    """n scored rollout.Actions of `prompt` + `new` tokens, with random rewards and no sampling
    log-probs (so the update runs its old-policy pass, as at the defaults' 32+ actions per agent)."""
    from rollout import Action

    g = torch.Generator().manual_seed(seed)
    return [Action(agent, 0, [], p, torch.randint(2, vocab, (new,), generator=g).tolist(), "", truncated=False,
                   reward=torch.rand((), generator=g).item())
            for p in synthetic_prompts(n, prompt, plan.SYSTEM, vocab, seed)]


class Peaks:
    """Peak allocated and reserved memory (MiB) per phase. A forward hook splits generation into
    prefill (a forward over more than one new token) and decode (one token per row)."""

    def __init__(self, device: str):
        self.device, self.mb, self.splitting = device, {}, False

    def reset(self) -> None:
        measure.reset_peak(self.device)

    def take(self, phase: str) -> None:
        """Fold the peak since the last reset into `phase`, and start a new one."""
        now = {"alloc": measure.peak_memory_mb(self.device), "reserved": measure.peak_reserved_mb(self.device)}
        old = self.mb.get(phase, {"alloc": 0.0, "reserved": 0.0})
        self.mb[phase] = {k: round(max(old[k], now[k])) for k in now}
        self.reset()

    def hook(self, module, args, kwargs, output) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if self.splitting and ids is not None:
            self.take("prefill" if ids.shape[1] > 1 else "decode")


def generate(ctx, agent: str | None, prompts: list[list[int]], new: int, temperature: float, rows: int) -> float:
    """rollout.generate over the prompts, `rows` per chunk (and the token budget, where rollout has
    one); agent None: the coach (adapters off). Returns its seconds."""
    import rollout
    from agents import acting_as

    kwargs = {"batch_size": rows}
    if "prefill_tokens" in inspect.signature(rollout.generate).parameters:  # issue 29's token budget
        kwargs["prefill_tokens"] = ctx.settings.prefill_tokens
    t0 = time.perf_counter()
    with acting_as(ctx.model, agent):
        rollout.generate(ctx.model, ctx.tokenizer, prompts, new, temperature, logprobs=[], **kwargs)
    sync(ctx.device)
    return time.perf_counter() - t0


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def rollout_phase(ctx, scope: str) -> float:
    """The agents' generate calls of one step: 4 stages over every episode (full), or one chunk of
    the executor's second turn (peak). Prefill and decode peaks are split by the hook."""
    s, L = ctx.settings, ctx.lengths
    stages = [("solver", "solver"), ("executor", "executor1"), ("executor", "executor2"), ("verifier", "verifier")]
    if scope == "peak":
        stages = [("executor", "executor2")]
    seconds, ctx.peaks.splitting = 0.0, True
    for i, (agent, stage) in enumerate(stages):
        n = s.episodes if scope == "full" else plan.rows_for(L[stage], s, min(s.gen_batch_size, s.episodes))
        prompts = synthetic_prompts(n, L[stage], plan.SYSTEM, ctx.vocab, seed=i)
        seconds += generate(ctx, agent, prompts, s.max_new_tokens, 1.0, s.gen_batch_size)
    ctx.peaks.splitting = False
    ctx.chunk_s = seconds
    return seconds


def coach_phase(ctx, scope: str) -> float:
    """The coach (adapters off, greedy) on every action of the step (full: 4 x episodes) or on one
    batch (peak), each prompt ~3.8k tokens, coach_max_new_tokens each (generate mode)."""
    s, L = ctx.settings, ctx.lengths
    rows = plan.rows_for(L["coach"], s, s.coach_batch_size)
    n = 4 * s.episodes if scope == "full" else rows
    prompts = synthetic_prompts(n, L["coach"], plan.COACH_HEAD, ctx.vocab, seed=10)
    new = s.coach_max_new_tokens if s.coach == "generate" else 1
    return generate(ctx, None, prompts, new, 0.0, s.coach_batch_size)


def update_phase(ctx, scope: str) -> float:
    """train.update_agent per agent on its actions of the step (full), or one agent's update on 2
    micro-batches of the longest actions (peak: the per-micro-batch peak, the optimiser's state)."""
    from train import update_agent

    s, L, new = ctx.settings, ctx.lengths, ctx.settings.max_new_tokens
    work = {"solver": [(L["solver"], s.episodes)], "executor": [(L["executor1"], s.episodes), (L["executor2"], s.episodes)],
            "verifier": [(L["verifier"], s.episodes)]}
    if scope == "peak":
        work = {"executor": [(L["executor2"], 2 * s.micro_batch_size)]}
    t0 = time.perf_counter()
    for agent, parts in work.items():
        actions = [a for k, (prompt, n) in enumerate(parts) for a in synthetic_actions(agent, n, prompt, new, ctx.vocab, k)]
        update_agent(ctx.model, agent, actions, ctx.optimizers[agent], ctx.cfg)
        ctx.update_tokens = sum(len(a.prompt_ids) + len(a.action_ids) for a in actions)
    sync(ctx.device)
    return time.perf_counter() - t0


def one_step(ctx, scope: str) -> dict:
    """One step's phases, each with its seconds; peaks go to ctx.peaks."""
    out = {}
    for name, fn in (("rollout", rollout_phase), ("coach", coach_phase), ("update", update_phase)):
        ctx.phase = name  # named in the result if it runs out of memory
        ctx.peaks.reset()
        out[f"{name}_s"] = round(fn(ctx, scope), 2)
        if name != "rollout":
            ctx.peaks.take(name)
    out["step_s"] = round(sum(out.values()), 2)
    return out


def derived_step_s(ctx, steps: list[dict]) -> float:
    """Seconds of one full default step from a peak-scope step: chunks x the measured chunk time per
    phase (the longest stage's chunk for every rollout chunk: an upper bound), the update scaled by tokens."""
    s, L, last = ctx.settings, ctx.lengths, steps[-1]
    chunks = sum(math.ceil(s.episodes / plan.rows_for(L[k], s, min(s.gen_batch_size, s.episodes)))
                 for k in ("solver", "executor1", "executor2", "verifier"))
    coach_chunks = math.ceil(4 * s.episodes / plan.rows_for(L["coach"], s, s.coach_batch_size))
    full_tokens = s.episodes * (L["solver"] + L["executor1"] + L["executor2"] + L["verifier"] + 4 * s.max_new_tokens)
    return round(chunks * last["rollout_s"] + coach_chunks * last["coach_s"]
                 + last["update_s"] * full_tokens / ctx.update_tokens, 1)


def make_ctx(size: str, device: str, settings: "plan.Settings", four_bit: bool, lengths: dict | None = None):
    """The random base of `size` + the math team's 3 adapters, optimisers and a config at train.py's
    defaults (the settings' micro-batch and token budget); a tokenizer stand-in whose stop token is
    never sampled, so every action runs to its cap."""
    from agents import MATH, add_adapters, make_optimizers
    from bench.sizes import random_model
    from config import Config

    t0 = time.perf_counter()
    base = random_model(shape_of(size), device, four_bit)
    base.generation_config.eos_token_id = None
    params = sum(p.numel() * (2 if p.dtype == torch.uint8 else 1) for p in base.parameters())
    cfg = Config(device=device, micro_batch_size=settings.micro_batch_size)
    if hasattr(cfg, "prefill_tokens"):
        cfg.prefill_tokens = settings.prefill_tokens
    model = add_adapters(base, MATH, r=cfg.lora_r, alpha=cfg.lora_alpha)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizers, _ = make_optimizers(model, MATH, cfg.lr)
    ctx = SimpleNamespace(model=model, tokenizer=SimpleNamespace(eos_token_id=None, pad_token_id=0), cfg=cfg,
                          optimizers=optimizers, settings=settings, lengths=lengths or plan.lengths(settings.max_new_tokens),
                          vocab=base.config.vocab_size, device=device, peaks=Peaks(device), params_m=round(params / 1e6, 1))
    ctx.hook = model.register_forward_hook(ctx.peaks.hook, with_kwargs=True)
    ctx.build_s = round(time.perf_counter() - t0, 1)
    return ctx


def cap_memory(device: str, cap_gib: float, context_mb: float) -> None:
    """Make this card behave as one of cap_gib (e.g. 24 on an H100): torch's allocator may use
    cap_gib less the CUDA context, which a real card of that size must hold too."""
    if cap_gib and device.startswith("cuda"):
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        allowed = cap_gib * plan.GIB - context_mb * 2**20
        torch.cuda.set_per_process_memory_fraction(min(1.0, allowed / total), torch.device(device))


def measure_defaults(size: str, device: str, settings: "plan.Settings", *, scope: str = "peak", steps: int = 2,
                     four_bit: bool = True, cap_gib: float = 0.0, lengths: dict | None = None) -> dict:
    """Row 7 for one size: `steps` steps (the second with the optimiser state allocated), seconds
    per phase, peak allocated and reserved MiB per phase, the CUDA context, and bench/plan.py's
    estimate for the same settings. An out-of-memory phase is reported, not raised."""
    if device.startswith("cuda"):
        torch.zeros(1, device=device)  # the context exists from here on
    context = measure.context_mb(device)
    cap_memory(device, cap_gib, context or 0.0)
    ctx = make_ctx(size, device, settings, four_bit, lengths)
    out = {"size": size, "scope": scope, "device": device, "4bit": four_bit, "cap_gib": cap_gib,
           "settings": dict(vars(settings)), "lengths": ctx.lengths, "params_m": ctx.params_m, "build_s": ctx.build_s,
           "steps": []}
    if device.startswith("cuda"):  # weights + adapters before any step: bench/plan.py's "weights" less AdamW
        out["resident_mb"] = round(torch.cuda.memory_allocated(torch.device(device)) / 2**20)
    for _ in range(steps):
        try:
            out["steps"].append(one_step(ctx, scope))
        except torch.OutOfMemoryError:
            out["oom"] = ctx.phase
            ctx.peaks.splitting = False
            break
    out["mb"] = ctx.peaks.mb
    after = measure.context_mb(device)
    if after is not None:
        out["context_mb"] = {"start": round(context), "end": round(after)}
        out["card_mb"] = {k: v["reserved"] + round(after) for k, v in ctx.peaks.mb.items()}
    if size != "toy":
        out["estimate_gib"] = {k: round(v, 1) for k, v in plan.card_peaks(shape_of(size), settings).items()}
    if scope == "peak" and out["steps"] and "oom" not in out:
        out["derived_step_s"] = derived_step_s(ctx, out["steps"])
    ctx.hook.remove()
    return out


def settings_from(args, size: str | None = None) -> "plan.Settings":
    """train.py's defaults, with --prefill-tokens / --micro-batch-size where given."""
    from config import Config

    s = plan.Settings.of(Config())
    s.prefill_tokens = args.prefill_tokens or s.prefill_tokens
    s.micro_batch_size = args.micro_batch_size or s.micro_batch_size
    return s


def run_child(args, size: str) -> dict:
    """`python -m bench --child defaults:<size>`: row 7 for one size, in this (fresh) process."""
    return measure_defaults(size, args.device, settings_from(args), scope=args.scope, steps=args.steps,
                            four_bit=args.four_bit, cap_gib=args.cap_gib)


def rows(args) -> list[dict]:
    """Row 7: each size in its own child process (its peaks its own); real sizes only with CUDA."""
    from bench.sizes import child

    out = []
    for size in args.defaults_sizes:
        if size != "toy" and not args.device.startswith("cuda"):
            out.append({"size": size, "error": "not measured (no GPU)"})
        else:
            out.append({"size": size, **child(args, f"defaults:{size}")})
            # at once, so a run stopped by a time limit keeps the sizes already measured
            print("[bench] row 7 " + json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def gpu_check(args) -> list[dict]:
    """The prepared device check (bench/gpu_check.sh): on a card capped at 24 GiB, the 1.5B at
    train.py's defaults and the 7B at the settings bench/plan.py says fit; `args.steps` steps each."""
    from argparse import Namespace

    from bench.sizes import REALISTIC

    fit = plan.fitting_settings(REALISTIC["7b"], plan.CARD_GIB, settings_from(args))
    runs = [("1.5b", {}), ("7b", {"prefill_tokens": fit.prefill_tokens, "micro_batch_size": fit.micro_batch_size})]
    out = []
    for size, overrides in runs:
        one = Namespace(**{**vars(args), "defaults_sizes": [size], "cap_gib": args.cap_gib or plan.CARD_GIB, **overrides})
        print(f"[bench] gpu check: {size} {overrides or 'train.py defaults'} ...", file=sys.stderr, flush=True)
        out += rows(one)
    return out


PHASES = ("prefill", "decode", "coach", "update")


def report_row(x: dict) -> tuple[str, str, str, float | None]:
    """(measure, measured, estimated, measured / estimated card peak) for report.table."""
    s = x["settings"]
    what = (f"7 defaults {x['size']} ({x['params_m']}M, {'4-bit' if x['4bit'] else 'full'}, 3 adapters + coach, "
            f"{x['scope']}; --prefill-tokens {s['prefill_tokens'] or 'none'}, micro-batch {s['micro_batch_size']}"
            + (f", capped {x['cap_gib']:g} GiB" if x["cap_gib"] else "") + ")")
    unit = "MiB reserved" if x["device"].startswith("cuda") else "MiB peak RSS"
    mb = ", ".join(f"{k} {x['mb'][k]['reserved']}" for k in PHASES if k in x["mb"])
    ctx = f"; context {x['context_mb']['end']}, resident {x.get('resident_mb')} MiB" if "context_mb" in x else ""
    secs = ", ".join(f"{st['step_s']:.1f}" for st in x["steps"])
    ours = f"{unit}: {mb}{ctx}; s/step: {secs}" + (f" (full default step, derived: {x['derived_step_s']:.0f} s)"
                                                   if "derived_step_s" in x else "")
    if "oom" in x:
        ours += f"; OUT OF MEMORY in {x['oom']}"
    est = x.get("estimate_gib")
    theirs = ("estimated card GiB: " + ", ".join(f"{k} {est[k]:.1f}" for k in PHASES)) if est else ""
    ratio = None
    if est and x.get("card_mb") and "oom" not in x:
        ratio = max(x["card_mb"].values()) / 1024 / max(est[k] for k in PHASES)
    return what, ours, theirs, ratio
