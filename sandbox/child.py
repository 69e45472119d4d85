"""The sandbox side of the sandbox package: everything that runs in the processes it starts.

sandbox/__init__.py (its docstring explains the isolation layers) starts this file *by absolute
path*, `python /path/to/sandbox/child.py CONFIG_JSON`, with cwd = the workdir: it never depends on the
trainer's cwd or sys.path, and the shim's sys.path[0] is this file's folder, not the workdir, so
files an earlier action left there (a `json.py`...) cannot replace modules the shim imports.
Standard library only; it never imports the sandbox package.

- shim (`_shim_main`): reads the length-prefixed code from stdin, unshare(2)s the namespaces,
  forks init, then watches the lifeline (stdin) and SIGKILLs init when it is cut.
- init (`_init_main`): builds the file system view (`_setup_fs`), forks the action, reaps
  orphans, and reports features and how the action ended as JSON lines on the status fd.
- action (`_action_main`): rlimits, a fresh __main__, runs the code like `python -c`.
"""
from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import select
import signal
import sys
import time
from contextlib import suppress

# <linux/sched.h>, <linux/mount.h>, <linux/fcntl.h>
NS_FLAGS = {"user": 0x10000000, "mnt": 0x20000, "pid": 0x20000000, "net": 0x40000000}
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 4096, 16384, 1 << 18
SYS_MOUNT_SETATTR, MOUNT_ATTR_RDONLY, AT_RECURSIVE, AT_FDCWD = 442, 1, 0x8000, -100
SECRET_FILES = ("/etc/shadow", "/etc/gshadow")  # readable by root, hidden from the action
DEV_NODES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


def _shim_main(cfg: dict) -> None:
    """The trainer's direct child: enter namespaces, fork init, SIGKILL it when the trainer
    says so ("K"), closes the lifeline (e.g. dies), or misses the deadline by 5 s."""
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
    # opened before init exists: init shares this mount namespace and briefly hides /dev/null
    # while it builds the minimal /dev (a race that made the shim crash under load)
    devnull = os.open(os.devnull, os.O_RDWR)
    init = os.fork()
    if init == 0:
        os.close(devnull)
        _init_main(cfg, feats, src)
    os.close(status_fd)
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


def _init_main(cfg: dict, feats: dict, src: bytes) -> None:
    """Init: set up the filesystem, fork the action, reap every orphan, report how it ended."""
    status_fd = cfg["status_fd"]
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # pid 1 ignores SIG_DFL signals sent from inside
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # drop the lifeline; stdin is /dev/null
    ctypes.CDLL(None).prctl(1, ctypes.c_ulong(signal.SIGKILL))  # PR_SET_PDEATHSIG: die with the shim
    lockdown = _lockdown_module()  # loaded before _setup_fs hides the project it lives in
    if feats["ns"]:
        try:
            _setup_fs(cfg, feats)
        except OSError as e:
            _report(status_fd, {"end": 1, "error": f"filesystem setup failed: {e}"})
            os._exit(1)
    feats.update(lockdown.lock_down())  # from here on: no capability, no mount change
    if feats["ns"] and not (feats["caps_dropped"] and feats["no_new_privs"]):
        _report(status_fd, {"end": 1, "error": f"could not drop privileges: {feats}"})
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
    ctypes.CDLL(None).prctl(4, ctypes.c_ulong(1))  # PR_SET_DUMPABLE again (init stays not dumpable)
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


def _lockdown_module():
    """lockdown.py beside this file, loaded by path (this file never imports the sandbox package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("_mappa_lockdown", os.path.join(os.path.dirname(__file__), "lockdown.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(fd: int, obj: dict) -> None:
    os.write(fd, (json.dumps(obj) + "\n").encode())


def _libc_call(name: str, *args) -> None:
    """Call a libc function, raising OSError(errno) when it returns non-zero."""
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
    b = lambda s: s.encode() if isinstance(s, str) else s
    _libc_call("mount", b(src), b(dst), b(fstype), ctypes.c_ulong(flags), b(data))


def _set_readonly(path: str, readonly: bool, recursive: bool) -> None:
    """mount_setattr(2) (Linux >= 5.12): set or clear read-only on path's mount (or subtree)."""
    class MountAttr(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns_fd")]
    attr = MountAttr(MOUNT_ATTR_RDONLY * readonly, MOUNT_ATTR_RDONLY * (not readonly), 0, 0)
    # syscall(2) is variadic: pass every argument at full register width
    _libc_call("syscall", ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_long(AT_FDCWD), path.encode(),
               ctypes.c_ulong(AT_RECURSIVE * recursive), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))


if __name__ == "__main__":  # the shim, started by sandbox._run()
    _shim_main(json.loads(sys.argv[1]))
