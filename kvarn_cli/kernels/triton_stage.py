"""Triton kernel: write a step's new K/V tokens, Hadamard-rotated, into 16-bit staging slots.

Every decode step writes one token per sequence into its tail slot, in every layer. Done with
PyTorch ops that is a cast, a gather, a matmul, a cast and a scatter for K and again for V:
about ten kernel launches per layer, which at 30 layers costs more than the attention itself
on a small model. This kernel does all of it in one launch: load the tokens' K and V rows
(strided, as vLLM's fused QKV projection leaves them), rotate them in float32, store them
in the slot dtype at (slot, head, offset).

Each program computes BN output channels of BT tokens of one head. A whole [D, D] float32
rotation per program (64 KiB at D = 128) does not fit in registers and spilled: on the H100
that made the kernel 4.4 ms of a 11.5 ms decode step on a Qwen3-4B-shaped model at batch 64
(docs/BENCHMARKS.md run 36). A [D, BN] slice does, and the extra programs fill the GPU at
small batches.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

#: tokens per program; tl.dot needs at least 16 rows
BLOCK_T = 16
#: output channels per program (at most; D when D is smaller)
BLOCK_N = 32


@triton.jit
def _stage_kernel(
    key, value, stride_kt, stride_kh, stride_vt, stride_vh,
    tokens, slots, offsets, n,
    rot,
    slot_k, slot_v, stride_ss, stride_sh, stride_sg,
    D: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr,
):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    col = tl.program_id(2) * BN + tl.arange(0, BN)
    rows = pid * BT + tl.arange(0, BT)
    live = rows < n
    tok = tl.load(tokens + rows, mask=live, other=0)
    slot = tl.load(slots + rows, mask=live, other=-1)
    live = live & (slot >= 0)  # a fixed-size (CUDA graph) batch marks its padding rows -1
    off = tl.load(offsets + rows, mask=live, other=0)
    d = tl.arange(0, D)
    r = tl.load(rot + d[:, None] * D + col[None, :])  # [D, BN] float32
    m2 = live[:, None]
    k = tl.load(key + tok[:, None] * stride_kt + h * stride_kh + d[None, :], mask=m2, other=0.0).to(tl.float32)
    v = tl.load(value + tok[:, None] * stride_vt + h * stride_vh + d[None, :], mask=m2, other=0.0).to(tl.float32)
    kr = tl.dot(k, r, input_precision="ieee")
    vr = tl.dot(v, r, input_precision="ieee")
    dst = slot[:, None].to(tl.int64) * stride_ss + h * stride_sh + off[:, None] * stride_sg + col[None, :]
    tl.store(slot_k + dst, kr.to(slot_k.dtype.element_ty), mask=m2)
    tl.store(slot_v + dst, vr.to(slot_v.dtype.element_ty), mask=m2)


def stage_tokens(
    key: torch.Tensor,
    value: torch.Tensor,
    tokens: torch.Tensor,
    slots: torch.Tensor,
    offsets: torch.Tensor,
    rotation: torch.Tensor,
    slot_k: torch.Tensor,
    slot_v: torch.Tensor,
) -> None:
    """slot_k[slots[i], :, offsets[i]] = key[tokens[i]] @ rotation (and V alike), in place;
    entries with slots[i] < 0 are skipped.

    key/value [T, H, D] with a contiguous last dim (any float dtype); tokens/slots/offsets
    [N] integer; rotation [D, D] float32; slot_k/slot_v [S, H, G, D] with equal strides.
    """
    n = int(tokens.numel())
    if n == 0:
        return
    heads, d = slot_k.shape[1], slot_k.shape[3]
    if key.shape[1:] != (heads, d) or value.shape[1:] != (heads, d):
        raise ValueError(f"key/value must be [T, {heads}, {d}], got {tuple(key.shape)} / {tuple(value.shape)}")
    if key.stride(2) != 1 or value.stride(2) != 1 or slot_k.stride() != slot_v.stride() or slot_k.stride(3) != 1:
        raise ValueError("key, value and the slots need a contiguous last dim (and the slots equal strides)")
    if rotation.shape != (d, d) or rotation.dtype != torch.float32:
        raise ValueError(f"rotation must be float32 [{d}, {d}]")
    bn = min(d, BLOCK_N)
    grid = (triton.cdiv(n, BLOCK_T), heads, d // bn)
    _stage_kernel[grid](
        key, value, key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        tokens, slots, offsets, n,
        rotation.contiguous(),
        slot_k, slot_v, slot_k.stride(0), slot_k.stride(1), slot_k.stride(2),
        D=d, BT=BLOCK_T, BN=bn, num_warps=4,
    )
