"""Triton kernels: gather 16-bit K/V rows and rotate rows, one launch each, for continued prefill.

Why: a prefill chunk that continues a sequence (after a prefix-cache hit, a preemption's
recompute, an earlier chunk) attends with vLLM's FlashAttention over its keys packed as
[keys, heads, D] (kvarn_cli.kvcache.compute._attend_continued_batched). Laying those keys
down in PyTorch took about forty small launches per layer: for sink slots, flush tiles and
staged tail tokens an index, a transpose, a cast and a scatter each, for K and V; for the
chunk's own K, V and queries a gather, a cast, a float32 matmul with the rotation and a
cast; the output's rotation back and scatter. On the H100 that was about 1 ms of host time
per layer, so a step admitting one request beside 63 decodes ran 80-120 ms against fp8's
~30 ms (docs/BENCHMARKS.md run 152). Here each of those is one launch:

* `copy_rows`: out_k/out_v[dest[i]] = src_k/src_v[index[i], :, offset[i]] for staging slots
  or flush tiles ([n, H, G, D], any float dtype), K and V together;
* `rotate_rows`: dst[dst_rows[i]] = src[src_rows[i]] @ matrix per head, float32 products
  (input_precision="ieee", as PyTorch's float32 matmul), stored in dst's dtype.

Stores round to nearest even (triton_common.to_dtype_rtne) as PyTorch's casts do, also
under TRITON_INTERPRET, so the CPU tests compare like with like.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kvarn_cli.kernels.triton_common import to_dtype_rtne

#: rows per program; tl.dot needs at least 16
ROWS = 16
#: output columns per tl.dot of rotate_rows
COLS = 32
#: the largest head_dim at which kvarn rotates with `rotate_rows`: at 128 its float32 FMA
#: products were 2.5-6x slower than PyTorch's matmuls once 16-64 chunks of 80 queries came
#: together (Qwen3-4B shape, benchmarks/prefill_continued.py, run 155); at 64 it was 1.8-2.6x
#: faster
ROTATE_MAX_HEAD_DIM = 64


@triton.jit(do_not_specialize=["n"])
def _copy_rows_kernel(
    src_k, src_v, stride_sn, stride_sh, stride_sg, index, offset, dest, n,
    out_k, out_v, stride_or, stride_oh,
    D: tl.constexpr, BLOCK: tl.constexpr,
):
    h = tl.program_id(1)
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = r < n
    i = tl.load(index + r, mask=live, other=0).to(tl.int64)
    o = tl.load(offset + r, mask=live, other=0).to(tl.int64)
    row = tl.load(dest + r, mask=live, other=0).to(tl.int64)
    d = tl.arange(0, D)
    src = (i * stride_sn + h * stride_sh + o * stride_sg)[:, None] + d[None, :]
    out = (row * stride_or + h * stride_oh)[:, None] + d[None, :]
    m = live[:, None]
    k = tl.load(src_k + src, mask=m, other=0.0).to(tl.float32)
    v = tl.load(src_v + src, mask=m, other=0.0).to(tl.float32)
    tl.store(out_k + out, to_dtype_rtne(k, out_k.dtype.element_ty), mask=m)
    tl.store(out_v + out, to_dtype_rtne(v, out_v.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["n"])
def _rotate_rows_kernel(
    src, stride_sr, stride_sh, src_rows, dst, stride_dr, stride_dh, dst_rows, n, matrix,
    D: tl.constexpr, BLOCK: tl.constexpr, COLS: tl.constexpr, GATHER: tl.constexpr, SCATTER: tl.constexpr,
):
    h = tl.program_id(1)
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = r < n
    if GATHER:
        sr = tl.load(src_rows + r, mask=live, other=0).to(tl.int64)
    else:
        sr = r.to(tl.int64)
    if SCATTER:
        dr = tl.load(dst_rows + r, mask=live, other=0).to(tl.int64)
    else:
        dr = r.to(tl.int64)
    d = tl.arange(0, D)
    m = live[:, None]
    x = tl.load(src + (sr * stride_sr + h * stride_sh)[:, None] + d[None, :], mask=m, other=0.0).to(tl.float32)
    out = dst + (dr * stride_dr + h * stride_dh)[:, None]
    # COLS output columns at a time: the whole [D, D] float32 matrix in registers spilled at
    # D = 128 and made the kernel 5-10x slower than the PyTorch ops it replaces (run 153)
    for c0 in tl.static_range(0, D, COLS):
        c = c0 + tl.arange(0, COLS)
        mat = tl.load(matrix + d[:, None] * D + c[None, :])
        y = tl.dot(x, mat, input_precision="ieee")
        tl.store(out + c[None, :], to_dtype_rtne(y, dst.dtype.element_ty), mask=m)


def _check_rows(name: str, t: torch.Tensor, heads: int, d: int) -> None:
    if t.dim() != 3 or t.shape[1:] != (heads, d) or t.stride(2) != 1:
        raise ValueError(f"{name} must be [rows, {heads}, {d}] with a contiguous last dimension, got "
                         f"{tuple(t.shape)} strides {t.stride()}")


def copy_rows(
    src_k: torch.Tensor, src_v: torch.Tensor, index: torch.Tensor, offset: torch.Tensor, dest: torch.Tensor,
    out_k: torch.Tensor, out_v: torch.Tensor,
) -> None:
    """out_k[dest[i]] = src_k[index[i], :, offset[i]] (and V alike) for i < len(index):
    src [n, H, G, D] (staging slots or flush tiles), out [rows, H, D]. Destinations must not
    repeat."""
    if src_k.shape != src_v.shape or src_k.stride() != src_v.stride() or src_k.dim() != 4 or src_k.stride(3) != 1:
        raise ValueError(f"src_k and src_v must be one [n, H, G, D] layout with a contiguous last dimension, got "
                         f"{tuple(src_k.shape)} and {tuple(src_v.shape)}")
    heads, d = src_k.shape[1], src_k.shape[3]
    for name, out in (("out_k", out_k), ("out_v", out_v)):
        _check_rows(name, out, heads, d)
    if out_k.stride() != out_v.stride():
        raise ValueError("out_k and out_v must have one layout")
    n = int(index.numel())
    if not (offset.numel() == dest.numel() == n):
        raise ValueError(f"index, offset and dest must have one length, got {n}, {offset.numel()}, {dest.numel()}")
    if n == 0:
        return
    _copy_rows_kernel[(triton.cdiv(n, ROWS), heads)](
        src_k, src_v, src_k.stride(0), src_k.stride(1), src_k.stride(2), index, offset, dest, n,
        out_k, out_v, out_k.stride(0), out_k.stride(1), D=d, BLOCK=ROWS,
    )


def rotate_rows(
    src: torch.Tensor, src_rows: torch.Tensor | None, matrix: torch.Tensor,
    dst: torch.Tensor | None = None, dst_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """dst[dst_rows[i]] = src[src_rows[i]] @ matrix for every head ([rows, H, D] arrays,
    matrix [D, D] float32 contiguous), products in float32, stored in dst's dtype. None for
    src_rows takes rows 0.. in order; None for dst makes a new [len, H, D] array in src's
    dtype (rows in order; dst_rows must then be None too). Returns dst."""
    n = int(src_rows.numel()) if src_rows is not None else src.shape[0]
    heads, d = src.shape[1], src.shape[2]
    _check_rows("src", src, heads, d)
    if matrix.shape != (d, d) or matrix.dtype != torch.float32 or not matrix.is_contiguous():
        raise ValueError(f"matrix must be a contiguous float32 [{d}, {d}], got {matrix.dtype} {tuple(matrix.shape)}")
    if dst is None:
        if dst_rows is not None:
            raise ValueError("dst_rows needs dst")
        dst = torch.empty(n, heads, d, dtype=src.dtype, device=src.device)
    _check_rows("dst", dst, heads, d)
    if dst_rows is not None and dst_rows.numel() != n:
        raise ValueError(f"src_rows and dst_rows must have one length, got {n} and {dst_rows.numel()}")
    if n == 0:
        return dst
    _rotate_rows_kernel[(triton.cdiv(n, ROWS), heads)](
        src, src.stride(0), src.stride(1), src_rows if src_rows is not None else src,
        dst, dst.stride(0), dst.stride(1), dst_rows if dst_rows is not None else dst, n, matrix,
        D=d, BLOCK=ROWS, COLS=min(COLS, d), GATHER=src_rows is not None, SCATTER=dst_rows is not None,
    )
    return dst
