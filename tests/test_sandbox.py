"""The code sandbox against hostile and broken programs: the scorer must stay up, the machine
must stay untouched, and nothing may pass that did not run its tests to the end.

All programs of the battery run in one parallel batch (module fixture), as `kvarn score` runs
them; the tests then check each one's verdict and the files it tried to harm.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvarn_cli.scoring import confinement
from kvarn_cli.scoring.sandbox import ExecResult, SandboxLimits, run_program, run_programs

LIMITS = SandboxLimits(timeout_s=2.0, memory_bytes=512 << 20)

# Programs that reach the OS through ctypes, around the Python-level guard, to show that the
# OS layers (Landlock, seccomp) hold by themselves.
CTYPES = textwrap.dedent(
    """
    import sys
    for name in ("ctypes", "_ctypes"):
        sys.modules.pop(name, None)
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    """
)


@dataclass(frozen=True)
class Targets:
    victim_file: Path
    victim_dir: Path
    created: Path  # must not exist afterwards
    listener_port: int


def programs(t: Targets) -> dict[str, str]:
    vf, vd, cr = str(t.victim_file), str(t.victim_dir), str(t.created)
    return {
        "ok": "assert sum(range(5)) == 10",
        "assertion": "assert 1 + 1 == 3",
        "infinite_loop": "while True:\n    pass",
        "sleep": "import time\ntime.sleep(600)",
        "memory_at_once": "x = bytearray(10 ** 11)",
        "memory_growth": "x = []\nwhile True:\n    x.append(bytearray(10 ** 7))",
        "fork_bomb": "import os\nwhile True:\n    os.fork()",
        "os_system": f"import os\nos.system('touch {cr}')",
        "os_popen": f"import os\nos.popen('touch {cr}').read()",
        "subprocess_rm": f"import subprocess\nsubprocess.run(['rm', '-f', '{vf}'])",
        "os_execv": f"import os\nos.execv('/usr/bin/touch', ['touch', '{cr}'])",
        "os_remove": f"import os\nos.remove('{vf}')",
        "pathlib_unlink": f"import pathlib\npathlib.Path('{vf}').unlink()",
        "rmtree": f"import shutil\nshutil.rmtree('{vd}')",
        "rename": f"import os\nos.rename('{vf}', '{cr}')",
        "open_write_outside": f"open('{cr}', 'w').write('x')",
        "truncate_outside": f"open('{vf}', 'w')",
        "append_outside": f"open('{vf}', 'a').write('x')",
        "os_open_outside": f"import os\nos.open('{cr}', os.O_CREAT | os.O_WRONLY)",
        "io_open_outside": f"import _io\n_io.open('{cr}', 'w').write('x')",
        "symlink_escape": f"import os\nos.symlink('{vf}', 'link')\nopen('link', 'w').write('x')",
        "write_own_dir": "open('scratch.txt', 'w').write('hi')\nassert open('scratch.txt').read() == 'hi'",
        "report_workdir": "import os\nraise RuntimeError('WORKDIR=' + os.getcwd())",
        "sys_exit_0": "import sys\nsys.exit(0)",
        "os_exit_0": "import os\nos._exit(0)",
        "keyboard_interrupt": "raise KeyboardInterrupt",
        "stdout_flood": "while True:\n    print('x' * 10000)",
        "stderr_flood": "import sys\nwhile True:\n    sys.stderr.write('y' * 10000)",
        "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "kill_own_group": "import os, signal\nos.killpg(0, signal.SIGKILL)",
        "socket_connect": f"import socket\nsocket.create_connection(('127.0.0.1', {t.listener_port}), timeout=1)",
        "recursion": "def f(n):\n    return f(n + 1)\nf(0)",
        "stack_overflow": "import sys\nsys.setrecursionlimit(10 ** 7)\ndef f(n):\n    return f(n + 1)\nf(0)",
        "threads": "import threading\nout = []\nt = threading.Thread(target=out.append, args=(1,))\nt.start()\nt.join()\nassert out == [1]",
        "syntax_error": "def f(:\n    pass",
        "bad_str": "class E(Exception):\n    def __str__(self):\n        raise ValueError\nraise E()",
        "ctypes_system": CTYPES + f"assert libc.system(b'touch {cr}') == 0",
        "ctypes_unlink": CTYPES + f"assert libc.unlink(b'{vf}') == 0, ctypes.get_errno()",
        "ctypes_open_outside": CTYPES + f"assert libc.open(b'{cr}', 0o101, 0o644) >= 0, ctypes.get_errno()",
        "ctypes_fork": CTYPES + "pid = libc.fork()\nif pid == 0:\n    libc._exit(0)\nassert pid > 0, ctypes.get_errno()",
        "ctypes_kill_parent": CTYPES + "import os\nassert libc.kill(os.getppid(), 0) == 0, ctypes.get_errno()",
        "ctypes_socket": CTYPES + "assert libc.socket(2, 1, 0) >= 0, ctypes.get_errno()",
        "ctypes_kill_own_group": CTYPES + "libc.kill(0, 9)",
    }


@pytest.fixture(scope="module")
def battery(tmp_path_factory: pytest.TempPathFactory) -> tuple[Targets, dict[str, ExecResult], list[bytes]]:
    base = tmp_path_factory.mktemp("sandbox-targets")
    victim_file = base / "victim.txt"
    victim_file.write_text("precious")
    victim_dir = base / "victim-dir"
    victim_dir.mkdir()
    (victim_dir / "inside.txt").write_text("also precious")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.2)
    accepted: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(b"connection")
            conn.close()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    targets = Targets(victim_file, victim_dir, base / "created-by-sandbox", listener.getsockname()[1])
    cases = programs(targets)
    names = list(cases)
    results = run_programs([cases[name] for name in names], LIMITS, workers=2)
    stop.set()
    acceptor.join()
    listener.close()
    return targets, dict(zip(names, results)), accepted


def result(battery: tuple[Targets, dict[str, ExecResult], list[bytes]], name: str) -> ExecResult:
    return battery[1][name]


def test_a_correct_program_passes_and_a_wrong_one_fails(battery) -> None:
    assert result(battery, "ok").status == "passed"
    assertion = result(battery, "assertion")
    assert assertion.status == "failed" and assertion.detail.startswith("AssertionError")


@pytest.mark.parametrize("name", ["infinite_loop", "sleep", "stdout_flood", "stderr_flood"])
def test_programs_that_never_finish_time_out(battery, name: str) -> None:
    assert result(battery, name).status == "timeout"


@pytest.mark.parametrize("name", ["memory_at_once", "memory_growth"])
def test_memory_bombs_do_not_pass(battery, name: str) -> None:
    outcome = result(battery, name)
    assert outcome.status in ("failed", "timeout", "crashed")
    if name == "memory_at_once":
        assert outcome.detail.startswith("MemoryError")


@pytest.mark.parametrize(
    "name",
    [
        "fork_bomb", "os_system", "os_popen", "subprocess_rm", "os_execv", "os_remove", "pathlib_unlink",
        "rmtree", "rename", "open_write_outside", "truncate_outside", "append_outside", "os_open_outside",
        "symlink_escape", "kill_parent", "kill_own_group", "socket_connect",
    ],
)
def test_escape_attempts_are_refused(battery, name: str) -> None:
    outcome = result(battery, name)
    assert outcome.status == "failed"
    assert "PermissionError" in outcome.detail


def test_nothing_outside_the_sandbox_was_deleted_changed_or_created(battery) -> None:
    targets = battery[0]
    assert targets.victim_file.read_text() == "precious"
    assert (targets.victim_dir / "inside.txt").read_text() == "also precious"
    assert not targets.created.exists()
    assert battery[2] == []  # no connection reached the listening socket


def test_os_level_layers_hold_without_the_python_guard(battery) -> None:
    layers = result(battery, "ok").layers
    if not (layers.get("landlock_abi") and layers.get("seccomp")):
        pytest.skip(f"this kernel lacks Landlock or seccomp for the sandbox: {layers}")
    for name in ("ctypes_system", "ctypes_unlink", "ctypes_open_outside", "ctypes_fork", "ctypes_kill_parent", "ctypes_socket"):
        outcome = result(battery, name)
        assert outcome.status == "failed", (name, outcome)
        assert outcome.detail.startswith("AssertionError"), (name, outcome)
    io_open = result(battery, "io_open_outside")  # builtins.open is guarded, _io.open is not
    assert io_open.status == "failed" and "PermissionError" in io_open.detail
    # errno values: EPERM from seccomp, EACCES from Landlock
    assert result(battery, "ctypes_unlink").detail == f"AssertionError: {1}"
    assert result(battery, "ctypes_open_outside").detail == f"AssertionError: {13}"


def test_write_inside_own_directory_works_and_the_directory_is_removed(battery) -> None:
    assert result(battery, "write_own_dir").status == "passed"
    detail = result(battery, "report_workdir").detail
    match = re.search(r"WORKDIR=(\S+)", detail)
    assert match, detail
    assert not Path(match.group(1)).exists()


@pytest.mark.parametrize(("name", "detail"), [("sys_exit_0", "SystemExit: 0"), ("keyboard_interrupt", "KeyboardInterrupt")])
def test_exiting_early_is_a_failure(battery, name: str, detail: str) -> None:
    outcome = result(battery, name)
    assert (outcome.status, outcome.detail) == ("failed", detail)


def test_hard_exits_and_crashes_are_failures(battery) -> None:
    assert result(battery, "os_exit_0").status == "crashed"
    assert result(battery, "stack_overflow").status != "passed"
    assert result(battery, "ctypes_kill_own_group").status == "crashed"
    assert "SIGKILL" in result(battery, "ctypes_kill_own_group").detail


def test_ordinary_failures_are_reported(battery) -> None:
    assert result(battery, "recursion").detail.startswith("RecursionError")
    assert result(battery, "syntax_error").detail.startswith("SyntaxError")
    assert result(battery, "bad_str").status == "failed"
    assert result(battery, "threads").status == "passed"


def test_the_scorer_process_is_unharmed(battery) -> None:
    # Still here, and still able to run another program after the whole battery.
    assert run_program("assert True", LIMITS).status == "passed"
    os.kill(os.getpid(), 0)


def test_python_guard_alone_still_refuses_shell_and_deletion(tmp_path: Path) -> None:
    victim = tmp_path / "keep.txt"
    victim.write_text("x")
    marker = tmp_path / "made"
    limits = SandboxLimits(timeout_s=5.0, isolate=False)
    results = run_programs(
        [f"import os\nos.system('touch {marker}')", f"import os\nos.unlink('{victim}')", "assert 2 * 2 == 4"],
        limits,
        workers=2,
    )
    assert [r.status for r in results] == ["failed", "failed", "passed"]
    assert results[2].layers == {"python_guard": True}
    assert victim.exists() and not marker.exists()


def test_run_programs_reports_each_result_once_in_order() -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def on_done(index: int, _result: ExecResult) -> None:
        with lock:
            seen.append(index)

    sources = [f"assert {i} % 2 == 0" for i in range(6)]
    results = run_programs(sources, SandboxLimits(timeout_s=5.0), workers=3, on_done=on_done)
    assert [r.passed for r in results] == [i % 2 == 0 for i in range(6)]
    assert sorted(seen) == list(range(6))


def _header_numbers(header: Path) -> dict[str, int]:
    numbers: dict[str, int] = {}
    for match in re.finditer(r"#define __NR(?:3264)?_(\w+)\s+(\d+)", header.read_text()):
        numbers.setdefault(match.group(1), int(match.group(2)))
    return numbers


@pytest.mark.parametrize(
    ("arch", "header"),
    [("x86_64", "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"), ("aarch64", "/usr/include/asm-generic/unistd.h")],
)
def test_seccomp_syscall_numbers_match_the_kernel_headers(arch: str, header: str) -> None:
    path = Path(header)
    if not path.is_file():
        pytest.skip(f"{header} not installed (linux-libc-dev)")
    known = _header_numbers(path)
    checked = 0
    for name, number in confinement.SYSCALLS[arch].items():
        if name in known:  # older headers lack the newest calls (fchmodat2)
            assert known[name] == number, name
            checked += 1
    assert checked >= len(confinement.SYSCALLS[arch]) - 2


def test_seccomp_filter_jumps_stay_inside_the_program() -> None:
    for arch in confinement.SYSCALLS:
        program = confinement.build_seccomp_filter(arch, own_pid=4242)
        assert len(program) < 4096
        for index, (code, jt, jf, _k) in enumerate(program):
            if code & 0x07 == 0x05:  # BPF_JMP
                assert index + 1 + max(jt, jf) < len(program)
        assert program[-1] == (0x06, 0, 0, 0x7FFF0000)  # default: allow


def _children_of(parent_pid: int) -> list[int]:
    """Sandbox children started by parent_pid (their config names it), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"sandbox_child" in cmdline and f'"parent_pid": {parent_pid}'.encode() in cmdline:
            found.append(int(entry.name))
    return found


def test_a_sleeping_program_dies_with_a_scorer_that_is_killed(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    scorer = textwrap.dedent(
        """
        import os, sys, threading, time
        sys.path.insert(0, sys.argv[1])
        from kvarn_cli.scoring.sandbox import SandboxLimits, run_program
        threading.Thread(target=run_program, args=("import time\\ntime.sleep(600)", SandboxLimits(timeout_s=600)), daemon=True).start()
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", scorer, str(Path(__file__).resolve().parents[1])])
    try:
        for _ in range(600):  # wait until its sandbox child is running
            if _children_of(proc.pid):
                break
            time.sleep(0.1)
        children = _children_of(proc.pid)
        assert children, "the sandbox child never started"
        # Let the child get past its set-up (which would die of SIGPIPE reporting "ready" to a
        # dead parent) into the sleeping program: its seccomp filter is installed just before.
        for _ in range(100):
            status = Path(f"/proc/{children[0]}/status").read_text()
            if "Seccomp:\t2" in status:
                break
            time.sleep(0.1)
        time.sleep(1.0)
        cmdline = Path(f"/proc/{children[0]}/cmdline").read_bytes().split(b"\0")
        workdir = json.loads(next(arg for arg in cmdline if arg.startswith(b"{")))["dir"]
    finally:
        proc.kill()
        proc.wait()
    for _ in range(100):
        if not _children_of(proc.pid):
            break
        time.sleep(0.1)
    assert _children_of(proc.pid) == []
    shutil.rmtree(workdir, ignore_errors=True)  # a killed scorer cannot clean up after itself
