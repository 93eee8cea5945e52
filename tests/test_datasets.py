"""Converting the shared benchmark files into job files."""

from __future__ import annotations

import orjson
import pytest

from conftest import kvarn
from kvarn_cli.datasets import build_jobs
from kvarn_cli.errors import InputError
from kvarn_cli.jobs import read_jobs

COUNTS = {"math500": 500, "aime24": 30, "gsm8k": 1319, "humaneval": 164}


@pytest.mark.parametrize("name", list(COUNTS))
def test_full_sets_convert_to_valid_jobs(tmp_path, data_dir, name):
    jobs = build_jobs(name, str(data_dir))
    assert len(jobs) == COUNTS[name]
    out = tmp_path / "j.jsonl"
    out.write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs))
    jf = read_jobs(out)  # valid job file: unique ids, a prompt each, known task
    assert not jf.problems and len(jf.records) == COUNTS[name]


def test_answers_are_taken_from_the_right_fields(data_dir):
    gsm = build_jobs("gsm8k", str(data_dir), limit=1)[0]
    raw = orjson.loads((data_dir / "gsm8k_test.jsonl").read_bytes().split(b"\n")[0])
    assert gsm["answer"] == raw["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    aime = build_jobs("aime24", str(data_dir))
    assert any(j["answer"].startswith("0") for j in aime)  # zero-padded strings kept for the scorer
    he = build_jobs("humaneval", str(data_dir), limit=1)[0]
    assert he["code_prompt"] in he["prompt"] and he["entry_point"] and "def check" in he["test"]


def test_limit_and_seed_sampling(data_dir):
    first = build_jobs("math500", str(data_dir), limit=5)
    assert [j["id"] for j in first] == [j["id"] for j in build_jobs("math500", str(data_dir))[:5]]
    a = build_jobs("math500", str(data_dir), limit=5, seed=1)
    b = build_jobs("math500", str(data_dir), limit=5, seed=1)
    c = build_jobs("math500", str(data_dir), limit=5, seed=2)
    assert [j["id"] for j in a] == [j["id"] for j in b] != [j["id"] for j in c]


def test_bad_sources(tmp_path):
    with pytest.raises(InputError, match="not found"):
        build_jobs("math500", str(tmp_path))
    with pytest.raises(InputError, match="unknown dataset"):
        build_jobs("mmlu", str(tmp_path))
    bad = tmp_path / "math500.jsonl"
    bad.write_text('{"question": "no problem field"}\n')
    with pytest.raises(InputError, match="lack the field"):
        build_jobs("math500", str(tmp_path))


def test_cli_writes_job_file(tmp_path, data_dir):
    out = tmp_path / "jobs" / "aime.jsonl"
    proc = kvarn("jobs", "from-dataset", "aime24", "--source", data_dir, "--limit", "3", "--seed", "0", "--out", out, check=True)
    assert "wrote 3 aime24 jobs" in proc.stdout
    assert len(read_jobs(out).records) == 3
