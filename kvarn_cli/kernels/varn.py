"""VarN: KVarN's dual-scaling variance normalization of one tile (a log-domain Sinkhorn).

It alternately equalizes the column and row standard deviations of a tile X (R x C) and
keeps the iterate with the lowest imbalance. The paper's point is that the damaging
quantization errors come from wrong token scales; dividing the tile by these scales before
min-max RTN evens out the token norms the quantizer sees.

The clamp floor LOG_FLOOR = -0.3 on the accumulated log-scales means a scale never drops
below exp(-0.3) ~ 0.74: small-magnitude tiles are *not* blown up to unit variance. That makes
the method depend on the absolute scale of K/V; it is reproduced exactly as published.
"""

from __future__ import annotations

import torch

VARN_ITERS = 8
LOG_FLOOR = -0.3
LOG_CEIL = 10.0
STD_MIN = 1e-3
STD_MAX = 1e3
IMB_EPS = 1e-8


def imbalance(x: torch.Tensor) -> torch.Tensor:
    """imb(x) = max(col_std)/max(min(col_std),1e-8) + max(row_std)/max(min(row_std),1e-8).

    x: [..., R, C]; returns [...]. Standard deviations are unbiased.
    """
    col_std = x.std(dim=-2)
    row_std = x.std(dim=-1)
    return col_std.amax(dim=-1) / col_std.amin(dim=-1).clamp_min(IMB_EPS) + row_std.amax(
        dim=-1
    ) / row_std.amin(dim=-1).clamp_min(IMB_EPS)


def varn_scales(x: torch.Tensor, iters: int = VARN_ITERS) -> tuple[torch.Tensor, torch.Tensor]:
    """Column and row scales (Sc* [..., 1, C], Sr* [..., R, 1]) of tiles x [..., R, C].

    Computed in float32 (as the paper does). Batched: every leading index is its own tile
    and picks its own best iteration; the loop is over the fixed ITERS only.
    The normalized tile is x / Sc* / Sr*.
    """
    x = x.to(torch.float32)
    lead = x.shape[:-2]
    rows, cols = x.shape[-2], x.shape[-1]
    log_c = x.new_zeros(*lead, 1, cols)
    log_r = x.new_zeros(*lead, rows, 1)
    best = imbalance(x)
    best_c = x.new_ones(*lead, 1, cols)
    best_r = x.new_ones(*lead, rows, 1)
    cur = x
    for _ in range(iters):
        col_std = cur.std(dim=-2, keepdim=True).clamp(STD_MIN, STD_MAX)
        log_c = (log_c + col_std.log()).clamp(LOG_FLOOR, LOG_CEIL)
        cur = x / log_c.exp() / log_r.exp()
        row_std = cur.std(dim=-1, keepdim=True).clamp(STD_MIN, STD_MAX)
        log_r = (log_r + row_std.log()).clamp(LOG_FLOOR, LOG_CEIL)
        scale_c = log_c.exp()
        scale_r = log_r.exp()
        cur = x / scale_c / scale_r
        imb = imbalance(cur)
        better = imb <= best
        best = torch.where(better, imb, best)
        keep = better[..., None, None]
        best_c = torch.where(keep, scale_c, best_c)
        best_r = torch.where(keep, scale_r, best_r)
    return best_c, best_r
