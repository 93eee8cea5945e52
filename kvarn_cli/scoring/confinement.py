"""OS-level confinement for the process that runs untrusted code (Linux).

This module runs inside the sandbox child before any untrusted code, so it imports nothing but
the standard library. Each layer is best effort and reports whether it took hold; together they
make the Python-level guard (see python_guard.py) a second line rather than the only one:

- resource limits: address space, CPU seconds, file size, open files, no core dumps;
- a private network namespace (no interfaces but a down loopback) when the kernel allows it;
- no capabilities and no_new_privs, so a scorer run as root does not lend root to the code;
- Landlock (kernel >= 5.13): writes only below the temporary directory, no execve anywhere,
  no TCP (ABI >= 4), no signals or abstract sockets outside the sandbox (ABI >= 6);
- a seccomp filter (x86_64 and aarch64): no exec, no fork (threads are fine), no sockets, no
  deleting/renaming/linking/chmod, no signals to other processes, no mount/ptrace/bpf/io_uring.

The syscall numbers are the kernel's stable ABI; tests check them against the system headers.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import signal
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000

# Syscalls that untrusted code never needs. Names missing on an architecture are skipped.
SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "socket": 41, "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "kill": 62,
        "truncate": 76, "rename": 82, "rmdir": 84, "link": 86, "unlink": 87, "symlink": 88,
        "chmod": 90, "fchmod": 91, "chown": 92, "fchown": 93, "lchown": 94, "ptrace": 101,
        "rt_sigqueueinfo": 129, "mknod": 133, "pivot_root": 155, "adjtimex": 159,
        "chroot": 161, "acct": 163, "settimeofday": 164, "mount": 165, "umount2": 166,
        "swapon": 167, "swapoff": 168, "reboot": 169, "sethostname": 170,
        "setdomainname": 171, "init_module": 175, "delete_module": 176, "quotactl": 179,
        "tkill": 200, "clock_settime": 227, "tgkill": 234, "kexec_load": 246, "add_key": 248,
        "request_key": 249, "keyctl": 250, "mknodat": 259, "fchownat": 260, "unlinkat": 263,
        "renameat": 264, "linkat": 265, "symlinkat": 266, "fchmodat": 268, "unshare": 272,
        "rt_tgsigqueueinfo": 297, "perf_event_open": 298, "setns": 308,
        "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313,
        "renameat2": 316, "kexec_file_load": 320, "bpf": 321, "execveat": 322,
        "userfaultfd": 323, "pidfd_send_signal": 424, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "pidfd_open": 434, "clone3": 435,
        "pidfd_getfd": 438, "fchmodat2": 452,
    },
    "aarch64": {
        "mknodat": 33, "symlinkat": 36, "linkat": 37, "renameat": 38, "umount2": 39,
        "mount": 40, "pivot_root": 41, "truncate": 45, "chroot": 51, "fchmod": 52,
        "fchmodat": 53, "fchownat": 54, "fchown": 55, "quotactl": 60, "acct": 89,
        "unshare": 97, "kexec_load": 104, "init_module": 105, "delete_module": 106,
        "clock_settime": 112, "ptrace": 117, "kill": 129, "tkill": 130, "tgkill": 131,
        "rt_sigqueueinfo": 138, "reboot": 142, "sethostname": 161, "setdomainname": 162,
        "settimeofday": 170, "adjtimex": 171, "socket": 198, "add_key": 217,
        "request_key": 218, "keyctl": 219, "clone": 220, "execve": 221, "swapon": 224,
        "swapoff": 225, "rt_tgsigqueueinfo": 240, "perf_event_open": 241, "setns": 268,
        "process_vm_readv": 270, "process_vm_writev": 271, "finit_module": 273,
        "renameat2": 276, "bpf": 280, "execveat": 281, "userfaultfd": 282,
        "kexec_file_load": 294, "pidfd_send_signal": 424, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "pidfd_open": 434, "clone3": 435,
        "pidfd_getfd": 438, "fchmodat2": 452, "unlinkat": 35,
    },
}
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_SYSCALL_BIT = 0x40000000

LANDLOCK_CREATE_RULESET = {"x86_64": 444, "aarch64": 444}
LANDLOCK_ADD_RULE = 445
LANDLOCK_RESTRICT_SELF = 446
_LL_FS_EXECUTE = 1 << 0
_LL_FS_WRITE_FILE = 1 << 1
_LL_FS_REMOVE_DIR = 1 << 4
_LL_FS_REMOVE_FILE = 1 << 5
_LL_FS_MAKE_ALL = sum(1 << bit for bit in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
_LL_FS_REFER = 1 << 13  # ABI 2
_LL_FS_TRUNCATE = 1 << 14  # ABI 3
_LL_NET_ALL = (1 << 0) | (1 << 1)  # bind and connect TCP, ABI 4
_LL_SCOPE_ALL = (1 << 0) | (1 << 1)  # abstract unix sockets and signals, ABI 6


def machine() -> str:
    """The syscall table to use: 'x86_64', 'aarch64', or something we have no table for."""
    name = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(name, name)


def die_with_parent() -> bool:
    """prctl(PR_SET_PDEATHSIG, SIGKILL): the kernel kills this process when its parent thread exits."""
    return _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0


def set_limits(memory_bytes: int, cpu_seconds: int, file_bytes: int, open_files: int = 256) -> None:
    """Hard limits the code cannot raise again: memory bombs fail with MemoryError, CPU-bound
    loops die of SIGXCPU even if the parent's wall clock were late, files cannot fill the disk."""
    for limit, value in (
        (resource.RLIMIT_AS, memory_bytes),
        (resource.RLIMIT_CPU, cpu_seconds),
        (resource.RLIMIT_FSIZE, file_bytes),
        (resource.RLIMIT_NOFILE, open_files),
        (resource.RLIMIT_CORE, 0),
    ):
        _soft, hard = resource.getrlimit(limit)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(limit, (value, value))


def enter_network_namespace() -> bool:
    """Moves the process into a fresh network namespace, where nothing is reachable.

    Root can do this directly; other users through a user namespace (where the kernel allows
    unprivileged ones), mapping their own uid so that files they create keep their owner."""
    if _libc.unshare(CLONE_NEWNET) == 0:
        return True
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        return False
    try:
        with open("/proc/self/setgroups", "w") as fh:
            fh.write("deny")
        with open("/proc/self/uid_map", "w") as fh:
            fh.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as fh:
            fh.write(f"{gid} {gid} 1")
    except OSError:
        pass  # still isolated from the network; files created may show as owned by nobody
    return True


def drop_capabilities() -> bool:
    """Empties the capability sets (all of them, for root too) and sets no_new_privs, so that
    nothing the code does can regain a privilege."""
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = bytes(24)  # two {effective, permitted, inheritable} u32 triples, all zero
    hdr_buf = ctypes.create_string_buffer(header, len(header))
    data_buf = ctypes.create_string_buffer(data, len(data))
    ok = _libc.capset(hdr_buf, data_buf) == 0
    no_new_privs = _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    return ok and no_new_privs


def landlock_abi() -> int:
    """The Landlock ABI version the kernel offers, 0 when there is none."""
    number = LANDLOCK_CREATE_RULESET.get(machine())
    if number is None:
        return 0
    version = _libc.syscall(number, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(version), 0)


def restrict_filesystem(writable_dir: str) -> int:
    """Landlock: read anywhere, write/create/delete only below writable_dir (and /dev/null),
    execute nothing, and (by ABI) no TCP, no signals or abstract sockets leaving the sandbox.

    Returns the ABI version used, 0 if Landlock is unavailable."""
    abi = landlock_abi()
    if abi < 1:
        return 0
    writes = _LL_FS_WRITE_FILE | _LL_FS_REMOVE_DIR | _LL_FS_REMOVE_FILE | _LL_FS_MAKE_ALL
    if abi >= 2:
        writes |= _LL_FS_REFER
    if abi >= 3:
        writes |= _LL_FS_TRUNCATE
    handled_fs = writes | _LL_FS_EXECUTE
    if abi >= 6:
        attr = struct.pack("QQQ", handled_fs, _LL_NET_ALL, _LL_SCOPE_ALL)
    elif abi >= 4:
        attr = struct.pack("QQ", handled_fs, _LL_NET_ALL)
    else:
        attr = struct.pack("Q", handled_fs)
    attr_buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _libc.syscall(LANDLOCK_CREATE_RULESET[machine()], attr_buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        return 0
    try:
        # /dev/null only gets file rights: directory rights on a file are rejected (EINVAL).
        file_writes = _LL_FS_WRITE_FILE | (_LL_FS_TRUNCATE if abi >= 3 else 0)
        for path, rights in ((writable_dir, writes), ("/dev/null", file_writes)):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = struct.pack("=Qi", rights, fd)  # struct landlock_path_beneath_attr, packed
                rule_buf = ctypes.create_string_buffer(rule, len(rule))
                if _libc.syscall(LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(1), rule_buf, ctypes.c_uint32(0)) != 0:
                    return 0
            finally:
                os.close(fd)
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return 0
        if _libc.syscall(LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            return 0
        return abi
    finally:
        os.close(ruleset)


# Classic BPF, as seccomp reads it (struct sock_filter: u16 code, u8 jt, u8 jf, u32 k).
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JSET_K = 0x45
_BPF_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_KILL_PROCESS = 0x80000000
_OFFSET_NR = 0
_OFFSET_ARCH = 4
_OFFSET_ARG0_LOW = 16


def _ret_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def build_seccomp_filter(arch: str, own_pid: int) -> list[tuple[int, int, int, int]]:
    """The filter program: deny the syscalls above with EPERM, except

    - clone: allowed for threads (CLONE_THREAD set), denied for new processes;
    - clone3: ENOSYS, so that libc falls back to clone, whose flags the filter can read;
    - kill/tgkill: allowed only towards this process (or its own process group);
    - on x86_64, the x32 ABI is refused altogether (it would bypass the numbers below).
    """
    table = SYSCALLS[arch]
    prog: list[tuple[int, int, int, int]] = [
        (_BPF_LD_W_ABS, 0, 0, _OFFSET_ARCH),
        (_BPF_JEQ_K, 1, 0, _AUDIT_ARCH[arch]),
        (_BPF_RET_K, 0, 0, _RET_KILL_PROCESS),
        (_BPF_LD_W_ABS, 0, 0, _OFFSET_NR),
    ]
    if arch == "x86_64":
        prog += [(0x35, 0, 1, _X32_SYSCALL_BIT), (_BPF_RET_K, 0, 0, _ret_errno(errno.EPERM))]  # JGE
    eperm = _ret_errno(errno.EPERM)
    # clone: threads only.
    prog += [
        (_BPF_JEQ_K, 0, 4, table["clone"]),
        (_BPF_LD_W_ABS, 0, 0, _OFFSET_ARG0_LOW),
        (_BPF_JSET_K, 0, 1, CLONE_THREAD),
        (_BPF_RET_K, 0, 0, _RET_ALLOW),
        (_BPF_RET_K, 0, 0, eperm),
    ]
    prog += [(_BPF_JEQ_K, 0, 1, table["clone3"]), (_BPF_RET_K, 0, 0, _ret_errno(errno.ENOSYS))]
    # kill(pid, sig): only this process, its group (0 or -pid, it leads its own session).
    prog += [
        (_BPF_JEQ_K, 0, 6, table["kill"]),
        (_BPF_LD_W_ABS, 0, 0, _OFFSET_ARG0_LOW),
        (_BPF_JEQ_K, 3, 0, own_pid),
        (_BPF_JEQ_K, 2, 0, 0),
        (_BPF_JEQ_K, 1, 0, (-own_pid) & 0xFFFFFFFF),
        (_BPF_RET_K, 0, 0, eperm),
        (_BPF_RET_K, 0, 0, _RET_ALLOW),
    ]
    # tgkill(tgid, tid, sig): only threads of this process (Python's signal delivery, abort()).
    prog += [
        (_BPF_JEQ_K, 0, 4, table["tgkill"]),
        (_BPF_LD_W_ABS, 0, 0, _OFFSET_ARG0_LOW),
        (_BPF_JEQ_K, 1, 0, own_pid),
        (_BPF_RET_K, 0, 0, eperm),
        (_BPF_RET_K, 0, 0, _RET_ALLOW),
    ]
    special = {"clone", "clone3", "kill", "tgkill"}
    for name, number in sorted(table.items(), key=lambda item: item[1]):
        if name in special:
            continue
        prog += [(_BPF_JEQ_K, 0, 1, number), (_BPF_RET_K, 0, 0, eperm)]
    prog.append((_BPF_RET_K, 0, 0, _RET_ALLOW))
    return prog


def install_syscall_filter() -> bool:
    """Loads the seccomp filter into this (single-threaded) process; False where unsupported."""
    arch = machine()
    if arch not in SYSCALLS:
        return False
    prog = build_seccomp_filter(arch, os.getpid())
    raw = b"".join(struct.pack("HBBI", code, jt, jf, k) for code, jt, jf, k in prog)
    filters = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog), ctypes.addressof(filters))
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0
