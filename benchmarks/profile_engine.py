"""Where a vLLM engine step goes with a KV preset: cProfile over engine steps, in-process.

Runs the same decode-heavy workload twice (the first pays Triton/torch.compile warm-up) and
profiles the second; prints wall time per step and the functions with the most own and
cumulative time. A host-device synchronisation shows up as own time in the call that waits.

usage (GPU machine): VLLM_ENABLE_V1_MULTIPROCESSING=0 python benchmarks/profile_engine.py \
    --model /tmp/models/smollm2-135m --preset k2v2 --prompts 32 --max-tokens 300
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--preset", default="k2v2")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=300)
    ap.add_argument("--top", type=int, default=35)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--gpu-profile", action="store_true",
                    help="also profile decode steps under torch.profiler: GPU kernel time per step, top kernels")
    ap.add_argument("--gpu-profile-steps", type=int, default=40)
    args = ap.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    from vllm import LLM, SamplingParams

    from kvarn_cli import kvcache

    kwargs = kvcache.engine_kwargs(args.preset) if args.preset != "bf16" else {}
    llm = LLM(model=args.model, dtype="bfloat16", seed=0, max_model_len=2048, kv_cache_memory_bytes=1 << 30,
              max_num_seqs=max(args.prompts, 8), enforce_eager=args.enforce_eager, **kwargs)
    engine = llm.llm_engine
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    prompts = [[(17 * i + 31 * j) % 20000 + 100 for j in range(args.prompt_tokens)] for i in range(args.prompts)]

    def run(tag: str) -> tuple[float, int]:
        for i, p in enumerate(prompts):
            engine.add_request(f"{tag}{i}", {"prompt_token_ids": p}, params)
        steps = 0
        t0 = time.perf_counter()
        while engine.has_unfinished_requests():
            engine.step()
            steps += 1
        return time.perf_counter() - t0, steps

    cc = llm.llm_engine.vllm_config.compilation_config
    print(f"cudagraph mode {cc.cudagraph_mode}, capture sizes {cc.cudagraph_capture_sizes}", flush=True)
    wall, steps = run("warm")
    print(f"warm-up run: {wall:.2f} s, {steps} steps, {1e3 * wall / steps:.2f} ms/step", flush=True)
    wall, steps = run("again")
    print(f"second run: {wall:.2f} s, {steps} steps, {1e3 * wall / steps:.2f} ms/step", flush=True)
    prof = cProfile.Profile()
    prof.enable()
    wall, steps = run("prof")
    prof.disable()
    print(f"profiled run: {wall:.2f} s, {steps} steps, {1e3 * wall / steps:.2f} ms/step", flush=True)
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(args.top)
        print(buf.getvalue()[-9000:])
    if args.gpu_profile:
        gpu_profile(engine, prompts, params, args.gpu_profile_steps)


def gpu_profile(engine, prompts, params, max_steps: int) -> None:  # type: ignore[no-untyped-def]
    """GPU busy time per step (sum of kernel times; < wall time means the GPU waits on the
    host), over `max_steps` decode-phase steps: the prefills run first, outside the profiler,
    and the requests are aborted after (the profiler's own overhead is large)."""
    from torch.profiler import ProfilerActivity, profile

    ids = [f"gpu{i}" for i in range(len(prompts))]
    for rid, p in zip(ids, prompts):
        engine.add_request(rid, {"prompt_token_ids": p}, params)
    for _ in range(8):  # past the prefills
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
    events = prof.key_averages()
    kernel_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in events)
    print(f"torch.profiler run: {wall:.2f} s, {steps} steps, {1e3 * wall / steps:.2f} ms/step wall, "
          f"{kernel_us / 1e3 / steps:.2f} ms/step of GPU kernel time", flush=True)
    print(events.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
