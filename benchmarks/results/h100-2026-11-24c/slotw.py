"""What a 16-bit slot should cost a split of the CUDA kernel, in blocks (session 12, issue 6).

The split that attends to a slot takes cuda_decode.slot_blocks fewer blocks (the slot's bytes
over a record's). Times decode at 32k with that count scaled by 0 (the slot's split takes its
full share of blocks as well), 0.5, 1, 1.5 and 2, against bf16 SDPA in the same process.

    python slotw.py --out slotw.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from decode_attention import SHAPES, bf16_case, kvarn_case, read_bandwidth, record_pool  # noqa: E402

from kvarn_cli.kernels import cuda_decode  # noqa: E402

ORIGINAL = cuda_decode.slot_blocks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cases", default="smollm2:k2v2,qwen3-4b:k2v2,qwen3-4b:k4v4,smollm2:k4v4")
    ap.add_argument("--batches", default="1,32,64")
    ap.add_argument("--factors", default="0,0.5,1,1.5,2")
    args = ap.parse_args()
    bw = read_bandwidth()
    rows = []
    for case in args.cases.split(","):
        shape, method = case.split(":")
        kvh, qh, d = SHAPES[shape]
        pool = record_pool(method, kvh, d)
        for batch in map(int, args.batches.split(",")):
            bf16_ms, _ = bf16_case(batch, kvh, qh, d, 32768)
            line = f"{shape:9s} {method} B={batch:3d} bf16 {bf16_ms * 1e3:8.1f}us"
            for f in map(float, args.factors.split(",")):
                cuda_decode.slot_blocks = lambda lay, side, f=f: round(f * ORIGINAL(lay, side))  # type: ignore[assignment]
                ms, nbytes = kvarn_case(method, batch, kvh, qh, d, 32768, pool, variant="cuda")
                rows.append({"shape": shape, "method": method, "batch": batch, "factor": f, "ms": ms,
                             "bf16_ms": bf16_ms, "bytes": nbytes})
                line += f" | x{f:g} {ms * 1e3:7.1f}us {bf16_ms / ms:4.2f}x {nbytes * 1e3 / ms / bw:4.0%}"
            print(line, flush=True)
    cuda_decode.slot_blocks = ORIGINAL
    args.out.write_text(json.dumps({"read_bandwidth": bw, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
