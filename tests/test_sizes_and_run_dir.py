"""Byte sizes, and the run directory's guarantees: no torn lines, no mixing of different runs."""

from __future__ import annotations

import orjson
import pytest

from kvarn_cli.errors import InputError
from kvarn_cli.run_dir import OutputLog, check_resumable, write_json_atomic
from kvarn_cli.sizes import parse_size


@pytest.mark.parametrize("text, value", [("512MiB", 512 * 2**20), ("4GiB", 4 * 2**30), ("1.5G", 1_500_000_000), ("1000", 1000), ("2 kib", 2048)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "lots", "4 parsecs", "-1GiB", "0"])
def test_parse_size_rejects(text):
    with pytest.raises(InputError):
        parse_size(text)


def test_torn_last_line_is_cut_and_redone(tmp_path):
    path = tmp_path / "outputs.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "compl')
    log = OutputLog(path)
    assert [r["id"] for r in log.repair_and_read()] == ["a", "b"]
    log.open()
    log.append({"id": "c", "completions": ["x"]})
    log.close()
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(l)["id"] for l in lines] == ["a", "b", "c"]


def test_corrupt_middle_line_refuses_resume(tmp_path):
    path = tmp_path / "outputs.jsonl"
    path.write_bytes(b'{"id": "a"}\nGARBAGE\n{"id": "b"}\n')
    with pytest.raises(InputError, match="outputs.jsonl:2"):
        OutputLog(path).repair_and_read()


def test_resume_requires_same_settings(tmp_path):
    settings = {"input_sha256": "x", "model": "m", "preset": "fp16", "sampling": {"n": 1}, "max_model_len": None, "shard": None, "kvarn_format": 1}
    assert check_resumable(tmp_path / "new", settings) is False
    run = tmp_path / "run"
    run.mkdir()
    write_json_atomic(run / "run.json", settings)
    assert check_resumable(run, settings) is True
    with pytest.raises(InputError, match="different 'preset'"):
        check_resumable(run, {**settings, "preset": "k2v2"})
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a kvarn run"):
        check_resumable(other, settings)
