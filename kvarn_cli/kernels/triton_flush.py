"""Triton flush: Hadamard rotation + VarN + RTN + bit packing of full tiles into KVarN records.

One program per (tile, KV head, K or V half); one launch covers every tile that filled in
a step. It
writes the record bytes exactly as kernels.layout describes them (the same function as
`make_quantizer(...).quantize_batch` on the rotated, fp8-scaled KVarN presets), straight
into the paged cache [num_blocks, kv_heads, record_bytes] at the given block ids.

All arithmetic is float32 and follows the PyTorch quantizer (kernels.varn, kernels.rtn)
step for step; only reduction orders differ, and in the fast variants (VARIANTS) the VarN
statistics multiply by reciprocals of the scales (within an ulp of the quotients) and "fast"
computes stds with a Welford merge. So codes can differ from the reference where a value
sits within float32 rounding of a rounding boundary, and VarN can pick another of two
near-tied iterates (tests bound how often).

Cost model (the kernel is latency-bound: a flush of up to ~100 tile halves is one wave of
programs): each VarN iteration is a chain of reductions over a 128 x D tile, each a shuffle
tree plus, for the axis that runs across warps, a shared-memory round trip with barriers.
The fast variants cut these from twelve to four or six per iteration and drop the
spills of the first kernel (v1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kvarn_cli.kernels.hadamard import rotation_on
from kvarn_cli.kernels.quantizers import Quantizer
from kvarn_cli.kernels.triton_common import (
    KernelLayout,
    f32_to_fp8_bits,
    fp8_bits_to_f32,
    interpreted,
    kernel_layout,
    pow2_multiplier_of,
    round_half_even,
    signed_hadamard,
    zero_multiplier_of,
)
from kvarn_cli.kernels import varn

VARN_ITERS = varn.VARN_ITERS
IMB_EPS = tl.constexpr(varn.IMB_EPS)
LOG_FLOOR = tl.constexpr(varn.LOG_FLOOR)
LOG_CEIL = tl.constexpr(varn.LOG_CEIL)
STD_MIN = tl.constexpr(varn.STD_MIN)
STD_MAX = tl.constexpr(varn.STD_MAX)


@triton.jit
def _std(x, AXIS: tl.constexpr, N: tl.constexpr):
    """Unbiased standard deviation along AXIS (N elements)."""
    mean = tl.sum(x, AXIS) / N
    if AXIS == 0:
        dev = x - mean[None, :]
    else:
        dev = x - mean[:, None]
    return tl.sqrt(tl.sum(dev * dev, AXIS) / (N - 1))


@triton.jit
def _imbalance(x, R: tl.constexpr, C: tl.constexpr):
    col = _std(x, 0, R)
    row = _std(x, 1, C)
    return tl.max(col, 0) / tl.maximum(tl.min(col, 0), IMB_EPS) + tl.max(row, 0) / tl.maximum(tl.min(row, 0), IMB_EPS)


@triton.jit
def _varn_col_scale(x, R: tl.constexpr, C: tl.constexpr, ITERS: tl.constexpr):
    """Best column scale Sc* [C] of tile x [R, C] (kernels.varn.varn_scales, float32)."""
    log_c = tl.zeros([C], dtype=tl.float32)
    log_r = tl.zeros([R], dtype=tl.float32)
    best = _imbalance(x, R, C)
    best_c = tl.full([C], 1.0, dtype=tl.float32)
    cur = x
    for _ in range(ITERS):
        col_std = tl.minimum(tl.maximum(_std(cur, 0, R), STD_MIN), STD_MAX)
        log_c = tl.minimum(tl.maximum(log_c + tl.log(col_std), LOG_FLOOR), LOG_CEIL)
        cur = x / tl.exp(log_c)[None, :] / tl.exp(log_r)[:, None]
        row_std = tl.minimum(tl.maximum(_std(cur, 1, C), STD_MIN), STD_MAX)
        log_r = tl.minimum(tl.maximum(log_r + tl.log(row_std), LOG_FLOOR), LOG_CEIL)
        scale_c = tl.exp(log_c)
        scale_r = tl.exp(log_r)
        cur = x / scale_c[None, :] / scale_r[:, None]
        imb = _imbalance(cur, R, C)
        better = imb <= best
        best = tl.where(better, imb, best)
        best_c = tl.where(better, scale_c, best_c)
    return best_c


@triton.jit
def _welford_combine(mean_a, m2_a, n_a, mean_b, m2_b, n_b):
    """Chan's pairwise merge of (mean, sum of squared deviations, count)."""
    n = n_a + n_b
    w = tl.fdiv(n_b, n)  # counts are small integers: the fast division is exact enough
    delta = mean_b - mean_a
    return mean_a + delta * w, m2_a + m2_b + delta * delta * (n_a * w), n


@triton.jit
def _std_one_pass(x, AXIS: tl.constexpr, N: tl.constexpr, WELFORD: tl.constexpr):
    """Unbiased standard deviation along AXIS in ONE reduction (Welford/Chan merge).

    The reference's two-pass std (mean, then centred squares) needs two reductions in a row,
    each a cross-warp round trip when AXIS runs across warps; the merge carries the centred
    sum, so it is as free of cancellation as the two-pass form in half the reductions (each
    merge step is dearer, though: three values and a division per shuffle level).
    WELFORD=False falls back to the two-pass form: Triton's interpreter runs a custom
    combine function once per element in Python (minutes per tile), so CPU CI uses the
    two-pass form for whole tiles and tests the merge itself on small tensors; and on the
    GPU the merge's heavier combine step may cost more than the second pass saves, so
    variant "fast2" keeps the two passes to time against.
    """
    if WELFORD:
        _, m2, _ = tl.reduce((x, tl.zeros_like(x), tl.full(x.shape, 1.0, tl.float32)), AXIS, _welford_combine)
        return tl.sqrt(m2 / (N - 1))
    else:
        return _std(x, AXIS, N)


@triton.jit
def _max_min_combine(max_a, min_a, max_b, min_b):
    return tl.maximum(max_a, max_b), tl.minimum(min_a, min_b)


@triton.jit
def _max_min(x, AXIS: tl.constexpr, JOINT: tl.constexpr):
    """(max, min) along AXIS in one reduction (two under the interpreter, see _std_one_pass)."""
    if JOINT:
        return tl.reduce((x, x), AXIS, _max_min_combine)
    else:
        return tl.max(x, AXIS), tl.min(x, AXIS)


@triton.jit
def _spread(std, JOINT: tl.constexpr):
    """max(std) / max(min(std), eps): one half of VarN's imbalance score."""
    hi, lo = _max_min(std, 0, JOINT)
    return hi / tl.maximum(lo, IMB_EPS)


@triton.jit
def _varn_col_scale_fast(x, R: tl.constexpr, C: tl.constexpr, ITERS: tl.constexpr, WELFORD: tl.constexpr, JOINT: tl.constexpr):
    """Best column scale Sc* [C] of tile x [R, C], iterated as kernels.varn.varn_scales does.

    Per iteration: one row std (of y = x / Sc), one column std (of y / Sr) and the two
    max/min pairs of the imbalance score -- four reductions with WELFORD (six without),
    against twelve for the direct form (_varn_col_scale): the reference's identities reuse
    the row stds of y and carry the column stds into the next iteration, and each max/min
    pair is one reduction. Divisions by the broadcast scales become products with their
    reciprocals (within an ulp of the quotient; only the VarN statistics see them, the
    quantized values use exact divisions).
    """
    log_c = tl.zeros([C], dtype=tl.float32)
    log_r = tl.zeros([R], dtype=tl.float32)
    col_std = _std_one_pass(x, 0, R, WELFORD)
    row_std = _std_one_pass(x, 1, C, WELFORD)
    best = _spread(col_std, JOINT) + _spread(row_std, JOINT)
    best_c = tl.full([C], 1.0, dtype=tl.float32)
    scale_r = tl.full([R], 1.0, dtype=tl.float32)
    for _ in range(ITERS):
        log_c = tl.minimum(tl.maximum(log_c + tl.log(tl.minimum(tl.maximum(col_std, STD_MIN), STD_MAX)), LOG_FLOOR), LOG_CEIL)
        scale_c = tl.exp(log_c)
        y = x * (1.0 / scale_c)[None, :]
        y_row_std = _std_one_pass(y, 1, C, WELFORD)
        row_std = y_row_std / scale_r  # row stds of x / exp(Lc) / exp(Lr) with the previous Lr
        log_r = tl.minimum(tl.maximum(log_r + tl.log(tl.minimum(tl.maximum(row_std, STD_MIN), STD_MAX)), LOG_FLOOR), LOG_CEIL)
        scale_r = tl.exp(log_r)
        # x times both reciprocals rather than y / scale_r: y dies after its row std, so the
        # loop holds two tile-sized tensors (x and one temporary) instead of three
        cur = x * ((1.0 / scale_r)[:, None] * (1.0 / scale_c)[None, :])
        col_std = _std_one_pass(cur, 0, R, WELFORD)
        imb = _spread(col_std, JOINT) + _spread(y_row_std / scale_r, JOINT)
        better = imb <= best
        best = tl.where(better, imb, best)
        best_c = tl.where(better, scale_c, best_c)
    return best_c


@triton.jit
def _encode_side(x, R: tl.constexpr, C: tl.constexpr, BITS: tl.constexpr, ITERS: tl.constexpr, FAST: tl.constexpr, WELFORD: tl.constexpr, JOINT: tl.constexpr):
    """VarN column scale + per-row min-max RTN of x [R, C] (AffineQuantizer._encode_side).

    FAST selects _varn_col_scale_fast and one joint min/max reduction.
    Returns (codes int32 [R, C], col_bits [C], col_mult, step_bits [R], step_mult,
    zero fp16 [R], zero_mult); *_bits are e4m3fn bit patterns.
    """
    levels: tl.constexpr = (1 << BITS) - 1
    if FAST:
        col = _varn_col_scale_fast(x, R, C, ITERS, WELFORD, JOINT)
    else:
        col = _varn_col_scale(x, R, C, ITERS)
    col_mult = pow2_multiplier_of(tl.max(col, 0))
    col_bits = f32_to_fp8_bits(col / col_mult)
    divisor = fp8_bits_to_f32(col_bits) * col_mult
    u = x / divisor[None, :]

    if FAST:
        row_max, row_min = _max_min(u, 1, JOINT)
    else:
        row_min = tl.min(u, 1)
        row_max = tl.max(u, 1)
    step_exact = (row_max - row_min) / levels
    step_mult = pow2_multiplier_of(tl.max(step_exact, 0))
    y = step_exact / step_mult
    nearest = f32_to_fp8_bits(y)
    step_bits = tl.where(fp8_bits_to_f32(nearest) < y, nearest + 1, nearest)
    step_value = fp8_bits_to_f32(step_bits) * step_mult
    slack = tl.maximum(levels * step_value - (row_max - row_min), 0.0)
    zero_exact = row_min - slack / 2
    zero_mult = zero_multiplier_of(tl.max(tl.abs(zero_exact), 0))
    zero = tl.minimum(tl.maximum(zero_exact / zero_mult, -65504.0), 65504.0).to(tl.float16)
    zero_value = zero.to(tl.float32) * zero_mult
    positive = step_value > 0
    safe_step = tl.where(positive, step_value, 1.0)
    scaled = (u - zero_value[:, None]) / safe_step[:, None]
    codes = tl.where(positive[:, None], round_half_even(scaled), 0.0)
    codes = tl.minimum(tl.maximum(codes, 0.0), levels).to(tl.int32)
    return codes, col_bits, col_mult, step_bits, step_mult, zero, zero_mult


@triton.jit
def _pack_store(codes, ptr, G: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr):
    """Pack codes [G, D] along their rows (kernels.packing order) and store G * D * BITS / 8
    bytes, row-major: K passes [tokens, channels], V [channels, tokens]."""
    PER: tl.constexpr = 8 // BITS
    grouped = tl.reshape(codes, (G, D // PER, PER))
    shifts = tl.arange(0, PER) * BITS
    packed = tl.sum(grouped << shifts[None, None, :], 2)
    t = tl.arange(0, G)
    i = tl.arange(0, D // PER)
    tl.store(ptr + t[:, None] * (D // PER) + i[None, :], packed.to(tl.uint8))


@triton.jit
def _relayout(x, scratch, G: tl.constexpr, D: tl.constexpr, TRANSPOSE: tl.constexpr, SCRATCH: tl.constexpr):
    """The rotated tile [G, D] (transposed to [D, G] for K), for the VarN loop.

    With SCRATCH the tile goes through this program's own slice of a global scratch buffer
    (L2-resident, written and read back once): the reload gets a plain blocked layout,
    whereas the tensor-core accumulator layout the dot leaves would otherwise be carried
    through the whole loop, and its column reductions need three shuffle levels over 16
    values per thread plus several shared-memory rounds (25 barriers per iteration against
    11, counted in the sm_90 PTX by benchmarks/aot_flush.py).
    """
    if SCRATCH:
        t = tl.arange(0, G)
        d = tl.arange(0, D)
        tl.store(scratch + t[:, None] * D + d[None, :], x)
        tl.debug_barrier()
        if TRANSPOSE:
            return tl.load(scratch + d[:, None] + t[None, :] * D)
        else:
            return tl.load(scratch + t[:, None] * D + d[None, :])
    else:
        if TRANSPOSE:
            return tl.trans(x)
        else:
            return x


@triton.jit
def _load_tile(ptr, stride_t, G: tl.constexpr, D: tl.constexpr, TRANSPOSE: tl.constexpr):
    """A [G, D] tile (as [D, G] with TRANSPOSE) in float32, straight from memory."""
    t = tl.arange(0, G)
    d = tl.arange(0, D)
    if TRANSPOSE:
        return tl.load(ptr + d[:, None] + t[None, :] * stride_t).to(tl.float32)
    else:
        return tl.load(ptr + t[:, None] * stride_t + d[None, :]).to(tl.float32)


@triton.jit
def _flush_kernel(
    k_ptr, v_ptr, stride_kf, stride_kh, stride_kt, stride_vf, stride_vh, stride_vt,
    rot_ptr, rec_ptr, stride_rb, stride_rh, block_ptr, src_ptr, scratch_ptr, layer_ptr,
    G: tl.constexpr, D: tl.constexpr, K_BITS: tl.constexpr, V_BITS: tl.constexpr, ITERS: tl.constexpr,
    OFF_K_CODES: tl.constexpr, OFF_V_CODES: tl.constexpr, OFF_K_ZERO: tl.constexpr,
    OFF_V_ZERO: tl.constexpr, OFF_K_SCALE: tl.constexpr, OFF_K_TOKEN_SCALE: tl.constexpr,
    OFF_V_SCALE: tl.constexpr, OFF_V_CHANNEL_SCALE: tl.constexpr, OFF_K_SCALE_MULT: tl.constexpr,
    OFF_K_ZERO_MULT: tl.constexpr, OFF_K_TOKEN_SCALE_MULT: tl.constexpr, OFF_V_SCALE_MULT: tl.constexpr,
    OFF_V_ZERO_MULT: tl.constexpr, OFF_V_CHANNEL_SCALE_MULT: tl.constexpr,
    PAD_START: tl.constexpr, PAD_LEN: tl.constexpr, PAD_BLOCK: tl.constexpr,
    FAST: tl.constexpr, WELFORD: tl.constexpr, JOINT: tl.constexpr, ROT_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_DTYPE: tl.constexpr,
    SCRATCH: tl.constexpr, ROTATED: tl.constexpr = False, LAYERED: tl.constexpr = False,
):
    """Program (f, h, side): quantize tile src[f] of k/v (src[f] = f without ROTATED) into
    records[block[f], h]. With ROTATED the tiles are kvarn's staging slots, already
    Hadamard-rotated; an entry with src[f] < 0 (or block[f] < 0) is skipped, so a CUDA graph
    can launch a fixed grid every step. With LAYERED, axis 2 is (layer, side): layer l's
    slots and records sit layer_ptr[3 l .. 3 l + 2] elements past k_ptr, v_ptr and rec_ptr,
    so one launch flushes the same blocks in every layer."""
    f = tl.program_id(0)
    h = tl.program_id(1)
    side = tl.program_id(2) % 2  # 0: K, 1: V (independent halves of the record, one program each)
    if LAYERED:
        layer = tl.program_id(2) // 2
        # whole multiples of 16 elements (LayerSlots checks), so the loads and stores keep
        # the vector widths that the tensors' own alignment gives them
        k_ptr += tl.multiple_of(tl.load(layer_ptr + 3 * layer), 16)
        v_ptr += tl.multiple_of(tl.load(layer_ptr + 3 * layer + 1), 16)
        rec_ptr += tl.multiple_of(tl.load(layer_ptr + 3 * layer + 2), 16)
    t = tl.arange(0, G)
    d = tl.arange(0, D)
    blk = tl.load(block_ptr + f).to(tl.int64)
    if ROTATED:
        src = tl.load(src_ptr + f).to(tl.int64)
    else:
        src = f.to(tl.int64)
    if (src >= 0) & (blk >= 0):
        rec = rec_ptr + blk * stride_rb + h * stride_rh
        rec_f16 = rec.to(tl.pointer_type(tl.float16))
        rec_f32 = rec.to(tl.pointer_type(tl.float32))
        scratch = scratch_ptr
        if SCRATCH:
            scratch += ((f * tl.num_programs(1) + h) * 2 + side).to(tl.int64) * (G * D)

        if side == 0:
            k_tile = k_ptr + src * stride_kf + h * stride_kh
            if ROTATED:
                kt = _load_tile(k_tile, stride_kt, G, D, True)
            else:
                rot = tl.load(rot_ptr + d[:, None] * D + d[None, :]).to(DOT_DTYPE)
                k = tl.load(k_tile + t[:, None] * stride_kt + d[None, :]).to(DOT_DTYPE)
                k = tl.dot(k, rot, input_precision=DOT_PRECISION)
                if ROT_SCALE != 1.0:
                    k = k * ROT_SCALE
                kt = _relayout(k, scratch, G, D, True, SCRATCH)
            # K: rows are channels (per-channel RTN over the tile's tokens), columns tokens
            kc, kcol, kcol_mult, kstep, kstep_mult, kzero, kzero_mult = _encode_side(kt, D, G, K_BITS, ITERS, FAST, WELFORD, JOINT)
            _pack_store(tl.trans(kc), rec + OFF_K_CODES, G, D, K_BITS)
            tl.store(rec_f16 + OFF_K_ZERO // 2 + d, kzero)
            tl.store(rec + OFF_K_SCALE + d, kstep.to(tl.uint8))
            tl.store(rec + OFF_K_TOKEN_SCALE + t, kcol.to(tl.uint8))
            tl.store(rec_f32 + OFF_K_SCALE_MULT // 4, kstep_mult)
            tl.store(rec_f32 + OFF_K_ZERO_MULT // 4, kzero_mult)
            tl.store(rec_f32 + OFF_K_TOKEN_SCALE_MULT // 4, kcol_mult)
            if PAD_LEN > 0:
                p = tl.arange(0, PAD_BLOCK)
                tl.store(rec + PAD_START + p, tl.zeros([PAD_BLOCK], dtype=tl.uint8), mask=p < PAD_LEN)
        else:
            v_tile = v_ptr + src * stride_vf + h * stride_vh
            if ROTATED:
                vt = _load_tile(v_tile, stride_vt, G, D, False)
            else:
                rot = tl.load(rot_ptr + d[:, None] * D + d[None, :]).to(DOT_DTYPE)
                v = tl.load(v_tile + t[:, None] * stride_vt + d[None, :]).to(DOT_DTYPE)
                v = tl.dot(v, rot, input_precision=DOT_PRECISION)
                if ROT_SCALE != 1.0:
                    v = v * ROT_SCALE
                vt = _relayout(v, scratch, G, D, False, SCRATCH)
            # V: rows are tokens, columns channels
            vc, vcol, vcol_mult, vstep, vstep_mult, vzero, vzero_mult = _encode_side(vt, G, D, V_BITS, ITERS, FAST, WELFORD, JOINT)
            _pack_store(tl.trans(vc), rec + OFF_V_CODES, D, G, V_BITS)  # channel-major
            tl.store(rec_f16 + OFF_V_ZERO // 2 + t, vzero)
            tl.store(rec + OFF_V_SCALE + t, vstep.to(tl.uint8))
            tl.store(rec + OFF_V_CHANNEL_SCALE + d, vcol.to(tl.uint8))
            tl.store(rec_f32 + OFF_V_SCALE_MULT // 4, vstep_mult)
            tl.store(rec_f32 + OFF_V_ZERO_MULT // 4, vzero_mult)
            tl.store(rec_f32 + OFF_V_CHANNEL_SCALE_MULT // 4, vcol_mult)


#: Kernel variants: "fast" runs VarN in four reductions per iteration and the
#: rotation on tensor cores (+-1 Hadamard: exact products); "fast2" is the same with
#: two-pass stds (six reductions per iteration, cheaper combine steps); the "-s" forms pass
#: the rotated tile through a global scratch buffer to leave the accumulator layout (see
#: _relayout); "v1" is the first kernel (twelve reductions per iteration, fp32 FMA
#: rotation), kept to time against. Which of the fast forms wins is for the H100 to say.
VARIANTS = ("fast", "fast2", "fast-s", "fast2-s", "v1")
#: The default until the H100 timings (benchmarks/decode_attention.py --only flush) pick one:
#: fewest barriers and shuffles per VarN iteration and no spills in the sm_90 build, and
#: two-pass stds like the PyTorch reference.
DEFAULT_VARIANT = "fast2-s"


def default_warps(head_dim: int) -> int:
    """Warps per program: 4 at d=64 (64 values per thread per tile-sized tensor; fewer warps
    to combine across, and 2 programs fit an SM by registers), 8 at d=128 (4 spill). A guess
    from the sm_90 build (benchmarks/GPU_NOTES.md) until the H100 timings confirm it."""
    return 4 if head_dim <= 64 else 8


def kernel_constants(lay: KernelLayout, variant: str = DEFAULT_VARIANT, dtype: torch.dtype = torch.bfloat16) -> dict:
    """The constexpr arguments of _flush_kernel for a layout, variant and K/V dtype."""
    if variant not in VARIANTS:
        raise ValueError(f"flush variant must be one of {VARIANTS}, got {variant!r}")
    fast = variant != "v1"
    # The fast rotation multiplies by a +-1 matrix on tensor cores: with 16-bit K/V every
    # product is exact in the operands' own dtype (half the shared memory of tf32); float32
    # K/V take the 3-pass tf32 split. The interpreter's 16-bit dots are broken (see
    # triton_common.dot_in_fp16), so it keeps float32 "ieee".
    dot_dtype = tl.float32
    if not fast or interpreted():
        precision = "ieee"
    elif dtype in (torch.bfloat16, torch.float16):
        precision = "tf32"  # ignored for 16-bit operands
        dot_dtype = tl.bfloat16 if dtype == torch.bfloat16 else tl.float16
    else:
        precision = "tf32x3"
    pad_len = lay.record_bytes - lay.end_of_fields
    return dict(
        G=lay.block_size, D=lay.head_dim, K_BITS=lay.k_bits, V_BITS=lay.v_bits, ITERS=VARN_ITERS,
        PAD_START=lay.end_of_fields, PAD_LEN=pad_len, PAD_BLOCK=triton.next_power_of_2(max(pad_len, 1)),
        FAST=fast,
        WELFORD=variant in ("fast", "fast-s") and not interpreted(),
        JOINT=fast and not interpreted(),
        SCRATCH=variant.endswith("-s"),
        ROT_SCALE=float(lay.head_dim**-0.5) if fast else 1.0,
        DOT_PRECISION=precision,
        DOT_DTYPE=dot_dtype,
        **lay.args(),
    )


_TORCH_DTYPES = {tl.float32: torch.float32, tl.bfloat16: torch.bfloat16, tl.float16: torch.float16}


def rotation_operand(head_dim: int, device: torch.device, consts: dict) -> torch.Tensor:
    """The B operand of the rotation dot: the +-1 Sylvester matrix in the dot's dtype (fast;
    the kernel scales by 1/sqrt(D) afterwards) or the orthonormal float32 one (v1)."""
    if not consts["FAST"]:
        return rotation_on(head_dim, device)
    return signed_hadamard(head_dim, device, _TORCH_DTYPES[consts["DOT_DTYPE"]])


def flush_tiles(
    quantizer: Quantizer,
    k: torch.Tensor,
    v: torch.Tensor,
    records: torch.Tensor,
    block_ids: torch.Tensor,
    num_warps: int | None = None,
    variant: str = DEFAULT_VARIANT,
) -> None:
    """Quantize full tiles k, v [F, H, G, D] (unrotated, any float dtype, last dim contiguous)
    into records[block_ids[f], h] of the paged cache `records` [num_blocks, H, record_bytes]
    (uint8, last dim contiguous). One launch, one program per (tile, head, K or V).

    With kvarn_cli.kvcache (issue 4) this replaces step 5 of compute.update_cache:
    flush_tiles(quantizer, tk, tv, cache.records, plan.flush_block).
    """
    lay = kernel_layout(quantizer.layout)
    n_tiles, heads, g, d = k.shape
    if v.shape != k.shape or g != lay.block_size or d != lay.head_dim:
        raise ValueError(f"k, v must be [F, H, {lay.block_size}, {lay.head_dim}], got {tuple(k.shape)}, {tuple(v.shape)}")
    if records.dtype != torch.uint8 or records.dim() != 3 or records.shape[1:] != (heads, lay.record_bytes):
        raise ValueError(f"records must be uint8 [num_blocks, {heads}, {lay.record_bytes}], got {records.dtype} {tuple(records.shape)}")
    if k.stride(3) != 1 or v.stride(3) != 1 or records.stride(2) != 1:
        raise ValueError("k, v and records need a contiguous last dimension")
    if block_ids.shape != (n_tiles,):
        raise ValueError(f"block_ids must be [{n_tiles}], got {tuple(block_ids.shape)}")
    consts = kernel_constants(lay, variant, k.dtype if k.dtype == v.dtype else torch.float32)
    if n_tiles == 0:
        return
    rot = rotation_operand(d, k.device, consts)
    scratch = torch.empty(n_tiles * heads * 2 * g * d if consts["SCRATCH"] else 1, dtype=torch.float32, device=k.device)
    _flush_kernel[(n_tiles, heads, 2)](
        k, v, k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        rot, records, records.stride(0), records.stride(1), block_ids.to(torch.int32), block_ids, scratch, block_ids,
        num_warps=num_warps or (default_warps(d) if variant != "v1" else 8),
        **consts,
    )


def flush_slots(
    quantizer: Quantizer,
    slot_k: torch.Tensor,
    slot_v: torch.Tensor,
    slot_ids: torch.Tensor,
    records: torch.Tensor,
    block_ids: torch.Tensor,
    num_warps: int | None = None,
    variant: str = "fast2",
    layers: "LayerSlots | None" = None,
) -> None:
    """Quantize full staging slots slot_k/slot_v[slot_ids[f]] ([S, H, G, D], already rotated
    by the quantizer's Hadamard, any float dtype) into records[block_ids[f]]. Entries with
    slot_ids[f] < 0 are skipped inside the kernel, so the launch has a fixed grid.

    This is how a decode step flushes the blocks its tokens complete: the token is staged
    into the tail slot first, so the slot holds the whole tile and nothing is gathered. The
    tile needs no rotation and no relayout, so the scratch forms (`-s`) run as their plain
    counterparts.

    With `layers` (slot_k, slot_v and records then being its layer 0), the same entries are
    flushed in every layer by one launch: a decode step's fills are the same (slot, block)
    pairs in all layers, so one launch replaces a launch per layer. That launch takes 4 warps
    at any head size: at d = 128 on the H100 it is 3-10% faster than with 8 for 1-8 fills
    over 36 layers (docs/BENCHMARKS.md run 49), and its records match (run 50).
    """
    lay = kernel_layout(quantizer.layout)
    n, heads = int(slot_ids.numel()), slot_k.shape[1]
    if slot_k.shape[2:] != (lay.block_size, lay.head_dim) or slot_v.shape != slot_k.shape:
        raise ValueError(f"slots must be [S, H, {lay.block_size}, {lay.head_dim}], got {tuple(slot_k.shape)}, {tuple(slot_v.shape)}")
    if slot_k.stride(3) != 1 or slot_v.stride(3) != 1 or records.stride(2) != 1:
        raise ValueError("slots and records need a contiguous last dimension")
    if records.dtype != torch.uint8 or records.dim() != 3 or records.shape[1:] != (heads, lay.record_bytes):
        raise ValueError(f"records must be uint8 [num_blocks, {heads}, {lay.record_bytes}], got {records.dtype} {tuple(records.shape)}")
    if block_ids.shape != slot_ids.shape or slot_ids.dtype != torch.int32 or block_ids.dtype != torch.int32:
        raise ValueError("slot_ids and block_ids must be int32 tensors of one shape")
    if layers is not None and (layers.slot_k is not slot_k or layers.slot_v is not slot_v or layers.records is not records):
        raise ValueError("with `layers`, slot_k, slot_v and records must be its layer 0")
    if n == 0:
        return
    consts = kernel_constants(lay, variant.removesuffix("-s"), torch.float32)
    num_layers = 1 if layers is None else layers.num_layers
    _flush_kernel[(n, heads, 2 * num_layers)](
        slot_k, slot_v, slot_k.stride(0), slot_k.stride(1), slot_k.stride(2),
        slot_v.stride(0), slot_v.stride(1), slot_v.stride(2),
        records, records, records.stride(0), records.stride(1), block_ids, slot_ids, records,
        block_ids if layers is None else layers.offsets,
        num_warps=num_warps or (8 if variant == "v1" else 4 if layers is not None else default_warps(lay.head_dim)),
        ROTATED=True, LAYERED=layers is not None, **consts,
    )


class LayerSlots:
    """Every layer's staging slots and records, addressed from layer 0's tensors so that one
    flush_slots launch can reach them all: `offsets` [L, 3] (int64, on their device) holds
    each layer's slot_k, slot_v and records start in elements from layer 0's. The layers'
    tensors stay separate allocations (vLLM binds one cache per layer); they must agree in
    shape, strides and dtype, which this checks once so the kernel can share the strides."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        if not layers:
            raise ValueError("LayerSlots needs at least one layer")
        first = layers[0]
        rows: list[list[int]] = []
        for i, layer in enumerate(layers):
            row = []
            for name, t, t0 in zip(("slot_k", "slot_v", "records"), layer, first):
                if t.shape != t0.shape or t.stride() != t0.stride() or t.dtype != t0.dtype or t.device != t0.device:
                    raise ValueError(f"layer {i}'s {name} differs from layer 0's in shape, strides, dtype or device")
                delta = t.data_ptr() - t0.data_ptr()
                if delta % (16 * t.element_size()):
                    raise ValueError(f"layer {i}'s {name} starts {delta} bytes from layer 0's, not a multiple of 16 {t.dtype} elements")
                row.append(delta // t.element_size())
            rows.append(row)
        self.slot_k, self.slot_v, self.records = first
        self.num_layers = len(layers)
        self.offsets = torch.tensor(rows, dtype=torch.int64, device=first[0].device)


def quantize_batch(quantizer: Quantizer, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Drop-in for quantizer.quantize_batch on [N, G, D] tiles: uint8 records [N, record_bytes]."""
    n = k.shape[0]
    recs = torch.empty(n, 1, quantizer.record_bytes, dtype=torch.uint8, device=k.device)
    ids = torch.arange(n, dtype=torch.int32, device=k.device)
    flush_tiles(quantizer, k.contiguous()[:, None], v.contiguous()[:, None], recs, ids)
    return recs[:, 0]
