"""What `kvarn analyze` leaves behind: DIR/analysis.json, a rich table, and matplotlib plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.table import Table

PLOT_FILES = ("error_vs_position.png", "kl_by_method.png", "kl_vs_position.png")


def _finite(value: Any) -> Any:
    """NaN/inf (e.g. from a model whose bf16 logits overflow) become null: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_json(out_dir: Path, analysis: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "analysis.json"
    path.write_text(json.dumps(_finite(analysis), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return path


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_table(analysis: dict[str, Any]) -> Table:
    """One row per method and mode: the numbers a user compares presets by."""
    meta = analysis["metadata"]
    table = Table(
        title=f"KV-cache error vs 16-bit: {Path(meta['model']).name}, {meta['total_tokens']} tokens in "
        f"{meta['num_texts']} text(s), block {meta['block']}, scored from position {meta['first_scored_position']}",
    )
    for name, justify in [("method", "left"), ("bits/el", "right"), ("mode", "left"), ("KL mean", "right"),
                          ("KL p99", "right"), ("KL max", "right"), ("top-1", "right"), ("attn MAE", "right"),
                          ("K-norm rel err mean", "right"), ("K-norm rel err p99", "right")]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for method, modes in analysis["methods"].items():
        bits = analysis["bits_per_element"].get(method)
        for i, (mode, s) in enumerate(modes.items()):
            knorm = s["key_norm_rel_error"]
            table.add_row(
                method if i == 0 else "", _fmt(bits, ".3f") if i == 0 else "", mode,
                _fmt(s["kl_mean"], ".3g"), _fmt(s["kl_p99"], ".3g"), _fmt(s["kl_max"], ".3g"),
                _fmt(s["top1_agreement"], ".1%"), _fmt(s["attn_mae_mean"], ".3g"),
                _fmt(knorm["mean_abs"], ".2%"), _fmt(knorm["p99_abs"], ".2%"),
            )
    return table


def _positive(values: list[float | None]) -> list[float]:
    """matplotlib log axes cannot show zeros or gaps: NaN hides those points."""
    return [v if v is not None and v > 0 else math.nan for v in values]


def write_plots(out_dir: Path, analysis: dict[str, Any]) -> list[Path]:
    """error vs position (accumulated solid, static dashed), KL per method, KL vs position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = analysis["metadata"]
    bins = analysis["position_bins"]
    centers = [(a + b) / 2 for a, b in bins]
    methods = list(analysis["methods"])
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    subtitle = f"{Path(meta['model']).name}, block {meta['block']}, bins of {meta['bin_size']} tokens"
    paths: list[Path] = []

    for key, filename, ylabel in [
        ("attn_mae_by_position", "error_vs_position.png", "attention-output MAE (mean over layers)"),
        ("kl_by_position", "kl_vs_position.png", "next-token KL vs 16-bit"),
    ]:
        fig, ax = plt.subplots(figsize=(8, 5))
        plotted = False
        for m in methods:
            for mode, style in (("accumulated", "-"), ("static", "--")):
                series = analysis["methods"][m].get(mode)
                if series is None:
                    continue
                ys = _positive(series[key])
                if all(math.isnan(y) for y in ys):
                    continue  # e.g. fp16: exactly zero everywhere
                ax.plot(centers, ys, style, marker="o", markersize=3, color=colors[m], label=f"{m} {mode}")
                plotted = True
        ax.set_xlabel("token position")
        ax.set_ylabel(ylabel)
        if plotted:
            ax.set_yscale("log")
            ax.legend(fontsize=7, ncol=2)
        ax.set_title(f"{ylabel} by position\n{subtitle}", fontsize=10)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.38
    for offset, mode in ((-width / 2, "static"), (width / 2, "accumulated")):
        xs = [i + offset for i in range(len(methods))]
        means = [analysis["methods"][m].get(mode, {}).get("kl_mean") for m in methods]
        p99s = [analysis["methods"][m].get(mode, {}).get("kl_p99") for m in methods]
        ax.bar(xs, _positive(means), width, label=f"{mode} mean", alpha=0.85 if mode == "accumulated" else 0.5)
        ax.plot(xs, _positive(p99s), "k_", markersize=14, linestyle="none")
    ax.plot([], [], "k_", markersize=14, linestyle="none", label="p99")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("next-token KL vs 16-bit")
    if any(analysis["methods"][m].get(mode, {}).get("kl_mean") for m in methods for mode in ("static", "accumulated")):
        ax.set_yscale("log")
    ax.set_title(f"next-token KL per method (bars: mean, ticks: p99)\n{subtitle}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path = out_dir / "kl_by_method.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths
