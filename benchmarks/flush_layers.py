"""GPU time of the all-layer slot flush (triton_flush.flush_slots with `layers=`), the launch
the metadata builder makes before a step when the last decode step filled blocks: F filled
blocks flushed in every layer of a shape at once, per warp count.

    python benchmarks/flush_layers.py --shape qwen3-4b --fills 1,2,8 --warps 4,8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvarn_cli.kernels import make_quantizer  # noqa: E402
from kvarn_cli.kernels.triton_flush import LayerSlots, flush_slots  # noqa: E402

SHAPES = {"smollm2": (30, 3, 64), "qwen3-4b": (36, 8, 128)}  # layers, kv heads, head dim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=tuple(SHAPES), default="qwen3-4b")
    ap.add_argument("--method", default="k2v2")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--fills", default="1,2,8")
    ap.add_argument("--warps", default="4,8")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    from triton.testing import do_bench_cudagraph

    num_layers, heads, d = SHAPES[args.shape]
    G = args.block_size
    q = make_quantizer(args.method, head_dim=d, block_size=G)
    layers = []
    for _ in range(num_layers):
        slot_k = torch.randn(128, heads, G, d, device="cuda", dtype=torch.bfloat16)
        records = torch.empty(1024, heads, q.record_bytes, dtype=torch.uint8, device="cuda")
        layers.append((slot_k, torch.randn_like(slot_k), records))
    table = LayerSlots(layers)
    print(f"{torch.cuda.get_device_name()} {args.shape} {args.method} G={G}: {num_layers} layers x {heads} heads", flush=True)
    for fills in (int(x) for x in args.fills.split(",")):
        ids = torch.arange(fills, dtype=torch.int32, device="cuda")
        for warps in (int(x) for x in args.warps.split(",")):
            ms = do_bench_cudagraph(lambda: flush_slots(q, table.slot_k, table.slot_v, ids, table.records, ids,
                                                        num_warps=warps, layers=table))
            print(f"fills {fills} warps {warps}: {ms * 1e3:.1f} us", flush=True)


if __name__ == "__main__":
    main()
