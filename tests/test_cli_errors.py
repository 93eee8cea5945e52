"""Bad input gets one clear line on stderr and exit code 2, never a traceback, before any engine starts."""

from __future__ import annotations

import pytest

from conftest import kvarn


def assert_clean_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    msg = " ".join(proc.stderr.split())
    for f in fragments:
        assert f in msg, msg


@pytest.fixture
def jobs(tmp_path):
    def make(text: str):
        p = tmp_path / "jobs.jsonl"
        p.write_text(text)
        return p
    return make


def run_args(path, tmp_path, *extra):
    return ("run", path, "--model", "models/does-not-matter", "--out", tmp_path / "out", *extra)


def test_missing_file(tmp_path):
    assert_clean_error(kvarn(*run_args(tmp_path / "missing.jsonl", tmp_path)), "missing.jsonl", "not found")


def test_not_jsonl(tmp_path, jobs):
    p = jobs("id,prompt\n1,hello\n")
    assert_clean_error(kvarn(*run_args(p, tmp_path)), "jobs.jsonl:1:", "not valid JSON")


def test_record_without_id(tmp_path, jobs):
    p = jobs('{"id": "a", "prompt": "x"}\n{"prompt": "y"}\n')
    assert_clean_error(kvarn(*run_args(p, tmp_path)), "jobs.jsonl:2:", "no 'id'")


def test_record_without_prompt(tmp_path, jobs):
    p = jobs('{"id": "a", "answer": "1"}\n')
    assert_clean_error(kvarn(*run_args(p, tmp_path)), "jobs.jsonl:1:", "'prompt'")


def test_duplicate_ids(tmp_path, jobs):
    p = jobs('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    assert_clean_error(kvarn(*run_args(p, tmp_path)), "jobs.jsonl:2:", "duplicate id 'a'", "line 1")


@pytest.mark.parametrize("extra, fragment", [
    (("--shard", "5/2"), "--shard"),
    (("--kv-cache-memory", "lots"), "--kv-cache-memory"),
    (("--on-error", "ignore"), "--on-error"),
    (("--bits", "3"), "--bits 3"),
    (("--max-tokens", "0"), "--max-tokens"),
    # click's own usage errors (typer may vendor click under another module name)
    (("--limit", "2"), "No such option: --limit"),
    (("--max-tokens", "many"), "--max-tokens"),
])
def test_bad_options(tmp_path, jobs, extra, fragment):
    p = jobs('{"id": "a", "prompt": "x"}\n')
    assert_clean_error(kvarn(*run_args(p, tmp_path, *extra)), fragment)


def test_out_dir_that_is_not_a_run_is_never_clobbered(tmp_path, jobs):
    p = jobs('{"id": "a", "prompt": "x"}\n')
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    assert_clean_error(kvarn(*run_args(p, tmp_path)), "not a kvarn run")
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_import_gguf_rejects_non_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file")
    assert_clean_error(kvarn("model", "import-gguf", bad, tmp_path / "m"), "not a GGUF file")


def test_help_lists_commands():
    proc = kvarn("--help")
    assert proc.returncode == 0
    for cmd in ("run", "jobs", "model"):
        assert cmd in proc.stdout


def test_unknown_command_is_a_usage_error():
    assert_clean_error(kvarn("frobnicate"), "No such command 'frobnicate'")
