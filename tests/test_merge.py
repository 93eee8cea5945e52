"""`kvarn merge`: shards are merged only when they belong together and cover the input exactly."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from conftest import kvarn
from kvarn_cli.errors import InputError
from kvarn_cli.jobs import read_jobs, shard_entries
from kvarn_cli.merge import merge_runs
from kvarn_cli.run_dir import write_json_atomic


def make_input(tmp_path: Path, n: int = 7, bad_line: int | None = None) -> Path:
    lines = [orjson.dumps({"id": f"r{i}", "prompt": f"q{i}"}).decode() for i in range(n)]
    if bad_line is not None:
        lines[bad_line - 1] = "{not json"
    p = tmp_path / "jobs.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def make_shard(tmp_path: Path, jobs_path: Path, index: int, count: int, drop: int = 0, **override) -> Path:
    """A shard dir as `kvarn run --shard index/count` leaves it (outputs, skipped, run.json, stats)."""
    jobs = read_jobs(jobs_path)
    records, problems = shard_entries(jobs, index, count)
    d = tmp_path / f"shard{index}"
    d.mkdir()
    settings = {"kvarn_format": 1, "input": str(jobs_path), "input_sha256": jobs.sha256, "model": "m", "preset": "fp16",
                "sampling": {"n": 1}, "max_model_len": None, "shard": [index, count], **override}
    write_json_atomic(d / "run.json", settings)
    outs = [{**r.data, "completions": [f"answer {r.id}"], "finish_reasons": ["stop"], "num_prompt_tokens": 3,
             "num_completion_tokens": [2]} for r in records[drop:]]
    (d / "outputs.jsonl").write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in outs))
    if problems:
        (d / "skipped.jsonl").write_bytes(b"".join(orjson.dumps({"line": p.line, "id": None, "reason": p.reason}) + b"\n" for p in problems))
    write_json_atomic(d / "stats.json", {"engine": {}, "kv_cache": {"preset": "fp16"}, "peak_kv_usage": 0.1 * (index + 1),
                                         "throughput": {"requests": len(outs), "prompt_tokens": 3 * len(outs),
                                                        "generated_tokens": 2 * len(outs), "wall_s": 1.0 + index,
                                                        "generated_tokens_per_s": 2.0 * len(outs) / (1.0 + index)}})
    return d


def test_merge_combines_in_input_order(tmp_path):
    jobs = make_input(tmp_path, n=7, bad_line=4)
    dirs = [make_shard(tmp_path, jobs, i, 3) for i in range(3)]
    summary = merge_runs(list(reversed(dirs)), tmp_path / "merged")
    assert summary == {"shards": 3, "records": 6, "skipped": 1}
    ids = [orjson.loads(l)["id"] for l in (tmp_path / "merged" / "outputs.jsonl").read_bytes().splitlines()]
    assert ids == ["r0", "r1", "r2", "r4", "r5", "r6"]
    stats = orjson.loads((tmp_path / "merged" / "stats.json").read_bytes())
    assert stats["throughput"]["requests"] == 6 and stats["throughput"]["wall_s"] == 3.0
    assert stats["peak_kv_usage"] == pytest.approx(0.3)
    assert orjson.loads((tmp_path / "merged" / "run.json").read_bytes())["shard"] is None


@pytest.mark.parametrize("case, message", [
    ("missing", "shards missing: 2/3"),
    ("twice", "given twice"),
    ("settings", "'preset' differs"),
    ("incomplete", "incomplete: 1 input lines"),
    ("changed_input", "input file changed"),
])
def test_merge_refuses_what_does_not_fit(tmp_path, case, message):
    jobs = make_input(tmp_path)
    dirs = [make_shard(tmp_path, jobs, i, 3, drop=int(case == "incomplete" and i == 1),
                       **({"preset": "k2v2"} if case == "settings" and i == 2 else {})) for i in range(3)]
    if case == "missing":
        dirs = dirs[:2]
    if case == "twice":
        dirs = [dirs[0], dirs[1], dirs[2], dirs[1]]
    if case == "changed_input":
        jobs.write_text(jobs.read_text() + '{"id": "new", "prompt": "x"}\n')
    with pytest.raises(InputError, match=message):
        merge_runs(dirs, tmp_path / "merged")
    assert not (tmp_path / "merged" / "outputs.jsonl").exists()


def test_merge_cli_error_is_one_line(tmp_path):
    proc = kvarn("merge", tmp_path / "nope", "--out", tmp_path / "m")
    assert proc.returncode == 2 and "no run.json" in proc.stderr and "Traceback" not in proc.stderr
