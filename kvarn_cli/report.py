"""Rich tables for what a run did: KV cache allocation and throughput."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from kvarn_cli.console import console
from kvarn_cli.sizes import format_size


def print_run_summary(stats: dict[str, Any]) -> None:
    kv, tp, eng = stats["kv_cache"], stats["throughput"], stats["engine"]
    table = Table(title=f"kvarn run — {eng['model']} on {eng['device']} (vLLM {eng['vllm_version']})", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("status", str(stats.get("status")))
    table.add_row("KV preset", f"{kv['preset']} ({kv['bits_per_element']:.3g} bits/element)")
    staging = kv.get("staging_bytes", 0)
    table.add_row("KV memory", format_size(kv["kv_cache_memory_bytes"]) + (
        f" paged + {format_size(staging)} 16-bit sink/tail staging = {format_size(kv['total_kv_bytes'])}" if staging else ""))
    table.add_row("KV bytes/token", f"{kv['bytes_per_token']:,.0f}")
    table.add_row("KV capacity", f"{kv['capacity_tokens']:,} tokens ({kv['num_blocks']:,} blocks of {kv['block_size']})")
    table.add_row("peak KV usage", f"{stats['peak_kv_usage']:.1%}")
    table.add_row("preemptions", f"{stats.get('num_preemptions', 0)}")
    table.add_row("requests", f"{tp['requests']:,}" + (f" ({stats['skipped']} skipped)" if stats.get("skipped") else ""))
    table.add_row("tokens", f"{tp['prompt_tokens']:,} prompt, {tp['generated_tokens']:,} generated")
    table.add_row("throughput", f"{tp['generated_tokens_per_s']:,.1f} generated tok/s over {tp['wall_s']:.1f} s")
    shadow = stats.get("shadow_check")
    if shadow:
        if shadow.get("kl_mean") is None:
            table.add_row("expected fidelity", "not measured: sampled records too short to reach quantized history")
        else:
            table.add_row("expected fidelity", f"next-token KL {shadow['kl_mean']:.4f} (p99 {shadow['kl_p99']:.3f}), "
                          f"top-1 agreement {shadow['top1_agreement']:.1%} vs 16-bit "
                          f"({shadow['scored_positions']} positions, {shadow['texts']} records)")
    console.print(table)
