"""The run directory: append-only outputs that survive kills, settings that guard resumes.

Files in DIR:
- run.json       settings of the run (model, preset, sampling, input hash, shard); a resume must match
- outputs.jsonl  one line per finished record, appended and fsync'd as each finishes
- skipped.jsonl  records that could not run, with the input line and the reason
- attempts.jsonl one line per invocation: start, end, status, records finished, host, Slurm ids
- stats.json     engine, KV cache and throughput figures of the latest attempt
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import orjson

from kvarn_cli.errors import InputError

#: Settings that must be equal for a resume to continue a run (others, like progress display, may change).
RESUME_KEYS = ("input_sha256", "model", "preset", "sampling", "max_model_len", "shard", "kvarn_format")
FORMAT_VERSION = 1


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON via a temp file and rename, so a kill never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc})", path=str(path)) from None


class OutputLog:
    """Append-only JSONL where every line is written whole with one write() and fsync'd.

    A process killed mid-write can leave at most one torn last line; `open()` cuts it off, so
    the record it held is simply redone and never duplicated.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def repair_and_read(self) -> list[dict[str, Any]]:
        """Drop a torn last line if any, and return the complete records already written."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with self.path.open("r+b") as fh:
                fh.truncate(keep)
                os.fsync(fh.fileno())
            data = data[:keep]
        records = []
        for lineno, line in enumerate(data.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InputError(f"corrupt output line ({exc}); refusing to resume over it", path=str(self.path), line=lineno) from None
            records.append(rec)
        return records

    def open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict[str, Any]) -> None:
        assert self.fd is not None
        line = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        written = os.write(self.fd, line)
        while written < len(line):  # regular files write whole; loop only for exotic filesystems
            written += os.write(self.fd, line[written:])
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def check_resumable(out_dir: Path, settings: dict[str, Any]) -> bool:
    """True if `out_dir` holds an earlier attempt of this same run; raises if it holds anything else."""
    run_json = out_dir / "run.json"
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise InputError("--out exists and is not a directory", path=str(out_dir))
    if not run_json.exists():
        if any(out_dir.iterdir()):
            raise InputError("--out is a non-empty directory that is not a kvarn run; choose a new --out", path=str(out_dir))
        return False
    old = read_json(run_json)
    for key in RESUME_KEYS:
        if old.get(key) != settings.get(key):
            raise InputError(
                f"cannot resume: this directory's run has a different {key!r} "
                f"({old.get(key)!r} there, {settings.get(key)!r} now); use a new --out",
                path=str(out_dir),
            )
    return True


def attempt_record(status: str, started: float, **extra: Any) -> dict[str, Any]:
    env = os.environ
    return {
        "status": status,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": env.get("SLURM_JOB_ID"),
        "slurm_array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
        **extra,
    }


def append_line(path: Path, obj: Any) -> None:
    with path.open("ab") as fh:
        fh.write(orjson.dumps(obj) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
