"""Host cost of planning one decode step: StagingPool.plan + loading the CUDA-graph buffers.

With decode steps replayed as CUDA graphs, the metadata builder's planning is the part of a
KVarN step that still runs in Python every step, so it has to stay well under vLLM's own
per-step overhead (~3-5 ms on the H100 host at ~100 sequences).

    python benchmarks/plan_step.py --rows 107 --steps 300
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvarn_cli.kvcache.graph import DecodeBuffers  # noqa: E402
from kvarn_cli.kvcache.staging import UNSPLIT_DECODES, StagingPool  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=107, help="sequences decoding together")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--width", type=int, default=12, help="blocks per sequence in the table")
    ap.add_argument("--prompt", type=int, default=91, help="tokens per sequence before decoding")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    R, G, W = args.rows, args.block_size, args.width
    pool = StagingPool(2 * R, G, attention_budget_rows=UNSPLIT_DECODES, kernel_decodes=True)  # as the CUDA backend's
    table = np.arange(1, R * W + 1, dtype=np.int32).reshape(R, W)
    seq = np.full(R, args.prompt, dtype=np.int64) + np.arange(R) % 7
    prefill_qsl = np.concatenate([[0], np.cumsum(seq)])
    pool.plan(prefill_qsl, seq, table, int(prefill_qsl[-1]))
    buffers = DecodeBuffers(R, W, torch.device("cpu"))
    qsl = np.arange(R + 1)
    plan_s = load_s = 0.0
    for _ in range(args.steps):
        seq = seq + 1
        t0 = time.perf_counter()
        plan = pool.plan(qsl, seq, table, R)
        t1 = time.perf_counter()
        if not buffers.fits(plan, R):
            raise SystemExit("a decode-only step did not fit the graph buffers")
        buffers.load(plan, R)
        buffers.take_fills()  # the builder hands these to the flush before the next load
        load_s += time.perf_counter() - t1
        plan_s += t1 - t0
    print(f"{R} rows, {args.steps} decode steps: plan {1e3 * plan_s / args.steps:.3f} ms/step, "
          f"buffer load {1e3 * load_s / args.steps:.3f} ms/step, {pool.spills} spills")


if __name__ == "__main__":
    main()
