"""The KV cache presets kvarn offers and how the engine is configured for each.

Contract with kvarn_cli.engine (keep these two functions and their meaning):
- `engine_kwargs(preset)` is called before `vllm.LLM(...)` is built; it may set process
  environment (inherited by vLLM's worker processes) and returns extra keyword arguments for
  `vllm.LLM`.
- `bits_per_element(preset)` is the storage cost of one K or V element, scales included.
"""

from __future__ import annotations

from typing import Any

from kvarn_cli.errors import InputError

#: Presets `kvarn run --preset` accepts; `--bits N` maps to one of them.
PRESETS: tuple[str, ...] = ("fp16",)
BITS_TO_PRESET: dict[int, str] = {16: "fp16"}


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; expected one of: {', '.join(PRESETS)}")
    return preset


def engine_kwargs(preset: str) -> dict[str, Any]:
    check_preset(preset)
    return {}


def bits_per_element(preset: str) -> float:
    check_preset(preset)
    return 16.0


def bytes_per_token(preset: str, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int) -> float:
    """KV bytes one token occupies across all layers (K and V) in the paged cache."""
    check_preset(preset)
    return float(2 * num_layers * num_kv_heads * head_dim * dtype_bytes)
