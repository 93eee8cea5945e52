"""A float64, loop-per-tile, literal transcription of KVARN_METHOD.md for the tests.

Deliberately naive: one tile at a time, the pseudo-code line by line, no folding tricks.
"""

from __future__ import annotations

import math

import torch


def sylvester(n: int) -> torch.Tensor:
    h = [[1.0]]
    while len(h) < n:
        h = [row + row for row in h] + [row + [-x for x in row] for row in h]
    return torch.tensor(h, dtype=torch.float64) / math.sqrt(n)


def imb(x: torch.Tensor) -> float:
    col_std = x.std(dim=0, unbiased=True)  # one per column
    row_std = x.std(dim=1, unbiased=True)  # one per row
    return float(col_std.max() / max(float(col_std.min()), 1e-8) + row_std.max() / max(float(row_std.min()), 1e-8))


def varn(x: torch.Tensor, iters: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (Sc* [1, C], Sr* [R, 1]) for one tile X [R, C], in float64."""
    x = x.to(torch.float64)
    rows, cols = x.shape
    lr = torch.zeros(rows, 1, dtype=torch.float64)
    lc = torch.zeros(1, cols, dtype=torch.float64)
    cur = x
    best = imb(x)
    sr_best = torch.ones(rows, 1, dtype=torch.float64)
    sc_best = torch.ones(1, cols, dtype=torch.float64)
    for _ in range(iters):
        lc = torch.clamp(lc + torch.log(torch.clamp(cur.std(dim=0, keepdim=True), 1e-3, 1e3)), -0.3, 10)
        cur = x / torch.exp(lc) / torch.exp(lr)
        lr = torch.clamp(lr + torch.log(torch.clamp(cur.std(dim=1, keepdim=True), 1e-3, 1e3)), -0.3, 10)
        cur = x / torch.exp(lc) / torch.exp(lr)
        value = imb(cur)
        if value <= best:
            best = value
            sc_best, sr_best = torch.exp(lc), torch.exp(lr)
    return sc_best, sr_best


def rtn_row(y: torch.Tensor, bits: int) -> tuple[torch.Tensor, float, float]:
    levels = 2**bits - 1
    lo, hi = float(y.min()), float(y.max())
    scale = (hi - lo) / levels
    if scale == 0:
        return torch.zeros_like(y), 0.0, lo
    q = torch.clamp(torch.round((y - lo) / scale), 0, levels)
    return q, scale, lo


def paper_side(x: torch.Tensor, bits: int, use_varn: bool) -> dict[str, torch.Tensor]:
    """Steps 2-4 for one tile X [R, C] (rows quantized): codes, a, z, c with X ~ (q a + z) c."""
    x = x.to(torch.float64)
    rows, cols = x.shape
    if use_varn:
        sc, sr = varn(x)
    else:
        sc, sr = torch.ones(1, cols, dtype=torch.float64), torch.ones(rows, 1, dtype=torch.float64)
    y = x / sc / sr
    codes = torch.zeros_like(y)
    a = torch.zeros(rows, dtype=torch.float64)
    z = torch.zeros(rows, dtype=torch.float64)
    for r in range(rows):
        q, scale, lo = rtn_row(y[r], bits)
        codes[r] = q
        a[r] = scale * float(sr[r, 0])
        z[r] = lo * float(sr[r, 0])
    return {"codes": codes, "a": a, "z": z, "c": sc[0], "sr": sr[:, 0]}


def paper_tile(
    k: torch.Tensor, v: torch.Tensor, k_bits: int, v_bits: int, rotate: bool, use_varn: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unrounded (exact-scale) quantize + dequantize of one tile k, v [G, D] -> [G, D] float64."""
    d = k.shape[1]
    h = sylvester(d) if rotate else torch.eye(d, dtype=torch.float64)
    k_rot = k.to(torch.float64) @ h
    v_rot = v.to(torch.float64) @ h
    ks = paper_side(k_rot.T, k_bits, use_varn)  # rows = channels
    vs = paper_side(v_rot, v_bits, use_varn)  # rows = tokens
    k_hat = (ks["codes"] * ks["a"][:, None] + ks["z"][:, None]) * ks["c"][None, :]
    v_hat = (vs["codes"] * vs["a"][:, None] + vs["z"][:, None]) * vs["c"][None, :]
    return k_hat.T @ h.T, v_hat @ h.T


def codes_from_stored(u: torch.Tensor, step: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes for rows of u [R, C] against given (stored) per-row step and zero, in float64."""
    levels = 2**bits - 1
    u = u.to(torch.float64)
    step = step.to(torch.float64)
    zero = zero.to(torch.float64)
    out = torch.zeros_like(u)
    for r in range(u.shape[0]):
        if float(step[r]) > 0:
            out[r] = torch.clamp(torch.round((u[r] - zero[r]) / step[r]), 0, levels)
    return out
