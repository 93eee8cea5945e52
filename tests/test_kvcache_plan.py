"""kvcache's size arithmetic and `kvarn plan`, without an engine (the engine cross-check is in
test_kvcache_engine.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from kvarn_cli import kvcache
from kvarn_cli.commands.plan import plan
from kvarn_cli.errors import InputError

REPO = Path(__file__).resolve().parents[1]
MODEL = Path(os.environ.get("KVARN_TEST_MODEL", REPO / "models" / "smollm2-135m"))

SMOL = dict(num_layers=30, num_kv_heads=3, head_dim=64, dtype_bytes=2)


def test_bits_map_to_presets_and_presets_are_checked() -> None:
    assert kvcache.BITS_TO_PRESET == {2: "k2v2", 4: "k4v4", 16: "fp16"}
    assert set(kvcache.PRESETS) == {"fp16", "k2v2", "k4v2", "k4v4", "k2v2-g64", "k4v2-g64", "k4v4-g64"}
    with pytest.raises(InputError):
        kvcache.check_preset("k3v3")


def test_bytes_per_token_follow_the_record_layout() -> None:
    from kvarn_cli.kernels import make_quantizer

    assert kvcache.bytes_per_token("fp16", **SMOL) == 30 * 3 * 2 * 64 * 2
    for preset in ("k2v2", "k4v2", "k4v4"):
        rec = make_quantizer(preset, head_dim=64, block_size=128).record_bytes
        per_head = -(-rec // 128)  # a page cell holds record_bytes / G, rounded up
        assert kvcache.bytes_per_token(preset, **SMOL) == 30 * 3 * per_head
    # the record sizes put k2v2 above 6.5x and k4v4 above 3.5x the fp16 capacity
    fp16 = kvcache.bytes_per_token("fp16", **SMOL)
    assert fp16 / kvcache.bytes_per_token("k2v2", **SMOL) >= 6.5
    assert fp16 / kvcache.bytes_per_token("k4v4", **SMOL) >= 3.5
    assert kvcache.bits_per_element("k2v2", head_dim=64) == pytest.approx(8 * kvcache.bytes_per_token("k2v2", **SMOL) / (30 * 3 * 2 * 64))


def test_staging_pool_is_two_16bit_blocks_per_sequence() -> None:
    slot = 30 * 3 * 128 * 64 * 2 * 2
    assert kvcache.staging_bytes("k2v2", **SMOL, max_num_seqs=8) == 16 * slot
    assert kvcache.staging_bytes("fp16", **SMOL, max_num_seqs=8) == 0
    total = 512 << 20
    paged = kvcache.paged_budget("k2v2", **SMOL, total_bytes=total, max_num_seqs=8)
    alloc = kvcache.allocation("k2v2", **SMOL, kv_cache_memory_bytes=paged, max_num_seqs=8)
    assert alloc.total_bytes <= total
    assert total - alloc.total_bytes < alloc.block_bytes  # nothing left that would fit a block


def test_g64_presets_halve_the_staging_per_sequence_and_use_64_token_blocks() -> None:
    for name in ("k2v2", "k4v2", "k4v4"):
        small, big = f"{name}-g64", name
        assert kvcache.staging_bytes(small, **SMOL, max_num_seqs=8) * 2 == kvcache.staging_bytes(big, **SMOL, max_num_seqs=8)
        alloc = kvcache.allocation(small, **SMOL, kv_cache_memory_bytes=64 << 20, max_num_seqs=8)
        assert alloc.block_size == 64
        # the record's scales are spread over half the tokens: a few more bits per element
        assert kvcache.bits_per_element(big, head_dim=64) < alloc.bits_per_element < kvcache.bits_per_element(big, head_dim=64) + 0.5
    # at 1152 tokens per sequence (the e2e benchmark's), 1 GiB runs about 1.4x the sequences at G=64
    def seqs(preset: str) -> int:
        best = 0
        for m in range(1, 400):
            paged = kvcache.paged_budget(preset, **SMOL, total_bytes=1 << 30, max_num_seqs=m)
            alloc = kvcache.allocation(preset, **SMOL, kv_cache_memory_bytes=paged, max_num_seqs=m)
            if paged > 0 and alloc.max_concurrent_seqs(1152, m) >= m:
                best = m
        return best
    assert seqs("k2v2-g64") >= 1.35 * seqs("k2v2")


QWEN3_4B = dict(num_layers=36, num_kv_heads=8, head_dim=128, dtype_bytes=2)


@pytest.mark.parametrize("shape", [SMOL, QWEN3_4B])
def test_sequence_bits_count_the_16bit_sink_and_tail_slots(shape: dict[str, int]) -> None:
    d = shape["head_dim"]
    assert kvcache.sequence_bits("fp16", **shape, seq_len=2048) == 16.0
    for preset, g in (("k2v2", 128), ("k4v4", 128), ("k2v2-g64", 64)):
        paged = kvcache.bits_per_element(preset, head_dim=d)
        for n in (2, 8, 32, 256):
            # whole blocks: the paged bits plus two 16-bit slots of g tokens spread over the sequence
            assert kvcache.sequence_bits(preset, **shape, seq_len=n * g) == pytest.approx(paged + 2 * g * 16 / (n * g))
        # a partly filled last block costs a whole one
        assert kvcache.sequence_bits(preset, **shape, seq_len=g + 1) > kvcache.sequence_bits(preset, **shape, seq_len=2 * g)
    # the 64-token tiles halve the slots: cheaper per sequence at 1k tokens
    assert kvcache.sequence_bits("k2v2-g64", **shape, seq_len=1024) < kvcache.sequence_bits("k2v2", **shape, seq_len=1024)
    with pytest.raises(ValueError):
        kvcache.sequence_bits("k2v2", **shape, seq_len=0)


def test_k2v2_costs_most_of_fp8s_bits_at_1k_tokens_and_a_fifth_of_fp16s_at_32k() -> None:
    """The numbers behind docs/BENCHMARKS.md runs 70-77 on the Qwen3-4B shape."""
    assert 5.5 < kvcache.sequence_bits("k2v2", **QWEN3_4B, seq_len=1152) < 8.0
    assert kvcache.sequence_bits("k2v2", **QWEN3_4B, seq_len=4224) < 3.5
    assert kvcache.sequence_bits("k2v2", **QWEN3_4B, seq_len=32768) < 16 / 5


@pytest.mark.skipif(not (MODEL / "config.json").is_file(), reason=f"test model not found at {MODEL}")
def test_plan_prints_every_preset_from_the_model_config() -> None:
    app = typer.Typer()
    app.command()(plan)
    result = CliRunner().invoke(
        app, ["--model", str(MODEL), "--kv-cache-memory", "256MiB", "--max-model-len", "2048", "--max-num-seqs", "8", "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["shape"] == {"num_layers": 30, "num_kv_heads": 3, "head_dim": 64, "dtype": "bfloat16", "dtype_bytes": 2}
    rows = {r["preset"]: r for r in out["presets"]}
    assert rows["fp16"]["num_blocks"] == (256 << 20) // (30 * 3 * 128 * 256)
    for r in rows.values():
        assert r["capacity_tokens"] == r["num_blocks"] * r["block_size"]
        assert r["max_concurrent_seqs"] == min(8, (r["num_blocks"] - 1) // (2048 // r["block_size"]))
    assert rows["k2v2"]["capacity_tokens"] >= 6.5 * rows["fp16"]["capacity_tokens"]
    assert rows["fp16"]["sequence_bits_per_element"] == 16.0
    for r in rows.values():
        assert r["sequence_bits_per_element"] == kvcache.sequence_bits(r["preset"], **SMOL, seq_len=2048)


def test_decode_bytes_counts_16bit_sink_and_tail_then_records() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from decode_bytes import mean_row_bytes

    # a row still inside its first block reads only 16-bit tokens: twice fp8's bytes
    short = mean_row_bytes("k2v2", QWEN3_4B, prompt_tokens=10, max_tokens=100)
    assert short["share_16bit"] == 1.0 and short["ratio_to_fp8"] == pytest.approx(2.0)
    # long rows read mostly records: the ratio falls toward records / fp8 per token
    long = mean_row_bytes("k2v2", QWEN3_4B, prompt_tokens=91, max_tokens=32768)
    floor = kvcache.bytes_per_token("k2v2", **QWEN3_4B) / (kvcache.bytes_per_token("fp16", **QWEN3_4B) / 2)
    assert floor < long["ratio_to_fp8"] < floor * 1.2 and long["share_16bit"] < 0.1
