"""The dequantize-into-rows kernel (continued prefill chunks' history blocks, laid down for
FlashAttention in one launch) against the quantizer's PyTorch dequantization. Under
TRITON_INTERPRET=1 without CUDA."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from kvarn_cli.kernels import make_quantizer  # noqa: E402
from kvarn_cli.kernels.triton_dequant import dequantize_rows  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def paged_records(preset: str, blocks: int, heads: int, d: int, G: int, seed: int) -> tuple:
    """A quantizer and [blocks, heads, record_bytes] records of random tiles (K with a
    per-channel offset, V with a per-token one: the structure VarN's scales are for)."""
    qz = make_quantizer(preset, head_dim=d, block_size=G)
    gen = torch.Generator().manual_seed(seed)
    n = blocks * heads
    k = torch.randn(n, G, d, generator=gen) * 2 + torch.randn(n, 1, d, generator=gen) * 4
    v = torch.randn(n, G, d, generator=gen) + torch.randn(n, G, 1, generator=gen) * 3
    recs = qz.quantize_batch(k, v).view(blocks, heads, qz.record_bytes).to(DEVICE)
    return qz, recs


@settings(max_examples=6, deadline=None)
@given(preset=st.sampled_from(["k2v2", "k4v4", "k4v2"]), heads=st.integers(1, 3), seed=st.integers(0, 99),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_rows_hold_the_quantizers_rotated_dequantization(preset: str, heads: int, seed: int, dtype: torch.dtype) -> None:
    G = d = 64
    qz, recs = paged_records(preset, 5, heads, d, G, seed)
    gen = torch.Generator().manual_seed(seed)
    # blocks may repeat (a shared prefix); destinations are disjoint runs of G rows, out of order
    blocks = torch.randint(0, 5, (4,), generator=gen)
    dest = torch.randperm(6, generator=gen)[:4] * G + 3
    rows = 6 * G + 3
    k_out = torch.full((rows, heads, d), 7.0, dtype=dtype, device=DEVICE)
    v_out = torch.full_like(k_out, -7.0)

    dequantize_rows(qz, recs, blocks.to(DEVICE), dest.to(DEVICE), k_out, v_out)

    want_k, want_v = qz.dequantize_batch(recs[blocks.to(DEVICE)].reshape(-1, qz.record_bytes).cpu(), rotated=True)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    written = torch.zeros(rows, dtype=torch.bool)
    for j in range(4):
        span = slice(int(dest[j]), int(dest[j]) + G)
        got_k = k_out[span].float().cpu().transpose(0, 1)  # [heads, G, d]
        got_v = v_out[span].float().cpu().transpose(0, 1)
        torch.testing.assert_close(got_k, want_k[j * heads : (j + 1) * heads], rtol=tol, atol=tol)
        torch.testing.assert_close(got_v, want_v[j * heads : (j + 1) * heads], rtol=tol, atol=tol)
        written[span] = True
    assert bool((k_out[~written.to(DEVICE)] == 7.0).all()) and bool((v_out[~written.to(DEVICE)] == -7.0).all())


def test_dequantize_rows_refuses_what_it_cannot_write() -> None:
    qz, recs = paged_records("k2v2", 2, 2, 64, 64, 0)
    blocks = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    out = torch.zeros(64, 2, 64, device=DEVICE)
    with pytest.raises(ValueError, match="k_out must be"):
        dequantize_rows(qz, recs, blocks, blocks, torch.zeros(64, 3, 64, device=DEVICE), out)
    with pytest.raises(ValueError, match="records must be"):
        dequantize_rows(qz, recs.float(), blocks, blocks, out, out.clone())
    with pytest.raises(ValueError, match="one length"):
        dequantize_rows(qz, recs, blocks, torch.zeros(2, dtype=torch.int64, device=DEVICE), out, out.clone())
    with pytest.raises(ValueError, match="KVarN"):
        dequantize_rows(make_quantizer("fp8", head_dim=64, block_size=64), recs, blocks, blocks, out, out.clone())
