"""One decode-attention configuration launched a few times, for Nsight Compute:

    ncu --kernel-name regex:_split --launch-skip 2 --launch-count 1 --section SpeedOfLight \\
        python benchmarks/profile_decode.py --shape smollm2 --method k2v2 --batch 32 --ctx 32768
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_attention import SHAPES, kvarn_case, record_pool  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="smollm2")
    ap.add_argument("--method", default="k2v2")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=32768)
    ap.add_argument("--variant", default="magic")
    ap.add_argument("--splits", type=int, default=None, help="split count (default: decode_attention's choice)")
    args = ap.parse_args()
    kvh, qh, d = SHAPES[args.shape]
    pool = record_pool(args.method, kvh, d)
    _, nbytes = kvarn_case(args.method, args.batch, kvh, qh, d, args.ctx, pool, eager_runs=4, variant=args.variant,
                           num_splits=args.splits)
    print(f"{args}: {nbytes / 1e6:.1f} MB per call")
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
