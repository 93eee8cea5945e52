"""Triton kernel: write a step's new K/V tokens, Hadamard-rotated, into 16-bit staging slots.

Every decode step writes one token per sequence into its tail slot, in every layer. Done with
PyTorch ops that is a cast, a gather, a matmul, a cast and a scatter for K and again for V:
about ten kernel launches per layer, which at 30 layers costs more than the attention itself
on a small model. This kernel does all of it in one launch: load the tokens' K and V rows
(strided, as vLLM's fused QKV projection leaves them), rotate them, store them in the slot
dtype at (slot, head, offset).

The rotation runs on the tensor cores, with the decode kernel's `rotate_hilo`: the +-1
Sylvester matrix is exact in 16 bits, and each float32 row is split into a 16-bit high part
and a 16-bit remainder that are multiplied separately and summed in float32. The two parts
carry about 16 mantissa bits, more than a 16-bit slot keeps. Float32 slots (the CPU tests, which compare
this path with the PyTorch one through 2-bit rounding, where float32-level differences flip
codes) keep a float32 `tl.dot` (input_precision="ieee") with the normalized matrix. That
was the only form before: at head_dim 128 it took 4.4 ms of an 11.5 ms decode step on the
H100 (Qwen3-4B shape, batch 64, docs/BENCHMARKS.md run 36), and still 1.7 ms with the
rotation cut into [D, 32] slices (run 37).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kvarn_cli.kernels.hadamard import rotation_on
from kvarn_cli.kernels.triton_common import dot_in_fp16, rotate_hilo, signed_hadamard

#: tokens per program; tl.dot needs at least 16 rows
BLOCK_T = 16
#: output channels per program (at most; D when D is smaller): a [D, BN] slice of the
#: rotation per program (a whole float32 [128, 128] one spilled registers)
BLOCK_N = 32


@triton.jit
def _rotate_rows(x, h_ptr, col0, D: tl.constexpr, BN: tl.constexpr, EXACT: tl.constexpr, DT: tl.constexpr):
    """x [BT, D] float32 @ columns col0 .. col0 + BN of the matrix at h_ptr: with EXACT a
    float32 dot on the normalized matrix, else rotate_hilo on the +-1 one."""
    # one return at the end: on the GPU, code after a `return` inside a constexpr `if` is still compiled
    if EXACT:
        d = tl.arange(0, D)
        h = tl.load(h_ptr + d[:, None] * D + col0 + tl.arange(0, BN)[None, :])
        acc = tl.dot(x, h, input_precision="ieee")
    else:
        acc = rotate_hilo(x, h_ptr + col0, D, 0, 1, BN, DT)
    return acc


@triton.jit(do_not_specialize=["n"])  # the step's token count: see triton_decode.RUNTIME_SIZES
def _stage_kernel(
    key, value, stride_kt, stride_kh, stride_vt, stride_vh,
    tokens, slots, offsets, n,
    h_ptr, inv_sqrt_d,
    slot_k, slot_v, stride_ss, stride_sh, stride_sg,
    D: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr, EXACT: tl.constexpr, DT: tl.constexpr,
):
    pid = tl.program_id(0)
    hd = tl.program_id(1)
    col0 = tl.program_id(2) * BN
    col = col0 + tl.arange(0, BN)
    rows = pid * BT + tl.arange(0, BT)
    live = rows < n
    tok = tl.load(tokens + rows, mask=live, other=0)
    slot = tl.load(slots + rows, mask=live, other=-1)
    live = live & (slot >= 0)  # a fixed-size (CUDA graph) batch marks its padding rows -1
    off = tl.load(offsets + rows, mask=live, other=0)
    d = tl.arange(0, D)
    m2 = live[:, None]
    k = tl.load(key + tok[:, None] * stride_kt + hd * stride_kh + d[None, :], mask=m2, other=0.0).to(tl.float32)
    v = tl.load(value + tok[:, None] * stride_vt + hd * stride_vh + d[None, :], mask=m2, other=0.0).to(tl.float32)
    kr = _rotate_rows(k, h_ptr, col0, D, BN, EXACT, DT) * inv_sqrt_d
    vr = _rotate_rows(v, h_ptr, col0, D, BN, EXACT, DT) * inv_sqrt_d
    dst = slot[:, None].to(tl.int64) * stride_ss + hd * stride_sh + off[:, None] * stride_sg + col[None, :]
    tl.store(slot_k + dst, kr.to(slot_k.dtype.element_ty), mask=m2)
    tl.store(slot_v + dst, vr.to(slot_v.dtype.element_ty), mask=m2)


def stage_tokens(
    key: torch.Tensor,
    value: torch.Tensor,
    tokens: torch.Tensor,
    slots: torch.Tensor,
    offsets: torch.Tensor,
    slot_k: torch.Tensor,
    slot_v: torch.Tensor,
) -> None:
    """slot_k[slots[i], :, offsets[i]] = key[tokens[i]] @ hadamard_matrix(D) (and V alike), in
    place; entries with slots[i] < 0 are skipped. The rotation is the quantizers' (and the
    decode kernel's): the normalized Sylvester Hadamard matrix.

    key/value [T, H, D] with a contiguous last dim (any float dtype); tokens/slots/offsets
    [N] integer; slot_k/slot_v [S, H, G, D] with equal strides.
    """
    n = int(tokens.numel())
    if n == 0:
        return
    heads, d = slot_k.shape[1], slot_k.shape[3]
    if key.shape[1:] != (heads, d) or value.shape[1:] != (heads, d):
        raise ValueError(f"key/value must be [T, {heads}, {d}], got {tuple(key.shape)} / {tuple(value.shape)}")
    if key.stride(2) != 1 or value.stride(2) != 1 or slot_k.stride() != slot_v.stride() or slot_k.stride(3) != 1:
        raise ValueError("key, value and the slots need a contiguous last dim (and the slots equal strides)")
    use_fp16 = dot_in_fp16(key.device)
    exact = slot_k.dtype == torch.float32
    if exact:
        h, inv_sqrt_d = rotation_on(d, key.device), 1.0
    else:
        h, inv_sqrt_d = signed_hadamard(d, key.device, torch.float16 if use_fp16 else torch.bfloat16), d**-0.5
    bn = min(d, BLOCK_N)
    grid = (triton.cdiv(n, BLOCK_T), heads, d // bn)
    _stage_kernel[grid](
        key, value, key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        tokens, slots, offsets, n,
        h, inv_sqrt_d,
        slot_k, slot_v, slot_k.stride(0), slot_k.stride(1), slot_k.stride(2),
        D=d, BT=BLOCK_T, BN=bn, EXACT=exact,
        DT=tl.float16 if use_fp16 else tl.bfloat16, num_warps=4,
    )
