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


if __name__ == "__main__":
    main()
