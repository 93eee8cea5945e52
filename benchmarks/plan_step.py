"""Host cost of planning one decode step into the CUDA-graph buffers: StagingPool.plan_decodes +
DecodeBuffers.load_decodes (what the metadata builder does) against StagingPool.plan +
DecodeBuffers.load (what it did before), in alternating rounds of one process.

With decode steps replayed as CUDA graphs, the metadata builder's planning is the part of a
KVarN step that still runs in Python every step, so it has to stay well under vLLM's own
per-step overhead (~3-5 ms on the H100 host at ~100 sequences).

    python benchmarks/plan_step.py --rows 128 --steps 300 --rounds 7
    python benchmarks/plan_step.py --rows 128 --steps 300 --rounds 7 --evict-mb 64   # caches cold, as in the engine

With --baseline FILE (another version of kvarn_cli/kvcache/staging.py, e.g. from
`git show REV:kvarn_cli/kvcache/staging.py > /tmp/staging_rev.py`), the plan alone is timed
for both versions in turn, --rounds times each on a fresh pool, and the medians and their
ratio are printed: one process, so host noise falls on both alike.

    python benchmarks/plan_step.py --rows 128 --width 30 --prompt 1358 --baseline /tmp/staging_rev.py
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvarn_cli.kvcache import staging  # noqa: E402
from kvarn_cli.kvcache.graph import DecodeBuffers  # noqa: E402


def decode_rows(R: int, G: int, prompt: int) -> np.ndarray:
    """Sequence lengths spread over a block's positions, so about R / G rows start or fill a
    block in every step, as in a long-running batch."""
    return np.full(R, prompt, dtype=np.int64) + np.arange(R) * 37 % G


def time_plans(module: ModuleType, args: argparse.Namespace, buffers: DecodeBuffers | None, direct: bool = False) -> tuple[float, float]:
    """(plan, buffer load) milliseconds per decode step, on a pool of `module` after one
    prefill; `direct`: planned with plan_decodes + load_decodes, as the builder plans a
    decode-only step, instead of plan + load."""
    R, G, W = args.rows, args.block_size, args.width
    pool = module.StagingPool(2 * R, G, attention_budget_rows=module.UNSPLIT_DECODES, kernel_decodes=True)
    table = np.arange(1, R * W + 1, dtype=np.int32).reshape(R, W)
    seq = decode_rows(R, G, args.prompt)
    if int(seq.max()) + args.steps > W * G:
        raise SystemExit(f"--width {W} holds {W * G} tokens; the last step reaches {int(seq.max()) + args.steps}")
    prefill_qsl = np.concatenate([[0], np.cumsum(seq)])
    pool.plan(prefill_qsl, seq, table, int(prefill_qsl[-1]))
    qsl = np.arange(R + 1)
    plan_s = load_s = 0.0
    sweep = np.ones(args.evict_mb * (1 << 20) // 8) if args.evict_mb else None
    for _ in range(args.steps):
        seq = seq + 1
        if sweep is not None:  # what the engine's own work between two plans does to the caches
            sweep += 1.0
        t0 = time.perf_counter()
        if direct:
            step = pool.plan_decodes(seq, table)
        else:
            plan = pool.plan(qsl, seq, table, R)
        t1 = time.perf_counter()
        plan_s += t1 - t0
        if buffers is not None:
            if direct:
                buffers.load_decodes(step, R)
            else:
                if not buffers.fits(plan, R):
                    raise SystemExit("a decode-only step did not fit the graph buffers")
                buffers.load(plan, R)
            buffers.take_fills()  # the builder hands these to the flush before the next load
            load_s += time.perf_counter() - t1
    return 1e3 * plan_s / args.steps, 1e3 * load_s / args.steps


def load_module(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("kvarn_staging_baseline", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=128, help="sequences decoding together")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--width", type=int, default=30, help="blocks per sequence in the table")
    ap.add_argument("--prompt", type=int, default=1358, help="tokens per sequence before decoding (+ 0..G-1)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--evict-mb", type=int, default=0,
                    help="sweep this many MB of memory between steps, so each plan starts with cold caches as in the "
                         "engine (where plan and load took 2.5-4x their time in this loop, run 170)")
    ap.add_argument("--baseline", help="another staging.py to time the plan against, in turn")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds of each way (or version)")
    args = ap.parse_args()
    if args.baseline is None:
        buffers = DecodeBuffers(args.rows, args.width, torch.device("cpu"))
        ways = {"plan + load": False, "plan_decodes + load_decodes": True}
        totals: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, direct in ways.items():
                totals[name].append(time_plans(staging, args, buffers, direct))
        med = {}
        for name, ts in totals.items():
            med[name] = statistics.median(p + ld for p, ld in ts)
            plan_ms, load_ms = statistics.median(p for p, _ in ts), statistics.median(ld for _, ld in ts)
            print(f"{name}: {med[name]:.3f} ms/step (plan {plan_ms:.3f}, load {load_ms:.3f}; medians of "
                  f"{args.rounds} rounds of {args.steps} steps)")
        print(f"{args.rows} rows: plan_decodes + load_decodes / plan + load = "
              f"{med['plan_decodes + load_decodes'] / med['plan + load']:.2f}")
        return
    baseline = load_module(args.baseline)
    times: dict[str, list[float]] = {"this tree": [], "baseline": []}
    for _ in range(args.rounds):
        times["this tree"].append(time_plans(staging, args, None)[0])
        times["baseline"].append(time_plans(baseline, args, None)[0])
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        print(f"{name}: plan median {med[name]:.3f} ms/step (min {min(ts):.3f}, {len(ts)} rounds of {args.steps} steps)")
    print(f"{args.rows} rows: this tree / baseline = {med['this tree'] / med['baseline']:.2f}")


if __name__ == "__main__":
    main()
