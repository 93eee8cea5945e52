"""Reading the files of a run directory written by `kvarn run`.

outputs.jsonl is read leniently in one way only: a torn last line (a run killed mid-write) is
dropped with a warning, because the run can be resumed and nothing in it was complete. Any other
malformed line is the user's problem to see: an InputError naming file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvarn_cli.errors import InputError
from kvarn_cli.run_dir import write_json_atomic

__all__ = ["write_json_atomic", "read_outputs", "read_json_file", "require_run_dir", "RunOutputs"]

OUTPUTS = "outputs.jsonl"
STATS = "stats.json"
RUN = "run.json"
SCORES = "scores.json"


@dataclass
class RunOutputs:
    records: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)


def require_run_dir(run_dir: Path) -> Path:
    """The outputs.jsonl of a run directory; InputError when the directory or file is missing."""
    if not run_dir.exists():
        raise InputError("run directory does not exist", str(run_dir))
    if not run_dir.is_dir():
        raise InputError("expected a run directory (written by `kvarn run --out DIR`), got a file", str(run_dir))
    outputs = run_dir / OUTPUTS
    if not outputs.is_file():
        raise InputError(f"no {OUTPUTS} here; is this a directory written by `kvarn run --out`?", str(run_dir))
    return outputs


def read_outputs(run_dir: Path) -> RunOutputs:
    """The records of DIR/outputs.jsonl, each checked for `id` and `completions`."""
    path = require_run_dir(run_dir)
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    torn_last = not raw.endswith(b"\n") and raw != b""
    result = RunOutputs(records=[])
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        is_last = number == len(lines)
        try:
            record = json.loads(line)
        except ValueError as exc:
            if is_last and torn_last:
                result.warnings.append(f"{path}:{number}: ignoring an incomplete last line (the run was interrupted?)")
                continue
            raise InputError(f"not valid JSON ({exc.msg})", str(path), number) from None
        if not isinstance(record, dict):
            raise InputError("expected a JSON object", str(path), number)
        record_id = record.get("id")
        if not isinstance(record_id, str) or not record_id:
            raise InputError("record has no string `id`", str(path), number)
        completions = record.get("completions")
        if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
            raise InputError("`completions` must be a list of strings", str(path), number)
        if record_id in seen:
            raise InputError(f"duplicate id {record_id!r} (first on line {seen[record_id]})", str(path), number)
        seen[record_id] = number
        result.records.append(record)
    return result


def read_json_file(path: Path) -> dict[str, Any] | None:
    """A JSON object file of a run (stats.json, run.json, scores.json), None if absent."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid JSON ({exc})", str(path)) from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", str(path))
    return data
