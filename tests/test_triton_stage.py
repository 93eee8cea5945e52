"""The staging kernel (one launch per layer writes the step's rotated K/V into the 16-bit
slots) against the PyTorch ops it replaces. Under TRITON_INTERPRET=1 without CUDA."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from kvarn_cli.kernels.hadamard import rotation_on  # noqa: E402
from kvarn_cli.kernels.triton_stage import stage_tokens  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _qkv(tokens: int, q_heads: int, kv_heads: int, d: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V as strided views of one fused QKV tensor, the way vLLM's projection leaves them."""
    gen = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(tokens, (q_heads + 2 * kv_heads) * d, generator=gen) * 3 + 1).to(dtype).to(DEVICE)
    k = qkv[:, q_heads * d : (q_heads + kv_heads) * d].view(tokens, kv_heads, d)
    v = qkv[:, (q_heads + kv_heads) * d :].view(tokens, kv_heads, d)
    return k, v


@pytest.mark.parametrize(("d", "kv_heads", "n", "dtype"), [(64, 3, 5, torch.float32), (128, 2, 21, torch.float16), (64, 1, 16, torch.float32)])
def test_stage_tokens_matches_rotate_and_scatter(d: int, kv_heads: int, n: int, dtype: torch.dtype) -> None:
    G, slots_total, T = 16, 8, 40
    key, value = _qkv(T, 2 * kv_heads, kv_heads, d, dtype, seed=n)
    gen = torch.Generator().manual_seed(100 + n)
    tokens = torch.randperm(T, generator=gen)[:n].to(DEVICE)
    # distinct (slot, offset) targets, as a step plan gives them
    cells = torch.randperm(slots_total * G, generator=gen)[:n].to(DEVICE)
    slots, offsets = cells // G, cells % G
    rot = rotation_on(d, DEVICE)
    slot_k = torch.full((slots_total, kv_heads, G, d), 7.0, dtype=dtype, device=DEVICE)
    slot_v = torch.full_like(slot_k, -7.0)
    want_k, want_v = slot_k.clone(), slot_v.clone()
    want_k[slots, :, offsets] = (key[tokens].float() @ rot).to(dtype)
    want_v[slots, :, offsets] = (value[tokens].float() @ rot).to(dtype)

    stage_tokens(key, value, tokens, slots, offsets, slot_k, slot_v)

    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(slot_k, want_k, rtol=tol, atol=tol * 8)
    torch.testing.assert_close(slot_v, want_v, rtol=tol, atol=tol * 8)
    untouched = torch.ones(slots_total * G, dtype=torch.bool, device=DEVICE)
    untouched[cells] = False
    assert bool((slot_k.permute(0, 2, 1, 3).reshape(slots_total * G, -1)[untouched] == 7.0).all())


def test_stage_tokens_skips_rows_without_a_slot() -> None:
    """A CUDA-graph decode batch is padded to a captured size; its padding rows carry slot -1."""
    d, G = 64, 16
    key, value = _qkv(6, 2, 1, d, torch.float32, seed=3)
    slots = torch.tensor([1, -1, 0, -1, 2, -1], device=DEVICE)
    offsets = torch.tensor([3, 0, 5, 0, 0, 0], device=DEVICE)
    tokens = torch.arange(6, device=DEVICE)
    slot_k = torch.full((3, 1, G, d), 7.0, device=DEVICE)
    slot_v = torch.full_like(slot_k, -7.0)
    rot = rotation_on(d, DEVICE)
    stage_tokens(key, value, tokens, slots, offsets, slot_k, slot_v)
    written = torch.zeros(3, G, dtype=torch.bool, device=DEVICE)
    for t in (0, 2, 4):
        s, o = int(slots[t]), int(offsets[t])
        written[s, o] = True
        torch.testing.assert_close(slot_k[s, 0, o], key[t, 0] @ rot, rtol=1e-5, atol=1e-4)
    assert bool((slot_k[:, 0][~written] == 7.0).all()) and bool((slot_v[:, 0][~written] == -7.0).all())


def test_stage_tokens_rejects_mismatched_shapes() -> None:
    key, value = _qkv(4, 2, 1, 64, torch.float32, seed=0)
    slot = torch.zeros(2, 2, 16, 64, device=DEVICE)  # two heads, key has one
    idx = torch.zeros(1, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="key/value must be"):
        stage_tokens(key, value, idx, idx, idx, slot, slot.clone())


@settings(max_examples=12, deadline=None)
@given(log_d=st.integers(4, 8), heads=st.integers(1, 3), n=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_16bit_slots_hold_the_rounded_float32_rotation(log_d: int, heads: int, n: int, seed: int) -> None:
    """16-bit slots are filled on the tensor cores from 16-bit parts of each row: with float32
    keys (more bits than one part holds) the slots must still get the float32 product rounded
    once to the slot dtype, bar near-ties and values that cancel to near zero (float32-level
    error against the inputs' size). One part alone gets about half the values wrong. Head
    dims 16-256: below 32 a program takes all D output channels, above it slices of 32."""
    d, G = 1 << log_d, 16
    gen = torch.Generator().manual_seed(seed)
    key = (torch.randn(n, heads, d, generator=gen) * 3 + 1).to(DEVICE)
    value = torch.randn(n, heads, d, generator=gen).to(DEVICE)
    cells = torch.randperm(3 * G, generator=gen)[:n].to(DEVICE)  # distinct (slot, offset) targets
    slot_k = torch.zeros(3, heads, G, d, dtype=torch.float16, device=DEVICE)
    slot_v = torch.zeros_like(slot_k)
    tokens = torch.arange(n, device=DEVICE)
    stage_tokens(key, value, tokens, cells // G, cells % G, slot_k, slot_v)
    rot = rotation_on(d, DEVICE)
    for slots, x in ((slot_k, key), (slot_v, value)):
        want = (x.float() @ rot).half()
        got = slots[cells // G, :, cells % G]
        # bf16 parts on a GPU carry ~16 bits: about 2% of the values round the other way
        assert int((got != want).sum()) <= max(2, 0.05 * got.numel())
        # hi + lo parts leave a residual of at most 2^-16 |x| per input (bf16 parts, GPU) or
        # 2^-22 |x| (fp16 parts, interpreter); the d terms of a row, each / sqrt(d), bound
        # the error of a product that cancels to near zero by sqrt(d) times that
        residual = 2.0**-16 if DEVICE.type == "cuda" else 2.0**-22
        ulp = torch.finfo(torch.float16).eps * want.float().abs().clamp(min=2**-14)
        tol = ulp + d**0.5 * residual * float(x.abs().max())
        assert bool(((got.float() - want.float()).abs() <= tol).all())
