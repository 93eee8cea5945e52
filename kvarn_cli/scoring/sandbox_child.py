"""The sandbox child: confines itself, then runs one untrusted program and reports the verdict.

Started by sandbox.run_program as `python -I -B -c BOOT CONFIG_JSON` with a fresh temporary
working directory. It speaks to the parent through one pipe (fd in the config), one JSON line
per event: {"event": "ready", "layers": {...}} once confined (the parent's wall clock for the
program starts then), and {"event": "done", "passed": bool, "error": str} when the program has
run. A program that exits, crashes or is killed before "done" has not passed, whatever it did:
sys.exit(0) and os._exit(0) cannot fake a pass. (The verdict is honest for generated code, not
proof against a program written to forge it: that would run in this very process. What the
sandbox guarantees is that the program cannot harm the machine or the scorer.) The untrusted
code's stdin, stdout and stderr are /dev/null, so output floods cost time only.

Only the standard library and the two confinement modules are imported here.
"""

from __future__ import annotations

import builtins
import json
import os
import sys
import tempfile

from kvarn_cli.scoring import confinement, python_guard


def _report(fd: int, message: dict[str, object]) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _describe(exc: BaseException) -> str:
    """The error line for the report; the exception's own __str__ is untrusted code too."""
    text = type(exc).__name__
    try:
        message = str(exc)
    except BaseException:  # noqa: BLE001 - a broken __str__ must not lose the verdict
        message = ""
    if message:
        text += f": {message}"
    return text[:500]


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this child when the thread that started it goes away (a scorer that was killed
    or interrupted), so that a sleeping program cannot outlive its supervisor."""
    confinement.die_with_parent()
    if os.getppid() != parent_pid:  # the parent was already gone before the line above
        os._exit(1)


def main() -> None:
    config = json.loads(sys.argv[1])
    _die_with_parent(config["parent_pid"])
    status_fd: int = config["status_fd"]
    workdir: str = config["dir"]
    program_path = os.path.join(workdir, config["program"])
    with open(program_path, encoding="utf-8") as fh:
        source = fh.read()

    os.chdir(workdir)
    os.environ.clear()
    os.environ.update({"HOME": workdir, "TMPDIR": workdir, "PATH": "/nonexistent", "LANG": "C.UTF-8"})
    tempfile.tempdir = workdir
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)

    cpu_seconds = int(config["timeout_s"]) + 2
    confinement.set_limits(config["memory_bytes"], cpu_seconds, config["file_bytes"])
    layers: dict[str, object] = {}
    if config.get("isolate", True):
        layers["network_namespace"] = confinement.enter_network_namespace()
        layers["capabilities_dropped"] = confinement.drop_capabilities()
        layers["landlock_abi"] = confinement.restrict_filesystem(workdir)
        layers["seccomp"] = confinement.install_syscall_filter()
    python_guard.install(workdir)
    layers["python_guard"] = True

    sys.argv = [program_path]  # the program sees an ordinary argv, not the sandbox's config
    _report(status_fd, {"event": "ready", "layers": layers})
    try:
        code = compile(source, program_path, "exec")
        exec(code, {"__name__": "__kvarn_sandbox__", "__builtins__": builtins})  # noqa: S102 - that is the point
        result: dict[str, object] = {"event": "done", "passed": True, "error": ""}
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are failures too
        result = {"event": "done", "passed": False, "error": _describe(exc)}
    try:
        _report(status_fd, result)
    finally:
        os._exit(0)  # skip atexit handlers and threads the program may have left behind


if __name__ == "__main__":
    main()
