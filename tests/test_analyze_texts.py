"""How `kvarn analyze` builds long texts from job files, and its input errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvarn_cli.analyze import texts
from kvarn_cli.errors import InputError


class WordTokenizer:
    """A whitespace tokenizer with a visible chat template, enough to see what goes into a text."""

    chat_template = "user: {content}\nassistant: "

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]
        return {"input_ids": ([999] if add_special_tokens else []) + ids}

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool, tokenize: bool) -> str:
        assert add_generation_prompt and not tokenize
        return "".join(self.chat_template.format(content=m["content"]) for m in messages)

    def decode(self, ids: list[int]) -> str:
        words = {i: w for w, i in self.vocab.items()}
        return " ".join(words.get(i, "<bos>") for i in ids)


def _write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_record_text_prefers_the_run_completion(tmp_path: Path) -> None:
    tok = WordTokenizer()
    record = {"id": "a", "prompt": "two plus two", "completions": ["it is four"], "answer": "4"}
    assert texts.record_text(tok, record, tmp_path, 1) == "user: two plus two\nassistant: it is four\n\n"
    dataset_row = {"problem": "p q", "solution": "s t", "answer": "t"}
    assert texts.record_text(tok, dataset_row, tmp_path, 1) == "user: p q\nassistant: s t\n\n"
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert texts.record_text(tok, chat, tmp_path, 1) == "user: hi\nassistant: \n\n"


def test_jobs_are_concatenated_into_texts_of_max_tokens(tmp_path: Path) -> None:
    records = [{"id": str(i), "prompt": f"q{i} " * 3, "solution": f"s{i} " * 4} for i in range(10)]
    path = _write_jsonl(tmp_path / "jobs.jsonl", records)
    tok = WordTokenizer()
    # each record: "user:" + 3 words + "assistant:" + 4 words = 9 tokens, no BOS
    got = texts.texts_from_jobs(tok, path, max_tokens=20, num_texts=3)
    assert [len(t.ids) for t in got] == [20, 20, 20]
    assert [t.source for t in got] == [f"{path}:1-3", f"{path}:4-6", f"{path}:7-9"]
    assert tok.decode(got[1].ids).split()[:2] == ["user:", "q3"]
    # records run out: the last text is shorter
    short = texts.texts_from_jobs(tok, path, max_tokens=50, num_texts=5)
    assert [len(t.ids) for t in short] == [50, 36]


def test_text_file_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("a b c d e f", encoding="utf-8")
    [text] = texts.texts_from_file(WordTokenizer(), path, max_tokens=4)
    assert text.ids[0] == 999 and len(text.ids) == 4


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": "a", "prompt": "x"}\n{"id": "b"\n', "jobs.jsonl:2: not valid JSON"),
        ('{"id": "a", "prompt": "x"}\n[1, 2]\n', "jobs.jsonl:2: expected a JSON object"),
        ('\n{"id": "a", "answer": "x"}\n', "jobs.jsonl:2: expected a `prompt` string"),
        ("\n\n", "jobs.jsonl: the job file has no records"),
    ],
)
def test_bad_job_files_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message.replace("`", ".").replace("[", r"\[")) as info:
        texts.texts_from_jobs(WordTokenizer(), path, max_tokens=100, num_texts=2)
    assert info.value.exit_code == 2


def test_missing_and_empty_text_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        texts.read_text_file(tmp_path / "absent.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(InputError, match="empty"):
        texts.read_text_file(empty)
