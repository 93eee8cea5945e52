"""Job files: JSONL, one request a line, validated before any engine starts.

Validation runs in full before a run so that a typo on line 9,000 fails in a second, not after
hours of GPU time. Problems are collected per line so `--on-error skip` can run the good records
and list the bad ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from kvarn_cli.errors import InputError

TASKS: frozenset[str] = frozenset({"math", "gsm8k", "aime", "humaneval"})
_ROLES = frozenset({"system", "user", "assistant", "tool"})


@dataclass(frozen=True)
class JobRecord:
    """One validated input record; `data` is the whole input object, passed through to outputs."""

    id: str
    line: int
    data: dict[str, Any]

    @property
    def task(self) -> str | None:
        return self.data.get("task")

    def messages(self) -> list[dict[str, str]]:
        """The chat to send: `messages` as given, or `prompt` as a single user turn."""
        if "messages" in self.data:
            return list(self.data["messages"])
        return [{"role": "user", "content": self.data["prompt"]}]


@dataclass(frozen=True)
class LineProblem:
    """A line that cannot run, with the reason; `record_id` is set when the line had a usable id."""

    line: int
    reason: str
    record_id: str | None = None


@dataclass
class JobFile:
    path: Path
    records: list[JobRecord] = field(default_factory=list)
    problems: list[LineProblem] = field(default_factory=list)
    sha256: str = ""

    def raise_first_problem(self) -> None:
        if self.problems:
            p = self.problems[0]
            more = f" (and {len(self.problems) - 1} more problem lines)" if len(self.problems) > 1 else ""
            raise InputError(p.reason + more, path=str(self.path), line=p.line)


def _check_record(obj: Any) -> str | None:
    """Return why `obj` is not a valid job record, or None when it is."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    rid = obj.get("id")
    if rid is None:
        return "record has no 'id' (expected a unique string)"
    if not isinstance(rid, str) or not rid.strip():
        return f"'id' must be a non-empty string, got {rid!r}"
    has_prompt, has_messages = "prompt" in obj, "messages" in obj
    if has_prompt == has_messages:
        return "record needs exactly one of 'prompt' (string) or 'messages' (chat list)"
    if has_prompt:
        if not isinstance(obj["prompt"], str):
            return f"'prompt' must be a string, got {type(obj['prompt']).__name__}"
        if not obj["prompt"].strip():
            return "'prompt' is empty"
    else:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            return "'messages' must be a non-empty list of {'role', 'content'} objects"
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in _ROLES:
                return f"messages[{i}] must be an object with 'role' in {sorted(_ROLES)} and string 'content'"
    task = obj.get("task")
    if task is not None and task not in TASKS:
        return f"unknown task {task!r}; expected one of {sorted(TASKS)} or null"
    return None


def read_jobs(path: Path) -> JobFile:
    """Read and validate every line of a job file; raises InputError only if the file is unusable."""
    if not path.exists():
        raise InputError("input file not found", path=str(path))
    if not path.is_file():
        raise InputError("input is not a regular file", path=str(path))
    raw = path.read_bytes()
    jf = JobFile(path=path, sha256=hashlib.sha256(raw).hexdigest())
    seen: dict[str, int] = {}
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            jf.problems.append(LineProblem(lineno, f"not valid JSON ({exc}); a job file has one JSON object per line"))
            continue
        reason = _check_record(obj)
        rid = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else None
        if reason is None and rid in seen:
            reason = f"duplicate id {rid!r} (first seen on line {seen[rid]})"
            rid = None  # the id belongs to the first record; never attribute this problem to it
        if reason is not None:
            jf.problems.append(LineProblem(lineno, reason, rid))
            continue
        seen[rid] = lineno
        jf.records.append(JobRecord(id=rid, line=lineno, data=obj))
    if not jf.records and not jf.problems:
        raise InputError("input file has no records", path=str(path))
    return jf


def parse_shard(spec: str) -> tuple[int, int]:
    """Parse `I/N` (0 <= I < N) into (I, N)."""
    try:
        i_str, n_str = spec.split("/")
        i, n = int(i_str), int(n_str)
    except ValueError:
        raise InputError(f"--shard must look like I/N (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {spec}: need 0 <= I < N")
    return i, n


def shard_entries(jobs: JobFile, index: int, count: int) -> tuple[list[JobRecord], list[LineProblem]]:
    """Slice I of N, round-robin over every non-blank line (good or bad) in file order.

    Deterministic and balanced, and each line (a bad one too) belongs to exactly one shard,
    so `kvarn merge` can prove that shards cover the input with no gaps.
    """
    entries: list[JobRecord | LineProblem] = sorted([*jobs.records, *jobs.problems], key=lambda e: e.line)
    mine = [e for pos, e in enumerate(entries) if pos % count == index]
    return [e for e in mine if isinstance(e, JobRecord)], [e for e in mine if isinstance(e, LineProblem)]
