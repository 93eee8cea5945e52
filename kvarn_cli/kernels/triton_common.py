"""Pieces shared by the Triton flush and decode kernels: the record layout as kernel
constants, and bit-exact fp8 (e4m3fn) / power-of-two helpers written in integer arithmetic.

The fp8 conversions are done by hand rather than through Triton's float8 types so that the
same code runs under TRITON_INTERPRET=1 (CPU CI) and on the GPU; they touch only the per-tile
scale vectors, never the per-element hot path, so their cost does not matter.

This module imports triton: import it only where triton is installed (kvarn_cli.kernels
itself never imports it, so CPU-only users are unaffected).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from kvarn_cli.kernels.hadamard import hadamard_matrix
from kvarn_cli.kernels.layout import RecordLayout

#: Field names every KVarN (rotated + VarN, fp8 scales) record has.
KVARN_FIELDS = (
    "k_codes",
    "v_codes",
    "k_zero",
    "v_zero",
    "k_scale",
    "k_token_scale",
    "v_scale",
    "v_channel_scale",
    "k_scale_mult",
    "k_zero_mult",
    "k_token_scale_mult",
    "v_scale_mult",
    "v_zero_mult",
    "v_channel_scale_mult",
)


@dataclass(frozen=True)
class KernelLayout:
    """Byte offsets of a KVarN record's fields, in the order the kernels take them."""

    head_dim: int
    block_size: int
    k_bits: int
    v_bits: int
    record_bytes: int
    end_of_fields: int
    offsets: dict[str, int]

    def args(self) -> dict[str, int]:
        """Keyword arguments (upper-case constexpr names) for the kernels."""
        return {f"OFF_{name.upper()}": off for name, off in self.offsets.items()}

    @functools.cached_property
    def key(self) -> tuple[Any, ...]:
        """Everything the kernels specialize on, hashable: a cache key for compiled kernels."""
        return (self.head_dim, self.block_size, self.k_bits, self.v_bits, self.record_bytes, self.end_of_fields,
                tuple(sorted(self.offsets.items())))


def kernel_layout(layout: RecordLayout) -> KernelLayout:
    """Check that `layout` is one the Triton kernels handle and return its offsets: made once
    per layout object (every launch asks, and making it walks the record's fields)."""
    made = _KERNEL_LAYOUTS.get(id(layout))
    if made is not None and made[0] is layout:
        return made[1]
    lay = _make_kernel_layout(layout)
    if len(_KERNEL_LAYOUTS) >= MAX_KERNEL_LAYOUTS:
        _KERNEL_LAYOUTS.clear()
    _KERNEL_LAYOUTS[id(layout)] = (layout, lay)
    return lay


#: kernel_layout's results by the id of their layout (kept alive here, so the id stays its own)
_KERNEL_LAYOUTS: dict[int, tuple[RecordLayout, KernelLayout]] = {}
#: an engine uses one or two layouts; every quantizer has its own layout object, and tests make
#: thousands, so the cache starts over past this many rather than keeping them all alive
MAX_KERNEL_LAYOUTS = 64


def _make_kernel_layout(layout: RecordLayout) -> KernelLayout:
    if layout.scheme != "kvarn" or not layout.rotated or not layout.varn:
        raise ValueError(f"Triton kernels handle KVarN records only (rotated + VarN), got scheme {layout.scheme!r}")
    if layout.scale_dtype != "fp8":
        raise ValueError(f"Triton kernels handle fp8 scales only, got {layout.scale_dtype!r}")
    if layout.k_bits not in (2, 4) or layout.v_bits not in (2, 4):
        raise ValueError(f"Triton kernels handle 2- and 4-bit codes, got k{layout.k_bits}v{layout.v_bits}")
    offsets = {name: layout.field(name).offset for name in KVARN_FIELDS}
    last = layout.fields[-1]
    return KernelLayout(
        head_dim=layout.head_dim,
        block_size=layout.block_size,
        k_bits=layout.k_bits,
        v_bits=layout.v_bits,
        record_bytes=layout.record_bytes,
        end_of_fields=last.offset + last.nbytes,
        offsets=offsets,
    )


_SIGNED_HADAMARD: dict[tuple[int, str, torch.dtype], torch.Tensor] = {}


def interpreted() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def dot_in_fp16(device: torch.device) -> bool:
    """Tensor-core operands in fp16 instead of bf16: only under the interpreter, whose bf16
    conversions and dots return garbage in triton 3.9 (seen 2026-11-22)."""
    return interpreted() or device.type != "cuda"


def signed_hadamard(head_dim: int, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The +-1 Sylvester matrix (H * sqrt(D)) in a 16-bit dtype, where it is exact; kernels
    scale by 1/sqrt(D) in float32 afterwards. Cached per device and dtype."""
    key = (head_dim, str(device), dtype)
    if key not in _SIGNED_HADAMARD:
        h = hadamard_matrix(head_dim) * head_dim**0.5
        _SIGNED_HADAMARD[key] = h.round().to(device=device, dtype=dtype).contiguous()
    return _SIGNED_HADAMARD[key]


@triton.jit
def rotate_hilo(x, h_ptr, D: tl.constexpr, COL0: tl.constexpr, COL_STEP: tl.constexpr, NCOL: tl.constexpr, DT: tl.constexpr):
    """x [M, D] float32 @ H[:, COL0::COL_STEP] (+-1, exact in DT; rows of D entries at h_ptr)
    to ~float32 accuracy: x is split into a DT high part and a DT remainder, each multiplied
    on the tensor cores."""
    r = tl.arange(0, D)
    c = tl.arange(0, NCOL) * COL_STEP + COL0
    h = tl.load(h_ptr + r[:, None] * D + c[None, :])
    hi = x.to(DT)
    lo = (x - hi.to(tl.float32)).to(DT)
    return tl.dot(hi, h) + tl.dot(lo, h)


@triton.jit
def fp8_bits_to_f32(b):
    """e4m3fn bit patterns (any integer tensor, values 0..0x7e, sign bit clear) -> float32."""
    b = b.to(tl.int32)
    exp = (b >> 3) & 15
    mant = b & 7
    # normal: 2^(exp-7) * (1 + mant/8); built as float32 bits (exponent exp - 7 + 127)
    normal = (((exp + 120) << 23) | (mant << 20)).to(tl.float32, bitcast=True)
    sub = mant.to(tl.float32) * 0.001953125  # mant * 2^-9
    return tl.where(exp == 0, sub, normal)


@triton.jit
def f32_exponent(x):
    """floor(log2(x)) for positive normal float32 x, via the bit pattern."""
    bits = x.to(tl.int32, bitcast=True)
    return ((bits >> 23) & 255) - 127


@triton.jit
def pow2_f32(e):
    """2^e as float32 for integer tensors e in the normal range."""
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def round_half_even(x):
    """Round-half-to-even of float32 0 <= x < 2^22 (the 2^23 trick; numpy and PTX agree)."""
    big = 8388608.0
    return (x + big) - big


@triton.jit
def f32_to_fp8_bits(x):
    """Round non-negative float32 x <= 448 to the nearest e4m3fn value; returns int32 bits."""
    e = tl.maximum(f32_exponent(tl.maximum(x, 1e-30)), -6)
    q = round_half_even(x / pow2_f32(e - 3))
    return ((e + 6) * 8 + q.to(tl.int32)).to(tl.int32)


@triton.jit
def pow2_multiplier_of(vmax):
    """Power of two m with vmax / m in [128, 256) (1 where vmax == 0); see kernels.rtn."""
    e = f32_exponent(tl.maximum(vmax, 1e-30)) + 1  # frexp exponent
    return tl.where(vmax > 0, pow2_f32(e - 8), 1.0)


@triton.jit
def zero_multiplier_of(zmax):
    """Power of two m with zmax / m in [2^14, 2^15) (1 where zmax == 0); see kernels.rtn."""
    e = f32_exponent(tl.maximum(zmax, 1e-30)) + 1
    return tl.where(zmax > 0, pow2_f32(e - 15), 1.0)


@triton.jit
def to_dtype_rtne(x, ty: tl.constexpr):
    """float32 `x` as `ty`, rounded to nearest even also for bfloat16 under TRITON_INTERPRET,
    whose plain float32 -> bfloat16 cast truncates (the GPU's and PyTorch's round to nearest
    even): kernels whose bf16 output tests compare with PyTorch's then agree on CPU too.
    No NaN or infinity handling (inputs here are finite)."""
    if ty == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(ty)
