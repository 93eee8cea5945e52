"""Job-file validation and sharding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from kvarn_cli.errors import InputError
from kvarn_cli.jobs import JobFile, JobRecord, LineProblem, parse_shard, read_jobs, shard_entries


def write(tmp_path: Path, lines: list[str]) -> Path:
    p = tmp_path / "jobs.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_valid_records_keep_all_fields(tmp_path):
    p = write(tmp_path, [json.dumps({"id": "a", "prompt": "hi", "task": "math", "answer": "1", "extra": [1, 2]}),
                         "", json.dumps({"id": "b", "messages": [{"role": "user", "content": "yo"}]})])
    jf = read_jobs(p)
    assert [r.id for r in jf.records] == ["a", "b"]
    assert jf.records[0].data["extra"] == [1, 2]
    assert jf.records[1].line == 3
    assert jf.records[0].messages() == [{"role": "user", "content": "hi"}]
    assert not jf.problems


@pytest.mark.parametrize("line, fragment", [
    ('{"prompt": "x"}', "no 'id'"),
    ('{"id": 7, "prompt": "x"}', "non-empty string"),
    ('{"id": "a"}', "exactly one of 'prompt'"),
    ('{"id": "a", "prompt": "x", "messages": []}', "exactly one of 'prompt'"),
    ('{"id": "a", "prompt": "   "}', "'prompt' is empty"),
    ('{"id": "a", "messages": [{"role": "robot", "content": "x"}]}', "messages[0]"),
    ('{"id": "a", "prompt": "x", "task": "poetry"}', "unknown task"),
    ('[1, 2]', "expected a JSON object"),
    ('id,prompt', "not valid JSON"),
])
def test_bad_lines_are_reported_with_line_number(tmp_path, line, fragment):
    p = write(tmp_path, ['{"id": "ok", "prompt": "fine"}', line])
    jf = read_jobs(p)
    assert len(jf.problems) == 1 and jf.problems[0].line == 2
    assert fragment in jf.problems[0].reason
    with pytest.raises(InputError, match=rf"jobs.jsonl:2: .*{__import__('re').escape(fragment)}"):
        jf.raise_first_problem()


def test_duplicate_id_names_first_line(tmp_path):
    p = write(tmp_path, ['{"id": "a", "prompt": "x"}', '{"id": "b", "prompt": "y"}', '{"id": "a", "prompt": "z"}'])
    jf = read_jobs(p)
    assert [r.id for r in jf.records] == ["a", "b"]
    assert jf.problems[0].line == 3 and "first seen on line 1" in jf.problems[0].reason
    assert jf.problems[0].record_id is None  # the id belongs to the first record, not the duplicate


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_jobs(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(InputError, match="no records"):
        read_jobs(tmp_path / "empty.jsonl")


@given(bad=st.lists(st.booleans(), max_size=40), count=st.integers(1, 7))
def test_shards_partition_every_line(bad, count):
    jf = JobFile(path=Path("j.jsonl"))
    for i, is_bad in enumerate(bad):
        if is_bad:
            jf.problems.append(LineProblem(line=i + 1, reason="bad"))
        else:
            jf.records.append(JobRecord(id=str(i), line=i + 1, data={}))
    shards = [shard_entries(jf, i, count) for i in range(count)]
    lines = sorted(e.line for recs, probs in shards for e in [*recs, *probs])
    assert lines == list(range(1, len(bad) + 1))  # every line in exactly one shard
    sizes = [len(r) + len(p) for r, p in shards]
    assert max(sizes) - min(sizes) <= 1  # balanced


@pytest.mark.parametrize("spec", ["3/3", "-1/2", "a/b", "1", "0/0"])
def test_bad_shard_specs(spec):
    with pytest.raises(InputError):
        parse_shard(spec)
