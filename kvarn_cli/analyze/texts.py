"""The long texts `kvarn analyze` feeds the model, from a plain text file or a JSONL job file.

Error accumulation only shows over thousands of tokens, and job records are short, so a text
from `--jobs` is several consecutive records concatenated until it reaches `max_tokens`.
Each record contributes what the model would see in a run: its prompt (`prompt`, or
`messages`, or a dataset's `problem`/`question`) rendered through the chat template, followed
by its answer text: `completions[0]` (a finished `kvarn run`'s outputs.jsonl), else
`solution` (MATH500, AIME), `canonical_solution` (HumanEval) or `answer` (GSM8K's worked answer).
So `--jobs ../shared/data/math500.jsonl` gives MATH500 problems with their worked solutions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvarn_cli.errors import InputError

PROMPT_FIELDS = ("prompt", "problem", "question")
ANSWER_FIELDS = ("solution", "canonical_solution", "answer")


@dataclass
class TokenText:
    """One text to analyze: token ids and where they came from."""

    ids: list[int]
    source: str


def read_text_file(path: Path) -> str:
    if not path.is_file():
        raise InputError("no such file (expected a UTF-8 text file)", str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason})", str(path)) from None
    if not text.strip():
        raise InputError("the text file is empty", str(path))
    return text


def read_job_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-blank line; raises InputError on the first bad one."""
    if not path.is_file():
        raise InputError("no such file (expected JSONL, one JSON object a line)", str(path))
    records: list[tuple[int, dict[str, Any]]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"not valid JSON ({exc.msg})", str(path), number) from None
            if not isinstance(record, dict):
                raise InputError("expected a JSON object", str(path), number)
            records.append((number, record))
    if not records:
        raise InputError("the job file has no records", str(path))
    return records


def _render_prompt(tokenizer: Any, record: dict[str, Any], path: Path, line: int) -> str:
    messages = record.get("messages")
    if messages is None:
        prompt = next((record[f] for f in PROMPT_FIELDS if isinstance(record.get(f), str)), None)
        if prompt is None:
            raise InputError(
                "expected a `prompt` string or a `messages` list (or a dataset `problem`/`question`)",
                str(path), line,
            )
        messages = [{"role": "user", "content": prompt}]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InputError("`messages` must be a list of {role, content} objects", str(path), line)
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return "\n".join(str(m.get("content", "")) for m in messages) + "\n"


def _answer_text(record: dict[str, Any]) -> str:
    completions = record.get("completions")
    if isinstance(completions, list) and completions and isinstance(completions[0], str):
        return completions[0]
    for name in ANSWER_FIELDS:
        value = record.get(name)
        if value is not None and value != "":
            return str(value)
    return ""


def record_text(tokenizer: Any, record: dict[str, Any], path: Path, line: int) -> str:
    """What the model sees for one record: the rendered prompt and then its answer."""
    return _render_prompt(tokenizer, record, path, line) + _answer_text(record) + "\n\n"


def texts_from_file(tokenizer: Any, path: Path, max_tokens: int) -> list[TokenText]:
    ids = tokenizer(read_text_file(path), add_special_tokens=True)["input_ids"][:max_tokens]
    return [TokenText(ids=list(ids), source=str(path))]


def texts_from_jobs(tokenizer: Any, path: Path, max_tokens: int, num_texts: int) -> list[TokenText]:
    """Up to num_texts texts of max_tokens each, from consecutive records (none reused).

    The last text may be shorter when the records run out.
    """
    records = read_job_records(path)
    texts: list[TokenText] = []
    ids: list[int] = []
    first_line = records[0][0]
    for line, record in records:
        if len(texts) == num_texts:
            break
        if not ids:
            first_line = line
        # The chat template carries BOS where the model wants one.
        ids.extend(tokenizer(record_text(tokenizer, record, path, line), add_special_tokens=False)["input_ids"])
        if len(ids) >= max_tokens:
            texts.append(TokenText(ids=ids[:max_tokens], source=f"{path}:{first_line}-{line}"))
            ids = []
    if ids and len(texts) < num_texts:
        texts.append(TokenText(ids=ids, source=f"{path}:{first_line}-{records[-1][0]}"))
    return texts
