"""Min-max round-to-nearest per row, and the rounding of scales into their storage dtypes.

Storage choice (ours, not in the paper): every fp8 (or fp16) scale vector of a tile is
stored as `stored * mult`, where `mult` is one float32 power of two per tile and vector,
chosen so that the vector's largest entry lands in [128, 256) on the stored grid. Without
it, e4m3 (normal range 2^-6 .. 448, 3 mantissa bits) would flush small scales — V tiles of
magnitude ~0.01 at 4 bits have steps ~1e-3 — into subnormals with 50% error, and very large
ones would overflow. A power of two keeps the multiply exact, so the relative precision of
e4m3 (<= 1/16) holds across ~2^14 of dynamic range below the tile's largest scale.

The fp16 zero points get a power-of-two multiplier per tile too (max |zero| in
[2^14, 2^15)), so they cannot saturate at 65504.

The RTN step is rounded *up* onto the stored grid and the codes are computed against the
stored (rounded) step and zero point, so the classic bound |x - x_hat| <= step/2 holds with
the step the decoder actually uses (plus the fp16 rounding of the zero point).
"""

from __future__ import annotations

import torch

FP16_MAX = 65504.0

STORAGE_DTYPES: dict[str, torch.dtype] = {
    "fp8": torch.float8_e4m3fn,
    "fp16": torch.float16,
}
_BIT_VIEWS: dict[torch.dtype, torch.dtype] = {
    torch.float8_e4m3fn: torch.uint8,
    torch.float16: torch.int16,
}


def pow2_multiplier(values: torch.Tensor) -> torch.Tensor:
    """Per-tile power of two m so that max(values[..., :]) / m lies in [128, 256).

    values: non-negative [..., n]; returns float32 [...]. An all-zero vector gets m = 1.
    """
    vmax = values.amax(dim=-1)
    _, exponent = torch.frexp(vmax)
    mult = torch.ldexp(torch.ones_like(vmax), exponent - 8)
    return torch.where(vmax > 0, mult, torch.ones_like(vmax))


def round_nearest(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round float32 x (|x| <= 256 after the multiplier) to the nearest value of dtype."""
    return x.to(dtype)


def round_up(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Smallest value of dtype that is >= x, for non-negative float32 x <= 256.

    Positive fp8/fp16 bit patterns are ordered like the values, so "next value up" is the
    bit pattern plus one.
    """
    nearest = x.to(dtype)
    bits = nearest.view(_BIT_VIEWS[dtype])
    below = nearest.to(torch.float32) < x
    return torch.where(below, bits + 1, bits).view(dtype)


def zero_multiplier(zeros: torch.Tensor) -> torch.Tensor:
    """Per-tile power of two m so that max|zeros| / m lies in [2^14, 2^15) (fp16 normal range).

    fp16 zero points alone would saturate at 65504 (K tiles of magnitude ~1e5 happen only in
    broken models, but silent saturation is worse than one float32 per tile).
    """
    zmax = zeros.abs().amax(dim=-1)
    _, exponent = torch.frexp(zmax)
    mult = torch.ldexp(torch.ones_like(zmax), exponent - 15)
    return torch.where(zmax > 0, mult, torch.ones_like(zmax))


def rtn_rows(
    u: torch.Tensor, bits: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric min-max RTN of every row of u [..., R, C] (float32).

    Returns (codes uint8 [..., R, C], step [..., R] in dtype, step_mult float32 [...],
    zero float16 [..., R], zero_mult float32 [...]) with
    u ~ codes * (step * step_mult) + zero * zero_mult.

    Rounding the step up leaves a slack (levels * step - (max - min)) >= 0; the zero point
    is moved down by half of it so the row's extremes are both off by at most half the slack
    (with exact scales the slack is 0 and zero = min, as in the paper).
    """
    levels = (1 << bits) - 1
    row_min = u.amin(dim=-1)
    row_max = u.amax(dim=-1)
    step_exact = (row_max - row_min) / levels
    step_mult = pow2_multiplier(step_exact)
    step = round_up(step_exact / step_mult[..., None], dtype)
    step_value = step.to(torch.float32) * step_mult[..., None]
    slack = (levels * step_value - (row_max - row_min)).clamp_min(0)
    zero_exact = row_min - slack / 2
    zero_mult = zero_multiplier(zero_exact)
    zero = (zero_exact / zero_mult[..., None]).clamp(-FP16_MAX, FP16_MAX).to(torch.float16)
    zero_value = zero.to(torch.float32) * zero_mult[..., None]
    positive = step_value > 0
    safe_step = torch.where(positive, step_value, torch.ones_like(step_value))
    scaled = (u - zero_value[..., None]) / safe_step[..., None]
    codes = torch.where(positive[..., None], torch.round(scaled), torch.zeros_like(scaled))
    codes = codes.clamp(0, levels).to(torch.uint8)
    return codes, step, step_mult, zero, zero_mult
