"""`kvarn compare`: runs side by side and the problems whose verdict differs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvarn_cli.errors import InputError
from kvarn_cli.scoring.compare_runs import compare_runs, differing_verdicts
from kvarn_cli.scoring.score_run import ScoreOptions, score_run

REPO = Path(__file__).resolve().parents[1]
OPTIONS = ScoreOptions(workers=1, code_timeout_s=5.0)


def record(record_id: str, completions: list[str], answer: str, tokens: list[int]) -> dict:
    return {
        "id": record_id,
        "task": "gsm8k",
        "answer": answer,
        "completions": completions,
        "finish_reasons": ["stop"] * len(completions),
        "num_prompt_tokens": 30,
        "num_completion_tokens": tokens,
    }


def stats(preset: str, generated: int, tokens_per_s: float, capacity: int, peak: float) -> dict:
    return {
        "engine": {"vllm_version": "0.32.0", "device": "cpu", "model": "tiny", "dtype": "bfloat16"},
        "kv_cache": {
            "preset": preset,
            "bits_per_element": 16.0 if preset == "fp16" else 2.5,
            "bytes_per_token": 1000 if preset == "fp16" else 160,
            "block_size": 16,
            "num_blocks": capacity // 16,
            "capacity_tokens": capacity,
            "kv_cache_memory_bytes": 1 << 20,
        },
        "throughput": {"requests": 3, "prompt_tokens": 90, "generated_tokens": generated, "wall_s": 2.0, "generated_tokens_per_s": tokens_per_s},
        "peak_kv_usage": peak,
    }


def make_run(path: Path, records: list[dict], stats_doc: dict | None, run_doc: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if stats_doc is not None:
        (path / "stats.json").write_text(json.dumps(stats_doc))
    if run_doc is not None:
        (path / "run.json").write_text(json.dumps(run_doc))
    return path


@pytest.fixture()
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    fp16 = make_run(
        tmp_path / "fp16",
        [
            record("p1", ["it is 12"], "12", [40]),
            record("p2", ["it is 7"], "7", [50]),
            record("p3", ["it is 3"], "4", [60]),
            record("only-a", ["1"], "1", [5]),
        ],
        stats("fp16", 155, 77.5, 4096, 0.25),
        {"model": "tiny", "preset": "fp16", "input": "jobs.jsonl", "sampling": {"n": 1}},
    )
    kvarn2 = make_run(
        tmp_path / "kvarn2",
        [
            record("p1", ["it is 12"], "12", [41]),
            record("p2", ["it is 8"], "7", [52]),
            record("p3", ["it is 4"], "4", [70]),
            record("only-b", ["2"], "2", [5]),
        ],
        None,
        {"model": "tiny", "preset": "kvarn2", "input": "jobs.jsonl", "sampling": {"n": 1}},
    )
    return fp16, kvarn2


def test_compare_lists_the_differing_problems_and_each_runs_figures(two_runs) -> None:
    fp16, kvarn2 = two_runs
    result = compare_runs([fp16, kvarn2], OPTIONS)
    assert [d["id"] for d in result["differing"]] == ["p2", "p3"]
    p2 = result["differing"][0]
    assert p2["verdicts"] == [{"correct": 1, "completions": 1}, {"correct": 0, "completions": 1}]
    a, b = result["runs"]
    assert (a["preset"], b["preset"]) == ("fp16", "kvarn2")
    assert a["pass@1"] == pytest.approx(3 / 4) and b["pass@1"] == pytest.approx(3 / 4)
    assert (a["generated_tokens"], a["generated_tokens_source"]) == (155, "stats.json")
    assert (b["generated_tokens"], b["generated_tokens_source"]) == (41 + 52 + 70 + 5, "outputs.jsonl")
    assert (a["generated_tokens_per_s"], a["kv_capacity_tokens"], a["peak_kv_usage"]) == (77.5, 4096, 0.25)
    assert (b["generated_tokens_per_s"], b["kv_capacity_tokens"], b["peak_kv_usage"]) == (None, None, None)
    assert a["records_not_in_all_runs"] == 1 and b["records_not_in_all_runs"] == 1
    assert sorted(result["scored_now"]) == sorted([str(fp16), str(kvarn2)])


def test_existing_scores_are_reused_and_stale_ones_redone(two_runs) -> None:
    fp16, kvarn2 = two_runs
    compare_runs([fp16, kvarn2], OPTIONS)
    assert compare_runs([fp16, kvarn2], OPTIONS)["scored_now"] == []
    later = time.time() + 5
    os.utime(kvarn2 / "outputs.jsonl", (later, later))  # e.g. the run was resumed after scoring
    assert compare_runs([fp16, kvarn2], OPTIONS)["scored_now"] == [str(kvarn2)]


def test_sampled_runs_differ_by_fraction_of_correct_samples(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", [record("q", ["5", "5", "6", "6"], "5", [1, 1, 1, 1])], None)
    b = make_run(tmp_path / "b", [record("q", ["6", "5", "5", "6"], "5", [1, 1, 1, 1])], None)
    c = make_run(tmp_path / "c", [record("q", ["5", "5", "5", "6"], "5", [1, 1, 1, 1])], None)
    scores = [score_run(path, OPTIONS) for path in (a, b, c)]
    assert differing_verdicts(scores[:2])[0] == []  # 2/4 and 2/4, though different samples
    differing, _ = differing_verdicts(scores)
    assert differing[0]["verdicts"][2] == {"correct": 3, "completions": 4}


def test_compare_needs_two_existing_runs(two_runs, tmp_path: Path) -> None:
    fp16, _ = two_runs
    with pytest.raises(InputError, match="at least two"):
        compare_runs([fp16], OPTIONS)
    with pytest.raises(InputError, match="does not exist"):
        compare_runs([fp16, tmp_path / "missing"], OPTIONS)


def kvarn(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "kvarn_cli", *args], capture_output=True, text=True, env=env, timeout=300)


def test_cli_compare_json_and_table(two_runs) -> None:
    fp16, kvarn2 = two_runs
    done = kvarn("compare", str(fp16), str(kvarn2), "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert [d["id"] for d in payload["differing"]] == ["p2", "p3"]
    table = kvarn("compare", str(fp16), str(kvarn2))
    assert table.returncode == 0, table.stderr
    for text in ("fp16", "kvarn2", "peak KV usage", "2 problem(s) with different verdicts", "p2", "p3"):
        assert text in table.stdout
    assert "no stats.json" in table.stderr


def test_cli_compare_bad_input_exits_2(two_runs, tmp_path: Path) -> None:
    fp16, _ = two_runs
    done = kvarn("compare", str(fp16), str(tmp_path / "missing"))
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and "Traceback" not in done.stderr
