"""Run untrusted, model-written Python safely enough for a week-long RL run.

Every ```python block an agent writes runs through `run_code` in a fresh process tree:

    trainer --Popen--> shim --fork--> init (pid 1 of a new pid namespace) --fork--> action

Isolation layers, outermost first, and why each exists:

1. Linux namespaces via unshare(2). A *user* namespace makes all of this work without root:
   inside, we are "root" mapped onto the trainer's own uid, allowed to build the rest.
   - pid ns: the action sees only its own processes and cannot signal the trainer
     (`os.getppid()` is our init, which ignores signals sent from inside); when init exits the
     kernel SIGKILLs every process left, so setsid() or double forks cannot escape.
   - net ns: only a loopback device that is down, so every connect() fails.
   - mount ns: / read-only (recursively), the workdir bound back read-write, /tmp and /dev/shm
     fresh size-capped tmpfs, a /proc showing only the action, a /dev with only null, zero,
     full, random, urandom; the trainer's $HOME (tokens, keys) and /run (docker.sock...)
     hidden except what Python itself needs; /etc/shadow hidden.
2. rlimits on the action: RLIMIT_AS (memory), RLIMIT_FSIZE (file size), RLIMIT_NPROC
   (processes; Linux ignores it for uid 0, so the pid namespace also gets pid_max on Linux
   >= 6.14), RLIMIT_CORE=0.
3. An allow-listed environment (no tokens), BLAS/OpenMP pools pinned to 1 thread, stdin from
   /dev/null (input() raises EOFError at once instead of hanging).
4. The trainer reads stdout/stderr incrementally (head + tail kept, never the whole stream),
   enforces the wall-clock timeout and holds the shim's stdin as a *lifeline*: closing it
   (timeout, end of action, trainer death) makes the shim SIGKILL init, i.e. the namespace.

Without namespaces (`sandbox_features()["mode"] == "plain"`) the fallback is rlimits, a killed
process group and a /proc scan killing every process carrying this run's environment marker.
SANDBOX.md lists what is and is not isolated in each mode.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

# <linux/sched.h>, <linux/mount.h>, <linux/fcntl.h>
NS_FLAGS = {"user": 0x10000000, "mnt": 0x20000, "pid": 0x20000000, "net": 0x40000000}
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 4096, 16384, 1 << 18
SYS_MOUNT_SETATTR, MOUNT_ATTR_RDONLY, AT_RECURSIVE, AT_FDCWD = 442, 1, 0x8000, -100
SECRET_FILES = ("/etc/shadow", "/etc/gshadow")  # readable by root, hidden from the action
DEV_NODES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "RAYON_NUM_THREADS")
_MEMORY_RE = re.compile(r"MemoryError|Unable to allocate|bad_alloc|Cannot allocate memory|out of memory")
_MODE_OVERRIDE: str | None = None  # tests set "plain" to exercise the fallback on any machine


@dataclass
class Limits:
    timeout_s: float = 10.0          # wall clock for the whole action, imports included
    memory_mb: int = 1024            # RLIMIT_AS per process (virtual address space)
    max_output_chars: int = 20_000   # per stream kept (head + tail); beyond -> truncated=True
    max_file_mb: int = 64            # RLIMIT_FSIZE; also the size of the private /tmp, /dev/shm
    max_procs: int = 64              # processes + threads (RLIMIT_NPROC, pid-namespace pid_max)
    network: bool = False            # False: private network namespace without a usable device


@dataclass
class ExecResult:
    status: str              # "ok" | "error" | "timeout" | "killed"
    stdout: str
    stderr: str
    returncode: int | None   # exit code; -N if killed by signal N; None on timeout/sandbox failure
    truncated: bool
    message: str             # plain reason, e.g. "memory limit (1024 MB) exceeded"
    seconds: float

    def as_tool_output(self, max_chars: int = 2000) -> str:
        """Text for the agent/coach: stdout, '[stderr]' + stderr, then status lines.
        The body is cut to fit max_chars keeping head and tail; status lines always stay."""
        body = self.stdout
        if self.stderr:
            body += ("\n" if body and not body.endswith("\n") else "") + "[stderr]\n" + self.stderr
        tag = {"timeout": f"[Execution timeout: {self.message}]", "killed": f"[Killed: {self.message}]",
               "error": f"[Exit code {self.returncode}]" if self.returncode is not None
               else f"[Error: {self.message}]"}.get(self.status)
        lines = (["[No output]"] if not body.strip() else []) + ([tag] if tag else []) + \
            (["[Output truncated]"] if self.truncated else [])
        status = "\n".join(lines)
        room = max(0, max_chars - len(status) - 1)
        if len(body) > room:
            marker = f"\n...[{len(body) - room} chars cut]...\n"
            keep = max(0, room - len(marker))
            body = body[: keep // 2] + marker + body[len(body) - (keep - keep // 2):]
        if body.strip() and status and not body.endswith("\n"):
            body += "\n"
        return ((body if body.strip() else "") + status)[:max_chars]


_FENCE = re.compile(r"^( *)```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```[ \t]*$|\Z)", re.M | re.S)


def extract_code_blocks(text: str) -> list[str]:
    """Every ```python / ```py / ```python3 fenced block of `text`, in order.

    Other fenced blocks are skipped; an unclosed final fence runs to the end of the text; a
    block may close on its last code line ("x = 1```"); the indentation of an indented fence
    (inside a list) is removed from its lines, as CommonMark does."""
    blocks = []
    for m in _FENCE.finditer(text):
        if m.group(2).lower() in ("python", "py", "python3"):
            n = len(m.group(1))
            lines = [ln[min(n, len(ln) - len(ln.lstrip(" "))):] for ln in m.group(3).rstrip().split("\n")]
            blocks.append("\n".join(lines))
    return blocks


@contextmanager
def workspace(prefix: str = "mappa-") -> Iterator[Path]:
    """A fresh temporary folder, always removed afterwards, even if the action chmod'ed things."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():  # an action made directories unreadable: restore owner rwx, retry
            with suppress(OSError):
                os.chmod(path, 0o700)
            for root, dirs, _ in os.walk(path):  # top-down: a dir is fixed before it is entered
                for d in dirs:
                    with suppress(OSError):
                        os.chmod(os.path.join(root, d), 0o700, follow_symlinks=False)
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------- trainer side
_FEATURES: dict | None = None
_FEATURES_LOCK = threading.Lock()


def sandbox_features() -> dict:
    """Which isolation layers work here: detected once by a probe action, then cached.
    E.g. {"mode": "namespaces", "netns": True, "readonly_root": True, "pid_max": 365, ...}."""
    global _FEATURES
    with _FEATURES_LOCK:
        if _FEATURES is None:
            with workspace("mappa-probe-") as wd:
                res, status = _run(["auto"], "pass", wd, Limits(timeout_s=30))
            feats = status.get("features")
            if feats is None or "error" in status:  # namespaces exist but setup failed: say so
                import warnings
                why = status.get("error") or f"probe {res.status}: {res.message} {res.stderr[-300:]}"
                warnings.warn(f"sandbox: namespace setup failed, using the weaker plain mode: {why}")
                feats = {"ns": None, "error": why}
            _FEATURES = {**feats, "mode": "namespaces" if feats.get("ns") else "plain",
                         "root": os.geteuid() == 0}
    return _FEATURES


def run_code(code: str, workdir: str | os.PathLike, limits: Limits = Limits()) -> ExecResult:
    """Run `code` with sys.executable, cwd `workdir` (its files persist), under `limits`."""
    wd = Path(workdir).resolve()
    if not wd.is_dir():
        raise ValueError(f"run_code: workdir {str(wd)!r} is not a directory; create it first (see workspace())")
    ns = sandbox_features()["ns"] if _MODE_OVERRIDE is None else None
    return _run([n for n in ns or [] if not (limits.network and n == "net")], code, wd, limits)[0]


def run_many(jobs: list[tuple[str, str | os.PathLike]], limits: Limits = Limits(),
             max_workers: int | None = None) -> list[ExecResult]:
    """run_code over (code, workdir) jobs in parallel threads (default os.cpu_count()), in job order."""
    from concurrent.futures import ThreadPoolExecutor
    sandbox_features()
    with ThreadPoolExecutor(max_workers=max_workers or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda job: run_code(job[0], job[1], limits), jobs))


def bench_sandbox(n: int = 32, n_timeouts: int = 4, timeout_s: float = 2.0) -> dict:
    """Wall time of n actions (n_timeouts of them loop forever), sequential vs run_many."""
    lim = Limits(timeout_s=timeout_s)
    codes = ["while True: pass"] * n_timeouts + ["print(sum(range(10**5)))"] * (n - n_timeouts)
    with workspace() as wd:
        feats = sandbox_features()
        t0 = time.monotonic()
        seq = [run_code(c, wd, lim) for c in codes]
        t1 = time.monotonic()
        par = run_many([(c, wd) for c in codes], lim)
        t2 = time.monotonic()
        run_many([(c, wd) for c in codes], lim, max_workers=4 * (os.cpu_count() or 1))
        t3 = time.monotonic()
    if [r.status for r in seq] != [r.status for r in par]:
        raise RuntimeError("bench_sandbox: sequential and parallel runs disagree")
    quick = [r.seconds for r in seq if r.status == "ok"]
    return {"n": n, "n_timeouts": n_timeouts, "timeout_s": timeout_s, "workers": os.cpu_count(),
            "mode": feats["mode"], "sequential_s": round(t1 - t0, 2), "parallel_s": round(t2 - t1, 2),
            "speedup": round((t1 - t0) / max(t2 - t1, 1e-9), 2), "parallel_4x_workers_s": round(t3 - t2, 2),
            "quick_action_ms": round(1000 * sum(quick) / max(1, len(quick)), 1)}


def _env(wd: Path, run_id: str) -> dict:
    """Allow-listed environment: none of the trainer's variables (tokens!) reach the action."""
    import site
    env = {"PATH": os.pathsep.join([os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"]),
           "HOME": str(wd), "LANG": os.environ.get("LANG", "C.UTF-8"), "PYTHONIOENCODING": "utf-8",
           "PYTHONUNBUFFERED": "1",  # output printed before a timeout kill is not lost in a buffer
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUSERBASE": site.getuserbase(), "MPLBACKEND": "Agg",
           "CUDA_VISIBLE_DEVICES": "",  # the GPU belongs to the trainer
           "MAPPA_SANDBOX_RUN": run_id}  # marker to find escaped processes in plain mode
    return {**env, **{k: "1" for k in THREAD_VARS}}


def _overlays(network: bool) -> list[list]:
    """[dir, keep, private] per directory that the action sees as an empty tmpfs: private ones
    (/tmp, /dev/shm) stay writable, hidden ones ($HOME: tokens, keys; /run: docker.sock...) are
    made read-only. `keep` lists the top-level entries Python itself needs (interpreter,
    site-packages, sys.path; the DNS config with network), bound back in. Parents first."""
    import site
    needed = [Path(p).resolve() for p in filter(None, [sys.prefix, sys.base_prefix, sys.executable,
                                                         *site.getsitepackages(), *sys.path])]
    if network:
        needed.append(Path("/etc/resolv.conf").resolve())
    dirs = {str(Path.home().resolve()): False, "/run": False, "/tmp": True, "/dev/shm": True}
    out = []
    for d, private in sorted((os.path.realpath(d), p) for d, p in dirs.items()):
        dp = Path(d)
        if d == "/" or not dp.is_dir() or dp in needed:
            continue  # e.g. Python installed right in $HOME: cannot hide it
        keep = {str(dp / p.relative_to(dp).parts[0]) for p in needed if dp in p.parents and p.exists()}
        out.append([d, sorted(keep), private])
    return out


class _Capture:
    """Keeps the first and the last cap/2 bytes of a stream and counts the rest."""

    def __init__(self, cap: int):
        self.half, self.head, self.tail, self.total = max(1, cap // 2), bytearray(), bytearray(), 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        self.head += data[:max(0, room)]
        self.tail += data[max(0, room):]
        if len(self.tail) > 4 * self.half:  # amortised trim: memory stays O(cap)
            del self.tail[: len(self.tail) - self.half]

    def text(self) -> tuple[str, bool]:
        tail = bytes(self.tail[-self.half:]) if self.total > len(self.head) else b""
        cut = self.total - len(self.head) - len(tail)
        mid = f"\n...[{cut} bytes omitted]...\n".encode() if cut > 0 else b""
        return (bytes(self.head) + mid + tail).decode("utf-8", "replace"), cut > 0


def _run(ns: list[str], code: str, wd: Path, limits: Limits) -> tuple[ExecResult, dict]:
    """Start the shim, send it the code, pump output until the end or timeout, classify."""
    run_id, (status_r, status_w) = uuid.uuid4().hex, os.pipe()
    cfg = {"ns": ns, "uid": os.getuid(), "gid": os.getgid(), "wd": str(wd), "limits": asdict(limits),
           "overlays": _overlays(limits.network), "nproc": _nproc_limit(ns, limits),
           "status_fd": status_w}  # pass_fds keeps this fd number in the child
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), json.dumps(cfg)], cwd=wd,
                            env=_env(wd, run_id), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, pass_fds=(status_w,), start_new_session=True)
    os.close(status_w)
    payload = code.encode("utf-8", "surrogatepass")
    with suppress(BrokenPipeError):  # length-prefixed code; stdin then stays open as the lifeline
        proc.stdin.write(len(payload).to_bytes(8, "big") + payload)
        proc.stdin.flush()
    out, err = _Capture(limits.max_output_chars), _Capture(limits.max_output_chars)
    try:
        raw, timed_out = _pump(proc, status_r, out, err, start + limits.timeout_s)
    finally:  # even on KeyboardInterrupt in the trainer: no action is left running
        with suppress(OSError):
            proc.stdin.close()  # lifeline (already cut by _pump on the normal path)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # shim stuck (never seen): kill its group, not yet reaped
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if not ns:
            _kill_marked(run_id)
        for fd in (proc.stdout, proc.stderr, status_r):
            fd.close() if hasattr(fd, "close") else os.close(fd)
    status = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        with suppress(ValueError):
            status.update(json.loads(line))
    (so, t1), (se, t2) = out.text(), err.text()
    return _classify(status, timed_out, so, se, t1 or t2, limits, time.monotonic() - start), status


def _pump(proc, status_r: int, out: _Capture, err: _Capture, deadline: float) -> tuple[bytes, bool]:
    """Read stdout/stderr/status until EOF. At the timeout, or once init reported the end of
    the action, cut the lifeline and drain for at most one more second."""
    sel, sinks = selectors.DefaultSelector(), {proc.stdout.fileno(): out.add, proc.stderr.fileno(): err.add}
    status, timed_out, grace_end = bytearray(), False, None
    sinks[status_r] = lambda d: status.extend(d[: (1 << 16) - len(status)])
    for fd in sinks:
        sel.register(fd, selectors.EVENT_READ)
        with suppress(OSError):  # 1 MiB pipes: 16x fewer wake-ups when an action floods output
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    while sinks:
        now = time.monotonic()
        # the end is init's "end" report (or its death), not EOF: a process forked elsewhere in
        # the trainer may have inherited a pipe end and hold it open
        ended = status_r not in sinks or b'"end"' in status
        if grace_end is None and (now >= deadline or ended):
            timed_out = not ended
            with suppress(OSError):  # "K" (and EOF) = lifeline cut: the shim SIGKILLs the namespace
                proc.stdin.write(b"K")
                proc.stdin.flush()
            with suppress(OSError):
                proc.stdin.close()
            grace_end = now + 1.0
        if grace_end is not None and now >= grace_end:
            break  # plain mode: an escaped process still holds a pipe; _kill_marked follows
        for key, _ in sel.select(timeout=max(0.0, (grace_end or deadline) - now)):
            data = os.read(key.fd, 1 << 20)
            if data:
                sinks[key.fd](data)
            else:
                sel.unregister(key.fd)
                del sinks[key.fd]
    sel.close()
    return bytes(status), timed_out


def _classify(st: dict, timed_out: bool, so: str, se: str, trunc: bool, lim: Limits, secs: float) -> ExecResult:
    """Turn init's report ({"exit": n} / {"signal": n} / {"error": ...}) into an ExecResult."""
    res = lambda status, rc, msg: ExecResult(status, so, se, rc, trunc, msg, round(secs, 3))
    tail, last = se[-3000:], (se.strip().splitlines() or [""])[-1][:200]
    if timed_out:
        return res("timeout", None, f"time limit ({lim.timeout_s:g} s) exceeded")
    if "error" in st:
        return res("error", None, f"sandbox failed: {st['error']}")
    if "exit" not in st and "signal" not in st:
        return res("killed", None, "the sandbox supervisor was killed before the action finished")
    rc = st.get("exit", -st.get("signal", 0))
    if rc == 0:
        return res("ok", 0, "exited normally")
    if _MEMORY_RE.search(tail):
        return res("killed", rc, f"memory limit ({lim.memory_mb} MB) exceeded")
    if "File too large" in tail or rc == -signal.SIGXFSZ:
        return res("killed", rc, f"file size limit ({lim.max_file_mb} MB) exceeded")
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(-rc)
        return res("killed", rc, "crashed: segmentation fault (SIGSEGV), often recursion too deep"
                   if name == "SIGSEGV" else f"terminated by signal {name}")
    if "Resource temporarily unavailable" in tail and "fork" in tail:
        return res("error", rc, f"process limit ({lim.max_procs}) reached: {last}")
    return res("error", rc, f"exit code {rc}" + (f": {last}" if last else ""))


def _nproc_limit(ns: list[str], limits: Limits) -> int | None:
    """RLIMIT_NPROC for the action. Inside a user namespace it counts only the action's own
    processes; outside one it counts every process of the uid, so add those already running."""
    if ns:
        return limits.max_procs
    if os.geteuid() == 0:
        return None  # Linux does not enforce it for root
    uid, n = os.getuid(), 0
    for p in Path("/proc").glob("[0-9]*/task/*"):
        with suppress(OSError):
            n += p.stat().st_uid == uid
    return n + limits.max_procs


def _kill_marked(run_id: str) -> None:
    """Plain mode: SIGKILL every process whose environment carries this run's marker (catches
    setsid / double-forked escapees); repeat while a fork bomb is still spawning."""
    marker = f"MAPPA_SANDBOX_RUN={run_id}".encode()
    for _ in range(50):
        found = False
        for env in Path("/proc").glob("[0-9]*/environ"):
            with suppress(OSError):
                if marker in env.read_bytes().split(b"\0"):
                    os.kill(int(env.parent.name), signal.SIGKILL)
                    found = True
        if not found:
            return
        time.sleep(0.02)


# ---------------------------------------------------------------------------- sandbox side
def _shim_main(cfg: dict) -> None:
    """The trainer's direct child: enter namespaces, fork init, SIGKILL it when the trainer
    says so ("K"), closes the lifeline (e.g. dies), or misses the deadline by 5 s."""
    import select
    status_fd, feats = cfg["status_fd"], {"ns": None}
    n = int.from_bytes(sys.stdin.buffer.read(8), "big")
    src = sys.stdin.buffer.read(n)  # BufferedReader.read(n) blocks until n bytes or EOF
    if len(src) != n:
        os._exit(1)  # the trainer died while sending
    probe = cfg["ns"] == ["auto"]
    for ns in ([["user", "mnt", "pid", "net"], ["user", "mnt", "pid"]] if probe else [cfg["ns"]] if cfg["ns"] else []):
        try:
            _unshare(ns, cfg["uid"], cfg["gid"])
            feats.update(ns=ns, netns="net" in ns)
            break
        except OSError as e:
            if not probe:
                _report(status_fd, {"end": 1, "error": f"unshare({','.join(ns)}) failed: {e}"})
                os._exit(1)
    init = os.fork()
    if init == 0:
        _init_main(cfg, feats, src)
    os.close(status_fd)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1), os.dup2(devnull, 2)  # so the trainer sees EOF when the action ends
    try:
        waitables = [0, os.pidfd_open(init)]
    except (AttributeError, OSError):  # Linux < 5.3: poll instead
        waitables = [0]
    backstop = time.monotonic() + cfg["limits"]["timeout_s"] + 5  # in case the trainer hangs
    while True:
        ready = select.select(waitables, [], [], 0.5 if len(waitables) > 1 else 0.05)[0]
        if os.waitpid(init, os.WNOHANG)[0]:
            os._exit(0)
        if 0 in ready and os.read(0, 1) in (b"", b"K") or time.monotonic() > backstop:
            with suppress(ProcessLookupError):  # init's own session: the action and its children
                os.killpg(init, signal.SIGKILL)
            os.kill(init, signal.SIGKILL)  # init is not reaped yet, so its pid cannot be reused
            os.waitpid(init, 0)
            os._exit(0)


def _report(fd: int, obj: dict) -> None:
    os.write(fd, (json.dumps(obj) + "\n").encode())


def _libc_call(name: str, *args) -> None:
    """Call a libc function, raising OSError(errno) when it returns non-zero."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{name}{args[:2]}: {os.strerror(e)}")


def _unshare(ns: list[str], uid: int, gid: int) -> None:
    """unshare(2) the namespaces and map root inside onto our own uid/gid outside."""
    _libc_call("unshare", sum(NS_FLAGS[n] for n in ns))
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _mount(src, dst: str, fstype=None, flags: int = 0, data=None) -> None:
    import ctypes
    b = lambda s: s.encode() if isinstance(s, str) else s
    _libc_call("mount", b(src), b(dst), b(fstype), ctypes.c_ulong(flags), b(data))


def _set_readonly(path: str, readonly: bool, recursive: bool) -> None:
    """mount_setattr(2) (Linux >= 5.12): set or clear read-only on path's mount (or subtree)."""
    import ctypes

    class MountAttr(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns_fd")]
    attr = MountAttr(MOUNT_ATTR_RDONLY * readonly, MOUNT_ATTR_RDONLY * (not readonly), 0, 0)
    # syscall(2) is variadic: pass every argument at full register width
    _libc_call("syscall", ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_long(AT_FDCWD), path.encode(),
               ctypes.c_ulong(AT_RECURSIVE * recursive), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))


def _setup_fs(cfg: dict, feats: dict) -> None:
    """In the new mount ns, as init: fresh /proc, read-only /, a minimal /dev, the overlays
    (private /tmp and /dev/shm; $HOME and /run hidden), workdir bound back read-write. The
    optional steps are best effort and `feats` records what worked; the workdir must succeed."""
    wd, lim, overlays = cfg["wd"], cfg["limits"], cfg["overlays"]
    wanted = DEV_NODES + tuple(k for _, keep, _ in overlays for k in keep) + (wd,)
    fds = {p: os.open(p, os.O_PATH) for p in wanted if os.path.exists(p)}  # before hiding anything
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates to the host
    steps = [("proc", lambda: _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)),
             ("pid_max", lambda: _set_pid_max(lim["max_procs"])),
             ("readonly_root", lambda: _set_readonly("/", True, True)),
             ("minimal_dev", lambda: _minimal_dev(fds))]
    steps += [("hidden_secrets", lambda f=f: _mount("/dev/null", f, None, MS_BIND))
              for f in SECRET_FILES if os.path.isfile(f)]
    for d, keep, private in overlays:
        opts = f"size={lim['max_file_mb']}m,mode=1777" if private else "size=1m,mode=755"
        steps.append(("private_tmp" if private else "hidden", lambda d=d, k=keep, o=opts: _overlay(d, k, o, fds)))
    for name, step in steps:
        try:
            r = step()
            feats[name] = feats.get(name, True) and (r if r is not None else True)
        except OSError:
            feats[name] = False
    _bind(wd, fds)
    for path, ro in [(d, True) for d, _, private in overlays if not private] + [(wd, False)]:
        with suppress(OSError):  # e.g. a workdir on a file system the host mounted read-only
            if feats.get("readonly_root"):
                _set_readonly(path, ro, False)
    os.chdir(wd)  # the old cwd still points into the read-only / hidden mount


def _overlay(d: str, keep: list[str], opts: str, fds: dict) -> None:
    """An empty tmpfs over directory d, with the `keep` entries bound back in."""
    if os.path.isdir(d):  # else already hidden by an outer overlay
        _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, opts)
        for k in keep:
            _bind(k, fds)


def _bind(path: str, fds: dict) -> None:
    """Bind the file/dir held open as fds[path] (O_PATH, taken before hiding) back at path."""
    fd = fds.pop(path, None)
    if fd is None:
        return
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path) if os.path.isdir(f"/proc/self/fd/{fd}") else open(path, "w").close()
    _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
    os.close(fd)


def _minimal_dev(fds: dict) -> None:
    """/dev with only null, zero, full, random, urandom (no disks, GPUs, kvm, tty...)."""
    _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID, "size=64k,mode=755")
    for node in DEV_NODES:
        _bind(node, fds)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"/dev/{name}")
    os.mkdir("/dev/shm", 0o1777)


def _set_pid_max(max_procs: int):
    """Cap the pid namespace at max_procs pids (threads count too), even for root, for whom
    RLIMIT_NPROC is ignored. Needs Linux >= 6.14 (commit "pid: allow pid_max to be set per pid
    namespace"); older kernels have one *global* pid_max we must never touch: hence the check.
    After a wrap the kernel skips pids < 300 (RESERVED_PIDS), so start there (ns_last_pid)."""
    if tuple(int(x) for x in re.findall(r"\d+", platform.release())[:2]) < (6, 14):
        return False
    for name, value in (("pid_max", 301 + max_procs), ("ns_last_pid", 300)):
        with open(f"/proc/sys/kernel/{name}", "w") as f:
            f.write(str(value))
    return 301 + max_procs


def _init_main(cfg: dict, feats: dict, src: bytes) -> None:
    """Init: set up the filesystem, fork the action, reap every orphan, report how it ended."""
    import ctypes
    status_fd = cfg["status_fd"]
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # pid 1 ignores SIG_DFL signals sent from inside
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # drop the lifeline; stdin is /dev/null
    ctypes.CDLL(None).prctl(1, ctypes.c_ulong(signal.SIGKILL))  # PR_SET_PDEATHSIG: die with the shim
    if feats["ns"]:
        try:
            _setup_fs(cfg, feats)
        except OSError as e:
            _report(status_fd, {"end": 1, "error": f"filesystem setup failed: {e}"})
            os._exit(1)
    _report(status_fd, {"features": feats})
    os.setsid()  # own session: kill(0, sig) from the action cannot reach the shim
    action = os.fork()
    if action == 0:
        _action_main(cfg, src)
    while True:  # we are pid 1: orphans are ours to reap
        pid, st = os.wait()
        if pid == action:
            break
    how = {"signal": os.WTERMSIG(st)} if os.WIFSIGNALED(st) else {"exit": os.WEXITSTATUS(st)}
    _report(status_fd, {"end": 1, **how})
    os._exit(0)  # pid 1 exiting SIGKILLs every process still left in the namespace


def _action_main(cfg: dict, src: bytes) -> None:
    """The action: rlimits, a fresh __main__, run the code; leaves via SystemExit so the
    interpreter flushes output, joins threads and runs atexit as for `python -c`."""
    import builtins, linecache, resource, traceback, types  # noqa: E401
    os.close(cfg["status_fd"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    lim, mb = cfg["limits"], 1024 * 1024
    for res, value in ((resource.RLIMIT_AS, lim["memory_mb"] * mb), (resource.RLIMIT_FSIZE, lim["max_file_mb"] * mb),
                       (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, cfg["nproc"])):
        hard = resource.getrlimit(res)[1]
        if value is not None:  # never above the hard limit we inherited (raising it is refused)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(res, (value, value))
    sys.argv, sys.path[0] = ["<action>"], ""  # like `python -c`: cwd importable, not our folder
    text = src.decode("utf-8", "replace")
    linecache.cache["<action>"] = (len(text), None, text.splitlines(True), "<action>")  # source in tracebacks
    main = types.ModuleType("__main__")  # fresh module, so pickle (multiprocessing) finds functions
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    try:
        code = compile(text, "<action>", "exec")
    except (SyntaxError, ValueError) as e:
        traceback.print_exception(type(e), e, None)
        sys.exit(1)
    try:
        exec(code, main.__dict__)
    except SystemExit:
        raise
    except BaseException as e:
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # without our frame
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":  # the shim: `python sandbox.py CONFIG_JSON`, started by _run()
    _shim_main(json.loads(sys.argv[1]))
