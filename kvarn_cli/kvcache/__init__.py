"""The KV cache presets kvarn offers and how the engine is configured for each.

Contract with kvarn_cli.engine (keep these functions and their meaning):
- `engine_kwargs(preset)` is called before `vllm.LLM(...)` is built; it sets process
  environment (inherited by vLLM's worker processes, where the `vllm.general_plugins` entry
  point kvarn_cli.kvcache.plugin reads it) and returns extra keyword arguments for `vllm.LLM`.
- `bits_per_element(preset)` is the storage cost of one K or V element in the paged cache,
  scales and padding included.
- `bytes_per_token(...)` is what one token costs in the paged cache across all layers;
  `staging_bytes(...)` is the 16-bit sink/tail pool a quantized preset adds on top of it;
  `allocation(...)` describes both for a given budget (what `kvarn plan` prints).

Presets: `fp16` is vLLM's own unmodified cache; `k2v2`, `k4v2`, `k4v4` store KVarN records
(K bits / V bits) in vLLM's paged cache, one block = one tile of 128 tokens, with the sink
(first block of every sequence) and the tail (block being filled) kept in 16-bit. The `-g64`
forms use 64-token tiles (the method's size for small models): a 64-token sink and half the
16-bit staging per sequence, for a little more paged bits per element.
"""

from __future__ import annotations

import os
from typing import Any

from kvarn_cli.errors import InputError
from kvarn_cli.kvcache.layout import (
    PRESET_TABLE,
    Allocation,
    ModelShape,
    Preset,
    allocation as _allocation,
    paged_budget as _paged_budget,
    sequence_bits as _sequence_bits,
    preset_cell_bytes,
    staging_slot_bytes,
    staging_slots,
)

#: Presets `kvarn run --preset` accepts; `--bits N` maps to one of them.
PRESETS: tuple[str, ...] = tuple(PRESET_TABLE)
BITS_TO_PRESET: dict[int, str] = {2: "k2v2", 4: "k4v4", 16: "fp16"}

#: Environment the backend reads in every vLLM process (customize_spec runs without a vLLM
#: config, so the preset cannot travel through it).
ENV_QUANTIZER = "KVARN_KV_QUANTIZER"
ENV_BLOCK_SIZE = "KVARN_KV_BLOCK_SIZE"
BACKEND_CLASS = "kvarn_cli.kvcache.backend.KVarNAttentionBackend"


#: Sequences in flight for a quantized preset when the user sets none. Each running sequence
#: holds two 16-bit staging blocks (sink + tail) beside the paged cache, so vLLM's default of 256
#: sequences would reserve 512 of them up front.
QUANTIZED_MAX_NUM_SEQS = 32
#: vLLM's own default, used for the unquantized preset.
VLLM_MAX_NUM_SEQS = 256


def default_max_num_seqs(preset: str) -> int:
    return QUANTIZED_MAX_NUM_SEQS if get_preset(preset).quantized else VLLM_MAX_NUM_SEQS


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; expected one of: {', '.join(PRESETS)}")
    return preset


def get_preset(preset: str) -> Preset:
    return PRESET_TABLE[check_preset(preset)]


def engine_kwargs(preset: str) -> dict[str, Any]:
    p = get_preset(preset)
    if p.quantizer is None:
        deactivate()
        return {}
    assert p.block_size is not None
    return activate(p.quantizer, p.block_size)


def activate(quantizer: str, block_size: int) -> dict[str, Any]:
    """Make engines built from now on (in this process and its children) store `quantizer`
    records in tiles of `block_size`; return the vllm.LLM kwargs that go with it.

    `engine_kwargs` calls this for the cache presets; tests call it directly to push other
    codecs of kvarn_cli.kernels (e.g. the lossless "fp16" record) through the same backend.
    """
    from kvarn_cli import vllm_compat

    os.environ[ENV_QUANTIZER] = quantizer
    os.environ[ENV_BLOCK_SIZE] = str(block_size)
    vllm_compat.install_backend(BACKEND_CLASS)
    kwargs: dict[str, Any] = {"block_size": block_size}
    if vllm_compat.is_cuda_platform():
        kwargs["attention_config"] = {"backend": "CUSTOM"}
        vllm_compat.prefer_v1_model_runner()
    return kwargs


def deactivate() -> None:
    """Leave vLLM's own attention backend in charge (the fp16 preset)."""
    os.environ.pop(ENV_QUANTIZER, None)
    os.environ.pop(ENV_BLOCK_SIZE, None)
    try:
        from kvarn_cli import vllm_compat

        vllm_compat.uninstall_backend(BACKEND_CLASS)
    except ImportError:
        pass


def _shape(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int) -> ModelShape:
    return ModelShape(num_layers=num_layers, num_kv_heads=num_kv_heads, head_dim=head_dim, dtype_bytes=dtype_bytes)


def bits_per_element(preset: str, *, head_dim: int = 128, dtype_bytes: int = 2) -> float:
    """Paged-cache bits per K or V element (scales and record padding included)."""
    shape = _shape(1, 1, head_dim, dtype_bytes)
    _, cell = preset_cell_bytes(get_preset(preset), shape)
    return 8.0 * cell / (2 * head_dim)


def bytes_per_token(preset: str, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int) -> float:
    """KV bytes one token occupies across all layers (K and V) in the paged cache."""
    shape = _shape(num_layers, num_kv_heads, head_dim, dtype_bytes)
    _, cell = preset_cell_bytes(get_preset(preset), shape)
    return float(num_layers * num_kv_heads * cell)


def sequence_bits(preset: str, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int, seq_len: int) -> float:
    """Bits per K/V element a `seq_len`-token sequence costs, its 16-bit sink and tail slots included."""
    shape = _shape(num_layers, num_kv_heads, head_dim, dtype_bytes)
    return _sequence_bits(get_preset(preset), shape, seq_len)


def staging_bytes(
    preset: str, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int, max_num_seqs: int
) -> int:
    """Bytes of the 16-bit sink/tail pool the backend allocates beside vLLM's paged cache."""
    p = get_preset(preset)
    if not p.quantized:
        return 0
    shape = _shape(num_layers, num_kv_heads, head_dim, dtype_bytes)
    return staging_slots(max_num_seqs) * staging_slot_bytes(p, shape)


def allocation(
    preset: str,
    *,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    dtype_bytes: int,
    kv_cache_memory_bytes: int,
    max_num_seqs: int,
) -> Allocation:
    """Blocks, tokens and staging bytes the engine allocates for `kv_cache_memory_bytes`."""
    shape = _shape(num_layers, num_kv_heads, head_dim, dtype_bytes)
    return _allocation(get_preset(preset), shape, kv_cache_memory_bytes=kv_cache_memory_bytes, max_num_seqs=max_num_seqs)


def paged_budget(
    preset: str, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int, total_bytes: int, max_num_seqs: int
) -> int:
    """The `kv_cache_memory_bytes` for vLLM so that paged cache + staging pool fit `total_bytes`."""
    shape = _shape(num_layers, num_kv_heads, head_dim, dtype_bytes)
    return _paged_budget(get_preset(preset), shape, total_bytes=total_bytes, max_num_seqs=max_num_seqs)
