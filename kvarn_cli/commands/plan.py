"""`kvarn plan`: how many tokens and sequences fit in a KV budget, per cache preset.

Computed from the model's config and kvarn_cli.kvcache's layout code, the same code the
attention backend sizes vLLM's cache with, so the numbers are what `kvarn run` allocates
(tests/test_kvcache_plan.py checks them against an engine).
"""

from __future__ import annotations

from typing import Any, Optional

import typer

from kvarn_cli.console import console

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def model_shape(model: str, dtype: str | None = None) -> dict[str, Any]:
    """Attention shape of `model` (a local directory with config.json, or a hub id)."""
    from transformers import AutoConfig

    from kvarn_cli.errors import InputError

    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the model config of {model!r}: {exc}") from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(text.num_attention_heads)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    name = dtype or str(getattr(text, "dtype", None) or getattr(text, "torch_dtype", None) or "bfloat16")
    name = name.removeprefix("torch.")
    if name not in _DTYPE_BYTES:
        raise InputError(f"--dtype must be one of {', '.join(_DTYPE_BYTES)}, got {name!r}")
    return {
        "num_layers": int(text.num_hidden_layers),
        "num_kv_heads": int(getattr(text, "num_key_value_heads", None) or heads),
        "head_dim": int(head_dim),
        "dtype": name,
        "dtype_bytes": _DTYPE_BYTES[name],
    }


def plan_rows(shape: dict[str, Any], kv_cache_memory_bytes: int, max_model_len: int, max_num_seqs: int | None) -> list[dict[str, Any]]:
    """One row per preset; `max_num_seqs=None` means each preset's `kvarn run` default."""
    from kvarn_cli import kvcache

    dims = {k: shape[k] for k in ("num_layers", "num_kv_heads", "head_dim", "dtype_bytes")}
    rows = []
    for preset in kvcache.PRESETS:
        seqs = max_num_seqs if max_num_seqs is not None else kvcache.default_max_num_seqs(preset)
        alloc = kvcache.allocation(preset, **dims, kv_cache_memory_bytes=kv_cache_memory_bytes, max_num_seqs=seqs)
        rows.append(
            {
                "preset": preset,
                "bits_per_element": alloc.bits_per_element,
                "bytes_per_token": alloc.bytes_per_token,
                "block_size": alloc.block_size,
                "num_blocks": alloc.num_blocks,
                "capacity_tokens": alloc.capacity_tokens,
                "max_num_seqs": seqs,
                "max_concurrent_seqs": alloc.max_concurrent_seqs(max_model_len, seqs),
                "staging_bytes": alloc.staging_bytes,
                "sequence_bits_per_element": kvcache.sequence_bits(preset, **dims, seq_len=max_model_len),
            }
        )
    return rows


def plan(
    model: str = typer.Option(..., "--model", help="Local model directory or Hugging Face hub id."),
    kv_cache_memory: str = typer.Option(..., "--kv-cache-memory", help="Paged KV cache budget, e.g. 4GiB."),
    max_model_len: int = typer.Option(..., "--max-model-len", help="Longest sequence (prompt + output) in tokens."),
    max_num_seqs: Optional[int] = typer.Option(None, "--max-num-seqs", help="Sequences the engine may schedule at once. Default: what `kvarn run` uses, 32 for quantized presets and 256 for fp16."),
    dtype: str = typer.Option(None, "--dtype", help="Model dtype (default: the config's)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Per cache preset: bytes per token, tokens that fit, and how many sequences of
    --max-model-len run at once. Quantized presets also keep a 16-bit sink and tail per
    sequence (2 blocks of --max-num-seqs sequences), allocated beside the paged budget;
    "+staging" counts them in: what one sequence of --max-model-len tokens costs per
    K/V element, which for short sequences is far above the paged bits/elem.

    Example: kvarn plan --model Qwen/Qwen3-4B --kv-cache-memory 8GiB --max-model-len 16384
    """
    import json

    from rich.table import Table

    from kvarn_cli.errors import InputError
    from kvarn_cli.sizes import format_size, parse_size

    budget = parse_size(kv_cache_memory, "--kv-cache-memory")
    if max_model_len <= 0 or (max_num_seqs is not None and max_num_seqs <= 0):
        raise InputError("--max-model-len and --max-num-seqs must be positive")
    shape = model_shape(model, dtype)
    rows = plan_rows(shape, budget, max_model_len, max_num_seqs)
    if as_json:
        print(json.dumps({"model": model, "shape": shape, "kv_cache_memory_bytes": budget,
                          "max_model_len": max_model_len, "max_num_seqs": max_num_seqs, "presets": rows}, indent=2))
        return
    table = Table(title=(f"{model}: {shape['num_layers']} layers x {shape['num_kv_heads']} KV heads x "
                         f"d={shape['head_dim']} ({shape['dtype']}), paged KV {format_size(budget)}"))
    for col in ("preset", "bits/elem", "+staging", "bytes/token", "blocks x size", "tokens",
                f"seqs of {max_model_len}", "16-bit staging"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["preset"], f"{r['bits_per_element']:.2f}", f"{r['sequence_bits_per_element']:.2f}",
                      f"{r['bytes_per_token']:,.0f}",
                      f"{r['num_blocks']:,} x {r['block_size']}", f"{r['capacity_tokens']:,}",
                      f"{r['max_concurrent_seqs']:,}", format_size(r["staging_bytes"]) if r["staging_bytes"] else "-")
    console.print(table)
