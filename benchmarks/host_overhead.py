"""Host time of kvarn's eager launches: what a layer costs the CPU outside CUDA graphs.

Decode-only steps replay as CUDA graphs, so no layer's Python runs there. Every other step
runs kvarn's attention eagerly, layer by layer: a step that admits a request (its decode rows
went through the split kernel at 0.27 ms of host time per layer in run 157, 8 ms of a 40 ms
step), and every step with KVARN_DECODE_GRAPHS=0. There the GPU waits on the host, so host
time per call is the cost. This times, per call and without synchronizing inside the loop:

- `launch`: the CUDA split kernel's launch alone, arguments ready (cuda_decode.launch);
- `decode_attention`: one layer's decode (checks, split count, launch) as the eager path calls it;
- `decode_fixed`: one layer of an eager decode step (stage the token + decode);
- `flush`: the one launch that quantizes the blocks a step filled, in every layer.

Each is timed with both launch paths of the CUDA kernel (cuda_decode.LAUNCH_PATH: "cells",
kvarn's Launcher, and "torch", the compiled kernel's own __call__) in alternating rounds of
one process, and the median per call of each is printed with the ratio. A cProfile of the
eager layer (decode_fixed) on the default path follows, by own time.

    python benchmarks/host_overhead.py --rows 64,128 --contexts 1100,1400,1700   # GPU machine
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import decode_step  # noqa: E402  (benchmarks/ is not a package)

from kvarn_cli.kernels import cuda_decode, make_quantizer  # noqa: E402
from kvarn_cli.kernels.triton_decode import decode_attention  # noqa: E402
from kvarn_cli.kernels.triton_flush import LayerSlots  # noqa: E402
from kvarn_cli.kvcache.compute import Codec, decode_fixed, flush_decode_fills  # noqa: E402

PATHS = ("cells", "torch")


def per_call_us(fn: Callable[[], None], calls: int) -> float:
    """Host microseconds per call of `fn`, the GPU left to drain outside the clock."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    dt = time.perf_counter() - t0
    torch.cuda.synchronize()
    return 1e6 * dt / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="64,128")
    ap.add_argument("--contexts", default="1100,1400,1700")
    ap.add_argument("--method", default="k2v2")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--shape", choices=tuple(decode_step.SHAPES), default="smollm2")
    ap.add_argument("--calls", type=int, default=300, help="calls per timed round")
    ap.add_argument("--rounds", type=int, default=7, help="rounds per launch path, alternating")
    ap.add_argument("--top", type=int, default=25, help="cProfile lines")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("host_overhead.py times CUDA launches: run it on the GPU machine")
    device = torch.device("cuda")
    shape = decode_step.SHAPES[args.shape]
    layers = shape[0]
    contexts = [int(x) for x in args.contexts.split(",")]
    result: dict = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"),
                    "command": "python benchmarks/host_overhead.py " + " ".join(sys.argv[1:]), "rows": []}
    for rows in (int(x) for x in args.rows.split(",")):
        batch = decode_step.make_batch(rows, contexts, 128, args.block_size, seed=rows)
        codec = Codec(make_quantizer(args.method, head_dim=shape[3], block_size=batch.G), device, triton=True)
        fixed = decode_step.kvarn_arrays(batch, -1, device)
        caches, qkv = decode_step.layer_tensors(codec, batch, shape, layers, device, torch.bfloat16)
        scale = 1.0 / math.sqrt(shape[3])
        slots = LayerSlots([(c.slot_k, c.slot_v, c.records) for c in caches])
        nf = max(1, int((fixed.fill_slot >= 0).sum()))
        state = {"layer": 0}

        def one_decode() -> None:
            i = state["layer"] = (state["layer"] + 1) % layers
            c, (q, _, _, o) = caches[i], qkv[i]
            decode_attention(codec.q, q, c.records, fixed.table, fixed.nblk, c.slot_k, c.slot_v,
                             fixed.side_slot, fixed.side_len, scale=scale, out=o, **codec.decode_kernel_args)

        def one_layer() -> None:
            i = state["layer"] = (state["layer"] + 1) % layers
            c, (q, k, v, o) = caches[i], qkv[i]
            decode_fixed(fixed, codec, c, q, k, v, o, scale)

        def flush() -> None:
            flush_decode_fills(codec, slots, fixed.fill_slot[:nf], fixed.fill_block[:nf])

        # the split kernel's launch alone: capture the arguments of one call, then replay them
        captured: list[tuple] = []
        real_launch = cuda_decode.launch
        cuda_decode.launch = lambda *a: captured.append(a) or real_launch(*a)  # type: ignore[assignment]
        try:
            one_decode()
        finally:
            cuda_decode.launch = real_launch  # type: ignore[assignment]
        if not captured:
            raise SystemExit("the decode did not take the CUDA kernel (cuda_decode.unsupported on this GPU?)")
        kernel, grid, block, smem, index, kargs = captured[0]

        def launch_only() -> None:
            cuda_decode.launch(kernel, grid, block, smem, index, kargs)

        cases = {"launch": launch_only, "decode_attention": one_decode, "decode_fixed": one_layer, "flush": flush}
        for fn in cases.values():  # compile and warm both paths
            for path in PATHS:
                cuda_decode.LAUNCH_PATH = path
                fn()
        times: dict[str, dict[str, list[float]]] = {name: {p: [] for p in PATHS} for name in cases}
        for r in range(args.rounds):
            for path in PATHS if r % 2 == 0 else PATHS[::-1]:
                cuda_decode.LAUNCH_PATH = path
                for name, fn in cases.items():
                    times[name][path].append(per_call_us(fn, args.calls))
        cuda_decode.LAUNCH_PATH = PATHS[0]
        row: dict = {"rows": rows, "mean_ctx": round(sum(batch.ctx) / rows), "flush_fills": nf}
        line = [f"R={rows} mean ctx {row['mean_ctx']}: host us per call, median of {args.rounds} rounds of {args.calls}"]
        for name in cases:
            med = {p: statistics.median(times[name][p]) for p in PATHS}
            row[name] = {p: round(med[p], 2) for p in PATHS} | {"rounds": times[name]}
            line.append(f"  {name:17s} cells {med['cells']:7.1f}  torch {med['torch']:7.1f}  "
                        f"cells/torch {med['cells'] / med['torch']:.2f}")
        print("\n".join(line), flush=True)
        prof = cProfile.Profile()
        torch.cuda.synchronize()
        prof.enable()
        for _ in range(args.calls):
            one_layer()
        prof.disable()
        torch.cuda.synchronize()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(args.top)
        print(f"cProfile, {args.calls} eager layers (decode_fixed), cells path, by own time:")
        print("\n".join(text.getvalue().splitlines()[:args.top + 12]), flush=True)
        result["rows"].append(row)
        del caches, qkv, slots
        torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
