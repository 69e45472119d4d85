"""The compute dtype (--dtype) and where it applies.

    auto: bf16 on a CUDA card that supports it (torch.cuda.is_bf16_supported) or on a CPU with
          AVX512-BF16 / AMX; fp16 on an older CUDA card (e.g. Turing); fp32 on any other CPU.

With bf16/fp16 the base weights are held in that dtype (or 4-bit with it as compute dtype), the
LoRA weights stay fp32 (the optimiser's master copy: peft upcasts adapters by default), and every
forward of the model runs under torch.autocast of the compute dtype (autocast_forward). Without
autocast, peft casts each layer's input to the adapter's fp32 and builds fp32 [tokens, out]
intermediates per layer (issue 29 item 1: ~6x the bf16 activation in up_proj). KL, advantages and
losses stay fp32: the log-probs leave the model through rl.token_logprobs, which upcasts.

fp16 training needs loss scaling (its range underflows small gradients): train.update_agent uses
torch.amp.GradScaler when the compute dtype is fp16.
"""
import functools
import types
from pathlib import Path

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """True on a CPU with native bf16 arithmetic: the avx512_bf16 or amx_bf16 flag (Linux
    /proc/cpuinfo), or torch reporting an AMX capability. Elsewhere bf16 is emulated: slower than fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags = set(cpuinfo.split())
    if flags & {"avx512_bf16", "amx_bf16"}:
        return True
    try:
        return "AMX" in torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 -- an older torch without the query: no native bf16 known
        return False


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """--dtype and the device ("cpu", "cuda", "cuda:N") -> the compute dtype."""
    if name != "auto":
        return DTYPES[name]
    if str(device).startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


def autocast_forward(model, dtype: torch.dtype):
    """Make every forward of `model` run under torch.autocast(dtype) (no-op for fp32); returns model.

    Set as an instance attribute (a method bound to the model: a deep copy rebinds it to the copy),
    so it also holds when peft's LoraModel calls model.forward directly, for the coach and the KL
    reference (adapters off) and inside TRL. The backward pass replays the forward's dtypes;
    gradient checkpointing's recompute restores the autocast state."""
    if dtype == torch.float32 or getattr(model, "_mappa_autocast", None) == dtype:
        return model

    @functools.wraps(type(model).forward)
    def forward(self, *args, **kwargs):
        with torch.autocast(self.device.type, dtype=self._mappa_autocast):
            return type(self).forward(self, *args, **kwargs)

    model._mappa_autocast = dtype
    model.forward = types.MethodType(forward, model)
    return model


def keep_lora_inputs(peft_model, base) -> int:
    """Under autocast, stop peft casting each LoRA layer's input up to the adapter's fp32 (a
    [tokens, in] fp32 copy per layer that autocast casts back down for the matmul anyway). Only
    when `base`'s forward is autocast (autocast_forward); returns the number of layers changed."""
    if getattr(base, "_mappa_autocast", None) is None:
        return 0
    layers = [m for m in peft_model.modules() if hasattr(m, "lora_A")]
    for m in layers:
        m.cast_input_dtype_enabled = False
    return len(layers)


def grad_scaler(dtype: torch.dtype, device: str):
    """A GradScaler for fp16 training (loss scaling), else None."""
    if dtype != torch.float16:
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def wants_checkpointing(cfg, device: str, model) -> bool:
    """--gradient-checkpointing, or its default: on with CUDA; on CPU off (recomputing is a third
    pass) unless one micro-batch's activations would take over half the RAM available now.
    Estimate: ~120 x hidden bytes per token and layer in 16-bit, twice that in fp32 (measured:
    a bf16 training pass of the 0.5B over 8 rows of ~200 tokens peaked ~2.5 MB per token above
    the model, bench.ratio), for micro_batch x (max_new_tokens + 1024 prompt tokens)."""
    if cfg.gradient_checkpointing is not None:
        return cfg.gradient_checkpointing
    if str(device).startswith("cuda"):
        return True
    c = model.config
    per_token = 120 * c.hidden_size * c.num_hidden_layers * (2 if resolve_dtype(cfg.dtype, device) == torch.float32 else 1)
    need = per_token * cfg.micro_batch_size * (cfg.max_new_tokens + 1024)
    try:
        avail = next(int(ln.split()[1]) * 1024 for ln in open("/proc/meminfo") if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration):  # not Linux: assume it fits
        return False
    return need > avail / 2
