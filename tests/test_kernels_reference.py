"""The fast batched quantizers against the float64 literal transcription of the method."""

from __future__ import annotations

import pytest
import torch
from kernels_reference import codes_from_stored, paper_side, paper_tile, sylvester
from kv_tiles import key_like, value_like

from kvarn_cli.kernels import make_quantizer
from kvarn_cli.kernels.packing import unpack_codes
from kvarn_cli.kernels.quantizers import AffineQuantizer

AFFINE = ["k2v2", "k4v2", "k4v4", "kivi2", "kivi4", "hadamard2"]


def _case(name: str, scale_dtype: str, d: int, g: int, seed: int) -> tuple[AffineQuantizer, torch.Tensor, torch.Tensor, dict]:
    qz = make_quantizer(name, head_dim=d, block_size=g, scale_dtype=scale_dtype)
    assert isinstance(qz, AffineQuantizer)
    k = key_like(2, g, d, seed, magnitude=2.0)
    v = value_like(2, g, d, seed, magnitude=0.3)
    fields = qz.read_fields(qz.quantize_batch(k, v))
    return qz, k, v, fields


def _our_codes(qz: AffineQuantizer, fields: dict, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g, d = qz.block_size, qz.head_dim
    kq = unpack_codes(fields["k_codes"][i], qz.spec.k_bits).reshape(g, d).T.double()  # rows = channels
    vq = unpack_codes(fields["v_codes"][i], qz.spec.v_bits).reshape(d, g).T.double()  # stored channel-major
    return kq, vq


def _rotated(qz: AffineQuantizer, x: torch.Tensor) -> torch.Tensor:
    return x.double() @ sylvester(qz.head_dim) if qz.spec.rotate else x.double()


@pytest.mark.parametrize("name", AFFINE)
@pytest.mark.parametrize("d,g", [(64, 128), (128, 64)])
def test_codes_match_reference_given_the_stored_scales(name: str, d: int, g: int) -> None:
    """fp8 storage: from the record's stored scales, float64 RTN gives the same codes
    (float32 vs float64 can differ only for values within ~1e-6 of a rounding boundary),
    and the stored column scales are the reference VarN scales rounded to e4m3."""
    qz, k, v, fields = _case(name, "fp8", d, g, seed=d + g)
    f = {n: t.double() for n, t in fields.items()}
    for i in range(k.shape[0]):
        kq, vq = _our_codes(qz, fields, i)
        k_x = _rotated(qz, k[i]).T  # [D, G]
        v_x = _rotated(qz, v[i])  # [G, D]
        if qz.spec.varn:
            k_c = f["k_token_scale"][i] * f["k_token_scale_mult"][i]
            v_c = f["v_channel_scale"][i] * f["v_channel_scale_mult"][i]
            ref_k_c = paper_side(k_x, qz.spec.k_bits, True)["c"]
            ref_v_c = paper_side(v_x, qz.spec.v_bits, True)["c"]
            # nearest e4m3 (normal range): relative error <= 1/16
            assert torch.allclose(k_c, ref_k_c, rtol=1 / 16 + 1e-4)
            assert torch.allclose(v_c, ref_v_c, rtol=1 / 16 + 1e-4)
        else:
            k_c = torch.ones(g, dtype=torch.float64)
            v_c = torch.ones(d, dtype=torch.float64)
        k_ref = codes_from_stored(
            k_x / k_c[None, :], f["k_scale"][i] * f["k_scale_mult"][i], f["k_zero"][i] * f["k_zero_mult"][i], qz.spec.k_bits
        )
        v_ref = codes_from_stored(
            v_x / v_c[None, :], f["v_scale"][i] * f["v_scale_mult"][i], f["v_zero"][i] * f["v_zero_mult"][i], qz.spec.v_bits
        )
        for ours, ref in ((kq, k_ref), (vq, v_ref)):
            diff = (ours - ref).abs()
            assert diff.max() <= 1
            assert (diff > 0).double().mean() < 1e-3


@pytest.mark.parametrize("name", AFFINE)
def test_fp16_storage_is_close_to_the_exact_paper_algorithm(name: str) -> None:
    """With fp16 scales the only departures from the unrounded float64 algorithm are the
    rounding of c (2^-11) and of the step (<= 2^-10, rounded up): a few codes move by one,
    and the reconstruction error stays that of the paper's."""
    qz, k, v, fields = _case(name, "fp16", 64, 128, seed=3)
    k_hat, v_hat = qz.dequantize_batch(qz.quantize_batch(k, v))
    for i in range(k.shape[0]):
        kq, vq = _our_codes(qz, fields, i)
        ref_k = paper_side(_rotated(qz, k[i]).T, qz.spec.k_bits, qz.spec.varn)["codes"]
        ref_v = paper_side(_rotated(qz, v[i]), qz.spec.v_bits, qz.spec.varn)["codes"]
        for ours, ref, bits in ((kq, ref_k, qz.spec.k_bits), (vq, ref_v, qz.spec.v_bits)):
            diff = (ours - ref).abs()
            assert diff.max() <= 1
            # codes within (2^bits - 1) * 2^-10 of a rounding boundary may move
            assert (diff > 0).double().mean() < 4 * (2**bits - 1) * 2.0**-10
        pk, pv = paper_tile(k[i], v[i], qz.spec.k_bits, qz.spec.v_bits, qz.spec.rotate, qz.spec.varn)
        for x, ours, paper in ((k[i], k_hat[i], pk), (v[i], v_hat[i], pv)):
            ours_err = float((ours.double() - x.double()).norm())
            paper_err = float((paper - x.double()).norm())
            assert ours_err <= 1.03 * paper_err + 1e-6
            assert float((ours.double() - paper).norm()) <= 0.25 * paper_err


def test_varn_is_what_distinguishes_kvarn_from_hadamard_rtn() -> None:
    """Same rotation, same RTN axes: without VarN's token scales k2v2 would be hadamard2."""
    k = key_like(1, 128, 64, seed=4)[0]
    v = value_like(1, 128, 64, seed=4)[0]
    pk_varn, _ = paper_tile(k, v, 2, 2, rotate=True, use_varn=True)
    pk_plain, _ = paper_tile(k, v, 2, 2, rotate=True, use_varn=False)
    assert not torch.allclose(pk_varn, pk_plain)
    k2v2 = make_quantizer("k2v2", head_dim=64, block_size=128, scale_dtype="fp16")
    had2 = make_quantizer("hadamard2", head_dim=64, block_size=128, scale_dtype="fp16")
    ours_varn = k2v2.dequantize(k2v2.quantize(k, v))[0].double()
    ours_plain = had2.dequantize(had2.quantize(k, v))[0].double()
    assert (ours_varn - pk_varn).norm() < (ours_varn - pk_plain).norm()
    assert (ours_plain - pk_plain).norm() < (ours_plain - pk_varn).norm()
