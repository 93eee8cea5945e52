"""Turn the standard reasoning benchmarks into kvarn job files.

Each converter takes the raw rows (from a local JSONL file with the original field names, or the
same set from the Hugging Face hub) and returns job records with a stable `id`, a `task` the
scorer understands, and the reference `answer`. Original fields are kept for provenance.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from kvarn_cli.errors import InputError

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function (signature, "
    "body and any imports it needs) in a single ```python code block."
)

Row = dict[str, Any]


def _lower_keys(row: Row) -> Row:
    return {k.lower(): v for k, v in row.items()}


def _math500(rows: Iterable[Row]) -> list[Row]:
    out = []
    for i, row in enumerate(map(_lower_keys, rows)):
        uid = str(row.get("unique_id") or i).removesuffix(".json")
        out.append({
            "id": f"math500/{uid}",
            "task": "math",
            "prompt": f"{row['problem']}\n\n{MATH_INSTRUCTION}",
            "answer": str(row["answer"]),
            "subject": row.get("subject"),
            "level": row.get("level"),
        })
    return out


def _aime24(rows: Iterable[Row]) -> list[Row]:
    out = []
    for i, row in enumerate(map(_lower_keys, rows)):
        out.append({
            "id": f"aime24/{row.get('id', i)}",
            "task": "aime",
            "prompt": f"{row['problem']}\n\n{MATH_INSTRUCTION}",
            "answer": str(row["answer"]),
            "url": row.get("url"),
        })
    return out


def _gsm8k(rows: Iterable[Row]) -> list[Row]:
    out = []
    for i, row in enumerate(map(_lower_keys, rows)):
        solution = str(row["answer"])
        if "####" not in solution:
            raise InputError(f"GSM8K row {i} has no '#### N' final answer")
        out.append({
            "id": f"gsm8k/{i}",
            "task": "gsm8k",
            "prompt": f"{row['question']}\n\n{MATH_INSTRUCTION}",
            "answer": solution.rsplit("####", 1)[1].strip().replace(",", ""),
            "solution": solution,
        })
    return out


def _humaneval(rows: Iterable[Row]) -> list[Row]:
    out = []
    for row in map(_lower_keys, rows):
        code = row["prompt"]
        out.append({
            "id": row["task_id"],
            "task": "humaneval",
            "prompt": f"{CODE_INSTRUCTION}\n\n```python\n{code}```",
            "code_prompt": code,
            "test": row["test"],
            "entry_point": row["entry_point"],
        })
    return out


#: name -> (converter, file name in a local data directory, (hub id, config, split))
DATASETS: dict[str, tuple[Callable[[Iterable[Row]], list[Row]], str, tuple[str, str | None, str]]] = {
    "math500": (_math500, "math500.jsonl", ("HuggingFaceH4/MATH-500", None, "test")),
    "aime24": (_aime24, "aime24.jsonl", ("HuggingFaceH4/aime_2024", None, "train")),
    "gsm8k": (_gsm8k, "gsm8k_test.jsonl", ("openai/gsm8k", "main", "test")),
    "humaneval": (_humaneval, "humaneval.jsonl", ("openai/openai_humaneval", None, "test")),
}


def _read_local(path: Path, file_name: str) -> list[Row]:
    if path.is_dir():
        path = path / file_name
    if not path.is_file():
        raise InputError("dataset file not found", path=str(path))
    rows = []
    for lineno, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"not valid JSON ({exc})", path=str(path), line=lineno) from None
        if not isinstance(row, dict):
            raise InputError("expected a JSON object", path=str(path), line=lineno)
        rows.append(row)
    return rows


def _read_hub(hub_id: str, config: str | None, split: str) -> list[Row]:
    from datasets import load_dataset

    try:
        ds = load_dataset(hub_id, config, split=split)
    except Exception as exc:  # network, auth or name errors: all are the user's to fix
        raise InputError(f"could not load {hub_id} from the Hugging Face hub: {exc}") from None
    return [dict(r) for r in ds]


def build_jobs(name: str, source: str, limit: int | None = None, seed: int | None = None) -> list[Row]:
    """Convert dataset `name` from `source` (a file or directory path, or 'hf') to job records.

    With `limit`, keep the first `limit` records, or a random sample of that size (in the
    original order) when `seed` is given.
    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}")
    convert, file_name, hub = DATASETS[name]
    try:
        rows = _read_hub(*hub) if source == "hf" else _read_local(Path(source), file_name)
        jobs = convert(rows)
    except KeyError as exc:
        raise InputError(f"{source}: rows lack the field {exc} expected for {name}") from None
    if limit is not None:
        if limit < 1:
            raise InputError("--limit must be at least 1")
        if seed is not None:
            keep = sorted(random.Random(seed).sample(range(len(jobs)), min(limit, len(jobs))))
            jobs = [jobs[i] for i in keep]
        else:
            jobs = jobs[:limit]
    return jobs
