"""Unit tests of kvarn_cli.analyze.metrics: binning, KL, quantiles, norm errors (no model)."""

from __future__ import annotations

import math

import pytest
import torch

from kvarn_cli.analyze import metrics
from kvarn_cli.analyze.metrics import TextMetrics, choose_bin_size, kl_divergence, summarize


@pytest.mark.parametrize(
    ("tokens", "block", "expected"),
    [
        (8192, 128, 1024),  # long texts: the paper's 1k bins
        (100_000, 128, 1024),  # never larger than 1k
        (4096, 128, 512),  # 4096 // 8 = 512
        (3000, 128, 256),  # 375 -> largest power of two below
        (200, 64, 64),  # never smaller than one block
    ],
)
def test_bin_size_rule(tokens: int, block: int, expected: int) -> None:
    assert choose_bin_size(tokens, block) == expected


def test_kl_matches_torch_and_is_zero_on_equal_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    ref = torch.log_softmax(torch.randn(5, 11, generator=gen), dim=-1)
    other = torch.log_softmax(torch.randn(5, 11, generator=gen), dim=-1)
    expected = torch.nn.functional.kl_div(other, ref, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(kl_divergence(ref, other), expected)
    assert torch.equal(kl_divergence(ref, ref), torch.zeros(5))


def test_binned_mean_handles_nan_and_ragged_texts() -> None:
    a = torch.tensor([1.0, 3.0, math.nan, 5.0, 7.0])  # bins of 2: [1,3] [nan,5] [7]
    b = torch.tensor([2.0, 2.0, 4.0])  # [2,2] [4]
    got = metrics._binned_mean([a, b], bin_size=2, num_bins=4)
    assert got == [pytest.approx(2.0), pytest.approx(4.5), pytest.approx(7.0), None]


def test_quantile_matches_torch() -> None:
    values = torch.randn(1001, generator=torch.Generator().manual_seed(1)).double()
    for q in (0.5, 0.99, 1.0):
        assert metrics._quantile(values, q) == pytest.approx(float(torch.quantile(values, q)))


def test_norm_errors_are_relative_to_the_quantizer_input() -> None:
    rec = TextMetrics(num_layers=1, num_kv_heads=1, num_tokens=4)
    k = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])  # norms 5, 1
    k_hat = torch.tensor([[[6.0, 8.0], [0.5, 0.0]]])  # norms 10, 0.5
    v = torch.ones(1, 2, 2)
    rec.add_norms(2, [(k, v)], [(k_hat, v)])
    assert torch.isnan(rec.key_norm_rel_err[0, 0, :2]).all()  # never quantized
    torch.testing.assert_close(rec.key_norm_rel_err[0, 0, 2:], torch.tensor([1.0, -0.5]))
    torch.testing.assert_close(rec.key_norm_err[0, 0, 2:], torch.tensor([5.0, -0.5]))
    torch.testing.assert_close(rec.value_norm_rel_err[0, 0, 2:], torch.zeros(2))


def test_summary_scores_only_positions_that_see_a_quantized_block() -> None:
    rec = TextMetrics(num_layers=2, num_kv_heads=1, num_tokens=6)
    vocab = 4
    ref = torch.log_softmax(torch.zeros(6, vocab), dim=-1)
    logits = torch.zeros(6, vocab)
    logits[5, 2] = 3.0  # only the last position differs, and its top-1 changes
    attn_ref = torch.zeros(2, 6, 3)
    attn = attn_ref.clone()
    attn[1, 4] = 0.3  # layer 1, position 4: MAE 0.3
    rec.add_outputs(0, attn, attn_ref, torch.log_softmax(logits, -1), ref, torch.tensor([0, 1, 2, 3, 0]))
    s = summarize([rec], first_scored=4, bin_size=2, num_bins=3)
    assert s["scored_positions"] == 2
    kl5 = float(kl_divergence(ref[5:], torch.log_softmax(logits[5:], -1))[0])
    assert s["kl_mean"] == pytest.approx(kl5 / 2)
    assert s["kl_max"] == pytest.approx(kl5)
    assert s["top1_agreement"] == 0.5
    assert s["attn_mae_by_position"] == [0.0, 0.0, pytest.approx(0.3 / 4)]
    assert s["attn_mae_by_layer"] == [0.0, pytest.approx(0.15)]
    # NLL of the actual next token is defined for every position but the last
    assert s["nll_mean"] == pytest.approx(math.log(vocab))
