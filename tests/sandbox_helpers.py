"""What the sandbox tests share: a workspace prefix, process probes, what this machine allows, and
the fixtures that check nothing is left behind."""
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import sandbox
from sandbox import Limits, workspace

PREFIX = f"mappa-test-{os.getpid()}-"
FAST = Limits(timeout_s=1.5)


def _pid_alive(pid: int) -> bool:
    """Running, i.e. neither gone nor a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _procs_with(token: str) -> list[int]:
    """Live processes whose command line contains token (a sandbox's JSON config names its workdir)."""
    found = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if token.encode() in (d / "cmdline").read_bytes() and _pid_alive(int(d.name)):
                found.append(int(d.name))
        except OSError:
            pass
    return found


def _children() -> list[str]:
    """'pid state' of every direct child process of this test process."""
    out = []
    for st in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = st.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            out.append(f"{st.parent.name} {fields[0]}")
    return out


@pytest.fixture(scope="module", autouse=True)
def no_leftovers():
    """After each module that imports it: no workspace folder, no sandbox process, no (zombie) child left."""
    yield
    left = list(Path(tempfile.gettempdir()).glob(PREFIX + "*")) + list(Path("/var/tmp").glob(PREFIX + "*"))
    assert not left, f"temp folders left behind: {left}"
    assert not _procs_with(PREFIX), "sandbox processes outlived their action"
    assert not _children(), f"child processes left: {_children()}"


@pytest.fixture
def wd():
    with workspace(PREFIX) as path:
        yield path


def _unshare_works(*names: str) -> bool:
    """Independently of the sandbox package: may a fresh process unshare these namespaces here?"""
    flags = {"user": 0x10000000, "mnt": 0x20000, "pid": 0x20000000, "net": 0x40000000}
    code = f"import ctypes, sys; sys.exit(ctypes.CDLL(None).unshare({sum(flags[n] for n in names)}) != 0)"
    return subprocess.run([sys.executable, "-c", code]).returncode == 0


NS_HERE = _unshare_works("user", "mnt", "pid")  # what this machine allows decides each branch
NETNS_HERE = _unshare_works("user", "mnt", "pid", "net")
NEW_KERNEL = tuple(int(x) for x in re.findall(r"\d+", platform.release())[:2]) >= (6, 14)


@pytest.fixture(scope="session")
def feats():
    return sandbox.sandbox_features()

