"""Triton decode attention over the paged KVarN cache (one query token per sequence).

Two launches:
1. A split kernel, grid (batch, kv_heads, splits): each program takes one query-head group
   (all GQA heads of one KV head, padded for the tensor cores) and a run of the sequence's
   quantized blocks. It rotates the query once (q @ H, +-1 matrix in bf16, exact) and never
   dequantizes K or V element by element: with the record's decode formula
       K_rot[t, d] = (kc[t, d] * ks[d] + kz[d]) * kts[t]
       V_rot[t, d] = (vc[t, d] * vs[t] + vz[t]) * vcs[d]
   the scores are kts[t] * ((q * ks) @ kc^T + q . kz) and the value sum is
   vcs[d] * ((p * vs) @ vc + p . vz), so the per-element work is unpacking codes (shift, mask,
   convert; exact in bf16) feeding two bf16 dots. (Under TRITON_INTERPRET, whose bf16
   conversions are broken in triton 3.9, the dots use fp16 instead; same code otherwise.)
   K codes are stored token-major and V codes channel-major (kernels.layout), so the tm
   kernels' dots take their code operand straight from the unpacked registers: K's as
   [tokens, D], V's as [D, tokens] (the V dot computes out^T = vc^T @ p^T). Online softmax in base 2; partial
   (max, sum, acc) go to a float32 workspace.
   The default split kernel (DEFAULT_VARIANT, tmwhb) is `_split_kernel_tm`, with the tokens
   as the MMA's rows: see its docstring. `_split_kernel_joined` (hilo and its relatives) is
   the older form with the query heads as rows, kept as the accuracy reference. The balanced
   variants (is_balanced) run `_split_kernel_balanced` instead, grid (programs per KV head,
   kv_heads), which deals all rows' blocks out evenly over those programs.
   On CUDA GPUs of sm_89 and newer the default (AUTO_VARIANT) is not a Triton kernel but the
   CUDA split kernel of kernels/cuda_decode.py ("cuda"), which writes the same partials and
   is 2.7-4.8x faster than tmwhb on the H100 at 32k, 32-64 rows (docs/BENCHMARKS.md run 88).
2. `_reduce_kernel`, grid (batch, kv_heads): merges the partials, attends to the 16-bit
   sink/tail tokens (kvarn's staging slots, already in the rotated domain), normalizes and
   rotates the output back (out @ H), writing [batch, q_heads, D] in the query's dtype. At
   head_dim 64 the CUDA split kernel is the whole decode (cuda_decode.fuses): it attends to
   the slots, rotates the query, and its last split per row and KV head merges and writes
   the output, so neither this launch nor the query rotation's runs. Where it cannot (`out`
   of another dtype, or counters that would need allocating inside CUDA graph capture) its
   splits attend to the slots and this kernel only merges, each head's partials as one tile
   (TILE_PARTS).
   The sink/tail part already reads near the H100's bandwidth (Qwen3-4B shape, batch 64: ~50
   MB per layer in ~23 us); a separate launch with 64-token chunks in parallel was slower
   (docs/BENCHMARKS.md run 37: the partials it writes and reads back cost more than it won).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import triton
import triton.language as tl

from kvarn_cli.kernels import cuda_decode
from kvarn_cli.kernels.quantizers import Quantizer
from kvarn_cli.kernels.triton_common import (
    KernelLayout,
    dot_in_fp16,
    fp8_bits_to_f32,
    kernel_layout,
    rotate_hilo,
    signed_hadamard,
)

LOG2E = 1.4426950408889634
NEG_BIG = tl.constexpr(-1.0e30)

#: Integer arguments that change from step to step (table width, batch, split count). Triton
#: compiles a kernel again for each value of an integer argument that is 1, divisible by 16
#: or neither, and for each constexpr value; a job's steps must not do that, because each
#: compile holds the step for seconds on the H100 (docs/BENCHMARKS.md runs 60-69). So these
#: stay plain runtime values, the split count is the grid's third dimension, and the engine
#: compiles the eager decode path once at start (kvarn_cli.kvcache.warmup). The balanced
#: variants still take BP, the batch's next power of two, as a constexpr (not the default).
RUNTIME_SIZES = ("stride_btb", "batch", "num_parts")  # named per kernel: older Triton rejects unknown names


@triton.jit
def _unpack(packed, BITS: tl.constexpr, G: tl.constexpr, D: tl.constexpr, DT: tl.constexpr, MAGIC: tl.constexpr):
    """Bytes [G, D * BITS / 8] -> codes [G, D] in DT, channel d = (8 // BITS) * i + j taken
    from bits j * BITS of byte i. join + reshape keep the codes in registers."""
    if BITS == 4:
        c = tl.join(packed & 15, packed >> 4)
    else:
        c = tl.join(
            tl.join(packed & 3, (packed >> 4) & 3),
            tl.join((packed >> 2) & 3, (packed >> 6) & 3),
        )
    c = tl.reshape(c, (G, D))
    if MAGIC:
        # exponent bits OR-ed onto the code: bf16 0x4300 | c == 128 + c (fp16: 0x6400 | c ==
        # 1024 + c); a bit operation instead of an int->float conversion (1/4-rate on SMs).
        # The caller subtracts OFFSET * (sum of the other operand).
        if DT == tl.bfloat16:
            return (c.to(tl.int16) | 0x4300).to(tl.bfloat16, bitcast=True)
        else:
            return (c.to(tl.int16) | 0x6400).to(tl.float16, bitcast=True)
    return c.to(DT)


@triton.jit
def _dot_split(x, y, DT: tl.constexpr, HILO: tl.constexpr):
    """x (float32) @ y (DT); with HILO, x is split into DT high and low parts (two dots), which
    keeps ~float32 accuracy where bf16's 8 bits would not (K zero points cancel large terms).
    Also returns the row sums of x as rounded, for the magic-number offset correction."""
    hi = x.to(DT)
    if HILO:
        lo = (x - hi.to(tl.float32)).to(DT)
        return tl.dot(hi, y) + tl.dot(lo, y), tl.sum(hi.to(tl.float32) + lo.to(tl.float32), 1)
    else:
        return tl.dot(hi, y), tl.sum(hi.to(tl.float32), 1)


@triton.jit
def _block_scores(qr, bt_row, i, rec_ptr, stride_rb, head_off, t, d,
                  D: tl.constexpr, G: tl.constexpr, K_BITS: tl.constexpr, V_BITS: tl.constexpr,
                  DT: tl.constexpr, MAGIC: tl.constexpr, HILO: tl.constexpr, OFFSET: tl.constexpr,
                  OFF_K_CODES: tl.constexpr, OFF_V_CODES: tl.constexpr, OFF_K_ZERO: tl.constexpr,
                  OFF_V_ZERO: tl.constexpr, OFF_K_SCALE: tl.constexpr, OFF_K_TOKEN_SCALE: tl.constexpr,
                  OFF_V_SCALE: tl.constexpr, OFF_V_CHANNEL_SCALE: tl.constexpr, OFF_K_SCALE_MULT: tl.constexpr,
                  OFF_K_ZERO_MULT: tl.constexpr, OFF_K_TOKEN_SCALE_MULT: tl.constexpr, OFF_V_SCALE_MULT: tl.constexpr,
                  OFF_V_ZERO_MULT: tl.constexpr, OFF_V_CHANNEL_SCALE_MULT: tl.constexpr):
    """Load block i of a sequence's table; return its scores [GP, G] and V pieces."""
    blk = tl.load(bt_row + i).to(tl.int64)
    rec = rec_ptr + blk * stride_rb + head_off
    rec_f32 = rec.to(tl.pointer_type(tl.float32))
    rec_f16 = rec.to(tl.pointer_type(tl.float16))
    kb_cols = tl.arange(0, D * K_BITS // 8)
    vt_cols = tl.arange(0, G * V_BITS // 8)
    kbytes = tl.load(rec + OFF_K_CODES + t[:, None] * (D * K_BITS // 8) + kb_cols[None, :])
    vbytes = tl.load(rec + OFF_V_CODES + d[:, None] * (G * V_BITS // 8) + vt_cols[None, :])  # [D, G] codes
    ks = fp8_bits_to_f32(tl.load(rec + OFF_K_SCALE + d)) * tl.load(rec_f32 + OFF_K_SCALE_MULT // 4)
    kz = tl.load(rec_f16 + OFF_K_ZERO // 2 + d).to(tl.float32) * tl.load(rec_f32 + OFF_K_ZERO_MULT // 4)
    kts = fp8_bits_to_f32(tl.load(rec + OFF_K_TOKEN_SCALE + t)) * tl.load(rec_f32 + OFF_K_TOKEN_SCALE_MULT // 4)
    vs = fp8_bits_to_f32(tl.load(rec + OFF_V_SCALE + t)) * tl.load(rec_f32 + OFF_V_SCALE_MULT // 4)
    vz = tl.load(rec_f16 + OFF_V_ZERO // 2 + t).to(tl.float32) * tl.load(rec_f32 + OFF_V_ZERO_MULT // 4)
    vcs = fp8_bits_to_f32(tl.load(rec + OFF_V_CHANNEL_SCALE + d)) * tl.load(rec_f32 + OFF_V_CHANNEL_SCALE_MULT // 4)
    kc = _unpack(kbytes, K_BITS, G, D, DT, MAGIC)
    sc, qs_sum = _dot_split(qr * ks[None, :], tl.trans(kc), DT, HILO)
    qz = tl.sum(qr * kz[None, :], 1)
    if MAGIC:
        qz -= OFFSET * qs_sum
    scores = (sc + qz[:, None]) * kts[None, :]
    return scores, vbytes, vs, vz, vcs


@triton.jit
def _block_values(p, vbytes, vs, vz, vcs, G: tl.constexpr, D: tl.constexpr, V_BITS: tl.constexpr,
                  DT: tl.constexpr, MAGIC: tl.constexpr, HILO: tl.constexpr, OFFSET: tl.constexpr):
    """vcs[d] * ((p * vs) @ vc + p . vz): one block's unnormalized attention output [GP, D]."""
    vc = tl.trans(_unpack(vbytes, V_BITS, D, G, DT, MAGIC))
    o, ps_sum = _dot_split(p * vs[None, :], vc, DT, HILO)
    pz = tl.sum(p * vz[None, :], 1)
    if MAGIC:
        pz -= OFFSET * ps_sum
    return (o + pz[:, None]) * vcs[None, :]


@triton.jit(do_not_specialize=["stride_btb"])  # RUNTIME_SIZES
def _split_kernel_joined(
    q_ptr, stride_qb, stride_qh, h_ptr,
    rec_ptr, stride_rb, stride_rh, bt_ptr, stride_btb, nblk_ptr,
    ws_acc_ptr, ws_ml_ptr, qk_scale,
    GQA: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, G: tl.constexpr,
    K_BITS: tl.constexpr, V_BITS: tl.constexpr, DT: tl.constexpr,
    OFF_K_CODES: tl.constexpr, OFF_V_CODES: tl.constexpr, OFF_K_ZERO: tl.constexpr,
    OFF_V_ZERO: tl.constexpr, OFF_K_SCALE: tl.constexpr, OFF_K_TOKEN_SCALE: tl.constexpr,
    OFF_V_SCALE: tl.constexpr, OFF_V_CHANNEL_SCALE: tl.constexpr, OFF_K_SCALE_MULT: tl.constexpr,
    OFF_K_ZERO_MULT: tl.constexpr, OFF_K_TOKEN_SCALE_MULT: tl.constexpr, OFF_V_SCALE_MULT: tl.constexpr,
    OFF_V_ZERO_MULT: tl.constexpr, OFF_V_CHANNEL_SCALE_MULT: tl.constexpr,
    MAGIC: tl.constexpr = False, HILO: tl.constexpr = False, UNROLL: tl.constexpr = 1,
):
    """The split kernel with the query heads as the MMA rows; unpacks whole code tiles (one dot
    each for K and V). UNROLL=2 handles two blocks per iteration
    (their loads independent, so twice the bytes in flight per program)."""
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    s = tl.program_id(2)
    OFFSET: tl.constexpr = 128.0 if DT == tl.bfloat16 else 1024.0
    g = tl.arange(0, GP)
    d = tl.arange(0, D)
    t = tl.arange(0, G)
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + (kvh * GQA + g[:, None]) * stride_qh + d[None, :],
                mask=g[:, None] < GQA, other=0.0).to(tl.float32)
    qr = rotate_hilo(q, h_ptr, D, 0, 1, D, DT) * qk_scale
    m = tl.full([GP], NEG_BIG, dtype=tl.float32)
    l = tl.zeros([GP], dtype=tl.float32)
    acc = tl.zeros([GP, D], dtype=tl.float32)
    nblk = tl.load(nblk_ptr + b)
    num_splits = tl.num_programs(2)  # a runtime value: a new split count compiles nothing
    blocks_per_split = (nblk + num_splits - 1) // num_splits  # each row split by its own length
    start = s * blocks_per_split
    end = tl.minimum(start + blocks_per_split, nblk)
    bt_row = bt_ptr + b.to(tl.int64) * stride_btb
    head_off = kvh * stride_rh
    for blk_i in range(start, end, UNROLL):
        s1, vb1, vs1, vz1, vcs1 = _block_scores(
            qr, bt_row, blk_i, rec_ptr, stride_rb, head_off, t, d, D, G, K_BITS, V_BITS, DT, MAGIC, HILO, OFFSET,
            OFF_K_CODES, OFF_V_CODES, OFF_K_ZERO, OFF_V_ZERO, OFF_K_SCALE, OFF_K_TOKEN_SCALE, OFF_V_SCALE,
            OFF_V_CHANNEL_SCALE, OFF_K_SCALE_MULT, OFF_K_ZERO_MULT, OFF_K_TOKEN_SCALE_MULT, OFF_V_SCALE_MULT,
            OFF_V_ZERO_MULT, OFF_V_CHANNEL_SCALE_MULT)
        if UNROLL == 2:
            # the second block of the pair; past the end it re-reads the last block, masked out
            has2 = blk_i + 1 < end
            s2, vb2, vs2, vz2, vcs2 = _block_scores(
                qr, bt_row, tl.minimum(blk_i + 1, end - 1), rec_ptr, stride_rb, head_off, t, d, D, G, K_BITS,
                V_BITS, DT, MAGIC, HILO, OFFSET,
                OFF_K_CODES, OFF_V_CODES, OFF_K_ZERO, OFF_V_ZERO, OFF_K_SCALE, OFF_K_TOKEN_SCALE, OFF_V_SCALE,
                OFF_V_CHANNEL_SCALE, OFF_K_SCALE_MULT, OFF_K_ZERO_MULT, OFF_K_TOKEN_SCALE_MULT, OFF_V_SCALE_MULT,
                OFF_V_ZERO_MULT, OFF_V_CHANNEL_SCALE_MULT)
            s2 = tl.where(has2, s2, NEG_BIG)
            m_new = tl.maximum(m, tl.maximum(tl.max(s1, 1), tl.max(s2, 1)))
            alpha = tl.exp2(m - m_new)
            p1 = tl.exp2(s1 - m_new[:, None])
            p2 = tl.exp2(s2 - m_new[:, None])
            l = l * alpha + tl.sum(p1, 1) + tl.sum(p2, 1)
            acc = acc * alpha[:, None] + _block_values(p1, vb1, vs1, vz1, vcs1, G, D, V_BITS, DT, MAGIC, HILO, OFFSET)
            acc += _block_values(p2, vb2, vs2, vz2, vcs2, G, D, V_BITS, DT, MAGIC, HILO, OFFSET)
        else:
            m_new = tl.maximum(m, tl.max(s1, 1))
            alpha = tl.exp2(m - m_new)
            p1 = tl.exp2(s1 - m_new[:, None])
            l = l * alpha + tl.sum(p1, 1)
            acc = acc * alpha[:, None] + _block_values(p1, vb1, vs1, vz1, vcs1, G, D, V_BITS, DT, MAGIC, HILO, OFFSET)
        m = m_new

    part = (b.to(tl.int64) * tl.num_programs(1) + kvh) * num_splits + s
    tl.store(ws_acc_ptr + part * GP * D + g[:, None] * D + d[None, :], acc)
    tl.store(ws_ml_ptr + part * 2 * GP + g, m)
    tl.store(ws_ml_ptr + part * 2 * GP + GP + g, l)


@triton.jit
def _word_channel(p, BITS: tl.constexpr):
    """Channel held at position p of a tile unpacked by _unpack_words (see there)."""
    PW: tl.constexpr = 32 // BITS  # codes per 32-bit word
    rem = p % PW
    return (p // PW) * PW + rem // 2 + (PW // 2) * (rem % 2)


@triton.jit
def _unpack_words(words, BITS: tl.constexpr, G: tl.constexpr, D: tl.constexpr, DT: tl.constexpr):
    """Codes [G, D] in DT as 128 + c (bf16; fp16: 1024 + c) from little-endian 32-bit words
    [G, D * BITS / 32], two codes per 32-bit operation: (w >> BITS*k) & (2^BITS - 1, twice,
    16 bits apart) | the exponent bits of both halves makes a pair of 16-bit floats directly.
    The pair holds channels k' and k' + 16 / BITS of the word (k' = k in storage order), so
    position p of the result is channel _word_channel(p); the caller permutes the other
    operand's channels to match (free: its loads take the permuted indices)."""
    NS: tl.constexpr = 16 // BITS
    W: tl.constexpr = D * BITS // 32
    MASK: tl.constexpr = ((1 << BITS) - 1) * 65537
    EXP: tl.constexpr = 0x43004300 if DT == tl.bfloat16 else 0x64006400
    sh = (tl.arange(0, NS) * BITS).to(tl.uint32)
    y = ((words[:, :, None] >> sh[None, None, :]) & MASK) | EXP  # [G, W, NS] uint32
    lo = (y & 0xFFFF).to(tl.uint16)
    hi = (y >> 16).to(tl.uint16)
    c = tl.reshape(tl.join(lo, hi), (G, D))
    return c.to(DT, bitcast=True)


@triton.jit
def _fetch_codes(bt_row, i, valid, rec_ptr, stride_rb, head_off, t,
                 D: tl.constexpr, K_BITS: tl.constexpr, V_BITS: tl.constexpr,
                 OFF_K_CODES: tl.constexpr, OFF_V_CODES: tl.constexpr,
                 WORDS: tl.constexpr, G: tl.constexpr, SUB: tl.constexpr):
    """Issue the code loads of step i (tokens (i % SUB) * G / SUB + t of table entry
    i // SUB) so that they are in flight while the previous step is computed; returns the
    record's base pointer too. K comes as [G / SUB, D] rows (token-major records), V as
    [D, G / SUB] (channel-major records: the step's tokens are a column range). The entry
    must lie in the table row; where `valid` is False it is not trusted and block 0 (which
    exists) is read instead."""
    blk = tl.where(valid, tl.load(bt_row + i // SUB), 0).to(tl.int64)
    rec = rec_ptr + blk * stride_rb + head_off
    t = t + (i % SUB) * (G // SUB)  # the step's token rows within the block
    dn = tl.arange(0, D)
    if WORDS:
        rec_u32 = rec.to(tl.pointer_type(tl.uint32))
        kw_cols = tl.arange(0, D * K_BITS // 32)
        vt_cols = tl.arange(0, (G // SUB) * V_BITS // 32) + (i % SUB) * ((G // SUB) * V_BITS // 32)
        kb = tl.load(rec_u32 + OFF_K_CODES // 4 + t[:, None] * (D * K_BITS // 32) + kw_cols[None, :])
        vb = tl.load(rec_u32 + OFF_V_CODES // 4 + dn[:, None] * (G * V_BITS // 32) + vt_cols[None, :])
    else:
        kb_cols = tl.arange(0, D * K_BITS // 8)
        vt_cols = tl.arange(0, (G // SUB) * V_BITS // 8) + (i % SUB) * ((G // SUB) * V_BITS // 8)
        kb = tl.load(rec + OFF_K_CODES + t[:, None] * (D * K_BITS // 8) + kb_cols[None, :])
        vb = tl.load(rec + OFF_V_CODES + dn[:, None] * (G * V_BITS // 8) + vt_cols[None, :])
    return rec, kb, vb


@triton.jit
def _fetch_scales(rec, i, t, d, OFF_K_ZERO: tl.constexpr, OFF_V_ZERO: tl.constexpr, OFF_K_SCALE: tl.constexpr,
                  OFF_K_TOKEN_SCALE: tl.constexpr, OFF_V_SCALE: tl.constexpr, OFF_V_CHANNEL_SCALE: tl.constexpr,
                  OFF_K_SCALE_MULT: tl.constexpr, G: tl.constexpr, SUB: tl.constexpr, SCALAR_MULTS: tl.constexpr):
    """The scale/zero vectors of step i of record `rec` (raw fp8/fp16 bits) and its six
    float32 multipliers. d = (channel indices of K's tile, of V's tile)."""
    rec_f16 = rec.to(tl.pointer_type(tl.float16))
    rec_f32 = rec.to(tl.pointer_type(tl.float32))
    t = t + (i % SUB) * (G // SUB)
    d_k, d_v = d
    ks8 = tl.load(rec + OFF_K_SCALE + d_k)
    kz16 = tl.load(rec_f16 + OFF_K_ZERO // 2 + d_k)
    kts8 = tl.load(rec + OFF_K_TOKEN_SCALE + t)
    vs8 = tl.load(rec + OFF_V_SCALE + t)
    vz16 = tl.load(rec_f16 + OFF_V_ZERO // 2 + t)
    vcs8 = tl.load(rec + OFF_V_CHANNEL_SCALE + d_v)
    # the six float32 multipliers are contiguous (k_scale, k_zero, k_token_scale, v_scale,
    # v_zero, v_channel_scale)
    m0 = rec_f32 + OFF_K_SCALE_MULT // 4
    if SCALAR_MULTS == 2:
        # each multiplier broadcast over the vector it scales. Loaded as a scalar and then
        # broadcast in registers: the earlier vector loads through splatted pointers
        # (tl.load(m0 + 0 * d_k)) faulted with an illegal address on the H100 (triton 3.6)
        # while the interpreter ran them fine and the scalar loads of SCALAR_MULTS=1 pass there
        zk = tl.zeros(d_k.shape, tl.float32)
        zt = tl.zeros(t.shape, tl.float32)
        zv = tl.zeros(d_v.shape, tl.float32)
        mults = (tl.load(m0) + zk, tl.load(m0 + 1) + zk, tl.load(m0 + 2) + zt,
                 tl.load(m0 + 3) + zt, tl.load(m0 + 4) + zt, tl.load(m0 + 5) + zv)
    elif SCALAR_MULTS:
        mults = (tl.load(m0), tl.load(m0 + 1), tl.load(m0 + 2), tl.load(m0 + 3), tl.load(m0 + 4), tl.load(m0 + 5))
    else:
        j8 = tl.arange(0, 8)
        mults = tl.load(rec_f32 + OFF_K_SCALE_MULT // 4 + j8, mask=j8 < 6, other=0.0)
    return ks8, kz16, kts8, vs8, vz16, vcs8, mults


@triton.jit
def _fetch_block(bt_row, i, valid, rec_ptr, stride_rb, head_off, t, d,
                 D: tl.constexpr, K_BITS: tl.constexpr, V_BITS: tl.constexpr,
                 OFF_K_CODES: tl.constexpr, OFF_V_CODES: tl.constexpr, OFF_K_ZERO: tl.constexpr,
                 OFF_V_ZERO: tl.constexpr, OFF_K_SCALE: tl.constexpr, OFF_K_TOKEN_SCALE: tl.constexpr,
                 OFF_V_SCALE: tl.constexpr, OFF_V_CHANNEL_SCALE: tl.constexpr, OFF_K_SCALE_MULT: tl.constexpr,
                 WORDS: tl.constexpr, G: tl.constexpr, SUB: tl.constexpr, SCALAR_MULTS: tl.constexpr):
    """_fetch_codes and _fetch_scales of step i (all raw bytes, nothing decoded)."""
    rec, kb, vb = _fetch_codes(bt_row, i, valid, rec_ptr, stride_rb, head_off, t, D, K_BITS, V_BITS,
                               OFF_K_CODES, OFF_V_CODES, WORDS, G, SUB)
    ks8, kz16, kts8, vs8, vz16, vcs8, mults = _fetch_scales(
        rec, i, t, d, OFF_K_ZERO, OFF_V_ZERO, OFF_K_SCALE, OFF_K_TOKEN_SCALE, OFF_V_SCALE, OFF_V_CHANNEL_SCALE,
        OFF_K_SCALE_MULT, G, SUB, SCALAR_MULTS)
    return kb, vb, ks8, kz16, kts8, vs8, vz16, vcs8, mults, rec


@triton.jit
def _pick(v, j8, J: tl.constexpr, SCALAR_MULTS: tl.constexpr):
    """Multiplier J of _fetch_block's `mults` (a tuple of scalars, or a vector of 8)."""
    if SCALAR_MULTS:  # 1: scalars, 2: broadcast vectors
        return v[J]
    else:
        return tl.sum(tl.where(j8 == J, v, 0.0), 0)


@triton.jit
def _tm_segment(
    q_ptr, stride_qb, stride_qh, h_ptr, rec_ptr, stride_rb, stride_rh, bt_ptr, stride_btb, qk_scale,
    b, kvh, start, end,
    GQA: tl.constexpr, D: tl.constexpr, G: tl.constexpr,
    K_BITS: tl.constexpr, V_BITS: tl.constexpr, DT: tl.constexpr,
    OFF_K_CODES: tl.constexpr, OFF_V_CODES: tl.constexpr, OFF_K_ZERO: tl.constexpr,
    OFF_V_ZERO: tl.constexpr, OFF_K_SCALE: tl.constexpr, OFF_K_TOKEN_SCALE: tl.constexpr,
    OFF_V_SCALE: tl.constexpr, OFF_V_CHANNEL_SCALE: tl.constexpr, OFF_K_SCALE_MULT: tl.constexpr,
    MAGIC: tl.constexpr, VT: tl.constexpr, PREFETCH: tl.constexpr,
    WORDS: tl.constexpr, SUB: tl.constexpr, SCALAR_MULTS: tl.constexpr, HP_MIN: tl.constexpr,
):
    """Steps start..end-1 (in G / SUB tokens) of row b's blocks for KV head kvh, as the tm
    split kernels compute them (see _split_kernel_tm): returns the unnormalized partial
    (acc [D, HP] if VT else [HP, D], running max m [HP], row sums l [HP]), base-2 scores."""
    OFFSET: tl.constexpr = 128.0 if DT == tl.bfloat16 else 1024.0
    P2: tl.constexpr = 1 if GQA <= 1 else (2 if GQA <= 2 else (4 if GQA <= 4 else (8 if GQA <= 8 else (16 if GQA <= 16 else 32))))
    HP: tl.constexpr = P2 if P2 > HP_MIN else HP_MIN
    NP: tl.constexpr = 2 * HP if 2 * HP > 16 else 16
    RED: tl.constexpr = NP // (2 * HP)
    GT: tl.constexpr = G // SUB  # tokens per step
    d = tl.arange(0, D)
    t = tl.arange(0, GT)
    r = tl.arange(0, NP)
    if WORDS:
        # K's channels and V's tokens in the order their words unpack them (_unpack_words);
        # every token-indexed load (K rows, scales) follows t, so the scores come out in V's order
        d_k = _word_channel(d, K_BITS)
        t = _word_channel(t, V_BITS)
    else:
        d_k = d
    d_v = d
    j8 = tl.arange(0, 8)
    # row r of qd is query head r // (2 RED) of the group, for its high part where
    # (r // RED) % 2 == 0, else its low part; rows with r % RED != 0 stay zero
    even = ((r // RED) % 2) == 0
    head = r // (2 * RED)
    q_row = (head < GQA) & ((r % RED) == 0)
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + (kvh * GQA + head[:, None]) * stride_qh + d[None, :],
                mask=q_row[:, None], other=0.0).to(tl.float32)
    # rotated query, its channels in K's tile order: q @ H[:, d_k]
    h = tl.load(h_ptr + d[:, None] * D + d_k[None, :])
    q_hi = q.to(DT)
    qd = (tl.dot(q_hi, h) + tl.dot((q - q_hi.to(tl.float32)).to(DT), h)) * qk_scale
    qz_rows = tl.where(even[:, None], qd, 0.0)
    if RED == 1:
        # one column per head slot, [D, HP] (qz_rows holds head h on row 2h): the K operand is
        # built from it as [D, NP] columns hi_h, lo_h. The [NP, D] form with the rows picked by
        # `even` computes the same, but ptxas 12.8 (triton 3.6) then miscompiles the V dot's
        # shared-memory descriptors (an uninitialized uniform register: illegal address on the
        # H100; benchmarks/aot_registers.py reports it as "urbad")
        qh = tl.trans(tl.sum(tl.reshape(qz_rows, (HP, 2, D)), 1))

    m = tl.full([HP], NEG_BIG, dtype=tl.float32)
    lacc = tl.zeros([GT, HP], dtype=tl.float32)
    if VT:
        acc = tl.zeros([D, HP], dtype=tl.float32)
    else:
        acc = tl.zeros([HP, D], dtype=tl.float32)
    bt_row = bt_ptr + b.to(tl.int64) * stride_btb
    head_off = kvh * stride_rh
    # an empty range (start >= end) reads block 0 once and never uses it
    kb, vb, ks8, kz16, kts8, vs8, vz16, vcs8, mults, rec = _fetch_block(
        bt_row, tl.minimum(start, tl.maximum(end - 1, 0)), start < end, rec_ptr, stride_rb, head_off, t, (d_k, d_v),
        D, K_BITS, V_BITS, OFF_K_CODES, OFF_V_CODES, OFF_K_ZERO, OFF_V_ZERO, OFF_K_SCALE, OFF_K_TOKEN_SCALE,
        OFF_V_SCALE, OFF_V_CHANNEL_SCALE, OFF_K_SCALE_MULT, WORDS, G, SUB, SCALAR_MULTS)
    for blk_i in range(start, end):
        if PREFETCH == 2:
            # codes only: the scale vectors load here, in the layouts their uses want
            ks8, kz16, kts8, vs8, vz16, vcs8, mults = _fetch_scales(
                rec, blk_i, t, (d_k, d_v), OFF_K_ZERO, OFF_V_ZERO, OFF_K_SCALE, OFF_K_TOKEN_SCALE, OFF_V_SCALE,
                OFF_V_CHANNEL_SCALE, OFF_K_SCALE_MULT, G, SUB, SCALAR_MULTS)
            nrec, nkb, nvb = _fetch_codes(
                bt_row, tl.minimum(blk_i + 1, end - 1), True, rec_ptr, stride_rb, head_off, t, D, K_BITS, V_BITS,
                OFF_K_CODES, OFF_V_CODES, WORDS, G, SUB)
        elif PREFETCH:
            # the last iteration re-reads its own block (an L2 hit) rather than branch
            nkb, nvb, nks8, nkz16, nkts8, nvs8, nvz16, nvcs8, nmults, nrec = _fetch_block(
                bt_row, tl.minimum(blk_i + 1, end - 1), True, rec_ptr, stride_rb, head_off, t, (d_k, d_v),
                D, K_BITS, V_BITS, OFF_K_CODES, OFF_V_CODES, OFF_K_ZERO, OFF_V_ZERO, OFF_K_SCALE, OFF_K_TOKEN_SCALE,
                OFF_V_SCALE, OFF_V_CHANNEL_SCALE, OFF_K_SCALE_MULT, WORDS, G, SUB, SCALAR_MULTS)
        else:
            kb, vb, ks8, kz16, kts8, vs8, vz16, vcs8, mults, rec = _fetch_block(
                bt_row, blk_i, True, rec_ptr, stride_rb, head_off, t, (d_k, d_v),
                D, K_BITS, V_BITS, OFF_K_CODES, OFF_V_CODES, OFF_K_ZERO, OFF_V_ZERO, OFF_K_SCALE, OFF_K_TOKEN_SCALE,
                OFF_V_SCALE, OFF_V_CHANNEL_SCALE, OFF_K_SCALE_MULT, WORDS, G, SUB, SCALAR_MULTS)
        ks = fp8_bits_to_f32(ks8) * _pick(mults, j8, 0, SCALAR_MULTS)
        kz = kz16.to(tl.float32) * _pick(mults, j8, 1, SCALAR_MULTS)
        kts = fp8_bits_to_f32(kts8) * _pick(mults, j8, 2, SCALAR_MULTS)
        vs = fp8_bits_to_f32(vs8) * _pick(mults, j8, 3, SCALAR_MULTS)
        vz = vz16.to(tl.float32) * _pick(mults, j8, 4, SCALAR_MULTS)
        vcs = fp8_bits_to_f32(vcs8) * _pick(mults, j8, 5, SCALAR_MULTS)

        # K: the B operand holds the hi and lo parts of q_rot * k_scale of each head, as [D, NP]
        # columns hi_h, lo_h (RED == 1) or as [NP, D] rows (hi on even rows, lo on odd ones)
        if RED == 1:
            a = qh * ks[:, None]  # [D, HP]
            hi = a.to(DT)
            lo = (a - hi.to(tl.float32)).to(DT)
            bqt = tl.reshape(tl.join(hi, lo), (D, NP))  # columns hi_h, lo_h
            qkz = tl.sum(qh * kz[:, None], 0)  # [HP]
            corr = tl.reshape(tl.join(qkz, tl.zeros([HP], dtype=tl.float32)), (NP,))  # [NP]: columns hi_h, lo_h
            if MAGIC:
                # the magic offset's share of each column, summed apart from q . kz: the 16-bit
                # hi/lo values add up (nearly) exactly in float32, and the power-of-two offset
                # multiplies exactly, so the only rounding left is the final subtraction
                corr -= OFFSET * tl.sum(bqt.to(tl.float32), 0)
        else:
            a = qd * ks[None, :]
            hi = a.to(DT)
            lo = (a - hi.to(tl.float32)).to(DT)
            bq = tl.where(even[:, None], hi, lo)
            corr = tl.sum(qz_rows * kz[None, :], 1)  # [NP]: q . kz on even rows
            if MAGIC:
                corr -= OFFSET * tl.sum(bq.to(tl.float32), 1)  # the magic offset's share, apart as above
        if WORDS:
            kc = _unpack_words(kb, K_BITS, GT, D, DT)
        else:
            kc = _unpack(kb, K_BITS, GT, D, DT, MAGIC)
        # k_token_scale applied before the hi/lo columns are summed: one layout for kts
        if RED == 1:
            st = (tl.dot(kc, bqt) + corr[None, :]) * kts[:, None]  # [GT, NP]
        else:
            st = (tl.dot(kc, tl.trans(bq)) + corr[None, :]) * kts[:, None]  # [GT, NP]
        if RED > 1:
            st = tl.sum(tl.reshape(st, (GT, 2 * HP, RED)), 2)
        s_hi, s_lo = tl.split(tl.reshape(st, (GT, HP, 2)))
        scores = s_hi + s_lo  # [GT, HP]

        m_new = tl.maximum(m, tl.max(scores, 0))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(scores - m_new[None, :])
        lacc = lacc * alpha[None, :] + p
        m = m_new

        # V: p * v_scale split into hi/lo, interleaved as columns 2h / 2h + 1
        pv = p * vs[:, None]
        p_hi = pv.to(DT)
        p_lo = (pv - p_hi.to(tl.float32)).to(DT)
        pcorr = p * vz[:, None]
        if MAGIC:
            pcorr -= OFFSET * (p_hi.to(tl.float32) + p_lo.to(tl.float32))
        pcorr = tl.sum(pcorr, 0)  # [HP]
        ps = tl.reshape(tl.join(p_hi, p_lo), (GT, 2 * HP))
        if RED > 1:
            zi = tl.arange(0, RED)
            ps = tl.reshape(tl.where(zi[None, None, :] == 0, ps[:, :, None], 0.0).to(DT), (GT, NP))
        if WORDS:
            vc_t = _unpack_words(vb, V_BITS, D, GT, DT)  # [D, GT]: the A operand as it is
        else:
            vc_t = _unpack(vb, V_BITS, D, GT, DT, MAGIC)
        if VT:
            ot = tl.dot(vc_t, ps)  # [D, NP]
            if RED > 1:
                ot = tl.sum(tl.reshape(ot, (D, 2 * HP, RED)), 2)
            o_hi, o_lo = tl.split(tl.reshape(ot, (D, HP, 2)))
            acc = acc * alpha[None, :] + (o_hi + o_lo + pcorr[None, :]) * vcs[:, None]
        else:
            o = tl.dot(tl.trans(ps), tl.trans(vc_t))  # [NP, D]
            if RED > 1:
                o = tl.sum(tl.reshape(o, (2 * HP, RED, D)), 1)
            o_hi, o_lo = tl.split(tl.permute(tl.reshape(o, (HP, 2, D)), (0, 2, 1)))
            acc = acc * alpha[:, None] + (o_hi + o_lo + pcorr[:, None]) * vcs[None, :]
        if PREFETCH == 2:
            kb, vb, rec = nkb, nvb, nrec
        elif PREFETCH:
            kb, vb, ks8, kz16, kts8, vs8, vz16, vcs8, mults = nkb, nvb, nks8, nkz16, nkts8, nvs8, nvz16, nvcs8, nmults

    return acc, m, tl.sum(lacc, 0)


@triton.jit
def _tm_store(ws_acc_ptr, ws_ml_ptr, part, acc, m, l, GQA: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
              V_BITS: tl.constexpr, VT: tl.constexpr, WORDS: tl.constexpr, HP_MIN: tl.constexpr):
    """Write a _tm_segment partial to workspace entry `part` ([GP, D] acc, [2, GP] max/sum),
    padding rows past HP as empty partials."""
    P2: tl.constexpr = 1 if GQA <= 1 else (2 if GQA <= 2 else (4 if GQA <= 4 else (8 if GQA <= 8 else (16 if GQA <= 16 else 32))))
    HP: tl.constexpr = P2 if P2 > HP_MIN else HP_MIN
    d = tl.arange(0, D)
    hh = tl.arange(0, HP)
    ws = ws_acc_ptr + part * GP * D
    if VT:
        tl.store(ws + hh[None, :] * D + d[:, None], acc)
    else:
        tl.store(ws + hh[:, None] * D + d[None, :], acc)
    tl.store(ws_ml_ptr + part * 2 * GP + hh, m)
    tl.store(ws_ml_ptr + part * 2 * GP + GP + hh, l)
    if GP > HP:
        # rows the reduce kernel reads but no query head uses: empty partials
        pad = tl.arange(0, GP)
        is_pad = pad >= HP
        tl.store(ws + pad[:, None] * D + d[None, :], tl.zeros([GP, D], dtype=tl.float32), mask=is_pad[:, None])
        tl.store(ws_ml_ptr + part * 2 * GP + pad, tl.full([GP], NEG_BIG, dtype=tl.float32), mask=is_pad)
        tl.store(ws_ml_ptr + part * 2 * GP + GP + pad, tl.zeros([GP], dtype=tl.float32), mask=is_pad)


@triton.jit(do_not_specialize=["stride_btb"])  # RUNTIME_SIZES
def _split_kernel_tm(
    q_ptr, stride_qb, stride_qh, h_ptr,
    rec_ptr, stride_rb, stride_rh, bt_ptr, stride_btb, nblk_ptr,
    ws_acc_ptr, ws_ml_ptr, qk_scale,
    GQA: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, G: tl.constexpr,
    K_BITS: tl.constexpr, V_BITS: tl.constexpr, DT: tl.constexpr,
    OFF_K_CODES: tl.constexpr, OFF_V_CODES: tl.constexpr, OFF_K_ZERO: tl.constexpr,
    OFF_V_ZERO: tl.constexpr, OFF_K_SCALE: tl.constexpr, OFF_K_TOKEN_SCALE: tl.constexpr,
    OFF_V_SCALE: tl.constexpr, OFF_V_CHANNEL_SCALE: tl.constexpr, OFF_K_SCALE_MULT: tl.constexpr,
    OFF_K_ZERO_MULT: tl.constexpr, OFF_K_TOKEN_SCALE_MULT: tl.constexpr, OFF_V_SCALE_MULT: tl.constexpr,
    OFF_V_ZERO_MULT: tl.constexpr, OFF_V_CHANNEL_SCALE_MULT: tl.constexpr,
    MAGIC: tl.constexpr = True, VT: tl.constexpr = True, PREFETCH: tl.constexpr = 1,
    WORDS: tl.constexpr = False, SUB: tl.constexpr = 1, SCALAR_MULTS: tl.constexpr = 0,
    HP_MIN: tl.constexpr = 8,
):
    """The split kernel with the tokens as the MMA's M dimension:
        scores^T [G, NP] = K codes [G, D] @ Q^T [D, NP]
    where the NP = 2 * HP columns are, interleaved, the bf16 high and low parts of
    q_rot * k_scale for each of the HP >= GQA query heads (HP = max(8, next pow2)). The split
    that keeps float32-level accuracy (see _dot_split) thus costs no extra MMA: it fills the
    columns that padding 3-4 heads to 16 rows used to waste, and 128 tokens fill the rows.
    Likewise for V: out^T [D, NP] = V codes^T [D, G] @ (p * v_scale)^T hi/lo [G, NP] (VT),
    or out [NP, D] = (p * v_scale) hi/lo [NP, G] @ V codes [G, D] (not VT); the records
    hold V channel-major, so with VT the unpacked codes are the A operand as they stand.
    The softmax then works on [G, HP] (8 columns) instead of [16, G], its row sums are
    accumulated elementwise and reduced once at the end, and with PREFETCH block i+1's
    record loads (table entry included) are issued before block i is computed, since the
    dependent table load keeps Triton's pipeliner from doing it (PREFETCH=2: only the
    codes; the small scale vectors load at the top of the iteration, which spares the
    layout conversions of loop-carried vectors). With WORDS the codes are
    unpacked two per 32-bit operation (_unpack_words) in a permuted order (K's channels, V's
    tokens) that the query, scale and token indices follow. SUB > 1 walks each block in SUB steps of
    G / SUB tokens (smaller tiles, fewer registers, more programs per SM). HP_MIN < 8 lets HP
    be GQA's next power of two (4 for 3-4 heads): the MMA still needs NP >= 16 columns, so
    each column is followed by RED - 1 zero columns, but the softmax works on [G, 4]."""
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    s = tl.program_id(2)
    nblk = tl.load(nblk_ptr + b)
    num_splits = tl.num_programs(2)  # a runtime value: a new split count compiles nothing
    blocks_per_split = (nblk + num_splits - 1) // num_splits  # each row split by its own length
    start = s * blocks_per_split * SUB
    end = tl.minimum(start + blocks_per_split * SUB, nblk * SUB)
    acc, m, l = _tm_segment(
        q_ptr, stride_qb, stride_qh, h_ptr, rec_ptr, stride_rb, stride_rh, bt_ptr, stride_btb, qk_scale,
        b, kvh, start, end, GQA, D, G, K_BITS, V_BITS, DT, OFF_K_CODES, OFF_V_CODES, OFF_K_ZERO, OFF_V_ZERO, OFF_K_SCALE,
        OFF_K_TOKEN_SCALE, OFF_V_SCALE, OFF_V_CHANNEL_SCALE, OFF_K_SCALE_MULT, MAGIC, VT, PREFETCH, WORDS, SUB,
        SCALAR_MULTS, HP_MIN)
    part = (b.to(tl.int64) * tl.num_programs(1) + kvh) * num_splits + s
    _tm_store(ws_acc_ptr, ws_ml_ptr, part, acc, m, l, GQA, GP, D, V_BITS, VT, WORDS, HP_MIN)


@triton.jit(do_not_specialize=["stride_btb", "batch"])  # RUNTIME_SIZES
def _split_kernel_balanced(
    q_ptr, stride_qb, stride_qh, h_ptr,
    rec_ptr, stride_rb, stride_rh, bt_ptr, stride_btb, nblk_ptr, batch,
    ws_acc_ptr, ws_ml_ptr, qk_scale,
    GQA: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, G: tl.constexpr,
    K_BITS: tl.constexpr, V_BITS: tl.constexpr, BP: tl.constexpr, DT: tl.constexpr,
    OFF_K_CODES: tl.constexpr, OFF_V_CODES: tl.constexpr, OFF_K_ZERO: tl.constexpr,
    OFF_V_ZERO: tl.constexpr, OFF_K_SCALE: tl.constexpr, OFF_K_TOKEN_SCALE: tl.constexpr,
    OFF_V_SCALE: tl.constexpr, OFF_V_CHANNEL_SCALE: tl.constexpr, OFF_K_SCALE_MULT: tl.constexpr,
    OFF_K_ZERO_MULT: tl.constexpr, OFF_K_TOKEN_SCALE_MULT: tl.constexpr, OFF_V_SCALE_MULT: tl.constexpr,
    OFF_V_ZERO_MULT: tl.constexpr, OFF_V_CHANNEL_SCALE_MULT: tl.constexpr,
    MAGIC: tl.constexpr = True, VT: tl.constexpr = True, PREFETCH: tl.constexpr = 1,
    WORDS: tl.constexpr = False, SUB: tl.constexpr = 1, SCALAR_MULTS: tl.constexpr = 0,
    HP_MIN: tl.constexpr = 8,
):
    """_split_kernel_tm's work dealt out evenly, grid (programs per KV head, kv_heads).

    With a fixed split count per row, the programs are as long as their rows and come in
    whole waves: 512 programs where 396 fit on the SMs run as two rounds, the second a
    third full; rows of 100 and 4,000 tokens make programs 40x apart. Here the steps (G /
    SUB tokens) of all rows, row after row, are cut into num_programs(0) equal runs, and
    program j takes steps [j * W // P, (j + 1) * W // P) of the W, whichever rows they
    belong to: one partial per row it touches, stored at entry j + b of its KV head's
    P + batch (the pairs (j, b) a program visits only grow, so j + b never repeats).
    _reduce_kernel (BALANCED) finds a row's programs from the same arithmetic."""
    j = tl.program_id(0)
    kvh = tl.program_id(1)
    num = tl.num_programs(0).to(tl.int64)
    rows = tl.arange(0, BP)
    units = tl.load(nblk_ptr + rows, mask=rows < batch, other=0) * SUB  # steps per row
    ends = tl.cumsum(units, 0)  # row b's steps are ends[b] - units[b] .. ends[b] - 1
    total = tl.sum(units, 0).to(tl.int64)
    u = ((j * total) // num).to(tl.int32)
    u_end = (((j + 1) * total) // num).to(tl.int32)
    # with more programs than steps some get none; such a program still writes an empty
    # partial at j + (the row holding step u), because the reduce reads every program
    # between a row's first and last owner (none where u is past the last step)
    go = (u < u_end) | ((u == u_end) & (u < total))
    while go:
        b = tl.sum((ends <= u).to(tl.int32), 0)  # the row holding step u (rows without steps skipped)
        row_end = tl.sum(tl.where(rows == b, ends, 0), 0)
        row_start = row_end - tl.sum(tl.where(rows == b, units, 0), 0)
        seg_end = tl.minimum(u_end, row_end)
        acc, m, l = _tm_segment(
            q_ptr, stride_qb, stride_qh, h_ptr, rec_ptr, stride_rb, stride_rh, bt_ptr, stride_btb, qk_scale,
            b, kvh, u - row_start, seg_end - row_start, GQA, D, G, K_BITS, V_BITS, DT, OFF_K_CODES, OFF_V_CODES,
            OFF_K_ZERO, OFF_V_ZERO, OFF_K_SCALE, OFF_K_TOKEN_SCALE, OFF_V_SCALE, OFF_V_CHANNEL_SCALE, OFF_K_SCALE_MULT,
            MAGIC, VT, PREFETCH, WORDS, SUB, SCALAR_MULTS, HP_MIN)
        part = kvh.to(tl.int64) * (num + batch) + j + b
        _tm_store(ws_acc_ptr, ws_ml_ptr, part, acc, m, l, GQA, GP, D, V_BITS, VT, WORDS, HP_MIN)
        u = seg_end
        go = u < u_end


@triton.jit(do_not_specialize=["num_parts"])  # RUNTIME_SIZES
def _reduce_kernel(
    q_ptr, stride_qb, stride_qh, h_ptr, out_ptr, stride_ob, stride_oh,
    ws_acc_ptr, ws_ml_ptr,
    sk_ptr, sv_ptr, stride_ss, stride_sh, stride_st, side_slot_ptr, side_len_ptr, stride_side,
    qk_scale, inv_sqrt_d, nblk_ptr, num_parts,
    GQA: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, G: tl.constexpr,
    NUM_SIDE: tl.constexpr, DT: tl.constexpr,
    BALANCED: tl.constexpr = False, SUB: tl.constexpr = 1, BP: tl.constexpr = 1, PARTS_AT_ONCE: tl.constexpr = 4,
    TILE_PARTS: tl.constexpr = 0,
):
    """Partials of (b, kvh): num_parts (the split count) in a row, or with BALANCED those
    that the num_parts programs per KV head of _split_kernel_balanced wrote for row b."""
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    g = tl.arange(0, GP)
    d = tl.arange(0, D)
    t = tl.arange(0, G)

    m = tl.full([GP], NEG_BIG, dtype=tl.float32)
    l = tl.zeros([GP], dtype=tl.float32)
    acc = tl.zeros([GP, D], dtype=tl.float32)
    if BALANCED:
        # program j of the split launch took steps [j * W // P, (j + 1) * W // P), so step u
        # is in program ((u + 1) * P - 1) // W; row b's partial from program j is entry j + b
        rows = tl.arange(0, BP)
        units = tl.load(nblk_ptr + rows, mask=rows < tl.num_programs(0), other=0) * SUB
        ends = tl.cumsum(units, 0)
        total = tl.maximum(tl.sum(units, 0), 1).to(tl.int64)
        n_b = tl.sum(tl.where(rows == b, units, 0), 0)
        e_b = tl.sum(tl.where(rows == b, ends, 0), 0).to(tl.int64)
        j0 = ((e_b - n_b + 1) * num_parts - 1) // total
        j1 = tl.where(n_b > 0, (e_b * num_parts - 1) // total, j0 - 1)
        first = kvh.to(tl.int64) * (num_parts + tl.num_programs(0)) + b + j0
        count = j1 - j0 + 1
    else:
        first = (b.to(tl.int64) * tl.num_programs(1) + kvh) * num_parts
        count = num_parts
    if TILE_PARTS > 0:
        # Each head's partials TILE_PARTS at a time, as one masked [TILE_PARTS, D] tile, so that
        # all their loads are in flight together: with no slots to read here (the CUDA kernel's
        # splits at head_dim 64 attend to them) this took the launch from 11.4 to 5.2 us at 32k,
        # 32 rows of the SmolLM2 shape (docs/BENCHMARKS.md runs 94-96). With the slots here, at
        # head_dim 128, it was slower than the loop below (22 against 17 us). Rows GQA .. GP - 1
        # are padding, left at m = NEG_BIG, l = 0, acc = 0.
        pc = tl.arange(0, TILE_PARTS)
        for gi in tl.static_range(GQA):
            m_g = tl.max(tl.full([TILE_PARTS], NEG_BIG, tl.float32), 0)
            l_g = tl.sum(tl.zeros([TILE_PARTS], dtype=tl.float32), 0)
            row = tl.zeros([D], dtype=tl.float32)
            for s0 in range(0, count, TILE_PARTS):
                sp = s0 + pc
                ok = sp < count
                mlp = ws_ml_ptr + (first + sp) * 2 * GP + gi
                ms = tl.load(mlp, mask=ok, other=NEG_BIG)
                ls = tl.load(mlp + GP, mask=ok, other=0.0)
                a = tl.load(ws_acc_ptr + (first + sp)[:, None] * GP * D + gi * D + d[None, :], mask=ok[:, None], other=0.0)
                m_new = tl.maximum(m_g, tl.max(ms, 0))
                alpha = tl.exp2(m_g - m_new)
                w = tl.exp2(ms - m_new)
                l_g = l_g * alpha + tl.sum(w * ls, 0)
                row = row * alpha + tl.sum(a * w[:, None], 0)
                m_g = m_new
            m = tl.where(g == gi, m_g, m)
            l = tl.where(g == gi, l_g, l)
            acc = tl.where(g[:, None] == gi, row[None, :], acc)
    else:
        # PARTS_AT_ONCE partials per step, unrolled, so that their loads are in flight together
        # rather than one memory latency per partial (the CUDA kernel's split counts reach 20-60
        # at 32k). Rows GQA .. GP - 1 are padding, which the CUDA split kernel leaves unwritten.
        for s0 in range(0, count, PARTS_AT_ONCE):
            for c in tl.static_range(PARTS_AT_ONCE):
                s = s0 + c
                rows_ok = (g < GQA) & (g * 0 + s < count)  # a tensor also where s and count are ints (interpreter)
                ml = ws_ml_ptr + (first + s) * 2 * GP
                ms = tl.load(ml + g, mask=rows_ok, other=NEG_BIG)
                ls = tl.load(ml + GP + g, mask=rows_ok, other=0.0)
                a = tl.load(ws_acc_ptr + (first + s) * GP * D + g[:, None] * D + d[None, :], mask=rows_ok[:, None], other=0.0)
                m_new = tl.maximum(m, ms)
                alpha = tl.exp2(m - m_new)
                beta = tl.exp2(ms - m_new)
                l = l * alpha + ls * beta
                acc = acc * alpha[:, None] + a * beta[:, None]
                m = m_new

    if NUM_SIDE > 0:
        q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + (kvh * GQA + g[:, None]) * stride_qh + d[None, :],
                    mask=g[:, None] < GQA, other=0.0).to(tl.float32)
        q_rot = rotate_hilo(q, h_ptr, D, 0, 1, D, DT) * qk_scale
        for si in range(NUM_SIDE):
            slot = tl.load(side_slot_ptr + b.to(tl.int64) * stride_side + si)
            n = tl.load(side_len_ptr + b.to(tl.int64) * stride_side + si)
            n = tl.where(slot >= 0, n, 0)
            slot = tl.maximum(slot, 0).to(tl.int64)
            valid = t < n
            off = slot * stride_ss + kvh * stride_sh + t[:, None] * stride_st + d[None, :]
            k = tl.load(sk_ptr + off, mask=valid[:, None], other=0.0).to(DT)
            v = tl.load(sv_ptr + off, mask=valid[:, None], other=0.0).to(DT)
            scores, _ = _dot_split(q_rot, tl.trans(k), DT, True)
            scores = tl.where(valid[None, :], scores, NEG_BIG)
            m_new = tl.maximum(m, tl.max(scores, 1))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(scores - m_new[:, None])
            p = tl.where(valid[None, :], p, 0.0)
            l = l * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(DT), v)
            m = m_new

    out = acc / tl.maximum(l, 1e-30)[:, None]
    out = rotate_hilo(out, h_ptr, D, 0, 1, D, DT) * inv_sqrt_d
    tl.store(out_ptr + b.to(tl.int64) * stride_ob + (kvh * GQA + g[:, None]) * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=g[:, None] < GQA)


#: registers per thread that let three 4-warp programs share an SM (65,536 / 384, in steps of 8)
REGS_FOR_THREE = 168

#: Split-kernel versions (benchmarks/GPU_NOTES.md has their timings and accuracy). The
#: versions without HILO (or the tm variants' hi/lo columns) round q * k_scale and p * v_scale
#: to bf16 and are off by 1-2.5e-2 (relative) on the GPU where K's zero points cancel large
#: terms; they stay as speed references. tmw, tmwb and tmws faulted on the H100 (illegal
#: address, run 12): ptxas 12.8 left a uniform register of a wgmma shared-memory descriptor
#: uninitialized in their sm_90 code (found in run 52; benchmarks/aot_registers.py's "urbad"
#: column flags it offline). With V codes channel-major and the K operand built per head
#: slot (_tm_segment, RED == 1) every tm variant here compiles clean of it (triton 3.6, k2v2,
#: D = 64 and 128; the defaults also k4v4 and GQA 3, 4 and 8). tmwn and tmwhn, the [NP, D]
#: K operand at RED > 1 with the transposed V, were dropped.
VARIANTS: dict[str, dict[str, object]] = {
    "joined": {},
    "magic": {"MAGIC": True},
    "hilo": {"MAGIC": True, "HILO": True},
    "fast": {"MAGIC": True, "HILO": True, "UNROLL": 2},
    # _split_kernel_tm: tokens on the MMA's M dimension, hi/lo parts as MMA columns, prefetch
    "tm": {"MAGIC": True, "VT": True, "PREFETCH": True},
    "tmr": {"MAGIC": True, "VT": False, "PREFETCH": True},
    "tmnp": {"MAGIC": True, "VT": True, "PREFETCH": False},
    "tmi": {"MAGIC": False, "VT": True, "PREFETCH": True},
    "tmw": {"MAGIC": True, "VT": True, "PREFETCH": True, "WORDS": True},
    "tmwr": {"MAGIC": True, "VT": False, "PREFETCH": True, "WORDS": True},
    "tmw8": {"MAGIC": True, "VT": True, "PREFETCH": True, "WORDS": True, "num_warps": 8},
    "tmwr8": {"MAGIC": True, "VT": False, "PREFETCH": True, "WORDS": True, "num_warps": 8},
    "tmwh": {"MAGIC": True, "VT": True, "PREFETCH": True, "WORDS": True, "SUB": 2},
    "tmwrh": {"MAGIC": True, "VT": False, "PREFETCH": True, "WORDS": True, "SUB": 2},
    "tmws": {"MAGIC": True, "VT": True, "PREFETCH": True, "WORDS": True, "SCALAR_MULTS": True},
    "tmwrhn": {"MAGIC": True, "VT": False, "PREFETCH": True, "WORDS": True, "SUB": 2, "HP_MIN": 1},
    "tmwc": {"MAGIC": True, "VT": True, "PREFETCH": 2, "WORDS": True},
    "tmwhc": {"MAGIC": True, "VT": True, "PREFETCH": 2, "WORDS": True, "SUB": 2},
    "tmwb": {"MAGIC": True, "VT": True, "PREFETCH": True, "WORDS": True, "SCALAR_MULTS": 2},
    "tmwhb": {"MAGIC": True, "VT": True, "PREFETCH": True, "WORDS": True, "SUB": 2, "SCALAR_MULTS": 2},
    "tmwhb8": {"MAGIC": True, "VT": True, "PREFETCH": True, "WORDS": True, "SUB": 2, "SCALAR_MULTS": 2, "num_warps": 8},
    "tmwb8": {"MAGIC": True, "VT": True, "PREFETCH": True, "WORDS": True, "SCALAR_MULTS": 2, "num_warps": 8},
    "tmwcb": {"MAGIC": True, "VT": True, "PREFETCH": 2, "WORDS": True, "SCALAR_MULTS": 2},
    "tmwhcb": {"MAGIC": True, "VT": True, "PREFETCH": 2, "WORDS": True, "SUB": 2, "SCALAR_MULTS": 2},
    "tmwhs": {"MAGIC": True, "VT": True, "PREFETCH": True, "WORDS": True, "SUB": 2, "SCALAR_MULTS": True},
    # tmwhb capped at 168 registers: at D = 128 it needs 193, so 2 programs share an SM; at
    # 168 three fit, and offline sm_90 compilation shows no spills (benchmarks/aot_registers.py)
    "tmwhb3": {"MAGIC": True, "VT": True, "PREFETCH": True, "WORDS": True, "SUB": 2, "SCALAR_MULTS": 2, "maxnreg": REGS_FOR_THREE},
    # tmwhb and tmwhb3 with the work dealt out evenly over one wave (_split_kernel_balanced)
    "tmwhbb": {"MAGIC": True, "VT": True, "PREFETCH": True, "WORDS": True, "SUB": 2, "SCALAR_MULTS": 2, "balanced": True},
    "tmwhb3b": {"MAGIC": True, "VT": True, "PREFETCH": True, "WORDS": True, "SUB": 2, "SCALAR_MULTS": 2,
                "maxnreg": REGS_FOR_THREE, "balanced": True},
}
#: launch options a variant may set (the rest of its entries are kernel constexprs)
LAUNCH_KEYS = ("num_warps", "maxnreg", "balanced")
#: the CUDA split kernel (kernels/cuda_decode.py): not a Triton variant, but chosen the same way
CUDA_VARIANT = "cuda"
#: decode_attention's default: the CUDA kernel where it runs (cuda_decode.unsupported), else
#: DEFAULT_VARIANT
AUTO_VARIANT = "auto"
#: the CUDA kernel's split count fills every SM with the programs one SM holds at once
#: (cuda_decode.resident_per_sm), once, or twice (CUDA_TWO_WAVES) where an SM holds at most
#: CUDA_TWO_WAVES_UP_TO of them, with at least CUDA_MIN_BLOCKS blocks per split. Runs 86-87
#: (docs/BENCHMARKS.md) timed 1 and 2 waves with 2-16 blocks at least, on both shapes, k2v2 and
#: k4v4, batches 1-64 at 32k: one wave and 4 blocks was the fastest or within 4% of it, except
#: k4v4 at D = 128 (6 programs per SM), which ran 4-7% faster with two waves at 32-64 rows and
#: within 1% at 1-8 (runs 107-108); k2v2 at D = 128 (8 per SM) ran 7% slower with two at 8
#: rows and within 2% at 1, 32 and 64 (run 107).
CUDA_WAVES = 1
CUDA_TWO_WAVES = 2
CUDA_TWO_WAVES_UP_TO = 6
CUDA_MIN_BLOCKS = 4
#: tokens on the MMA rows, codes unpacked from 32-bit words, half-block steps, prefetch. On the
#: H100 at 32k (docs/BENCHMARKS.md run 34) it is 1.1-1.8x faster than hilo at batches 1-64 on
#: both benchmark shapes, passes every kernel test, and in vLLM gave hilo's greedy tokens
#: (run 33) and the PyTorch path's 250 of 250 (run 34). "hilo", the default before, stays
#: as the reference (KVARN_DECODE_VARIANT=hilo).
DEFAULT_VARIANT = "tmwhb"


def resolve_variant(lay: KernelLayout, gqa: int, device: torch.device) -> str:
    """AUTO_VARIANT's choice: the CUDA split kernel where it runs, else DEFAULT_VARIANT. On the
    H100 at 32k it is 2.7-4.8x faster than tmwhb at 32-64 rows (docs/BENCHMARKS.md run 88)."""
    return CUDA_VARIANT if cuda_decode.unsupported(lay, gqa, device) is None else DEFAULT_VARIANT


def split_kernel_for(variant: str) -> triton.runtime.jit.JITFunction:
    """The split kernel that runs `variant` (a key of VARIANTS)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)} or {CUDA_VARIANT}")
    if is_balanced(variant):
        return _split_kernel_balanced
    return _split_kernel_tm if variant.startswith("tm") else _split_kernel_joined


def is_balanced(variant: str) -> bool:
    """Whether `variant` deals its work out evenly (_split_kernel_balanced): its split
    count is then the number of programs per KV head, not per row."""
    return variant != CUDA_VARIANT and bool(VARIANTS[variant].get("balanced", False))


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return int(torch.cuda.get_device_properties(device_index).multi_processor_count)


def programs_per_sm(variant: str, head_dim: int) -> int:
    """How many split programs per SM `choose_splits` aims for (H100, 32k context; runs 33-34
    in docs/BENCHMARKS.md). hilo is latency-bound with ~4 resident programs per SM and gains
    from ~8 per SM (shorter programs). The tm variants keep more bytes in flight per program
    (prefetch), so extra splits only add per-program work (the query rotation, a [16, D]
    float32 partial, more partials to merge): about one wave of resident programs is best,
    i.e. what their registers allow, 3 per SM at D = 64 (tmwhb: 135 registers) and 2 at
    D = 128 (192). Measured for tmwhb at 32k: Qwen3-4B shape B=1 75.8 us with 33 splits
    (one wave) against 100.1 with 66 and 146.2 with 132; SmolLM2 shape B=32 254-261 us with
    5-11 splits against 406.8 with 2 (under half a wave). Run 34 timed half and twice the
    counts this gives, at batches 1-64 on both shapes: none was more than 1.5% faster. A
    variant capped at REGS_FOR_THREE registers (tmwhb3) aims at 3 per SM at D = 128 too."""
    if variant.startswith("tm"):
        capped = int(VARIANTS[variant].get("maxnreg", 256)) <= REGS_FOR_THREE  # type: ignore[call-overload]
        return 3 if head_dim <= 64 or capped else 2
    return 8


def choose_splits(batch: int, kv_heads: int, max_blocks: int, num_sms: int, per_sm: int) -> int:
    """Splits per (sequence, KV head): about `per_sm` programs per SM (programs_per_sm), at
    least 2 blocks per split."""
    if max_blocks <= 2:
        return 1
    want = math.ceil(per_sm * num_sms / max(1, batch * kv_heads))
    splits = max(1, min(want, max_blocks // 2))
    # a power of two: the count is a kernel constant, so this bounds the compiled versions
    # (as a sequence grows) to a handful that a warm-up meets
    return 1 << (splits.bit_length() - 1)


def cuda_splits(batch: int, kv_heads: int, max_blocks: int, num_sms: int, resident: int,
                min_blocks: int = CUDA_MIN_BLOCKS) -> int:
    """Splits per (sequence, KV head) for the CUDA kernel: one wave of `resident` programs on
    every SM (two where `resident` is CUDA_TWO_WAVES_UP_TO or less), at least `min_blocks`
    blocks per split (CUDA_MIN_BLOCKS of 128 tokens: twice as many of 64), then as few splits as
    give the same blocks per split (so no split is left without a block: with 255 blocks, 63
    splits of 5 leave 12 empty, 51 do the same work). Any count, not a power of two: for this
    kernel it is the grid's depth, not a compiled constant."""
    waves = CUDA_TWO_WAVES if resident <= CUDA_TWO_WAVES_UP_TO else CUDA_WAVES
    wave = max(1, waves * resident * num_sms // max(1, batch * kv_heads))
    splits = min(wave, -(-max_blocks // min_blocks))
    per = -(-max_blocks // max(1, splits))
    return max(1, -(-max_blocks // per))


def default_splits(variant: str, quantizer: Quantizer, gqa: int, batch: int, kv_heads: int, max_blocks: int,
                   device: torch.device) -> int:
    """decode_attention's split count when none is given (a balanced variant: programs per
    KV head). It depends only on the shapes, so a CUDA graph's count stays fixed."""
    lay = kernel_layout(quantizer.layout)
    sms = _num_sms(device.index or 0) if device.type == "cuda" else 4
    if variant == CUDA_VARIANT:
        gp = max(16, triton.next_power_of_2(gqa))
        resident = cuda_decode.resident_per_sm(lay, quantizer.layout, gqa, gp, device.index or 0)
        min_blocks = max(1, CUDA_MIN_BLOCKS * 128 // lay.block_size)  # the tokens per split runs 86-87 timed
        return cuda_splits(batch, kv_heads, max_blocks, sms, resident, min_blocks)
    per_sm = programs_per_sm(variant, lay.head_dim)
    if is_balanced(variant):
        return balanced_programs(kv_heads, sms, per_sm)
    return choose_splits(batch, kv_heads, max_blocks, sms, per_sm)


def balanced_programs(kv_heads: int, num_sms: int, per_sm: int) -> int:
    """Programs per KV head of a balanced variant: one wave, `per_sm` (programs_per_sm) on
    every SM, whatever the batch and context lengths."""
    return max(1, per_sm * num_sms // kv_heads)


def decode_attention(
    quantizer: Quantizer,
    query: torch.Tensor,
    records: torch.Tensor,
    block_table: torch.Tensor,
    num_blocks: torch.Tensor,
    side_k: torch.Tensor | None = None,
    side_v: torch.Tensor | None = None,
    side_slots: torch.Tensor | None = None,
    side_lens: torch.Tensor | None = None,
    scale: float | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    workspace: tuple[torch.Tensor, torch.Tensor] | None = None,
    num_warps: int = 4,
    num_stages: int = 3,
    variant: str = AUTO_VARIANT,
    deterministic: bool = False,
) -> torch.Tensor:
    """Attention of one query token per sequence over its quantized blocks and 16-bit slots.

    query [B, Hq, D] (unrotated, model dtype); records [num_blocks, Hkv, record_bytes] uint8;
    block_table [B, >= max(num_blocks)] int32 (row b lists sequence b's quantized blocks, in
    any order: decode attention has no mask); num_blocks [B] int32. 16-bit tokens: side_k/v
    [num_slots, Hkv, G, D] in the rotated domain (kvarn's staging slots), side_slots and
    side_lens [B, S] int32 (slot -1 = none; the first side_lens tokens of the slot count).
    Returns out [B, Hq, D] in query's dtype (unrotated).

    With kvarn_cli.kvcache (issue 4): records = LayerCache.records, side_k/side_v =
    LayerCache.slot_k/slot_v, side_slots[b] = (sink slot, tail slot) with side_lens = (G or
    0, tokens in the tail, the step's own token included once written), and block_table[b]
    = the sequence's flushed blocks minus the one whose 16-bit sink copy is in a slot.
    Pass preallocated `out` and `workspace` (and a fixed `num_splits`) under CUDA graphs.
    For a balanced variant (is_balanced) `num_splits` is the number of programs per KV head
    (default balanced_programs) and the workspace holds kv_heads * (num_splits + B) partials.
    The cuda variant's one-launch form (head_dim 64) deals blocks out to its splits as they
    ask, so identical calls may round differently; `deterministic` gives fixed ranges
    (cuda_decode.split). Every other path is deterministic either way.
    """
    lay = kernel_layout(quantizer.layout)
    batch, q_heads, d = query.shape
    kv_heads = records.shape[1]
    if d != lay.head_dim or q_heads % kv_heads:
        raise ValueError(f"query [B, Hq, {lay.head_dim}] with Hq a multiple of {kv_heads}, got {tuple(query.shape)}")
    if records.dtype != torch.uint8 or records.shape[2] != lay.record_bytes or records.stride(2) != 1:
        raise ValueError(f"records must be uint8 [num_blocks, Hkv, {lay.record_bytes}] with a contiguous last dim")
    if query.stride(2) != 1:
        raise ValueError("query needs a contiguous last dimension")
    gqa = q_heads // kv_heads
    gp = max(16, triton.next_power_of_2(gqa))
    if variant == AUTO_VARIANT:
        variant = resolve_variant(lay, gqa, query.device)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qk_scale = scale * LOG2E / math.sqrt(d)  # 1/sqrt(D): the +-1 Hadamard's normalization
    balanced = is_balanced(variant)
    cuda = variant == CUDA_VARIANT
    if cuda and (reason := cuda_decode.unsupported(lay, gqa, query.device)) is not None:
        raise ValueError(f"the cuda decode variant {reason}")
    if num_splits is None:
        num_splits = default_splits(variant, quantizer, gqa, batch, kv_heads, block_table.shape[1], query.device)
    parts = kv_heads * (num_splits + batch) if balanced else batch * kv_heads * num_splits
    if workspace is None:
        ws_acc = torch.empty(parts * gp * d, dtype=torch.float32, device=query.device)
        ws_ml = torch.empty(parts * 2 * gp, dtype=torch.float32, device=query.device)
    else:
        ws_acc, ws_ml = workspace
        if ws_acc.numel() < parts * gp * d or ws_ml.numel() < parts * 2 * gp:
            raise ValueError(f"workspace too small for {parts} partials of [{gp}, {d}]")
    if out is None:
        out = torch.empty_like(query)
    use_fp16 = dot_in_fp16(query.device)
    dt = tl.float16 if use_fp16 else tl.bfloat16
    h = signed_hadamard(d, query.device, torch.float16 if use_fp16 else torch.bfloat16)
    if cuda:
        split_side = None
        if side_k is not None and cuda_decode.slots_in_split(lay):
            assert side_v is not None and side_slots is not None and side_lens is not None
            split_side = (side_k, side_v, side_slots, side_lens)
            side_k = side_v = side_slots = side_lens = None  # the split attends to them: the reduce kernel only merges
        fused = cuda_decode.split(lay, quantizer.layout, query, h, records, block_table, num_blocks, split_side,
                                  ws_acc, ws_ml, qk_scale, num_splits, gp, dt, out, deterministic)
        if not fused:
            _launch_reduce(lay, query, h, out, ws_acc, ws_ml, side_k, side_v, side_slots, side_lens, qk_scale,
                           num_blocks, num_splits, gp, dt, kv_heads, False, 1)
        return out
    _launch_triton_split(variant, lay, query, h, records, block_table, num_blocks, ws_acc, ws_ml,
                         qk_scale, num_splits, gp, dt, num_warps, num_stages)
    flags = dict(VARIANTS[variant])
    _launch_reduce(lay, query, h, out, ws_acc, ws_ml, side_k, side_v, side_slots, side_lens, qk_scale,
                   num_blocks, num_splits, gp, dt, kv_heads, balanced, int(flags.get("SUB", 1)))  # type: ignore[call-overload]
    return out


def _launch_triton_split(variant: str, lay: KernelLayout, query: torch.Tensor, h: torch.Tensor, records: torch.Tensor,
                         block_table: torch.Tensor, num_blocks: torch.Tensor, ws_acc: torch.Tensor,
                         ws_ml: torch.Tensor, qk_scale: float, num_splits: int, gp: int, dt: Any,
                         num_warps: int, num_stages: int) -> None:
    batch, q_heads, d = query.shape
    kv_heads = records.shape[1]
    gqa = q_heads // kv_heads
    balanced = is_balanced(variant)
    kernel = split_kernel_for(variant)
    flags = dict(VARIANTS[variant])
    flags.pop("balanced", None)
    bp = triton.next_power_of_2(batch)
    table_args = (records, records.stride(0), records.stride(1), block_table, block_table.stride(0), num_blocks)
    consts = dict(GQA=gqa, GP=gp, D=d, G=lay.block_size, K_BITS=lay.k_bits, V_BITS=lay.v_bits,
                  DT=dt, num_warps=num_warps, **lay.args())
    if balanced:
        args = (query, query.stride(0), query.stride(1), h, *table_args, batch, ws_acc, ws_ml, qk_scale)
        consts["BP"] = bp
        grid: tuple[int, ...] = (num_splits, kv_heads)
    else:
        args = (query, query.stride(0), query.stride(1), h, *table_args, ws_acc, ws_ml, qk_scale)
        grid = (batch, kv_heads, num_splits)
    consts.update(flags)  # a variant's num_warps overrides the argument
    try:
        kernel[grid](*args, num_stages=num_stages, **consts)
    except triton.runtime.errors.OutOfResources:
        # software pipelining buffers too large for shared memory on this shape: go unpipelined
        kernel[grid](*args, num_stages=1, **consts)


def _launch_reduce(lay: KernelLayout, query: torch.Tensor, h: torch.Tensor, out: torch.Tensor,
                   ws_acc: torch.Tensor, ws_ml: torch.Tensor, side_k: torch.Tensor | None,
                   side_v: torch.Tensor | None, side_slots: torch.Tensor | None, side_lens: torch.Tensor | None,
                   qk_scale: float, num_blocks: torch.Tensor, num_splits: int, gp: int, dt: Any,
                   kv_heads: int, balanced: bool, sub: int) -> None:
    """The merge launch (_reduce_kernel) over the partials of any split kernel."""
    batch, q_heads, d = query.shape
    gqa = q_heads // kv_heads
    if side_k is None:
        num_side = 0
        side_k = side_v = query  # never read
        side_slots = side_lens = num_blocks.view(-1, 1)
        strides = (0, 0, 0)
    else:
        assert side_v is not None and side_slots is not None and side_lens is not None
        num_side = side_slots.shape[1]
        if side_k.stride() != side_v.stride() or side_k.stride(3) != 1:
            raise ValueError("side_k and side_v need the same strides and a contiguous last dim")
        strides = (side_k.stride(0), side_k.stride(1), side_k.stride(2))
    assert side_slots is not None and side_lens is not None
    _reduce_kernel[(batch, kv_heads)](
        query, query.stride(0), query.stride(1), h, out, out.stride(0), out.stride(1),
        ws_acc, ws_ml,
        side_k, side_v, *strides, side_slots, side_lens, side_slots.stride(0),
        qk_scale, 1.0 / math.sqrt(d), num_blocks, num_splits,
        GQA=gqa, GP=gp, D=d, G=lay.block_size, NUM_SIDE=num_side, DT=dt,
        BALANCED=balanced, SUB=sub if balanced else 1, BP=triton.next_power_of_2(batch) if balanced else 1,
        # the tile merge only where the launch reads no slot; 16 or 32 wide: two compiled forms
        TILE_PARTS=0 if num_side else (16 if num_splits <= 16 else 32),
        num_warps=4, num_stages=1,
    )
