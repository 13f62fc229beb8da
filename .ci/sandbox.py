"""Run a command under the system-call rules of config/marveld.service, without systemd.

    python .ci/sandbox.py COMMAND [ARG...]

Applies what the unit asks of the kernel, as systemd applies it: NoNewPrivileges, the
seccomp allow-list SystemCallFilter=@system-service minus ~@privileged @resources (other
calls fail with EPERM, SystemCallErrorNumber=EPERM), and MemoryDenyWriteExecute through
prctl(PR_SET_MDWE), the kernel's own form of that rule (Linux 6.3+). All of it is inherited
by the command and its children. Where it may (root), it also gives the command a /proc
of its own as ProtectProc=invisible and ProcSubset=pid do, in a private mount namespace.
Needs systemd-analyze (to expand the groups) and libseccomp; exits 77 when it cannot apply
the rules, so CI can say so and go on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO_EPERM = 0x00050000 | 1
CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
SANDBOX_VARIABLE = "MARVELD_UNDER_UNIT_RULES"
CANNOT = 77  # "skipped", as automake's test drivers say: not a failure of the command


def group(name: str) -> set[str]:
    """The system calls of a systemd group such as ``@system-service``, expanded."""
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True
    ).stdout
    calls: set[str] = set()
    for line in (line.strip() for line in out.splitlines()[1:]):
        if line.startswith("@"):
            calls |= group(line)
        elif line and not line.startswith("#"):
            calls.add(line)
    return calls


def private_proc(libc: ctypes.CDLL) -> bool:
    """ProtectProc=invisible, ProcSubset=pid: a /proc with only processes, in a mount
    namespace of our own (made private first, so nothing reaches the host's mounts)."""
    if libc.unshare(CLONE_NEWNS) != 0:
        return False
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        sys.exit(f"sandbox: cannot make / private: {os.strerror(ctypes.get_errno())}")
    options = b"subset=pid,hidepid=invisible"
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    return libc.mount(b"proc", b"/proc", b"proc", flags, options) == 0


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(__doc__)
    library = ctypes.util.find_library("seccomp")
    if shutil.which("systemd-analyze") is None or library is None:
        print("sandbox: needs systemd-analyze and libseccomp", file=sys.stderr)
        sys.exit(CANNOT)
    allowed = group("@system-service") - group("@privileged") - group("@resources")
    seccomp = ctypes.CDLL(library, use_errno=True)
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_rule_add.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
    ]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    libc = ctypes.CDLL(None, use_errno=True)
    proc = "ProcSubset=pid" if private_proc(libc) else "the host's /proc (not root)"

    filter_ = seccomp.seccomp_init(SCMP_ACT_ERRNO_EPERM)
    added = 0
    for name in sorted(allowed):
        number = seccomp.seccomp_syscall_resolve_name(name.encode())
        if number >= 0:  # names of other architectures resolve to nothing here
            added += seccomp.seccomp_rule_add(filter_, SCMP_ACT_ALLOW, number, 0) == 0
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        sys.exit(f"sandbox: PR_SET_NO_NEW_PRIVS: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        print("sandbox: no PR_SET_MDWE (Linux < 6.3): W^X not enforced", file=sys.stderr)
        sys.exit(CANNOT)
    if seccomp.seccomp_load(filter_) != 0:
        sys.exit("sandbox: seccomp_load failed")
    print(f"sandbox: {added} system calls allowed, W^X, {proc}", file=sys.stderr, flush=True)
    # For the tests of programs that are not marveld (HAProxy has its own unit and rules).
    os.environ[SANDBOX_VARIABLE] = "1"
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
