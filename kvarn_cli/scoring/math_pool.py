"""Math checks in a pool of worker processes, each check bounded from outside as well.

math-verify bounds its own parsing and comparison with SIGALRM, which interrupts Python code
but not a long computation inside C (a huge integer power, say) nor a crash of the interpreter.
So checks run in worker processes (where SIGALRM works: each worker's main thread does the
checking), and the parent kills and replaces a worker that overruns a generous deadline; the
check it was doing counts as wrong with the note "timeout". Workers also spread the checks of a
large run over all cores.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
from dataclasses import asdict
from multiprocessing.connection import Connection
from typing import Any, Callable, Sequence

from kvarn_cli.scoring.math_answers import MathVerdict, check_math, extract_answer

MathItem = tuple[str, str, Any]  # (task, completion, reference answer)
#: A worker takes this long to start and import math-verify, at most, on a loaded machine.
_STARTUP_TIMEOUT_S = 120.0
#: Items per worker below which adding a worker costs more (its start-up) than it saves.
_ITEMS_PER_WORKER = 64


def _worker_main(conn: Connection) -> None:
    import math_verify  # noqa: F401 - import once, before the first deadline starts

    conn.send("ready")
    while True:
        message = conn.recv()
        if message is None:
            return
        task, completion, answer, timeout_s = message
        conn.send(asdict(check_math(task, completion, answer, timeout_s)))


def item_deadline(timeout_s: int) -> float:
    """The outside bound on one check: two parses and up to four comparisons, each bounded by
    timeout_s inside the worker, plus slack for a machine under load."""
    return 6.0 * timeout_s + 10.0


class _Worker:
    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child_conn,), daemon=True)
        self.process.start()
        child_conn.close()
        if not self.conn.poll(_STARTUP_TIMEOUT_S) or self.conn.recv() != "ready":
            self.kill()
            raise RuntimeError("math checker worker did not start")

    def check(self, item: MathItem, timeout_s: int, deadline_s: float) -> MathVerdict | None:
        """The verdict, or None if the worker overran its deadline or died (it is then dead)."""
        task, completion, answer = item
        try:
            self.conn.send((task, completion, answer, timeout_s))
            if not self.conn.poll(deadline_s):
                self.kill()
                return None
            return MathVerdict(**self.conn.recv())
        except (EOFError, OSError, BrokenPipeError):
            self.kill()
            return None

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.process.join(timeout=5)
        self.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


def _fallback(item: MathItem, note: str) -> MathVerdict:
    task, completion, _answer = item
    try:
        extracted = extract_answer(task, completion)
    except Exception:  # noqa: BLE001
        extracted = None
    return MathVerdict(False, extracted, None, note)


def check_math_items(
    items: Sequence[MathItem],
    workers: int,
    timeout_s: int = 5,
    on_done: Callable[[int, MathVerdict], None] | None = None,
    deadline_s: float | None = None,
) -> list[MathVerdict]:
    """Checks every item; workers=0 checks in this process (main thread only, no outside bound).

    deadline_s overrides the outside bound per check (default: item_deadline(timeout_s))."""
    deadline = deadline_s if deadline_s is not None else item_deadline(timeout_s)
    results: list[MathVerdict | None] = [None] * len(items)
    if workers <= 0:
        for index, item in enumerate(items):
            results[index] = check_math(item[0], item[1], item[2], timeout_s)
            if on_done is not None:
                on_done(index, results[index])  # type: ignore[arg-type]
        return [r for r in results if r is not None]

    pending: queue.Queue[int] = queue.Queue()
    for index in range(len(items)):
        pending.put(index)
    count = max(1, min(workers, -(-len(items) // _ITEMS_PER_WORKER)))

    stop = threading.Event()

    def drive() -> None:
        worker: _Worker | None = None
        try:
            while not stop.is_set():
                try:
                    index = pending.get_nowait()
                except queue.Empty:
                    return
                verdict: MathVerdict | None = None
                try:
                    if worker is None:
                        worker = _Worker()
                    verdict = worker.check(items[index], timeout_s, deadline)
                    if verdict is None:
                        worker = None  # killed; the next item gets a fresh one
                        verdict = _fallback(items[index], "timeout")
                except RuntimeError:
                    verdict = _fallback(items[index], "checker did not start")
                results[index] = verdict
                if on_done is not None:
                    on_done(index, verdict)
        finally:
            if worker is not None:
                worker.stop()

    threads = [threading.Thread(target=drive, name=f"kvarn-math-{i}", daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    finally:
        stop.set()  # on Ctrl-C: no new checks; workers are daemons and die with us
    return [r if r is not None else _fallback(items[i], "not checked") for i, r in enumerate(results)]
