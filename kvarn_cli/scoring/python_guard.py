"""Python-level guard for untrusted code: the layer that works everywhere, including kernels
without seccomp or Landlock.

It replaces the functions that run programs, create processes, open sockets, send signals, or
delete, move and chmod files with ones that raise PermissionError, makes `open` refuse to write
outside the sandbox directory, and makes `ctypes` (the way around all of this) unimportable.
Python code can still undo a guard like this on purpose; that is why confinement.py exists.
Generated code that calls these things by accident (the usual case) fails its test instead.
Imports only the standard library: it runs inside the sandbox child.
"""

from __future__ import annotations

import builtins
import io
import os
import sys
from typing import Any, Callable

_OS_DENIED = (
    "system", "popen", "fork", "forkpty", "vfork", "kill", "killpg", "pidfd_open",
    "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe",
    "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
    "posix_spawn", "posix_spawnp", "remove", "unlink", "rmdir", "removedirs", "rename",
    "renames", "replace", "link", "symlink", "truncate", "chmod", "fchmod", "lchmod", "chown",
    "fchown", "lchown", "chroot", "chdir", "fchdir", "mknod", "mkfifo", "setuid", "seteuid",
    "setgid", "setegid", "setreuid", "setregid", "setresuid", "setresgid",
    "plock", "startfile",
)
_SHUTIL_DENIED = ("rmtree", "move", "chown")
_SUBPROCESS_DENIED = ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput")
_BLOCKED_MODULES = ("ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "pty", "resource", "psutil")
_WRITE_MODE_CHARS = set("wax+")
_OS_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _denied(name: str) -> Callable[..., Any]:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise PermissionError(f"{name} is disabled in the kvarn sandbox")

    refuse.__name__ = name.rsplit(".", 1)[-1]
    return refuse


def _inside(path: Any, root: str) -> bool:
    if isinstance(path, int):
        return True  # an fd the process already holds
    try:
        real = os.path.realpath(os.fspath(path))
    except (TypeError, ValueError):
        return False
    if isinstance(real, bytes):
        real = os.fsdecode(real)
    return real == root or real.startswith(root + os.sep) or real == os.devnull


def install(writable_dir: str) -> None:
    """Installs the guard in this interpreter; call it last, just before running the code."""
    # Import what gets patched below before os itself is patched (subprocess needs os.fork's
    # neighbours at import time).
    import shutil
    import socket
    import subprocess

    root = os.path.realpath(writable_dir)
    for name in _OS_DENIED:
        if hasattr(os, name):
            setattr(os, name, _denied(f"os.{name}"))
    posix = sys.modules.get("posix")
    if posix is not None:
        for name in _OS_DENIED:
            if hasattr(posix, name):
                setattr(posix, name, _denied(f"os.{name}"))

    real_os_open = os.open

    def guarded_os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: Any = None) -> int:
        if flags & _OS_WRITE_FLAGS and (dir_fd is not None or not _inside(path, root)):
            raise PermissionError(f"writing {path!r} outside the sandbox directory is disabled")
        return real_os_open(path, flags, mode)

    os.open = guarded_os_open  # type: ignore[assignment]
    if posix is not None:
        posix.open = guarded_os_open  # type: ignore[attr-defined]

    real_open = builtins.open

    def guarded_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if _WRITE_MODE_CHARS & set(str(mode)) and not _inside(file, root):
            raise PermissionError(f"writing {file!r} outside the sandbox directory is disabled")
        return real_open(file, mode, *args, **kwargs)

    builtins.open = guarded_open  # type: ignore[assignment]
    io.open = guarded_open  # type: ignore[assignment]

    for name in _SHUTIL_DENIED:
        setattr(shutil, name, _denied(f"shutil.{name}"))
    for name in _SUBPROCESS_DENIED:
        setattr(subprocess, name, _denied(f"subprocess.{name}"))
    for name in ("socket", "socketpair", "create_connection", "create_server", "fromfd"):
        setattr(socket, name, _denied(f"socket.{name}"))
    for name in _BLOCKED_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` now fails
    builtins.help = _denied("help")  # pydoc may start a pager process
