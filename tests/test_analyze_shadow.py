"""kvarn_cli.analyze.shadow_check: the expected-fidelity summary `kvarn run --shadow-check` prints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MODEL = Path(os.environ.get("KVARN_TEST_MODEL", REPO / "models" / "smollm2-135m"))
DATA = Path(os.environ.get("KVARN_DATA", REPO.parent / "shared" / "data"))

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(
        not (MODEL / "config.json").is_file(),
        reason=f"SmolLM2 test model not found at {MODEL} (set KVARN_TEST_MODEL or run `make test-model`)",
    ),
    pytest.mark.skipif(not (DATA / "gsm8k_test.jsonl").is_file(), reason=f"GSM8K not found in {DATA} (set KVARN_DATA)"),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """2 shared cores: see test_analyze_model."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def gsm8k_texts() -> list[str]:
    """Two GSM8K questions with their worked answers: ~100-200 tokens each."""
    rows = [json.loads(line) for line in (DATA / "gsm8k_test.jsonl").read_text(encoding="utf-8").splitlines()[:2]]
    return [r["question"] + "\n" + r["answer"] for r in rows]


def test_shadow_check_summary(gsm8k_texts: list[str]) -> None:
    from kvarn_cli.analyze import shadow_check

    # Each text is extended by 60 greedy tokens so that every text has positions past 2 blocks.
    got = shadow_check(str(MODEL), gsm8k_texts, "k2v2", block=64, device="cpu", continue_tokens=60)
    assert set(got) >= {"preset", "kl_mean", "kl_p99", "top1_agreement", "scored_positions", "texts", "tokens"}
    assert got["preset"] == "k2v2" and got["texts"] == 2 and got["block"] == 64
    assert got["scored_positions"] == sum(max(0, n - 2 * 64) for n in got["tokens_per_text"]) > 0
    assert got["kl_mean"] > 0.0
    assert 0.0 < got["top1_agreement"] <= 1.0


def test_shadow_check_scores_nothing_on_texts_shorter_than_two_blocks() -> None:
    from kvarn_cli.analyze import shadow_check

    got = shadow_check(str(MODEL), ["A short prompt."], "k2v2", block=64, device="cpu")
    assert got["scored_positions"] == 0
    assert got["kl_mean"] is None and got["top1_agreement"] is None


def test_shadow_check_rejects_an_unknown_preset() -> None:
    from kvarn_cli.analyze import shadow_check
    from kvarn_cli.errors import InputError

    with pytest.raises(InputError, match="unknown preset 'k3v3'"):
        shadow_check(str(MODEL), ["text"], "k3v3", device="cpu")
