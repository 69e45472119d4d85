"""The last step of sandbox setup, run by init before it forks the action (issue 15): after it,
nothing in the namespace can change mounts or namespaces, trace, or regain a privilege.

- not dumpable: init's /proc/1/{fd,mem} and ptrace need CAP_SYS_PTRACE over init's memory, which
  nothing in the sandbox holds, so an action cannot reach init's status pipe to forge its report;
- every capability dropped (bounding set first, so an execve as uid 0 regains none; securebits
  NOROOT locked; ambient cleared; then capset to zero): no mount, umount, mount_setattr, pivot_root,
  setns into anything, raw sockets, ... The mounts of the namespace are then effectively locked;
- no_new_privs: no setuid binary, no file capability, and the precondition of the filter below;
- a seccomp filter (x86_64 and aarch64) answering EPERM to the syscalls that change mounts or
  namespaces, trace or read/write other processes, load kernel code or keys, and io_uring (whose
  operations bypass the filter); clone with a CLONE_NEW* flag is refused and clone3 answers ENOSYS
  so glibc falls back to clone, whose flags the filter can read (as Docker's default profile does).
  A nested unprivileged user namespace -- the one thing an action could still create without
  capabilities -- is refused by it too.

Standard library only (ctypes): child.py imports this file by its folder, never the package.
Linux constants from <linux/prctl.h>, <linux/capability.h>, <linux/securebits.h>,
<linux/seccomp.h>, <linux/filter.h>, <linux/audit.h>.
"""
from __future__ import annotations

import ctypes
import platform

PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT = 4, 24, 28, 47
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, PR_CAP_AMBIENT_CLEAR_ALL = 38, 22, 2, 4
SECBITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20  # NOROOT(+LOCKED), NO_SETUID_FIXUP(+LOCKED), KEEP_CAPS_LOCKED
CAPABILITY_VERSION_3 = 0x20080522
RET_ALLOW, RET_ERRNO, EPERM, ENOSYS = 0x7FFF0000, 0x00050000, 1, 38
LD_ABS_W, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
CLONE_NEW = 0x00000080 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

# name: (x86_64 number, aarch64 number); None where the architecture has no such call
DENIED = {
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "unshare": (272, 97), "setns": (308, 268), "open_tree": (428, 428), "move_mount": (429, 429),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442), "open_tree_attr": (467, 467), "ptrace": (101, 117),
    "process_vm_readv": (310, 270), "process_vm_writev": (311, 271), "kcmp": (312, 272),
    "pidfd_getfd": (438, 438), "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "open_by_handle_at": (304, 265), "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "reboot": (169, 142), "swapon": (167, 224), "swapoff": (168, 225), "acct": (163, 89),
    "syslog": (103, 116), "sethostname": (170, 161), "setdomainname": (171, 162),
    "settimeofday": (164, 170), "clock_settime": (227, 112), "clock_adjtime": (305, 266),
    "adjtimex": (159, 171), "quotactl": (179, 60), "quotactl_fd": (443, 443), "vhangup": (153, 58),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "iopl": (172, None), "ioperm": (173, None),
}
CLONE, CLONE3 = (56, 220), (435, 435)
ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # column in DENIED, AUDIT_ARCH_*


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_program(machine: str) -> list[tuple[int, int, int, int]] | None:
    """The classic-BPF filter as (code, jt, jf, k) rows, or None on an architecture we do not know.

    seccomp_data: int nr at offset 0, u32 arch at 4, u64 args[6] from 16 (args[0]'s low word at
    16 on these little-endian machines). Another arch (a 32-bit syscall) and, on x86_64, the x32
    ABI (nr with bit 30 set) are refused outright."""
    if machine not in ARCHES:
        return None
    col, arch = ARCHES[machine]
    deny = (RET, 0, 0, RET_ERRNO | EPERM)
    prog = [(LD_ABS_W, 0, 0, 4), (JEQ, 1, 0, arch), deny, (LD_ABS_W, 0, 0, 0)]
    if machine == "x86_64":
        prog += [(JGE, 0, 1, 0x40000000), deny]
    for nrs in DENIED.values():
        if nrs[col] is not None:
            prog += [(JEQ, 0, 1, nrs[col]), deny]
    prog += [(JEQ, 0, 1, CLONE3[col]), (RET, 0, 0, RET_ERRNO | ENOSYS),
             (JEQ, 0, 3, CLONE[col]), (LD_ABS_W, 0, 0, 16), (JSET, 0, 1, CLONE_NEW), deny,
             (RET, 0, 0, RET_ALLOW)]
    return prog


def _prctl(libc, *args) -> bool:
    return libc.prctl(*[ctypes.c_ulong(a) for a in args] + [ctypes.c_ulong(0)] * (5 - len(args))) == 0


def _status() -> dict[str, str]:
    with open("/proc/self/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def lock_down() -> dict:
    """Drop privileges for good in this process (and so in every process it forks later).

    Returns {"caps_dropped", "no_new_privs", "seccomp"}: each True only if /proc/self/status
    confirms it afterwards; the caller decides what is fatal."""
    libc = ctypes.CDLL(None, use_errno=True)
    _prctl(libc, PR_SET_DUMPABLE, 0)
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):  # needs CAP_SETPCAP, which we hold until the capset below
        _prctl(libc, PR_CAPBSET_DROP, cap)
    _prctl(libc, PR_SET_SECUREBITS, SECBITS)
    _prctl(libc, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two __user_cap_data_struct {effective, permitted, inheritable}
    libc.capset(header, data)
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
    prog = seccomp_program(platform.machine())
    if prog is not None:
        rows = (_SockFilter * len(prog))(*[_SockFilter(*r) for r in prog])
        fprog = _SockFprog(len(prog), rows)
        libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog),
                   ctypes.c_ulong(0), ctypes.c_ulong(0))
    st = _status()
    nnp = st.get("NoNewPrivs") == "1"  # with it, a non-root user's bounding set cannot be used
    return {"caps_dropped": all(int(st.get(k, "1"), 16) == 0 for k in ("CapEff", "CapPrm", "CapAmb"))
            and (int(st.get("CapBnd", "1"), 16) == 0 or nnp), "no_new_privs": nnp, "seccomp": st.get("Seccomp") == "2"}
