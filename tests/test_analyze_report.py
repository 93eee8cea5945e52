"""kvarn_cli.analyze.report on summaries built from synthetic per-position metrics (no model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console

from kvarn_cli.analyze import report
from kvarn_cli.analyze.metrics import TextMetrics, summarize


def _analysis() -> dict:
    tokens, block = 40, 8
    methods = {}
    for scale, name in ((0.0, "fp16"), (0.1, "k4v4"), (0.5, "k2v2")):
        methods[name] = {}
        for mode, extra in (("static", 1.0), ("accumulated", 1.5)):
            rec = TextMetrics(num_layers=2, num_kv_heads=1, num_tokens=tokens)
            ref = torch.log_softmax(torch.zeros(tokens, 5), -1)
            logits = torch.zeros(tokens, 5)
            logits[2 * block :, 0] = scale * extra
            attn_ref = torch.zeros(2, tokens, 4)
            attn = attn_ref.clone()
            attn[:, 2 * block :] = scale * extra
            rec.add_outputs(0, attn, attn_ref, torch.log_softmax(logits, -1), ref, torch.zeros(tokens - 1, dtype=torch.long))
            methods[name][mode] = summarize([rec], first_scored=2 * block, bin_size=8, num_bins=5)
    return {
        "metadata": {"model": "/models/tiny", "total_tokens": tokens, "num_texts": 1, "block": block,
                     "bin_size": 8, "first_scored_position": 2 * block},
        "bits_per_element": {"fp16": 16.0, "k4v4": 4.5, "k2v2": 2.5},
        "position_bins": [[b * 8, (b + 1) * 8] for b in range(5)],
        "methods": methods,
    }


def test_json_plots_and_table(tmp_path: Path) -> None:
    analysis = _analysis()
    analysis["methods"]["k2v2"]["static"]["kl_max"] = math.nan  # must not break JSON
    path = report.write_json(tmp_path, analysis)
    loaded = json.loads(path.read_text(encoding="utf-8"))
    assert loaded["methods"]["k2v2"]["static"]["kl_max"] is None
    assert loaded["methods"]["k4v4"]["accumulated"]["attn_mae_by_position"] == pytest.approx([0, 0, 0.15, 0.15, 0.15])

    paths = report.write_plots(tmp_path, analysis)
    assert sorted(p.name for p in paths) == sorted(report.PLOT_FILES)
    for p in paths:
        assert p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 5000

    console = Console(width=160, record=True)
    console.print(report.summary_table(analysis))
    text = console.export_text()
    rows = [line for line in text.splitlines() if "accumulated" in line or "static" in line]
    assert len(rows) == 6
    assert "k2v2" in text and "2.500" in text and "100.0%" in text
