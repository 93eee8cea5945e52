import math

import pytest
import torch
from kernels_reference import imb, varn
from kv_tiles import key_like, value_like

from kvarn_cli.kernels.varn import imbalance, varn_scales


@pytest.mark.parametrize(
    "tile",
    [
        key_like(1, 128, 64, seed=1)[0].T,  # K layout [D, G]
        key_like(1, 64, 128, seed=2, magnitude=5.0)[0].T,
        value_like(1, 128, 64, seed=3)[0],  # V layout [G, D]
        value_like(1, 128, 128, seed=4, magnitude=2.0)[0],
        torch.randn(64, 64, generator=torch.Generator().manual_seed(5)),
    ],
)
def test_matches_float64_reference(tile: torch.Tensor) -> None:
    sc, sr = varn_scales(tile)
    ref_sc, ref_sr = varn(tile)
    assert sc.shape == (1, tile.shape[1]) and sr.shape == (tile.shape[0], 1)
    assert torch.allclose(sc.double(), ref_sc, rtol=2e-4)
    assert torch.allclose(sr.double(), ref_sr, rtol=2e-4)
    assert math.isclose(float(imbalance(tile)), imb(tile), rel_tol=1e-4)


def test_batched_tiles_are_independent() -> None:
    tiles = key_like(5, 128, 64, seed=9).transpose(1, 2)
    sc, sr = varn_scales(tiles)
    for i in range(5):
        one_sc, one_sr = varn_scales(tiles[i])
        assert torch.allclose(sc[i], one_sc, rtol=1e-5) and torch.allclose(sr[i], one_sr, rtol=1e-5)


def test_scales_stay_within_the_clamps() -> None:
    tiles = torch.cat([key_like(2, 128, 64, seed=3, magnitude=m).transpose(1, 2) for m in (1e-4, 1.0, 1e4)])
    sc, sr = varn_scales(tiles)
    for s in (sc, sr):
        assert float(s.min()) >= math.exp(-0.3) * (1 - 1e-6)
        assert float(s.max()) <= math.exp(10.0) * (1 + 1e-6)


def test_varn_lowers_the_imbalance_or_keeps_identity() -> None:
    tile = key_like(1, 128, 64, seed=11)[0].T
    sc, sr = varn_scales(tile)
    assert float(imbalance(tile / sc / sr)) <= float(imbalance(tile)) * (1 + 1e-6)
    assert float(imbalance(tile / sc / sr)) < 0.5 * float(imbalance(tile))  # this tile is far from balanced


def test_clamp_floor_makes_varn_scale_dependent() -> None:
    """Large tiles: scaling X by 2 only doubles the column scales (the normalized tile is the
    same). Tiny tiles: the -0.3 floor stops VarN, so they are not normalized at all."""
    base = value_like(1, 128, 64, seed=21, magnitude=1.0)[0]
    big = base * 50.0
    sc1, sr1 = varn_scales(big)
    sc2, sr2 = varn_scales(2 * big)
    assert torch.allclose(big / sc1 / sr1, 2 * big / sc2 / sr2, rtol=1e-4, atol=1e-5)

    tiny = base * 1e-3
    sc, sr = varn_scales(tiny)
    # every log-scale is clamped at the floor (or VarN kept the identity): a uniform factor
    assert torch.allclose(sc, sc.flatten()[0].expand_as(sc)) and torch.allclose(sr, sr.flatten()[0].expand_as(sr))
    assert float(sc.flatten()[0]) in (pytest.approx(1.0), pytest.approx(math.exp(-0.3)))
    normalized = tiny / sc / sr
    assert float(normalized.std()) < 0.01  # nowhere near unit variance


def test_unbiased_std_matches_torch_std() -> None:
    from kvarn_cli.kernels.varn import unbiased_std

    x = key_like(3, 128, 64, seed=17, magnitude=20.0)
    for dim in (-1, -2):
        assert torch.allclose(unbiased_std(x, dim), x.double().std(dim=dim, keepdim=True).float(), rtol=1e-5)
