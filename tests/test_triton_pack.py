"""The row-copy and row-rotation kernels of continued prefill chunks (kernels.triton_pack)
against PyTorch indexing and float32 matmuls. Under TRITON_INTERPRET=1 without CUDA."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from kvarn_cli.kernels.hadamard import hadamard_matrix  # noqa: E402
from kvarn_cli.kernels.triton_pack import copy_rows, rotate_rows  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@settings(max_examples=8, deadline=None)
@given(n=st.integers(0, 40), heads=st.integers(1, 3), seed=st.integers(0, 99),
       src_dtype=st.sampled_from([torch.float32, torch.bfloat16]), out_dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_copy_rows_puts_each_source_row_at_its_destination(
    n: int, heads: int, seed: int, src_dtype: torch.dtype, out_dtype: torch.dtype,
) -> None:
    G, d, slots, rows = 16, 64, 5, 50
    gen = torch.Generator().manual_seed(seed)
    src_k = torch.randn(slots, heads, G, d, generator=gen).to(src_dtype)
    src_v = torch.randn(slots, heads, G, d, generator=gen).to(src_dtype)
    index = torch.randint(0, slots, (n,), generator=gen)
    offset = torch.randint(0, G, (n,), generator=gen)
    dest = torch.randperm(rows, generator=gen)[:n]  # distinct destinations, any order
    out_k = torch.full((rows, heads, d), 5.0, dtype=out_dtype)
    out_v = torch.full_like(out_k, -5.0)
    got_k, got_v = out_k.to(DEVICE), out_v.to(DEVICE)

    copy_rows(src_k.to(DEVICE), src_v.to(DEVICE), index.to(DEVICE), offset.to(DEVICE), dest.to(DEVICE), got_k, got_v)

    out_k[dest] = src_k[index, :, offset].to(out_dtype)
    out_v[dest] = src_v[index, :, offset].to(out_dtype)
    assert torch.equal(got_k.cpu(), out_k) and torch.equal(got_v.cpu(), out_v)  # untouched rows included


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 40), heads=st.integers(1, 4), d=st.sampled_from([64, 128]), seed=st.integers(0, 99),
       gather=st.booleans(), scatter=st.booleans(), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_rotate_rows_matches_a_float32_matmul(
    n: int, heads: int, d: int, seed: int, gather: bool, scatter: bool, dtype: torch.dtype,
) -> None:
    gen = torch.Generator().manual_seed(seed)
    total = n + 7
    src = (torch.randn(total, heads, d, generator=gen) * 3).to(dtype)
    # a strided source, as vLLM's query/key/value views of one projection are
    wide = torch.zeros(total, heads + 2, d, dtype=dtype)
    wide[:, 1 : heads + 1] = src
    view = wide[:, 1 : heads + 1]
    matrix = hadamard_matrix(d).float().contiguous()
    src_rows = torch.randperm(total, generator=gen)[:n] if gather else None
    dst_rows = torch.randperm(total, generator=gen)[:n] if scatter else None
    dst = torch.full((total, heads, d), 9.0, dtype=dtype) if scatter else None
    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731

    # without src_rows the kernel takes every row of its source, in order
    got = rotate_rows((view if gather else view[:n]).to(DEVICE), dev(src_rows), matrix.to(DEVICE), dev(dst), dev(dst_rows)).cpu()

    picked = src[src_rows] if gather else src[:n]
    want = (picked.float() @ matrix).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: the last bit may round either way
    if scatter:
        assert dst is not None and dst_rows is not None
        expect = dst.clone()
        expect[dst_rows] = want
        torch.testing.assert_close(got.float(), expect.float(), rtol=tol, atol=tol)
    else:
        assert got.shape == (n, heads, d) and got.dtype == dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


def test_rotate_rows_checks_its_arguments() -> None:
    x = torch.zeros(4, 2, 64, device=DEVICE)
    with pytest.raises(ValueError, match="float32"):
        rotate_rows(x, None, torch.eye(64, dtype=torch.float64, device=DEVICE))
    with pytest.raises(ValueError, match="dst_rows needs dst"):
        rotate_rows(x, None, torch.eye(64, device=DEVICE), None, torch.arange(4, device=DEVICE))
    with pytest.raises(ValueError, match="one length"):
        copy_rows(torch.zeros(2, 2, 16, 64), torch.zeros(2, 2, 16, 64), torch.zeros(3, dtype=torch.long),
                  torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long), x.cpu(), x.cpu())
