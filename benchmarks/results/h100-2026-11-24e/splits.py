"""Session 14, run 118: with tickets (head_dim 64), does another split count than one wave of
resident programs do better? SmolLM2 shape at 32k (and 4k), k2v2 and k4v4: the default count
against fixed counts, each case timed as timeline.timed_case times (CUDA-graph replays).

    python splits.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import timeline as tl  # noqa: E402
from kvarn_cli.kernels import make_quantizer  # noqa: E402
from kvarn_cli.kernels.triton_decode import decode_attention, default_splits  # noqa: E402


def timed(name: str, batch: int, ctx: int, splits: int | None) -> float:
    qz = make_quantizer(name, head_dim=64, block_size=tl.G)
    pool = tl.record_pool(name, 3, 64)
    nbytes = batch * 3 * (ctx // tl.G - 1) * qz.record_bytes + 2 * batch * 3 * (tl.G + tl.G // 2) * 64 * 2
    keep, fns = [], []
    for _ in range(tl.copies_for(nbytes)):
        a = tl.inputs(name, batch, 3, 9, 64, ctx, pool, True)
        keep.append(a)
        fns.append(lambda a=a: decode_attention(qz, a[7], a[0], a[1], a[2], a[3], a[4], a[5], a[6], out=a[8],
                                                variant="cuda", num_splits=splits))
    us = tl.timed(fns) * 1e3
    del keep, fns
    torch.cuda.empty_cache()
    return us


def main() -> None:
    print(torch.cuda.get_device_name(), flush=True)
    for name in ("k2v2", "k4v4"):
        qz = make_quantizer(name, head_dim=64, block_size=tl.G)
        for batch, ctx in ((8, 32768), (32, 32768), (64, 32768), (32, 4096), (64, 4096)):
            d = default_splits("cuda", qz, 3, batch, 3, ctx // tl.G - 1, torch.device("cuda"))
            line = f"{name} L={ctx} B={batch} default={d}: {timed(name, batch, ctx, None):6.1f}"
            for k in sorted({max(1, d // 2), max(1, (3 * d) // 4), (3 * d) // 2, 2 * d} - {d}):
                line += f"  {k}: {timed(name, batch, ctx, k):6.1f}"
            print(line + " us", flush=True)


if __name__ == "__main__":
    main()
