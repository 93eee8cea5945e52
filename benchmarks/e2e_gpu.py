"""End-to-end vLLM throughput under a fixed KV-cache memory: bf16 vs fp8 vs k4v4 vs k2v2.

Issue 6's end-to-end goal: with a KV budget so small that bf16 must queue requests, the
KVarN cache should generate >= 1.5x bf16's tokens/s and beat vLLM's fp8 cache. Every preset
gets the same total KV memory: vLLM's paged cache for bf16/fp8; paged KVarN records plus
kvarn's 16-bit sink/tail staging pool for k2v2/k4v4 (the staging pool is counted, so the
quantized presets get a smaller paged cache than the budget).

Each preset runs in its own process (a fresh engine and CUDA context), on the same prompts
(chat-formatted GSM8K questions), greedy, `ignore_eos` so that every request generates
exactly --max-tokens tokens and the presets do the same work (with --length-spread S, request i of
every pass generates its own fixed length, spread evenly over (1 +- S) x --max-tokens: the same
lengths for every preset, like reasoning traces that end at different times; with one length
for all, sequences start and end in lockstep, and a concurrency cap that does not divide
--num-prompts leaves a last wave with the GPU mostly idle). Reported per preset: engine
blocks and token capacity, generated tokens/s over the timed run, peak running requests
(vLLM's num_requests_running gauge, sampled every few steps), preemptions.

Speeds of this host-bound workload moved by up to ~30% between processes and machine leases
for the same command (docs/BENCHMARKS.md runs 29 and 32), so `--passes` repeats the timed
generation inside one engine (on fresh prompts) and `--rounds` repeats the whole preset list,
interleaved; ratios then compare medians.

Run (GPU machine; vLLM 0.26 as in ../shared/gpu/, model from its GGUF):
    python benchmarks/e2e_gpu.py --model /tmp/models/smollm2-135m \
        --data .gpuwork/gsm8k_test.jsonl --kv-budget-mib 1024 --num-prompts 256 \
        --max-tokens 1024 --out e2e.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PRESETS = ("bf16", "fp8", "k4v4", "k2v2", "k4v4-g64", "k2v2-g64")
MIB = 2**20


def model_shape(model: str) -> dict[str, int]:
    """The attention shape `kvarn plan` reads, in bf16 (the dtype every preset runs in here)."""
    from kvarn_cli.commands.plan import model_shape as plan_shape

    shape = plan_shape(model, "bfloat16")
    return {key: shape[key] for key in ("num_layers", "num_kv_heads", "head_dim", "dtype_bytes")}


def load_prompts(path: str, n: int, few_shot: int = 0) -> list[str]:
    """The first `n` questions of `path`; with `few_shot` K, each after the same K worked
    examples (question and answer) from the end of the file, like a few-shot evaluation:
    every prompt then starts with the same ~K x 150 tokens, which vLLM's prefix cache holds,
    so each request's prefill continues after a cache hit."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    questions = [str(r.get("question") or r.get("problem") or r["prompt"]) for r in rows]
    shots = ""
    if few_shot:
        examples = rows[-few_shot:]
        if len(examples) < few_shot or not all("answer" in r for r in examples):
            raise SystemExit(f"--few-shot {few_shot}: {path} needs that many rows with an answer field")
        questions = questions[:-few_shot]
        shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in examples)
    out = [f"{shots}Question: {q}\nAnswer:" if shots else q for q in questions[:n]]
    if len(out) < n:  # repeat the set when asked for more prompts than it has
        out = [out[i % len(out)] for i in range(n)]
    return out


def engine_kwargs(preset: str, args: argparse.Namespace) -> dict[str, Any]:
    """vllm.LLM keyword arguments for `preset` inside the total KV budget."""
    from kvarn_cli import kvcache

    budget = int(args.kv_budget_mib * MIB)
    if preset in ("bf16", "fp8"):
        kvcache.deactivate()
        return {
            "kv_cache_memory_bytes": budget,
            "kv_cache_dtype": "fp8" if preset == "fp8" else "auto",
            "max_num_seqs": args.baseline_max_num_seqs,
        }
    shape = model_shape(args.model)
    seqs = args.max_num_seqs if args.max_num_seqs > 0 else best_max_num_seqs(preset, budget, shape, args)
    kwargs = kvcache.engine_kwargs(preset)
    paged = kvcache.paged_budget(preset, total_bytes=budget, max_num_seqs=seqs, **shape)
    if paged <= 0:
        raise SystemExit(f"{preset}: the staging pool for {seqs} sequences does not fit in {args.kv_budget_mib} MiB")
    kwargs.update(kv_cache_memory_bytes=paged, max_num_seqs=seqs)
    return kwargs


def request_lengths(n: int, max_tokens: int, spread: float) -> list[int]:
    """Tokens each of `n` requests generates: all `max_tokens`, or with `spread` > 0 evenly
    spaced over [(1 - spread), (1 + spread)] x max_tokens in a fixed shuffled order (the mean
    stays max_tokens, so every preset and pass does the same total work)."""
    import random

    if not 0 <= spread < 1:
        raise SystemExit(f"--length-spread must be in [0, 1), got {spread}")
    if spread == 0 or n == 1:
        return [max_tokens] * n
    low, high = (1 - spread) * max_tokens, (1 + spread) * max_tokens
    lengths = [max(1, round(low + (high - low) * i / (n - 1))) for i in range(n)]
    random.Random(0).shuffle(lengths)
    return lengths


def longest_request(args: argparse.Namespace) -> int:
    return max(request_lengths(args.num_prompts, args.max_tokens, args.length_spread))


def peak_blocks(lengths: list[int], seqs: int, prompt: int, block: int) -> int:
    """The most paged blocks a job holds at once when `seqs` of its requests (generating
    `lengths` tokens after `prompt` prompt tokens each) run at a time, first come first served,
    none preempted, one token per step: a finished request's place goes to the next one, and
    the peak comes at the step before a request finishes (blocks only grow until then)."""
    import heapq

    running: list[tuple[int, int]] = []  # (finish step, start step)
    pending = iter(lengths)
    waiting = len(lengths)
    peak = 0
    step = 0
    while waiting or running:
        while waiting and len(running) < seqs:
            heapq.heappush(running, (step + next(pending), step))
            waiting -= 1
        step = running[0][0]
        held = sum(-(-(prompt + min(step, end) - start) // block) for end, start in running)
        peak = max(peak, held)
        while running and running[0][0] == step:
            heapq.heappop(running)
    return peak


def best_max_num_seqs(preset: str, budget: int, shape: dict[str, int], args: argparse.Namespace) -> int:
    """The most sequences a quantized preset can run at once inside `budget` without vLLM
    preempting any of this job's requests: each allowed sequence costs two 16-bit staging
    blocks up front, so past some point allowing more shrinks the paged cache below what the
    requests in flight hold. The requests' lengths are the job's own (request_lengths): with
    --length-spread, those that finish early free their blocks for the next, and a cap that
    assumed every request at its longest left k2v2 at 24 sequences where 32 fit (run 125)."""
    from kvarn_cli import kvcache

    lengths = request_lengths(args.num_prompts, args.max_tokens, args.length_spread)
    best = 1
    for m in range(1, min(512, args.num_prompts) + 1):  # more places than requests change nothing
        paged = kvcache.paged_budget(preset, total_bytes=budget, max_num_seqs=m, **shape)
        if paged <= 0:
            break
        alloc = kvcache.allocation(preset, kv_cache_memory_bytes=paged, max_num_seqs=m, **shape)
        # vLLM keeps one block spare
        if peak_blocks(lengths, m, args.prompt_tokens_estimate, alloc.block_size) <= alloc.num_blocks - 1:
            best = m
    # vLLM captures decode CUDA graphs for batch sizes 1, 2, 4 and multiples of 8 up to
    # max_num_seqs: a full batch of, say, 107 would run uncaptured (eagerly) every step
    return best if best < 8 else best - best % 8


def start_engine(preset: str, args: argparse.Namespace) -> tuple[Any, dict[str, Any], float]:
    """(vllm.LLM for `preset`, the keyword arguments it got, seconds its start took)."""
    from vllm import LLM

    kwargs = engine_kwargs(preset, args)
    if getattr(args, "profile_steps", 0):  # profile_admission.py starts engines here too, without the option
        from vllm.config.profiler import ProfilerConfig

        # the engine core's own trace (its host and the GPU), without stacks, whose recording
        # would slow the host work the trace is there to show
        kwargs["profiler_config"] = ProfilerConfig(
            profiler="torch", torch_profiler_dir=str(profile_dir(args, preset)), torch_profiler_with_stack=False,
            torch_profiler_use_gzip=False, torch_profiler_dump_cuda_time_total=False, ignore_frontend=True)
    if args.load_format:
        kwargs["load_format"] = args.load_format
    if args.max_cudagraph_capture_size:
        kwargs["compilation_config"] = {"max_cudagraph_capture_size": args.max_cudagraph_capture_size}
    t0 = time.perf_counter()
    llm = LLM(model=args.model, dtype="bfloat16", seed=0, disable_log_stats=False,
              max_model_len=longest_request(args) + args.max_prompt_tokens, enforce_eager=args.enforce_eager, **kwargs)
    start_s = time.perf_counter() - t0
    phase(f"engine started in {start_s:.1f} s")
    return llm, kwargs, start_s


def chat_prompts(llm: Any, args: argparse.Namespace, count: int) -> list[list[int]]:
    """The first `count` questions of --data as chat-formatted token ids (with --few-shot's examples)."""
    tok = llm.get_tokenizer()
    texts = load_prompts(args.data, count, args.few_shot)
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
               for p in texts]
    return [p["input_ids"] if hasattr(p, "keys") else p for p in prompts]


def warm_up(llm: Any, warm_prompts: list[list[int]], args: argparse.Namespace) -> dict[str, Any]:
    """Run the warm-up before any timed pass; returns the first-fill record (below)."""
    from vllm import SamplingParams

    engine = llm.llm_engine
    # first, alone and timed: one prompt that fills whole blocks in its prefill. Its flush
    # compiled in the first such prefill of a process and held run 57's first timed pass for
    # ~10 s (docs/BENCHMARKS.md); kvarn's backend now compiles it at engine start
    # (kvcache.warmup), which this shows: no kernels compiled, no seconds-long prefill
    first_fill: dict[str, Any] = {}
    if warm_prompts:
        joined = [t for p in warm_prompts for t in p]
        while len(joined) < args.max_prompt_tokens:
            joined += joined
        compiled_before, t1 = triton_cache_entries(), time.perf_counter()
        engine.add_request("warm-fill", {"prompt_token_ids": joined[: args.max_prompt_tokens]},
                           SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))
        while engine.has_unfinished_requests():
            engine.step()
        first_fill = {"prompt_tokens": args.max_prompt_tokens, "s": round(time.perf_counter() - t1, 3),
                      "kernels_compiled": triton_cache_entries() - compiled_before}
        phase(f"first fill prefill {first_fill}")

    # warm-up: compiles the Triton kernels (and their split counts) outside the timed run
    warm = SamplingParams(max_tokens=args.warmup_tokens or args.max_tokens, temperature=0.0, ignore_eos=True)
    for i, p in enumerate(warm_prompts):
        engine.add_request(f"warm{i}", {"prompt_token_ids": p}, warm)
    while engine.has_unfinished_requests():
        engine.step()
    phase(f"warm-up done ({len(warm_prompts)} prompts)")
    return first_fill


def run_one(preset: str, args: argparse.Namespace) -> dict[str, Any]:
    from vllm import SamplingParams

    llm, kwargs, start_s = start_engine(preset, args)
    cc = llm.llm_engine.vllm_config.cache_config
    n, passes = args.num_prompts, max(1, args.passes)
    prompts = chat_prompts(llm, args, n * passes + args.warmup_prompts)
    # each timed pass has its own prompts, and the warm-up prompts come after all of them:
    # no timed request hits the prefix cache, so every pass prefills every prompt it times
    # (with --few-shot, all but the question: the shared examples are cached by the warm-up)
    warm_prompts = prompts[n * passes:]
    params = [SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True)
              for m in request_lengths(n, args.max_tokens, args.length_spread)]
    first_fill = warm_up(llm, warm_prompts, args)

    watch_s = args.stall_stacks or args.core_stall_dump
    watch = StallWatch(watch_s) if watch_s > 0 else None
    runs = []
    for k in range(passes):
        runs.append(timed_pass(llm, prompts[k * n:(k + 1) * n], params, args.sample_every, f"p{k}-", watch))
        phase(f"pass {k}: {runs[-1]['tokens_per_s']} tok/s")
    profile = (profiled_pass(llm, prompts[:n], params, args.profile_at, args.profile_steps, profile_dir(args, preset))
               if args.profile_steps else None)
    median = median_run(runs)
    timed = prompts[: n * passes]
    return {
        "preset": preset,
        "engine_start_s": round(start_s, 1),
        "first_fill_prefill": first_fill,
        "num_blocks": int(cc.num_gpu_blocks),
        "block_size": int(cc.block_size),
        "capacity_tokens": int(cc.num_gpu_blocks) * int(cc.block_size),
        "kv_budget_mib": args.kv_budget_mib,
        "kv_cache_memory_bytes": int(kwargs["kv_cache_memory_bytes"]),
        "max_num_seqs": int(kwargs["max_num_seqs"]),
        "prompts": n,
        "length_spread": args.length_spread,
        "mean_prompt_tokens": round(sum(map(len, timed)) / len(timed), 1),
        "generated_tokens": median["generated_tokens"],
        "wall_s": median["wall_s"],
        "tokens_per_s": median["tokens_per_s"],
        "steps": median["steps"],
        "ms_per_step": median["ms_per_step"],
        "peak_running": median["peak_running"],
        "preemptions": median["preemptions"],
        "passes": [{k: r[k] for k in ("tokens_per_s", "ms_per_step", "steps", "preemptions", "median_step_ms",
                                      "max_step_ms", "stall_s", "stalls", "by_rows", "kernels_compiled")}
                   for r in runs],
        "profile": profile,
        "kernel_variants": {k: os.environ.get(k) for k in ("KVARN_DECODE_VARIANT", "KVARN_FLUSH_VARIANT", "KVARN_DECODE_GRAPHS",
                                                           "VLLM_USE_V2_MODEL_RUNNER")},
        "cudagraph_mode": str(llm.llm_engine.vllm_config.compilation_config.cudagraph_mode),
        "cudagraph_capture_sizes": list(llm.llm_engine.vllm_config.compilation_config.cudagraph_capture_sizes or []),
        "first_request_token_ids": runs[0]["first_ids"],
    }


def profile_dir(args: argparse.Namespace, preset: str) -> Path:
    """Where the engine core writes `preset`'s trace: beside --out, one folder per process."""
    return Path(args.out).resolve().parent / f"{Path(args.out).stem}_trace_{preset}_{os.getpid()}"


def profiled_pass(llm: Any, prompts: list[list[int]], params: list[Any], at: int, count: int,
                  folder: Path) -> dict[str, Any]:
    """One more pass over `prompts` with vLLM's torch profiler on in the engine core for the
    `count` steps from step `at`: whether those steps wait on the GPU or on the host. The
    summary (benchmarks/trace_summary.py) gives the GPU's busy time per step against the span
    its work covers, and the host's CUDA calls and named regions. The profiled steps' wall
    times are the profiler's too (it records every host op), so they are only reported."""
    import trace_summary

    engine = llm.llm_engine
    for i, p in enumerate(prompts):
        engine.add_request(f"prof{i}", {"prompt_token_ids": p}, params[i])
    steps, walls, rows = 0, [], []
    while engine.has_unfinished_requests():
        if steps == at:
            llm.start_profile()
        ts = time.perf_counter()
        outs = engine.step()
        if at <= steps < at + count:
            walls.append(time.perf_counter() - ts)
            rows.append(len(outs))
        steps += 1
        if steps == at + count:
            llm.stop_profile()
    if steps < at + count:
        if steps > at:
            llm.stop_profile()
        return {"error": f"the pass ended at step {steps}, before step {at + count}"}
    traces = sorted(folder.rglob("*.json*"), key=lambda f: f.stat().st_size)
    if not traces:
        return {"error": f"no trace under {folder}"}
    with open(traces[-1]) as f:
        summary = trace_summary.summarize(json.load(f)["traceEvents"], count)
    phase(f"profiled steps {at}..{at + count - 1}: GPU busy {summary.get('gpu', {}).get('busy_ms_per_step')} ms/step")
    return {"at": at, "steps": count, "trace": str(traces[-1]), "rows_median": statistics.median(rows),
            "profiled_step_ms_median": round(1e3 * statistics.median(walls), 2), "summary": summary}


def busy_threads(dump: str) -> str:
    """Of one faulthandler dump, the stacks of the threads doing vLLM's or kvarn's work (the
    engine core's, the worker's), without the helper threads that only wait (tqdm's monitor,
    vLLM's death-pipe watcher): those fill the dump and say nothing about a stall."""
    blocks = re.split(r"\n(?=(?:Current thread|Thread) 0x)", dump)
    keep = [b for b in blocks[1:] if any(m in b for m in ("kvarn_cli", "/vllm/v1/worker/", "/vllm/v1/engine/core.py"))]
    return "\n".join([blocks[0].strip()] + [b.strip()[:6000] for b in keep])


def phase(what: str) -> None:
    """A progress line on stderr: when a preset runs out of time, its log says how far it got."""
    print(f"PHASE {time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


def run_child(cmd: list[str], env: dict[str, str], timeout_s: int) -> tuple[int | None, str, str]:
    """Run one preset's process in its own session: (exit code or None on timeout, stdout,
    stderr). On timeout the whole process group is killed, vLLM's engine-core process too;
    a surviving engine core keeps its GPU memory, and later presets then fail to start
    (most likely what failed run 59's k4v4 and k2v2:dv-tmwhb3b after k2v2 timed out; that
    run's logs were not kept)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median tokens/s (the lower middle one of an even count)."""
    return sorted(runs, key=lambda r: r["tokens_per_s"])[(len(runs) - 1) // 2]


def triton_cache_entries() -> int:
    """Kernels in Triton's on-disk caches (one directory per compiled kernel): the change across
    a pass counts the compilations it waited for, in whichever process ran them. vLLM points
    TRITON_CACHE_DIR of the process that compiles the model (the engine core) at
    <VLLM_CACHE_ROOT>/torch_compile_cache/<hash>/triton_cache, so those directories count
    too: counting only this process's directory missed the engine core's compiles in its
    own process (runs 60-61 read 0). Inductor's own kernels land there too, but only at start."""
    dirs = {Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")}
    vllm_root = Path(os.environ.get("VLLM_CACHE_ROOT") or Path.home() / ".cache" / "vllm")
    dirs.update(vllm_root.glob("torch_compile_cache/**/triton_cache"))
    return sum(len(os.listdir(d)) for d in dirs if d.is_dir())


class StallWatch:
    """Prints the main thread's Python stack (to stderr) once a step has run longer than
    `after_s`: what a step that stalls for seconds is doing (a compile, a capture, a
    synchronisation). Useful only with the engine core in this process
    (VLLM_ENABLE_V1_MULTIPROCESSING=0, which --stall-stacks sets); otherwise the stack is
    the wait for the engine core's reply."""

    def __init__(self, after_s: float) -> None:
        import threading

        self.after_s = after_s
        self.step = -1
        self.started = 0.0
        self.reported = -1
        self.main_ident = threading.get_ident()
        threading.Thread(target=self._watch, daemon=True).start()

    def begin(self, step: int) -> None:
        self.step, self.started = step, time.perf_counter()

    def end(self) -> None:
        """The step returned: nothing to report until the next begin()."""
        self.step = -1

    def _watch(self) -> None:
        import traceback

        while True:
            time.sleep(self.after_s / 4)
            step, started = self.step, self.started
            if step >= 0 and step != self.reported and time.perf_counter() - started > self.after_s:
                self.reported = step
                frame = sys._current_frames().get(self.main_ident)
                stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)"
                print(f"STALL step {step} running {time.perf_counter() - started:.1f}s:\n{stack}END STALL", file=sys.stderr, flush=True)


def timed_pass(llm: Any, prompts: list[list[int]], params: list[Any], sample_every: int, prefix: str,
               watch: StallWatch | None = None) -> dict[str, Any]:
    """Generate for `prompts` at once, timed; tokens/s, steps, peak running, preemptions.
    Also what tells a uniformly slower pass from one with a few long stalls (the kvarn presets'
    passes vary by 20-35%, docs/BENCHMARKS.md runs 38 and 43): the median and longest step,
    the time spent in steps over 5x the median beyond the median, the first such steps (index,
    seconds), the kernels compiled, and step time against the requests that got a token in it
    (`by_rows`: with the engine core in its own process, the front end's view of the step,
    the configuration `kvarn run` uses). `params[i]` is prompt i's sampling."""
    from kvarn_cli.vllm_compat import read_gauges

    engine = llm.llm_engine
    base = read_gauges(llm)
    compiled_before = triton_cache_entries()
    generated = steps = 0
    peak_running = 0.0
    first_ids: list[int] = []
    step_s: list[float] = []
    rows: list[int] = []
    t1 = time.perf_counter()
    for i, p in enumerate(prompts):
        engine.add_request(f"{prefix}{i}", {"prompt_token_ids": p}, params[i])
    while engine.has_unfinished_requests():
        if watch is not None:
            watch.begin(steps)
        ts = time.perf_counter()
        outs = engine.step()
        step_s.append(time.perf_counter() - ts)
        if watch is not None:
            watch.end()
        rows.append(len(outs))  # the requests that got a token this step (outputs are cumulative)
        for out in outs:
            if out.finished:
                generated += len(out.outputs[0].token_ids)
                if out.request_id == f"{prefix}0":
                    first_ids = list(out.outputs[0].token_ids[:64])
        steps += 1
        if steps % sample_every == 0:
            peak_running = max(peak_running, read_gauges(llm)["num_requests_running"])
    wall = time.perf_counter() - t1
    end = read_gauges(llm)
    median_s = sorted(step_s)[len(step_s) // 2] if step_s else 0.0
    stall_s = sum(s - median_s for s in step_s if s > 5 * median_s)
    stalls = [[i, round(s, 3)] for i, s in enumerate(step_s) if s > 5 * median_s][:10]
    return {"generated_tokens": generated, "wall_s": round(wall, 2), "tokens_per_s": round(generated / wall, 1),
            "steps": steps, "ms_per_step": round(1e3 * wall / max(1, steps), 2), "peak_running": int(peak_running),
            "preemptions": int(end["num_preemptions"] - base["num_preemptions"]), "first_ids": first_ids,
            "median_step_ms": round(1e3 * median_s, 2), "max_step_ms": round(1e3 * max(step_s, default=0.0), 1),
            "stall_s": round(stall_s, 2), "stalls": stalls, "by_rows": step_cost_by_rows(list(zip(rows, step_s))),
            "kernels_compiled": triton_cache_entries() - compiled_before}


def step_cost_by_rows(steps: list[tuple[int, float]], bucket: int = 16) -> dict[str, Any]:
    """Decode-step wall time against the rows in the batch: the median ms per bucket of
    `bucket` rows, and a least-squares line ms = per_step + per_row x rows over the steps under
    twice the median (host-bound steps cost vLLM's per-request work on every row, so whether a
    preset's extra cost is per step or per row decides what more rows in flight buy)."""
    steps = [(r, w) for r, w in steps if r > 0]  # steps that gave no token (the end of a pass) are not decode steps
    if not steps:
        return {}
    med = statistics.median(w for _, w in steps)
    kept = [(r, 1e3 * w) for r, w in steps if w <= 2 * med]
    groups: dict[int, list[float]] = defaultdict(list)
    for r, ms in kept:
        groups[r // bucket * bucket].append(ms)
    out: dict[str, Any] = {"buckets": {f"{b}-{b + bucket - 1}": [len(v), round(statistics.median(v), 2)]
                                       for b, v in sorted(groups.items())}}
    xs = [r for r, _ in kept]
    if len(set(xs)) > 1:
        mx, my = statistics.mean(xs), statistics.mean(ms for _, ms in kept)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (ms - my) for x, ms in kept) / sxx
        out["fit_ms"] = {"per_step": round(my - slope * mx, 3), "per_row": round(slope, 4), "steps": len(kept)}
    return out


def preset_setup(label: str) -> tuple[str, dict[str, str], list[str]]:
    """(preset, environment overrides, extra arguments) of a --presets entry:
    "k2v2:eager-decode" turns vLLM's CUDA graphs of decode steps off; "bf16:mib8192" gives the
    preset its own KV budget (e.g. bf16 with room for every sequence: its speed without
    queueing); "k2v2-g64:dv-tmwhb" runs another decode-kernel variant (KVARN_DECODE_VARIANT);
    "bf16:v1" runs a baseline on vLLM's V1 model runner, the one kvarn's presets run on
    (vllm_compat.prefer_v1_model_runner), where vLLM 0.26 would pick its V2 runner;
    "k2v2-g64:v2" runs a kvarn preset on the V2 runner; "k2v2:torch-prefill" attends prefill
    chunks that continue a sequence (prefix-cache hits, recomputes) chunk by chunk in PyTorch,
    as kvarn did before it packed them for vLLM's FlashAttention (KVARN_BATCHED_PREFILL=0);
    "k2v2:torch-pack" packs them for it with PyTorch ops instead of kernels.triton_pack
    (KVARN_PACK_KERNELS=0);
    "k2v2:torch-launch" launches the CUDA decode kernel through torch's own __call__ of it
    (KVARN_CUDA_LAUNCH=torch) instead of kvarn's cuda_decode.Launcher;
    "k2v2:cap512" has vLLM capture CUDA graphs for steps of up to 512 tokens (its default is
    twice max_num_seqs, so steps that mix a prefill into a full decode batch run eagerly)."""
    preset, _, variant = label.partition(":")
    if variant == "eager-decode":
        return preset, {"KVARN_DECODE_GRAPHS": "0"}, []
    if variant.startswith("mib") and variant[3:].isdigit():
        return preset, {}, ["--kv-budget-mib", variant[3:]]
    if variant in ("v1", "v2"):
        return preset, {"VLLM_USE_V2_MODEL_RUNNER": "0" if variant == "v1" else "1"}, []
    if variant.startswith("cap") and variant[3:].isdigit():
        return preset, {}, ["--max-cudagraph-capture-size", variant[3:]]
    if variant == "torch-prefill":
        return preset, {"KVARN_BATCHED_PREFILL": "0"}, []
    if variant == "torch-pack":
        return preset, {"KVARN_PACK_KERNELS": "0"}, []
    if variant == "torch-launch":
        return preset, {"KVARN_CUDA_LAUNCH": "torch"}, []
    if variant.startswith("dv-"):
        from kvarn_cli.kernels.triton_decode import VARIANTS

        if variant[3:] not in VARIANTS:
            raise SystemExit(f"{label}: unknown decode variant {variant[3:]!r} (known: {', '.join(VARIANTS)})")
        return preset, {"KVARN_DECODE_VARIANT": variant[3:]}, []
    if variant:
        raise SystemExit(f"{label}: unknown preset variant {variant!r} (known: eager-decode, mibN, capN, dv-NAME, v1, v2, torch-prefill, torch-pack, torch-launch)")
    return preset, {}, []


def build_parser(description: str) -> argparse.ArgumentParser:
    """The options every end-to-end script here shares (benchmarks/profile_admission.py too)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="JSONL with a question/problem/prompt field (e.g. GSM8K test)")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--kv-budget-mib", type=float, default=1024, help="total KV memory per preset (staging included)")
    ap.add_argument("--num-prompts", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--length-spread", type=float, default=0.0,
                    help="0: every request generates --max-tokens; S in (0, 1): request lengths spread evenly over "
                         "(1 +- S) x --max-tokens, the same for every preset and pass")
    ap.add_argument("--max-num-seqs", type=int, default=0,
                    help="sequences in flight for the KVarN presets; 0 = as many as the budget holds at the mean "
                         "length (--prompt-tokens-estimate + --max-tokens)")
    ap.add_argument("--few-shot", type=int, default=0,
                    help="put the same K worked examples (the data file's last K rows) before every question: "
                         "prefix-cache hits, and prefills that continue after them (raise --max-prompt-tokens)")
    ap.add_argument("--max-prompt-tokens", type=int, default=512, help="max_model_len = this + the longest request")
    ap.add_argument("--prompt-tokens-estimate", type=int, default=128, help="prompt length assumed by --max-num-seqs 0")
    ap.add_argument("--baseline-max-num-seqs", type=int, default=256, help="vLLM's default for bf16/fp8")
    ap.add_argument("--warmup-prompts", type=int, default=8,
                    help="warm-up chats before the timed passes (after one prompt made of them that fills whole "
                         "blocks, timed alone: first_fill_prefill)")
    ap.add_argument("--warmup-tokens", type=int, default=0, help="0 = --max-tokens (meets every split count)")
    ap.add_argument("--sample-every", type=int, default=8, help="read vLLM's gauges every N steps")
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--max-cudagraph-capture-size", type=int, default=0,
                    help="vLLM's largest CUDA-graph batch in tokens (0: vLLM's default, 2 x max_num_seqs up to 512)")
    ap.add_argument("--load-format", default="",
                    help="vLLM's load_format, e.g. dummy: random weights for a model directory written by "
                         "benchmarks/dummy_model.py (throughput only)")
    ap.add_argument("--timeout-s", type=int, default=540, help="per preset")
    ap.add_argument("--passes", type=int, default=1,
                    help="timed passes per engine, each on its own --num-prompts prompts; the median pass (the lower middle one) is reported")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the preset list this many times, interleaved (a fresh engine each time); "
                         "ratios use each preset's median round")
    ap.add_argument("--stall-stacks", type=float, default=0.0,
                    help="print the Python stack of any timed step running longer than this many seconds (runs the "
                         "engine core in-process)")
    ap.add_argument("--core-stall-dump", type=float, default=0.0,
                    help="keep vLLM's engine core in its own process and have kvarn's builder there dump every "
                         "Python stack of it when a step runs longer than this many seconds (KVARN_STALL_DUMP_S; "
                         "idle gaps dump too); the front end's stacks of long steps come with them")
    ap.add_argument("--out", default="e2e_gpu.json")
    return ap


def main() -> None:
    ap = build_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="after the timed passes, one more pass with vLLM's torch profiler on in the engine core "
                         "for this many steps (0: none); the trace lands beside --out, its summary in the result")
    ap.add_argument("--profile-at", type=int, default=300, help="the profiled pass's first profiled step")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:  # child: one preset, result as the last stdout line
        print("RESULT " + json.dumps(run_one(args.one, args)), flush=True)
        return

    import torch

    results: list[dict[str, Any]] = []
    summary = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/e2e_gpu.py " + " ".join(sys.argv[1:]),
        "results": results,
    }
    labels = args.presets.split(",")
    setups = {label: preset_setup(label) for label in labels}  # bad labels fail before any run
    for round_, label in [(k, lab) for k in range(max(1, args.rounds)) for lab in labels]:
        preset, env_extra, extra = setups[label]
        env = dict(os.environ)
        # decode graphs on (kvarn's default) unless the caller's environment or the label says off
        env.setdefault("KVARN_DECODE_GRAPHS", "1")
        if args.stall_stacks > 0:
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if args.core_stall_dump > 0:  # read by kvarn's builder in the engine-core process
            env["KVARN_STALL_DUMP_S"] = str(args.core_stall_dump)
        env.update(env_extra)
        cmd = [sys.executable, __file__, "--one", preset] + [a for a in sys.argv[1:]] + extra
        t0 = time.perf_counter()
        code, stdout, stderr = run_child(cmd, env, args.timeout_s)
        lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
        if code != 0 or not lines:
            error = f"timeout after {args.timeout_s}s" if code is None else f"exit {code}"
            res = {"preset": label, "error": error, "phases": [ln for ln in stderr.splitlines() if ln.startswith("PHASE ")],
                   "log_tail": (stdout + stderr)[-3000:]}
            print(f"{label}: FAILED ({error})\n{res['log_tail']}", flush=True)
        else:
            res = json.loads(lines[-1][len("RESULT "):])
            res["preset"] = label
            res["round"] = round_
            # kvarn's warnings (e.g. the builder reading the device block table, a sync per step)
            # (logging's last-resort handler prints the bare message, without "WARNING:kvarn:")
            res["kvarn_warnings"] = sorted({ln.strip()[-200:] for ln in stderr.splitlines()
                                            if "WARNING:kvarn:" in ln or "KVarN builder" in ln})
            if args.stall_stacks > 0 or args.core_stall_dump > 0:  # StallWatch's reports: the innermost frames
                blocks = [b.split("END STALL")[0] for b in stderr.split("STALL step ")[1:]]
                res["stall_stacks"] = ["STALL step " + b.splitlines()[0] + "\n" + b[-4000:] for b in blocks[:5]]
            if args.core_stall_dump > 0:  # the engine core's own dumps (kvarn's builder, faulthandler)
                res["core_stall_dumps"] = [busy_threads(b) for b in stderr.split("Timeout (")[1:][:12]]
        res["process_s"] = round(time.perf_counter() - t0, 1)
        results.append(res)
        print(json.dumps(res), flush=True)
        # saved after every preset: a run killed by a time limit keeps what it measured
        Path(args.out).write_text(json.dumps(summary, indent=1))

    # per preset, its median round (with one round: its only one)
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if "tokens_per_s" in r:
            by_label.setdefault(r["preset"], []).append(r)
    ok = {label: median_run(rs) for label, rs in by_label.items()}
    summary["median_rounds"] = {label: {"round": ok[label]["round"], "tokens_per_s": [r["tokens_per_s"] for r in rs]}
                                for label, rs in by_label.items()}
    for r in ok.values():
        for ref in ("bf16", "fp8"):
            if ref in ok:
                r[f"speed_vs_{ref}"] = round(r["tokens_per_s"] / ok[ref]["tokens_per_s"], 3)
                r[f"peak_running_vs_{ref}"] = round(r["peak_running"] / max(1, ok[ref]["peak_running"]), 2)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"{'preset':18} {'blocks':>7} {'cap tok':>8} {'tok/s':>9} {'x bf16':>7} {'x fp8':>6} {'peak run':>8} {'preempt':>7} {'ms/step':>8}")
    for r in [r for r in results if "tokens_per_s" not in r] + list(ok.values()):
        if "tokens_per_s" not in r:
            print(f"{r['preset']:18} {r.get('error')}")
            continue
        print(f"{r['preset']:18} {r['num_blocks']:7d} {r['capacity_tokens']:8d} {r['tokens_per_s']:9.1f} "
              f"{r.get('speed_vs_bf16', float('nan')):7.2f} {r.get('speed_vs_fp8', float('nan')):6.2f} "
              f"{r['peak_running']:8d} {r['preemptions']:7d} {r['ms_per_step']:8.2f}")


if __name__ == "__main__":
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    main()
