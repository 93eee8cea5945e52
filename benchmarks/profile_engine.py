"""Where a vLLM engine step goes with a KV preset: step times, host profile, GPU time.

Three passes over the same kind of batch, each on prompts no earlier pass used (so no
prefix-cache hits unless --repeat-prompts asks for them, as a re-run or a preempted request
would get):
1. warm-up (pays Triton and torch.compile compilation);
2. timed: wall time of every engine step; the median step of the steady decode phase (every
   request decoding) is the number to compare between presets at the same batch size;
3. cProfile over the decode phase only: the Python functions with the most own and
   cumulative time (a host-device synchronisation shows up as own time in the call that
   waits).
With --gpu-profile, a bounded number of decode steps under torch.profiler: GPU kernel time
per step (less than the wall time per step means the GPU waits on the host).

usage (GPU machine): VLLM_ENABLE_V1_MULTIPROCESSING=0 python benchmarks/profile_engine.py \
    --model /tmp/models/smollm2-135m --preset k2v2 --prompts 104 --max-tokens 300
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--preset", default="k2v2", help="a kvarn preset, or bf16 / fp8 for vLLM's own cache")
    ap.add_argument("--prompts", type=int, default=32, help="requests per pass (all admitted at once)")
    ap.add_argument("--prompt-tokens", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=300)
    ap.add_argument("--kv-cache-memory-mib", type=int, default=4096, help="large enough that nothing queues")
    ap.add_argument("--repeat-prompts", action="store_true", help="every pass reuses the same prompts")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--no-cprofile", action="store_true")
    ap.add_argument("--gpu-profile", action="store_true",
                    help="also profile decode steps under torch.profiler: GPU kernel time per step, top kernels")
    ap.add_argument("--gpu-profile-steps", type=int, default=40)
    ap.add_argument("--gpu-profile-after", type=int, default=8,
                    help="engine steps run before the torch.profiler window (the prefills take the first few)")
    ap.add_argument("--load-format", default="auto",
                    help="vLLM's load_format; 'dummy' with benchmarks/dummy_model.py (random weights, any shape)")
    ap.add_argument("--trace", help="write the torch.profiler window as a Chrome trace to this path")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    from vllm import LLM, SamplingParams

    from kvarn_cli import kvcache

    if args.preset in ("bf16", "fp8"):  # vLLM's own cache, as benchmarks/e2e_gpu.py's baselines
        kvcache.deactivate()
        kwargs: dict[str, Any] = {"kv_cache_dtype": "fp8" if args.preset == "fp8" else "auto"}
    else:
        kwargs = kvcache.engine_kwargs(args.preset)
    seqs = max(8, args.prompts + (-args.prompts) % 8)  # vLLM captures decode graphs of multiples of 8
    llm = LLM(model=args.model, load_format=args.load_format, dtype="bfloat16", seed=0, max_model_len=args.prompt_tokens + args.max_tokens + 8,
              kv_cache_memory_bytes=args.kv_cache_memory_mib << 20, max_num_seqs=seqs,
              enforce_eager=args.enforce_eager, **kwargs)
    engine = llm.llm_engine
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    cc = engine.vllm_config.compilation_config
    print(f"preset {args.preset}, max_num_seqs {seqs}, cudagraph mode {cc.cudagraph_mode}", flush=True)

    passes = iter(range(100))

    def prompts() -> list[list[int]]:
        k = 0 if args.repeat_prompts else next(passes)
        return [[(17 * i + 31 * j + 7919 * k) % 20000 + 100 for j in range(args.prompt_tokens)]
                for i in range(args.prompts)]

    def add(tag: str) -> list[str]:
        ids = []
        for i, p in enumerate(prompts()):
            ids.append(f"{tag}{i}")
            engine.add_request(ids[-1], {"prompt_token_ids": p}, params)
        return ids

    def run(tag: str, prof: Any = None) -> list[float]:
        """Step wall times of one pass; `prof` is enabled only while every request decodes."""
        add(tag)
        times: list[float] = []
        profiling = False
        while engine.has_unfinished_requests():
            # past the prefill steps (a chunked prefill of all prompts takes a few), before the tail
            decoding = 8 <= len(times) < args.max_tokens - 8
            if prof is not None and decoding != profiling:
                (prof.enable if decoding else prof.disable)()
                profiling = decoding
            t0 = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - t0)
        if prof is not None and profiling:
            prof.disable()
        return times

    def report(label: str, times: list[float]) -> None:
        steady = times[8: args.max_tokens - 8] or times
        print(f"{label}: {sum(times):.2f} s, {len(times)} steps; decode phase median "
              f"{1e3 * statistics.median(steady):.2f} ms/step (p10 {1e3 * sorted(steady)[len(steady) // 10]:.2f}, "
              f"p90 {1e3 * sorted(steady)[9 * len(steady) // 10]:.2f}); first 8 steps {1e3 * sum(times[:8]):.0f} ms",
              flush=True)

    report("warm-up pass", run("warm"))
    report("timed pass", run("timed"))
    if not args.no_cprofile:
        prof = cProfile.Profile()
        times = run("prof", prof)
        report("cProfile pass (decode phase profiled)", times)
        for key in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(args.top)
            print(buf.getvalue()[-12000:])
    if args.gpu_profile:
        gpu_profile(engine, add, args.gpu_profile_steps, args.gpu_profile_after, args.trace)


def gpu_profile(engine: Any, add: Any, max_steps: int, after: int, trace: str | None) -> None:
    """GPU busy time per step (sum of kernel times), over `max_steps` decode-phase steps: the
    prefills run first, outside the profiler, and the requests are aborted after (the
    profiler's own overhead is large)."""
    from torch.profiler import ProfilerActivity, profile

    ids = add("gpu")
    for _ in range(after):  # past the prefills, to the contexts of interest
        engine.step()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        steps = 0
        while engine.has_unfinished_requests() and steps < max_steps:
            engine.step()
            steps += 1
    wall = time.perf_counter() - t0
    engine.abort_request(ids)
    while engine.has_unfinished_requests():
        engine.step()
    if trace:
        prof.export_chrome_trace(trace)
    events = prof.key_averages()
    kernel_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in events)
    print(f"torch.profiler pass: {wall:.2f} s, {steps} steps, {1e3 * wall / steps:.2f} ms/step wall (profiler "
          f"overhead included), {kernel_us / 1e3 / steps:.2f} ms/step of GPU kernel time", flush=True)
    print(events.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))
    # the host side, where a step that waits for the GPU (or a slow graph launch) shows
    print(events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
