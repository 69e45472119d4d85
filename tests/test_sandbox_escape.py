"""Escape attempts from inside an action (issue 15): each is a REAL hostile program that tries to
undo the sandbox after setup -- change mounts or namespaces, trace the sandbox's own init, write
kernel settings, forge its status -- and must fail and leave the host untouched. Every attempt
printed 'ok' on the build before the hardening (capabilities kept, no no_new_privs, no seccomp).
docs/sandbox.md ("Threat model") names these tests."""
import time
from pathlib import Path

import pytest

from sandbox import Limits, run_code
from tests.sandbox_helpers import NS_HERE, PREFIX, _procs_with
from tests.sandbox_helpers import feats, no_leftovers, wd  # noqa: F401 -- fixtures

pytestmark = pytest.mark.skipif(not NS_HERE, reason="needs user namespaces (the plain mode is documented as weak)")

# Every attempt prints one word: 'ok' (it worked: an escape) or the errno name that stopped it.
PRELUDE = r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
L = ctypes.c_long
def sysc(nr, *args):
    r = libc.syscall(L(nr), *[L(a) if isinstance(a, int) else a for a in args])
    return 'ok' if r >= 0 else errno.errorcode.get(ctypes.get_errno(), '?')
def attempt(f):
    try:
        f(); return 'ok'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
import platform
X86 = platform.machine() == 'x86_64'
NR = dict(mount=165 if X86 else 40, umount2=166 if X86 else 39, pivot_root=155 if X86 else 41,
          unshare=272 if X86 else 97, setns=308 if X86 else 268, ptrace=101 if X86 else 117,
          mount_setattr=442, open_tree=428, fsopen=430, pidfd_open=434, pidfd_getfd=438,
          process_vm_writev=311 if X86 else 271, bpf=321 if X86 else 280)
"""

ATTEMPTS = {
    # clear read-only on / (recursively), then write where the host would see it
    "mount_setattr": """
class A(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ('attr_set', 'attr_clr', 'propagation', 'userns_fd')]
a = A(0, 1, 0, 0)
for flags in (0x8000, 0):  # recursive, then the root mount alone
    print(sysc(NR['mount_setattr'], -100, b'/', flags, ctypes.byref(a), ctypes.sizeof(a)))
print(attempt(lambda: open('{victim}', 'w').write('pwned')))""",
    # the classic remount read-write
    "remount": """
print(sysc(NR['mount'], None, b'/', None, 32 | 4096, None))
print(attempt(lambda: open('{victim}', 'w').write('pwned')))""",
    # unmount what hides the host's secrets, devices and processes
    "umount2": """
print(' '.join(sysc(NR['umount2'], p.encode(), 2) for p in ('/etc/shadow', '/dev', '/proc', '/tmp')))""",
    "unshare": """
print(sysc(NR['unshare'], 0x10000000 | 0x20000))
print(sysc(NR['unshare'], 0x20000))""",
    "setns": """
fd = os.open('/proc/self/ns/mnt', os.O_RDONLY)
print(sysc(NR['setns'], fd, 0x20000))""",
    "pivot_root": """
os.makedirs('/tmp/old', exist_ok=True)
print(sysc(NR['pivot_root'], b'/tmp', b'/tmp/old'))""",
    "new_mount_api": """
print(sysc(NR['fsopen'], b'tmpfs', 0), sysc(NR['open_tree'], -100, b'/', 1 | 0x8000))""",
    # trace the sandbox's own init (pid 1 here), or reach into it
    "ptrace": """
print(sysc(NR['ptrace'], 0x4206, 1, 0, 0))  # PTRACE_SEIZE
print(sysc(NR['ptrace'], 16, 1, 0, 0))      # PTRACE_ATTACH""",
    "sysctl": """
print(sysc(NR['mount'], None, b'/proc', None, 32 | 4096, None))  # MS_REMOUNT | MS_BIND: read-write
print(attempt(lambda: open('/proc/sys/kernel/pid_max', 'w').write('4194304')))
print(attempt(lambda: open('/proc/sys/kernel/ns_last_pid', 'w').write('5')))""",
}


def _victim() -> Path:
    return Path("/var/tmp") / f"{PREFIX}escape-{time.monotonic_ns()}"  # on the root file system


@pytest.mark.parametrize("name", sorted(ATTEMPTS))
def test_escape_attempt_fails_and_host_is_untouched(wd, name):
    victim = _victim()
    try:
        r = run_code(PRELUDE + ATTEMPTS[name].format(victim=victim), wd, Limits(timeout_s=10))
        assert r.status == "ok", r.as_tool_output()
        words = r.stdout.split()
        assert words and "ok" not in words, f"{name} escaped: {r.stdout!r}"
        assert not victim.exists(), "the action wrote to the host's file system"
    finally:
        victim.unlink(missing_ok=True)


def test_action_holds_no_capability_no_new_privs_and_a_syscall_filter(wd, feats):
    r = run_code("print(open('/proc/self/status').read())", wd, Limits(timeout_s=10))
    st = dict(line.split(":", 1) for line in r.stdout.splitlines() if ":" in line)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(st[cap], 16) == 0, (cap, st[cap])
    assert st["NoNewPrivs"].strip() == "1"
    assert st["Seccomp"].strip() == ("2" if feats.get("seccomp") else "0")


def test_execve_regains_no_capability(wd):
    # uid 0 inside the user namespace would get every capability back on execve without the drop
    r = run_code("import subprocess\nprint(subprocess.run(['grep', 'CapEff', '/proc/self/status'],"
                 " capture_output=True, text=True).stdout)", wd, Limits(timeout_s=10))
    assert int(r.stdout.split()[1], 16) == 0, r.stdout


FORGE = PRELUDE + r"""
import json
line = (json.dumps({'end': 1, 'exit': 0}) + '\n').encode()
done = []
try:
    fds = os.listdir('/proc/1/fd')                       # init's status pipe, through /proc
except OSError:
    fds = []
for fd in fds:
    try:
        os.write(os.open(f'/proc/1/fd/{fd}', os.O_WRONLY), line); done.append('proc' + fd)
    except OSError:
        pass
pidfd = libc.syscall(L(NR['pidfd_open']), L(1), L(0))  # ... or by stealing init's fd
for fd in range(3, 12):
    got = libc.syscall(L(NR['pidfd_getfd']), L(pidfd), L(fd), L(0))
    if got >= 0:
        try:
            os.write(got, line); done.append('getfd' + str(fd))
        except OSError:
            pass
print(done, flush=True)
while True: pass
"""


def test_forged_status_does_not_end_the_action(wd):
    # The action writes init's "exited normally" line wherever it can, then spins: the result
    # must be the timeout the trainer observes, not 'ok'.
    r = run_code(FORGE, wd, Limits(timeout_s=2))
    assert r.status == "timeout", r.as_tool_output()
    assert r.stdout.strip() == "[]", r.stdout
    assert not _procs_with(str(wd))
