"""benchmarks/e2e_gpu.py's preset runner: a preset that runs out of time takes its whole
process group with it (vLLM's engine core runs in a child process and holds GPU memory)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from e2e_gpu import run_child, triton_cache_entries  # noqa: E402


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child of a killed parent is reaped by init; until then it shows as a zombie
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_a_timed_out_preset_kills_its_grandchildren(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],\n"
        "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "print('PHASE started', file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    code, _, err = run_child([sys.executable, "-c", script], dict(os.environ), timeout_s=5)
    assert code is None  # timed out
    assert "PHASE started" in err  # what it printed before the kill comes back
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)


def test_a_finished_preset_returns_its_exit_code_and_output() -> None:
    code, out, err = run_child([sys.executable, "-c", "import sys; print('RESULT {}'); sys.exit(3)"],
                               dict(os.environ), timeout_s=60)
    assert (code, out.strip(), err) == (3, "RESULT {}", "")


def test_core_stall_dumps_keep_the_threads_doing_engine_work() -> None:
    from e2e_gpu import busy_threads

    dump = (
        "0:00:02)!\n"
        "Thread 0x00007f911b7ff6c0 (most recent call first):\n"
        '  File "/usr/lib/python3.11/threading.py", line 331 in wait\n'
        '  File "/site-packages/tqdm/_monitor.py", line 69 in run\n'
        "\n"
        "Thread 0x00007f91227556c0 (most recent call first):\n"
        '  File "/site-packages/vllm/v1/executor/multiproc_executor.py", line 841 in death_pipe_monitor\n'
        "\n"
        "Current thread 0x00007f91aca4e7c0 (most recent call first):\n"
        '  File "/work/kvarn_cli/kvcache/staging.py", line 340 in plan\n'
        '  File "/site-packages/vllm/v1/worker/gpu_model_runner.py", line 1500 in _prepare_inputs\n'
    )
    kept = busy_threads(dump)
    assert kept.startswith("0:00:02)!")
    assert "staging.py" in kept and "gpu_model_runner.py" in kept
    assert "tqdm" not in kept and "death_pipe_monitor" not in kept


def test_compiles_are_counted_in_vllms_triton_cache_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM points the engine core's TRITON_CACHE_DIR into its own cache root; with the
    engine core in its own process the front end's directory never saw its compiles."""
    own = tmp_path / "triton"
    vllm_dir = tmp_path / "vllm" / "torch_compile_cache" / "abc123" / "rank_0_0" / "triton_cache"
    for d, n in ((own, 2), (vllm_dir, 3)):
        d.mkdir(parents=True)
        for i in range(n):
            (d / f"kernel{i}").mkdir()
    monkeypatch.setenv("TRITON_CACHE_DIR", str(own))
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm"))
    assert triton_cache_entries() == 5
    monkeypatch.setenv("TRITON_CACHE_DIR", str(vllm_dir))  # in-process: the same directory once
    assert triton_cache_entries() == 3


def test_request_lengths_spread_evenly_around_the_mean_and_repeat() -> None:
    from e2e_gpu import request_lengths

    assert request_lengths(5, 300, 0.0) == [300] * 5
    lengths = request_lengths(128, 1024, 0.5)
    assert lengths == request_lengths(128, 1024, 0.5), "every preset and pass must get the same lengths"
    assert min(lengths) == 512 and max(lengths) == 1536
    assert abs(sum(lengths) - 128 * 1024) <= 64, "the mean stays --max-tokens: the same total work as no spread"
    assert len(set(lengths)) > 100, "evenly spaced, not a few repeated values"
    assert lengths != sorted(lengths), "shuffled: long and short requests are admitted together"
    with pytest.raises(SystemExit):
        request_lengths(4, 100, 1.0)


def test_peak_blocks_counts_what_the_requests_in_flight_hold() -> None:
    from e2e_gpu import peak_blocks

    # two places: A (10) and B (20) start, C (30) takes A's place at step 10; the most held
    # at once is at step 20: B's 20 tokens and C's 10
    assert peak_blocks([10, 20, 30], 2, 0, 1) == 30
    # every request in flight at its longest: 4 x ceil((5 + 10) / 4)
    assert peak_blocks([10] * 4, 4, 5, 4) == 16
    # one place: one request at a time
    assert peak_blocks([7, 3], 1, 1, 2) == 4
    # staggered lengths free blocks early: at step 200 B, C and D hold 20 blocks each, and no
    # step holds more, against 4 x 40 were all four at the longest length
    assert peak_blocks([100, 200, 300, 400], 4, 0, 10) == 60


def test_the_sequence_cap_follows_the_jobs_lengths() -> None:
    """best_max_num_seqs gives the most sequences that run the job without preemption. With
    every request at one length that is what fits at full length (run 111's 104 for k2v2 on
    SmolLM2 at 1 GiB); with lengths spread, requests that finish early make room (runs 125-126:
    at 512 MiB the full-length bound gave k2v2 24, and 32 ran without a preemption)."""
    import argparse

    from e2e_gpu import best_max_num_seqs, peak_blocks, request_lengths

    from kvarn_cli import kvcache

    shape = {"num_layers": 30, "num_kv_heads": 3, "head_dim": 64, "dtype_bytes": 2}

    def cap(mib: int, n: int, tokens: int, spread: float, preset: str = "k2v2") -> int:
        args = argparse.Namespace(prompt_tokens_estimate=128, max_tokens=tokens, num_prompts=n, length_spread=spread)
        return best_max_num_seqs(preset, mib << 20, shape, args)

    assert cap(1024, 128, 1024, 0.0) == 104
    assert cap(512, 32, 4096, 0.5) == 32
    assert cap(1024, 128, 1024, 0.0, "k2v2-g64") == 128, "never more places than requests"
    # the cap's own check: its paged cache holds the job's peak, and 8 more places would not
    for mib, n, tokens, spread in ((1024, 128, 1024, 0.0), (256, 32, 4096, 0.5)):
        m = cap(mib, n, tokens, spread)
        lengths = request_lengths(n, tokens, spread)
        alloc = kvcache.allocation("k2v2", kv_cache_memory_bytes=kvcache.paged_budget(
            "k2v2", total_bytes=mib << 20, max_num_seqs=m, **shape), max_num_seqs=m, **shape)
        assert peak_blocks(lengths, m, 128, alloc.block_size) <= alloc.num_blocks - 1
        more = m + 8
        alloc = kvcache.allocation("k2v2", kv_cache_memory_bytes=kvcache.paged_budget(
            "k2v2", total_bytes=mib << 20, max_num_seqs=more, **shape), max_num_seqs=more, **shape)
        assert peak_blocks(lengths, more, 128, alloc.block_size) > alloc.num_blocks - 1


def test_few_shot_prompts_share_the_examples_and_leave_them_out_of_the_questions(tmp_path: Path) -> None:
    """--few-shot K puts the file's last K worked examples before every question (a shared
    prefix for vLLM's prefix cache) and never asks one of them; without answers it refuses."""
    import json

    from e2e_gpu import load_prompts, preset_setup

    rows = [{"question": f"q{i}?", "answer": f"a{i}"} for i in range(6)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_prompts(str(data), 3) == ["q0?", "q1?", "q2?"]
    prompts = load_prompts(str(data), 5, few_shot=2)
    shots = "Question: q4?\nAnswer: a4\n\nQuestion: q5?\nAnswer: a5\n\n"
    assert prompts == [f"{shots}Question: q{i % 4}?\nAnswer:" for i in range(5)]  # 4 questions, repeated
    data.write_text("".join(json.dumps({"question": r["question"]}) + "\n" for r in rows))
    with pytest.raises(SystemExit, match="answer"):
        load_prompts(str(data), 3, few_shot=2)
    assert preset_setup("k2v2:torch-prefill") == ("k2v2", {"KVARN_BATCHED_PREFILL": "0"}, [])
    assert preset_setup("k2v2-g64:torch-launch") == ("k2v2-g64", {"KVARN_CUDA_LAUNCH": "torch"}, [])


def test_step_cost_by_rows_fits_the_per_row_cost_and_drops_stalls() -> None:
    """The line through decode steps (e2e_gpu's passes, profile_admission's): a per-step and a
    per-row cost, with steps over twice the median (a stall, a flush wave) left out of the fit."""
    from e2e_gpu import step_cost_by_rows

    steps = [(r, (1.0 + 0.025 * r) / 1e3) for r in range(64, 129) for _ in range(3)]
    steps.append((128, 50e-3))  # a stall
    got = step_cost_by_rows(steps + [(0, 2e-5)] * 40)  # steps without a token pull no line down

    assert got["fit_ms"]["per_step"] == pytest.approx(1.0, abs=1e-3)
    assert got["fit_ms"]["per_row"] == pytest.approx(0.025, abs=1e-4)
    assert got["fit_ms"]["steps"] == len(steps) - 1
    assert got["buckets"]["64-79"][0] == 16 * 3 and got["buckets"]["128-143"] == [3, pytest.approx(4.2)]
    assert "fit_ms" not in step_cost_by_rows([(128, 4e-3)] * 5)  # one batch size: no line
    assert step_cost_by_rows([]) == {} and step_cost_by_rows([(0, 1e-3)]) == {}


class _Out:
    def __init__(self, rid: str, tokens: int, finished: bool) -> None:
        self.request_id, self.finished = rid, finished
        self.outputs = [type("C", (), {"token_ids": list(range(tokens))})()]


class _Clock:
    """A perf_counter that only the fake engine moves: step times exact, not the host's."""

    def __init__(self) -> None:
        self.t = 0.0

    def perf_counter(self) -> float:
        return self.t


class _FakeEngine:
    """Requests of fixed lengths, `width` of them decoded per step, each step costing 1 ms plus
    0.1 ms per row on `clock`: what timed_pass and profiled_pass read of vLLM's LLMEngine
    (add_request, step, has_unfinished_requests)."""

    def __init__(self, width: int, clock: _Clock | None = None) -> None:
        self.width, self.left, self.done, self.clock = width, {}, {}, clock or _Clock()

    def add_request(self, rid: str, prompt: dict, params: object) -> None:
        self.left[rid] = params.max_tokens
        self.done[rid] = 0

    def has_unfinished_requests(self) -> bool:
        return bool(self.left)

    def step(self) -> list[_Out]:
        outs = []
        for rid in list(self.left)[: self.width]:
            self.left[rid] -= 1
            self.done[rid] += 1
            finished = self.left[rid] == 0
            if finished:
                del self.left[rid]
            outs.append(_Out(rid, self.done[rid], finished))
        self.clock.t += 1e-3 + 1e-4 * len(outs)
        return outs


class _FakeLLM:
    def __init__(self, width: int, trace_dir: Path | None = None, clock: _Clock | None = None) -> None:
        self.llm_engine = _FakeEngine(width, clock)
        self.trace_dir, self.calls = trace_dir, []

    def get_metrics(self) -> list:
        return []

    def start_profile(self) -> None:
        self.calls.append(("start", self.llm_engine.done.copy()))

    def stop_profile(self) -> None:
        self.calls.append(("stop", self.llm_engine.done.copy()))
        assert self.trace_dir is not None
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        events = [{"ph": "X", "cat": "kernel", "name": "k", "ts": 0.0, "dur": 300.0, "tid": 7},
                  {"ph": "X", "cat": "kernel", "name": "k", "ts": 1000.0, "dur": 100.0, "tid": 7}]
        (self.trace_dir / "core.pt.trace.json").write_text(json.dumps({"traceEvents": events}))


def _params(lengths: list[int]) -> list[object]:
    return [type("P", (), {"max_tokens": m})() for m in lengths]


def test_timed_pass_fits_step_time_to_the_rows_that_got_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step's row count is the requests that got a token in it, so a pass whose batch
    shrinks (lengths spread) gives the per-step and per-row cost of the step."""
    import e2e_gpu

    clock = _Clock()
    monkeypatch.setattr(e2e_gpu, "time", clock)  # timed_pass reads only time.perf_counter
    llm = _FakeLLM(width=8, clock=clock)
    lengths = [4 * (i + 1) for i in range(8)]  # one request ends every 4 steps
    got = e2e_gpu.timed_pass(llm, [[1]] * 8, _params(lengths), sample_every=1000, prefix="p-")
    assert got["generated_tokens"] == sum(lengths) and got["steps"] == max(lengths)
    assert got["wall_s"] == pytest.approx(round(max(lengths) * 1e-3 + sum(lengths) * 1e-4, 2))
    buckets = got["by_rows"]["buckets"]
    assert sum(n for n, _ in buckets.values()) == got["steps"]
    assert got["by_rows"]["fit_ms"] == {"per_step": pytest.approx(1.0), "per_row": pytest.approx(0.1), "steps": 32}


def test_profiled_pass_profiles_the_steps_asked_for_and_summarizes_the_trace(tmp_path: Path) -> None:
    from e2e_gpu import profiled_pass

    llm = _FakeLLM(width=4, trace_dir=tmp_path / "t")
    got = profiled_pass(llm, [[1]] * 4, _params([20] * 4), at=5, count=10, folder=tmp_path / "t")
    assert [c for c, _ in llm.calls] == ["start", "stop"]
    assert set(llm.calls[0][1].values()) == {5} and set(llm.calls[1][1].values()) == {15}
    assert got["steps"] == 10 and got["rows_median"] == 4
    assert got["summary"]["gpu"]["busy_ms"] == pytest.approx(0.4)
    assert got["summary"]["gpu"]["busy_ms_per_step"] == pytest.approx(0.04)
    # a pass too short to reach the profiled steps says so, with the profiler stopped
    short = _FakeLLM(width=4, trace_dir=tmp_path / "u")
    bad = profiled_pass(short, [[1]] * 4, _params([8] * 4), at=5, count=10, folder=tmp_path / "u")
    assert "before step 15" in bad["error"] and [c for c, _ in short.calls] == ["start", "stop"]


def test_trace_summary_unions_gpu_intervals_and_ranks_host_calls() -> None:
    from trace_summary import summarize

    ev = [
        {"ph": "X", "cat": "kernel", "name": "a", "ts": 0.0, "dur": 100.0, "tid": 1},
        {"ph": "X", "cat": "kernel", "name": "b", "ts": 50.0, "dur": 100.0, "tid": 2},  # overlaps a
        {"ph": "X", "cat": "gpu_memcpy", "name": "c", "ts": 900.0, "dur": 100.0, "tid": 1},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 0.0, "dur": 5.0},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 9.0, "dur": 7.0},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch", "ts": 20.0, "dur": 30.0},
        {"ph": "X", "cat": "user_annotation", "name": "execute_model", "ts": 0.0, "dur": 800.0},
        {"ph": "i", "cat": "kernel", "name": "instant", "ts": 0.0},  # no duration: ignored
    ]
    got = summarize(ev, steps=2)
    assert got["gpu"]["busy_ms"] == pytest.approx(0.25) and got["gpu"]["span_ms"] == pytest.approx(1.0)
    assert got["gpu"]["busy_ms_per_step"] == pytest.approx(0.125)
    assert got["gpu"]["streams"]["1"]["intervals"] == 2
    assert list(got["host_calls"]) == ["cudaGraphLaunch", "cudaLaunchKernel"]
    assert got["host_calls"]["cudaLaunchKernel"] == {"calls": 2, "total_ms": 0.012, "ms_per_step": 0.006, "max_ms": 0.007}
    assert got["host_regions"]["execute_model"]["ms_per_step"] == pytest.approx(0.4)
