"""The memory plan: peak GPU memory per phase of one training step, ESTIMATED from a model's shapes
and the run's settings, so that the numbers in docs/gpu.md are computed, not typed (issue 29).

    python -m bench.plan            # the table of docs/gpu.md: 1.5B and 7B on one 24 GB card

Every number is an estimate until `bench/gpu_check.sh` measures it; docs/gpu.md gives the formulas
and the reasons for each constant. The prompt lengths of a default step (LENGTHS) are shared with
the measured row (bench/defaults.py), so the two describe the same work.
"""
from dataclasses import dataclass

GIB = 2**30
CARD_GIB = 24.0
CONTEXT_GIB = 0.5   # the CUDA context and library handles, outside torch's allocator (typical, not measured)
SLACK = 0.10        # the caching allocator's fragmentation: reserved ~ allocated x (1 + SLACK)
MARGIN = 0.90       # fitting_settings aims at 90% of the card: a display, other processes, estimate error

# Tokens of each part of a default math step (Qwen2.5 tokenizer, ~4 characters per token; code
# output ~3): the chat template + an agent's system prompt, a competition problem, the 2,000
# characters of tool output an agent and the coach see, the coach's fixed text (job, team, role),
# and what the coach shows of an agent's input (clipped to 6,000 characters).
SYSTEM, PROBLEM, TOOL, COACH_HEAD, COACH_SEEN, TURN = 100, 150, 700, 250, 1700, 30


def lengths(max_new: int = 1024) -> dict[str, int]:
    """Prompt tokens of each generate call of a math step (solver -> executor, 2 turns -> verifier)
    and of the coach; each action is at most max_new tokens (the worst case: every action runs to
    the cap, as a random model's do)."""
    solver = SYSTEM + PROBLEM
    executor1 = SYSTEM + PROBLEM + max_new + TURN
    executor2 = executor1 + max_new + TOOL + TURN  # its first action and that action's tool output
    verifier = SYSTEM + PROBLEM + max_new + TOOL + TURN
    coach = COACH_HEAD + PROBLEM + COACH_SEEN + max_new + TOOL
    return {"solver": solver, "executor1": executor1, "executor2": executor2, "verifier": verifier, "coach": coach}


@dataclass
class Settings:
    """The train.py settings that set the memory peaks (Config field names)."""
    gen_batch_size: int = 32
    prefill_tokens: int = 0          # rows x longest prompt per generate chunk; 0: no budget (gen_batch_size rows)
    max_new_tokens: int = 1024
    coach: str = "generate"
    coach_batch_size: int = 16
    coach_max_new_tokens: int = 256
    micro_batch_size: int = 4
    lora_r: int = 16
    episodes: int = 32               # problems_per_step x samples_per_problem

    @classmethod
    def of(cls, cfg) -> "Settings":
        """From a config.Config (prefill_tokens where the run has that flag)."""
        names = [f for f in cls.__dataclass_fields__ if f != "episodes"]
        return cls(**{n: getattr(cfg, n, getattr(cls, n)) for n in names},
                   episodes=cfg.problems_per_step * cfg.samples_per_problem)


def linear_shapes(shape: dict) -> list[tuple[int, int]]:
    """(in, out) of the 7 linear layers of one decoder layer (q, k, v, o, gate, up, down)."""
    h, i = shape["hidden_size"], shape["intermediate_size"]
    kv = shape["num_key_value_heads"] * h // shape["num_attention_heads"]
    return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]


def weight_bytes(shape: dict) -> float:
    """The 4-bit base: NF4 linears at 0.5 byte per weight + double-quantised absmax (1 byte per 64
    weights + 4 bytes per 256 blocks), bf16 embedding and (untied) LM head, biases and norms."""
    layer = sum(a * b for a, b in linear_shapes(shape))
    nf4 = layer * shape["num_hidden_layers"] * (0.5 + 1 / 64 + 4 / (64 * 256))
    embed = shape["vocab_size"] * shape["hidden_size"] * 2 * (1 if shape["tie_word_embeddings"] else 2)
    return nf4 + embed + shape["num_hidden_layers"] * 8 * shape["hidden_size"] * 2


def lora_bytes(shape: dict, r: int, adapters: int = 3) -> float:
    """fp32 LoRA weights of every adapter, AdamW's two moments for each (allocated from the first
    step on) and the gradient of the one being trained."""
    per = r * sum(a + b for a, b in linear_shapes(shape)) * shape["num_hidden_layers"] * 4
    return per * (adapters * 3 + 1)


def kv_per_token(shape: dict) -> float:
    """bf16 K and V of every layer for one token."""
    head = shape["hidden_size"] // shape["num_attention_heads"]
    return 2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * head * 2


def layer_bytes(shape: dict, tokens: int, lora: bool) -> float:
    """One decoder layer's no-grad transient over `tokens` tokens, bf16: at the MLP's peak 3
    [tokens, intermediate] tensors (act(gate), up, their product) and 2 more with a bf16 LoRA on
    up_proj (its output and its scaled copy); 6 [tokens, hidden] (residual, norm, q, attention out)."""
    return tokens * ((5 if lora else 3) * shape["intermediate_size"] + 6 * shape["hidden_size"]) * 2


def mask_bytes(rows: int, length: int) -> float:
    """The [rows, 1, length, length] boolean attention mask of a left-padded batch."""
    return rows * length * length


def rows_for(prompt: int, s: Settings, cap: int) -> int:
    """Rows in one generate chunk: at most `cap`, and rows x prompt within --prefill-tokens."""
    return max(1, min(cap, s.prefill_tokens // prompt)) if s.prefill_tokens else cap


def generate_peaks(shape: dict, prompt: int, new: int, rows: int, lora: bool) -> tuple[float, float]:
    """(prefill, decode) peak above the resident memory, for one chunk of `rows` prompts of `prompt`
    tokens: prefill = its KV cache + one layer's transient + the mask; decode = the KV cache at
    prompt + new, plus one layer's K and V copied by the cache's torch.cat, plus fp32 logits x 3."""
    tokens = rows * prompt
    prefill = tokens * kv_per_token(shape) + layer_bytes(shape, tokens, lora) + mask_bytes(rows, prompt)
    kv = rows * (prompt + new) * kv_per_token(shape)
    decode = kv * (1 + 1 / shape["num_hidden_layers"]) + rows * shape["vocab_size"] * 4 * 3 \
        + mask_bytes(rows, 1) * (prompt + new)
    return prefill, decode


def update_peak(shape: dict, prompt: int, new: int, micro: int) -> float:
    """The gradient pass over one micro-batch of the longest actions, with gradient checkpointing:
    every layer's bf16 input kept; one layer recomputed with its autograd tensors and their gradients
    (~ 2 x (4 [T, intermediate] + 8 [T, hidden])); bf16 logits of the action positions and their
    gradient; the mask. The no-grad old/ref passes over the same rows peak lower (layer_bytes)."""
    T, h, i = micro * (prompt + new), shape["hidden_size"], shape["intermediate_size"]
    saved = T * h * 2 * shape["num_hidden_layers"]
    layer = T * (4 * i + 8 * h) * 2 * 2
    logits = micro * (new + 1) * shape["vocab_size"] * 2 * 2
    return saved + layer + logits + mask_bytes(micro, prompt + new)


def phase_peaks(shape: dict, s: Settings) -> dict[str, float]:
    """Peak memory per phase in GiB (resident weights, adapters and optimiser included; CUDA
    context and allocator slack added in `card_peaks`). The rollout's worst chunk is the one with
    the longest prompt (the executor's second turn) for prefill, and the most tokens for decode."""
    L, resident = lengths(s.max_new_tokens), weight_bytes(shape) + lora_bytes(shape, s.lora_r)
    rollout = [generate_peaks(shape, L[k], s.max_new_tokens, rows_for(L[k], s, min(s.gen_batch_size, s.episodes)),
                              lora=True) for k in ("solver", "executor1", "executor2", "verifier")]
    crows = rows_for(L["coach"], s, s.coach_batch_size)
    coach = generate_peaks(shape, L["coach"], s.coach_max_new_tokens if s.coach == "generate" else 0, crows, lora=False)
    out = {"weights": resident, "prefill": resident + max(p for p, _ in rollout),
           "decode": resident + max(d for _, d in rollout), "coach": resident + max(coach),
           "update": resident + update_peak(shape, L["executor2"], s.max_new_tokens, s.micro_batch_size)}
    return {k: v / GIB for k, v in out.items()}


def card_peaks(shape: dict, s: Settings) -> dict[str, float]:
    """What the card must hold per phase, GiB: the allocator's reserve (peak x (1 + SLACK)) + the context."""
    return {k: v * (1 + SLACK) + CONTEXT_GIB for k, v in phase_peaks(shape, s).items()}


def fitting_settings(shape: dict, card_gib: float = CARD_GIB, base: Settings | None = None) -> Settings:
    """The largest --prefill-tokens (a power of two) and micro-batch that bring every phase's card
    peak within MARGIN x card_gib, starting from `base` (the defaults); None if no setting does."""
    base = base or Settings()
    for micro in (base.micro_batch_size, 2, 1):
        for budget in (2**k for k in range(17, 10, -1)):
            s = Settings(**{**vars(base), "prefill_tokens": budget, "micro_batch_size": micro})
            if max(card_peaks(shape, s).values()) <= MARGIN * card_gib:
                return s
    return None


def table(sizes=("1.5b", "7b"), card_gib: float = CARD_GIB) -> str:
    """docs/gpu.md's table: card peak per phase at the defaults, and the 7B at fitting settings."""
    from bench.sizes import REALISTIC
    from config import Config

    default = Settings.of(Config())
    rows = [(size, "train.py defaults", default) for size in sizes]
    rows += [(size, "fits: --prefill-tokens %d --micro-batch-size %d" % (f.prefill_tokens, f.micro_batch_size), f)
             for size in sizes if size != "1.5b" and (f := fitting_settings(REALISTIC[size], card_gib, default))
             and vars(f) != vars(default)]  # a model that fits at the defaults needs no second row
    lines = ["| model | settings | weights + adapters | rollout prefill | decode | coach | update | fits 24 GB |",
             "|---|---|---|---|---|---|---|---|"]
    for size, what, s in rows:
        p = card_peaks(REALISTIC[size], s)
        cells = [f"{p[k]:.1f}" for k in ("weights", "prefill", "decode", "coach", "update")]
        fits = "yes" if max(p.values()) <= card_gib else "no"
        lines.append(f"| {size} | {what} | " + " | ".join(cells) + f" | {fits} (peak {max(p.values()):.1f}) |")
    return "\n".join(lines) + (f"\n\nGiB, *estimated* (not measured): allocator peak x {1 + SLACK:g} + "
                              f"{CONTEXT_GIB:g} GiB CUDA context; resident weights, 3 adapters and their AdamW state "
                              "included in every phase.")


if __name__ == "__main__":
    print(table())
    print(f"\nprompt tokens at --max-new-tokens 1024: {lengths()}")
