"""Runs untrusted Python programs, each in its own confined child process, and never trusts them.

The parent side of the sandbox (the child is sandbox_child.py): it gives every program a fresh
temporary directory, starts the child in a new session with /dev/null for its streams, reads at
most a few kilobytes of verdict from a pipe, enforces the wall clock by killing the whole process
group, and cleans up. Whatever the program does (loops, bombs, exits, floods, crashes), the
caller gets an ExecResult back.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import kvarn_cli

_PACKAGE_ROOT = str(Path(kvarn_cli.__file__).resolve().parent.parent)
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[2]); "
    "from kvarn_cli.scoring.sandbox_child import main; main()"
)
_MAX_STATUS_BYTES = 64 * 1024
_MAX_STDERR_BYTES = 4 * 1024

Status = Literal["passed", "failed", "timeout", "crashed"]


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits. timeout_s is wall-clock time from the moment the child is confined."""

    timeout_s: float = 10.0
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    #: Time allowed for the interpreter to start and confine itself (slow on a loaded machine).
    startup_timeout_s: float = 60.0
    #: OS-level layers (namespaces, capabilities, Landlock, seccomp); the Python guard is always on.
    isolate: bool = True


@dataclass(frozen=True)
class ExecResult:
    status: Status
    detail: str = ""
    layers: dict[str, object] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(source: str, limits: SandboxLimits = SandboxLimits()) -> ExecResult:
    """Runs one program in a fresh sandbox and says whether it ran to the end without error.

    Never raises for anything the program does; a sandbox that cannot even be started (no
    file descriptors or processes left on this machine) is reported as "crashed" with the cause."""
    try:
        return _run_program(source, limits)
    except OSError as exc:
        return ExecResult("crashed", f"could not run the sandbox: {exc}")


def _run_program(source: str, limits: SandboxLimits) -> ExecResult:
    workdir = tempfile.mkdtemp(prefix="kvarn-sandbox-")
    read_fd, write_fd = os.pipe()
    try:
        # errors="replace": a completion may hold lone surrogates, which UTF-8 cannot encode.
        Path(workdir, "program.py").write_text(source, encoding="utf-8", errors="replace")
        config = {
            "dir": workdir,
            "program": "program.py",
            "status_fd": write_fd,
            "timeout_s": limits.timeout_s,
            "memory_bytes": limits.memory_bytes,
            "file_bytes": limits.file_bytes,
            "isolate": limits.isolate,
            "parent_pid": os.getpid(),
        }
        with tempfile.TemporaryFile() as stderr_file:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-B", "-c", _BOOT, json.dumps(config), _PACKAGE_ROOT],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr_file,
                    pass_fds=(write_fd,),
                    cwd=workdir,
                    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir},
                    start_new_session=True,
                    close_fds=True,
                )
            finally:
                os.close(write_fd)
                write_fd = -1
            try:
                result = _supervise(proc, read_fd, limits)
            finally:
                _kill_group(proc)
            if result.status == "crashed" and not result.detail:
                stderr_file.seek(0)
                tail = stderr_file.read(_MAX_STDERR_BYTES).decode("utf-8", "replace").strip()
                result = ExecResult("crashed", _exit_description(proc.returncode, tail), result.layers)
            return result
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
        _remove_tree(workdir)


def run_programs(
    sources: Sequence[str],
    limits: SandboxLimits = SandboxLimits(),
    workers: int | None = None,
    on_done: Callable[[int, ExecResult], None] | None = None,
) -> list[ExecResult]:
    """Runs many programs, `workers` sandboxes at a time (default: one per CPU core).

    Threads only supervise; each program runs in its own process, so this uses all cores."""
    count = workers or default_workers()
    results: list[ExecResult | None] = [None] * len(sources)

    def one(index: int) -> None:
        result = run_program(sources[index], limits)
        results[index] = result
        if on_done is not None:
            on_done(index, result)

    pool = ThreadPoolExecutor(max_workers=max(1, count), thread_name_prefix="kvarn-sandbox")
    try:
        for future in [pool.submit(one, i) for i in range(len(sources))]:
            future.result()
    finally:
        # On Ctrl-C, programs not started yet are dropped; running ones end within their timeout.
        pool.shutdown(wait=True, cancel_futures=True)
    return [r if r is not None else ExecResult("crashed", "not run") for r in results]


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _supervise(proc: subprocess.Popen[bytes], read_fd: int, limits: SandboxLimits) -> ExecResult:
    """Reads the child's events until its verdict, its end, or a deadline."""
    buffer = b""
    layers: dict[str, object] = {}
    ready = False
    deadline = time.monotonic() + limits.startup_timeout_s
    poller = select.poll()  # not select.select: descriptors above 1024 are fine here
    poller.register(read_fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if ready:
                return ExecResult("timeout", f"no verdict within {limits.timeout_s:g}s", layers)
            return ExecResult("crashed", f"sandbox did not start within {limits.startup_timeout_s:g}s", layers)
        if not poller.poll(max(1, int(remaining * 1000))):
            continue
        chunk = os.read(read_fd, 8192)
        if not chunk:
            return ExecResult("crashed", "", layers)  # exited or died before a verdict
        buffer += chunk
        if len(buffer) > _MAX_STATUS_BYTES:
            return ExecResult("failed", "the program wrote to the sandbox status channel", layers)
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                event = json.loads(line)
            except ValueError:
                return ExecResult("failed", "the program wrote to the sandbox status channel", layers)
            if not isinstance(event, dict):
                return ExecResult("failed", "the program wrote to the sandbox status channel", layers)
            if event.get("event") == "ready" and not ready:
                ready = True
                layers = dict(event.get("layers") or {})
                deadline = time.monotonic() + limits.timeout_s
            elif event.get("event") == "done" and ready:
                if event.get("passed") is True:
                    return ExecResult("passed", "", layers)
                return ExecResult("failed", str(event.get("error", ""))[:500], layers)
            else:
                return ExecResult("failed", "the program wrote to the sandbox status channel", layers)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kills the child's whole session before reaping the leader, so the group id cannot have
    been reused by an unrelated process when the signal is sent."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _exit_description(returncode: int | None, stderr_tail: str) -> str:
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        text = f"killed by {name}"
    else:
        text = f"exited with code {returncode} before a verdict"
    if stderr_tail:
        text += f": {stderr_tail.splitlines()[-1][:300]}"
    return text


def _remove_tree(path: str) -> None:
    """Removes the sandbox directory, including anything the program made unreadable."""

    def make_writable(_func: object, target: str, _exc: object) -> None:
        try:
            os.chmod(os.path.dirname(target), 0o700)
            if os.path.isdir(target) and not os.path.islink(target):
                os.chmod(target, 0o700)
                shutil.rmtree(target, ignore_errors=True)
            else:
                os.unlink(target)
        except OSError:
            pass

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable)
    else:
        shutil.rmtree(path, onerror=make_writable)
