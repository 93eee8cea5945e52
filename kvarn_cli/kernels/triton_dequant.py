"""Triton kernel: dequantize KVarN records into rows of a 16-bit K/V array, in one launch.

Prefill chunks that continue a sequence attend with vLLM's FlashAttention over their keys
packed as [keys, heads, D] (kvarn_cli.kvcache.compute._attend_continued_batched), so every
history block of every such chunk has to be dequantized and laid down at its rows. The
quantizer's PyTorch dequantization (`Quantizer.dequantize_batch`) is exact but about fifty
small operations (a slice per record field, unpacking, scaling), then a transpose, a cast
and a scatter: ~1.9 ms per layer for one 1,360-key chunk on the H100, whatever the number of
blocks (benchmarks/prefill_continued.py, run 142). This kernel does it in one launch: one
program per (block copy, head) reads the record, dequantizes K and V into the rotated domain
as the quantizer does (same float32 operations in the same order), and stores them in the
output's dtype at rows dest .. dest + G - 1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kvarn_cli.kernels.quantizers import Quantizer
from kvarn_cli.kernels.triton_common import fp8_bits_to_f32, kernel_layout, to_dtype_rtne
from kvarn_cli.kernels.triton_decode import _fetch_scales, _unpack


@triton.jit
def _dequant_rows_kernel(
    rec_ptr, stride_rb, stride_rh, blocks, dest,
    k_out, v_out, stride_or, stride_oh,
    D: tl.constexpr, G: tl.constexpr, K_BITS: tl.constexpr, V_BITS: tl.constexpr,
    OFF_K_CODES: tl.constexpr, OFF_V_CODES: tl.constexpr, OFF_K_ZERO: tl.constexpr,
    OFF_V_ZERO: tl.constexpr, OFF_K_SCALE: tl.constexpr, OFF_K_TOKEN_SCALE: tl.constexpr,
    OFF_V_SCALE: tl.constexpr, OFF_V_CHANNEL_SCALE: tl.constexpr, OFF_K_SCALE_MULT: tl.constexpr,
    OFF_K_ZERO_MULT: tl.constexpr, OFF_K_TOKEN_SCALE_MULT: tl.constexpr, OFF_V_SCALE_MULT: tl.constexpr,
    OFF_V_ZERO_MULT: tl.constexpr, OFF_V_CHANNEL_SCALE_MULT: tl.constexpr,
):
    j = tl.program_id(0)
    h = tl.program_id(1)
    blk = tl.load(blocks + j).to(tl.int64)
    row0 = tl.load(dest + j).to(tl.int64)
    rec = rec_ptr + blk * stride_rb + h * stride_rh
    t = tl.arange(0, G)
    d = tl.arange(0, D)
    ks8, kz16, kts8, vs8, vz16, vcs8, m = _fetch_scales(
        rec, 0, t, (d, d), OFF_K_ZERO, OFF_V_ZERO, OFF_K_SCALE, OFF_K_TOKEN_SCALE, OFF_V_SCALE, OFF_V_CHANNEL_SCALE,
        OFF_K_SCALE_MULT, G, 1, 1)  # one step covering the whole block; multipliers as six scalars
    # K[t, d] = (code * k_scale[d] + k_zero[d]) * k_token_scale[t], each scale times its multiplier
    kbytes = tl.load(rec + OFF_K_CODES + t[:, None] * (D * K_BITS // 8) + tl.arange(0, D * K_BITS // 8)[None, :])
    kc = _unpack(kbytes, K_BITS, G, D, tl.float32, False)
    ks = fp8_bits_to_f32(ks8) * m[0]
    kz = kz16.to(tl.float32) * m[1]
    kts = fp8_bits_to_f32(kts8) * m[2]
    k = (kc * ks[None, :] + kz[None, :]) * kts[:, None]
    # V codes are stored channel-major [D, G]: V[t, d] = (code * v_scale[t] + v_zero[t]) * v_channel_scale[d]
    vbytes = tl.load(rec + OFF_V_CODES + d[:, None] * (G * V_BITS // 8) + tl.arange(0, G * V_BITS // 8)[None, :])
    vc = tl.trans(_unpack(vbytes, V_BITS, D, G, tl.float32, False))
    vs = fp8_bits_to_f32(vs8) * m[3]
    vz = vz16.to(tl.float32) * m[4]
    vcs = fp8_bits_to_f32(vcs8) * m[5]
    v = (vc * vs[:, None] + vz[:, None]) * vcs[None, :]
    out = (row0 + t)[:, None] * stride_or + h * stride_oh + d[None, :]
    tl.store(k_out + out, to_dtype_rtne(k, k_out.dtype.element_ty))
    tl.store(v_out + out, to_dtype_rtne(v, v_out.dtype.element_ty))


def dequantize_rows(
    quantizer: Quantizer,
    records: torch.Tensor,
    block_ids: torch.Tensor,
    dest_rows: torch.Tensor,
    k_out: torch.Tensor,
    v_out: torch.Tensor,
) -> None:
    """Dequantize records[block_ids[j]] ([num_blocks, H, record_bytes] uint8, the paged
    cache) into k_out/v_out[dest_rows[j] .. dest_rows[j] + G - 1] ([rows, H, D], any float
    dtype), in the rotated domain, as `quantizer.dequantize_batch(..., rotated=True)` gives
    them. A block id may repeat (a prefix shared by several chunks); destinations must not
    overlap."""
    lay = kernel_layout(quantizer.layout)
    heads = records.shape[1]
    if records.dtype != torch.uint8 or records.dim() != 3 or records.shape[2] != lay.record_bytes or records.stride(2) != 1:
        raise ValueError(f"records must be uint8 [num_blocks, H, {lay.record_bytes}] with a contiguous last "
                         f"dimension, got {records.dtype} {tuple(records.shape)}")
    for name, out in (("k_out", k_out), ("v_out", v_out)):
        if out.dim() != 3 or out.shape[1:] != (heads, lay.head_dim) or out.stride(2) != 1:
            raise ValueError(f"{name} must be [rows, {heads}, {lay.head_dim}] with a contiguous last dimension, "
                             f"got {tuple(out.shape)}")
    if k_out.stride() != v_out.stride() or k_out.shape != v_out.shape:
        raise ValueError("k_out and v_out must have one shape and one layout")
    if block_ids.shape != dest_rows.shape or block_ids.dim() != 1:
        raise ValueError("block_ids and dest_rows must be 1-D tensors of one length")
    n = int(block_ids.numel())
    if n == 0:
        return
    _dequant_rows_kernel[(n, heads)](
        records, records.stride(0), records.stride(1), block_ids, dest_rows,
        k_out, v_out, k_out.stride(0), k_out.stride(1),
        D=lay.head_dim, G=lay.block_size, K_BITS=lay.k_bits, V_BITS=lay.v_bits, **lay.args(),
    )
