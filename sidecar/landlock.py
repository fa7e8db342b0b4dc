"""The kernel side of the hook sandbox: Landlock system calls and dropping capabilities.

Everything here acts on the calling *thread* (a Landlock domain, no_new_privs and
capabilities are per-thread credentials); sandbox.py runs it on the thread that starts hooks.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR, MAKE_REG = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ = EXECUTE | READ_FILE | READ_DIR

# ABI 6: a domain's processes may not signal, nor connect to abstract unix sockets of, processes
# outside it (the sidecar included).
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
SCOPES = {"signal": SCOPE_SIGNAL, "abstract_unix_socket": SCOPE_ABSTRACT_UNIX_SOCKET}

PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522


def handled(abi: int) -> int:
    """Every filesystem right the kernel's ABI knows: all of them are denied unless granted."""
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def scopes(abi: int) -> int:
    return SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET if abi >= 6 else 0


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int


def _check(ret: int) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


def _call(*args: Any) -> int:
    return _check(int(_syscall(*args)))


def probe() -> tuple[int, str]:
    """(the kernel's Landlock ABI version, why there is none: "" when there is one)."""
    try:
        return _call(ctypes.c_long(SYS_CREATE_RULESET), None, ctypes.c_size_t(0),
                     ctypes.c_uint32(CREATE_RULESET_VERSION)), ""
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            return 0, "Landlock is built into the kernel but not enabled (add landlock to the lsm= boot parameter)"
        if e.errno == errno.ENOSYS:
            return 0, "the kernel has no Landlock (needs Linux 5.13+), or a seccomp profile blocks its system calls"
        return 0, f"Landlock is not available: {e.strerror}"


def create_ruleset(abi: int) -> int:
    """A new ruleset handling every filesystem right of `abi`, and its scopes (ABI 6+); network unrestricted."""
    scoped = scopes(abi)
    attr = _RulesetAttr(handled(abi), 0, scoped)
    # The size tells the kernel which fields we use: an older kernel refuses a size it does not know.
    size = ctypes.sizeof(_RulesetAttr) if scoped else 8
    return _call(ctypes.c_long(SYS_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))


def create_layer(abi: int) -> int:
    """A ruleset that only scopes (no filesystem right): restricting with it puts the calling thread one
    domain below where it was, out of reach of what it starts next from its former domain's peers."""
    attr = _RulesetAttr(0, 0, scopes(abi))
    return _call(ctypes.c_long(SYS_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                 ctypes.c_uint32(0))


def add_rule(ruleset: int, path: str, access: int) -> bool:
    """Grant `access` beneath `path` (file rights only, for a file); False when it cannot be opened or ruled."""
    try:
        target = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return False  # gone, or not ours to open: nothing to grant
    try:
        if not os.path.isdir(f"/proc/self/fd/{target}"):
            access &= FILE_RIGHTS
        rule = _PathBeneath(access, target)
        _call(ctypes.c_long(SYS_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH),
              ctypes.byref(rule), ctypes.c_uint32(0))
        return True
    except OSError:
        return False  # a kind of file Landlock has no rule for: it stays denied
    finally:
        os.close(target)


def restrict_self(ruleset: int, first: bool = True) -> None:
    """no_new_privs (for the first layer), then the ruleset's domain, on the calling thread."""
    if first:
        no_new_privs()
    _call(ctypes.c_long(SYS_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0))


def no_new_privs() -> None:
    _check(_prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


def drop_capabilities() -> str:
    """Leave the calling thread no capability and an empty bounding set; what was done, in words.

    With an empty bounding set (and no_new_privs) an exec as uid 0 regains nothing, so a root
    hook cannot bypass file permissions nor read another process's /proc/<pid>/environ.
    The bounding set needs CAP_SETPCAP to shrink: a non-root sidecar has none to lose anyway.
    """
    bounding = "emptied"
    for cap in range(_last_cap() + 1):
        if _prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            e = ctypes.get_errno()
            bounding = "kept (no CAP_SETPCAP)" if e == errno.EPERM else f"kept ({os.strerror(e)})"
            break
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL on kernels before 4.3: none to clear
    header, data = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data))  # glibc's capset: this thread only
    return f"all capabilities dropped, bounding set {bounding}"


def capabilities(pid: int | str = "self") -> dict[str, int]:
    """CapEff, CapPrm, CapBnd ... of a process (or "thread-self") as integers, from /proc."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Cap"):
                    key, _, value = line.partition(":")
                    out[key] = int(value.strip(), 16)
    except OSError:
        pass
    return out
