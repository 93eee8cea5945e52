"""Scoring a run directory: check every completion, aggregate, write DIR/scores.json.

Which records are scored, by `task`:
- math, gsm8k, aime: the final answer against `answer` (math_answers.py, in a worker pool);
- humaneval: the code executed against the record's `test` in the sandbox (code_exec.py);
- anything else (no task, an unknown task, no answer, no test, no completions) is counted as
  "not scored" with its reason, in the summary and on the record, never silently dropped.
"""

from __future__ import annotations

import datetime
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kvarn_cli import __version__
from kvarn_cli.scoring import metrics
from kvarn_cli.scoring.code_exec import CodeProblem
from kvarn_cli.scoring.math_answers import MATH_TASKS, MathVerdict, reference_answer
from kvarn_cli.scoring.run_files import SCORES, read_outputs, write_json_atomic
from kvarn_cli.scoring.sandbox import ExecResult, SandboxLimits, default_workers

CODE_TASKS = ("humaneval",)
KNOWN_TASKS = MATH_TASKS + CODE_TASKS
NO_TASK = "none"


@dataclass(frozen=True)
class ScoreOptions:
    workers: int | None = None
    #: Wall-clock seconds for one HumanEval completion's program.
    code_timeout_s: float = 10.0
    #: Seconds for one math-verify parse or comparison.
    math_timeout_s: int = 5
    code_memory_bytes: int = 1 << 30


@dataclass
class _Plan:
    """What to check for one record, decided before any checking."""

    record: dict[str, Any]
    task: str
    reason: str | None = None
    problem: CodeProblem | None = None
    math_results: list[MathVerdict] = field(default_factory=list)
    code_results: list[ExecResult] = field(default_factory=list)


def _task_of(record: dict[str, Any]) -> str:
    task = record.get("task")
    return task if isinstance(task, str) and task else NO_TASK


def _plan(record: dict[str, Any]) -> _Plan:
    task = _task_of(record)
    plan = _Plan(record, task)
    if task == NO_TASK:
        plan.reason = "no task"
    elif task not in KNOWN_TASKS:
        plan.reason = f"unknown task {task!r}"
    elif not record["completions"]:
        plan.reason = "no completions"
    elif task in MATH_TASKS:
        if record.get("answer") is None:
            plan.reason = "no answer"
        else:
            try:
                reference_answer(task, record["answer"])
            except ValueError as exc:
                plan.reason = f"unusable answer: {exc}"
    else:
        test, entry_point = record.get("test"), record.get("entry_point")
        code_prompt = record.get("code_prompt")
        if not isinstance(test, str) or not test.strip():
            plan.reason = "no test"
        elif not isinstance(entry_point, str) or not entry_point.isidentifier():
            plan.reason = "no entry_point"
        else:
            plan.problem = CodeProblem(code_prompt if isinstance(code_prompt, str) else "", test, entry_point)
    return plan


def score_run(
    run_dir: Path,
    options: ScoreOptions = ScoreOptions(),
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Scores DIR/outputs.jsonl, writes DIR/scores.json and returns its content.

    progress(n) is called as completions are checked (from worker threads), after on_total(N)."""
    from kvarn_cli.scoring.code_exec import check_completions
    from kvarn_cli.scoring.math_pool import check_math_items

    outputs = read_outputs(run_dir)
    for message in outputs.warnings:
        if warn is not None:
            warn(message)
    plans = [_plan(record) for record in outputs.records]
    workers = options.workers or default_workers()

    math_items: list[tuple[str, str, Any]] = []
    math_owner: list[tuple[int, int]] = []
    code_items: list[tuple[str, CodeProblem]] = []
    code_owner: list[tuple[int, int]] = []
    for index, plan in enumerate(plans):
        if plan.reason is not None:
            continue
        for position, completion in enumerate(plan.record["completions"]):
            if plan.task in MATH_TASKS:
                math_items.append((plan.task, completion, plan.record["answer"]))
                math_owner.append((index, position))
            else:
                assert plan.problem is not None
                code_items.append((completion, plan.problem))
                code_owner.append((index, position))
    if on_total is not None:
        on_total(len(math_items) + len(code_items))

    started = time.monotonic()
    tick = (lambda _i, _r: progress(1)) if progress is not None else None
    math_results = check_math_items(math_items, workers, options.math_timeout_s, tick)
    limits = SandboxLimits(timeout_s=options.code_timeout_s, memory_bytes=options.code_memory_bytes)
    code_results = check_completions(code_items, limits, workers, tick)
    for (index, _position), verdict in zip(math_owner, math_results):
        plans[index].math_results.append(verdict)
    for (index, _position), result in zip(code_owner, code_results):
        plans[index].code_results.append(result)

    records = [_record_entry(plan) for plan in plans]
    sandbox_layers = code_results[0].layers if code_results else None
    scores = {
        "summary": summarize(records),
        "records": records,
        "scoring": {
            "kvarn_version": __version__,
            "scored_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - started, 2),
            "workers": workers,
            "code_timeout_s": options.code_timeout_s,
            "code_memory_bytes": options.code_memory_bytes,
            "math_timeout_s": options.math_timeout_s,
            "sandbox_layers": sandbox_layers,
            "warnings": outputs.warnings,
        },
    }
    write_json_atomic(run_dir / SCORES, scores)
    return scores


def _clean(text: str | None) -> str | None:
    """Text taken from completions, made encodable (lone surrogates can come out of JSON)."""
    return None if text is None else text.encode("utf-8", "replace").decode("utf-8")


def _record_entry(plan: _Plan) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": plan.record["id"], "task": None if plan.task == NO_TASK else plan.task}
    if plan.reason is not None:
        entry.update({"scored": False, "reason": plan.reason, "correct": [], "pass@1": None})
        return entry
    if plan.task in MATH_TASKS:
        correct = [v.correct for v in plan.math_results]
        majority, majority_correct = metrics.majority_vote([v.vote_key for v in plan.math_results], correct)
        entry.update(
            {
                "scored": True,
                "correct": correct,
                "extracted": [_clean(v.extracted) for v in plan.math_results],
                "majority": _clean(majority),
                "majority_correct": majority_correct,
            }
        )
        notes = [v.note for v in plan.math_results]
        if any(notes):
            entry["notes"] = notes
    else:
        correct = [r.passed for r in plan.code_results]
        entry.update(
            {
                "scored": True,
                "correct": correct,
                "status": [r.status for r in plan.code_results],
                "errors": [_clean(r.detail[:200]) for r in plan.code_results],
            }
        )
    n = len(correct)
    c = sum(correct)
    entry["pass@1"] = c / n
    entry["pass@k"] = {str(k): metrics.pass_at_k(n, c, k) for k in metrics.k_values(n)}
    return entry


def _group_summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    scored = [e for e in entries if e["scored"]]
    completions = sum(len(e["correct"]) for e in scored)
    correct = sum(sum(e["correct"]) for e in scored)
    max_n = max((len(e["correct"]) for e in scored), default=0)
    pass_at: dict[str, float | None] = {}
    for k in metrics.k_values(max_n):
        pass_at[str(k)] = metrics.mean(
            metrics.pass_at_k(len(e["correct"]), sum(e["correct"]), k) for e in scored if len(e["correct"]) >= k
        )
    voted = [e for e in scored if "majority_correct" in e]
    reasons = Counter(e["reason"] for e in entries if not e["scored"])
    return {
        "records": len(entries),
        "scored": len(scored),
        "not_scored": len(entries) - len(scored),
        "not_scored_reasons": dict(sorted(reasons.items())),
        "completions": completions,
        "correct": correct,
        "accuracy": correct / completions if completions else None,
        "pass@1": metrics.mean(e["pass@1"] for e in scored),
        "k": max_n,
        "pass@k": pass_at,
        "maj@k": metrics.mean(float(e["majority_correct"]) for e in voted) if voted else None,
    }


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Overall and per-task figures; records without a task are grouped under "none"."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for entry in records:
        by_task.setdefault(entry["task"] or NO_TASK, []).append(entry)
    return {
        "overall": _group_summary(records),
        "by_task": {task: _group_summary(entries) for task, entries in sorted(by_task.items())},
    }
