"""How much memory each KV-cache preset needs: the one place that turns a preset and a model
shape into bytes.

The attention backend sizes vLLM's paged cache from `token_bytes()` (its `customize_spec`),
the staging pool from `staging_slot_bytes()`, and `kvarn plan` / `kvarn run` report the
same numbers, so what is planned is what the engine allocates.

Memory of a quantized preset has two parts:
- the paged cache (vLLM's blocks, sized by `kv_cache_memory_bytes`): one KVarN record per
  (block, layer, KV head); a block is one tile of G tokens, so a record's bytes divided by G
  is the cost of one token per head and layer;
- the 16-bit staging pool (kvarn's, allocated by the backend outside vLLM's budget): one slot
  per sink or tail block holds G tokens of K and V in the model dtype for every layer and KV
  head. There are `STAGING_SLOTS_PER_SEQ` slots per schedulable sequence (`max_num_seqs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: A sequence holds at most two 16-bit blocks at a time: its sink (first block) and its tail.
STAGING_SLOTS_PER_SEQ = 2


@dataclass(frozen=True)
class Preset:
    """A KV-cache preset: which record format fills the paged cache, and the tile size."""

    name: str
    #: kvarn_cli.kernels quantizer name, or None for vLLM's own unmodified 16-bit cache.
    quantizer: str | None
    #: Tokens per vLLM block (= KVarN tile G). None: vLLM's default for the platform.
    block_size: int | None

    @property
    def quantized(self) -> bool:
        return self.quantizer is not None


TILE = 128  # G of the paper; one vLLM block per tile
#: G for small models (KVARN_METHOD.md): half the 16-bit sink and tail per sequence, so about
#: twice the sequences fit beside the paged cache when sequences are short (~1-2k tokens)
SMALL_TILE = 64

PRESET_TABLE: dict[str, Preset] = {
    "fp16": Preset("fp16", None, None),
    "k2v2": Preset("k2v2", "k2v2", TILE),
    "k4v2": Preset("k4v2", "k4v2", TILE),
    "k4v4": Preset("k4v4", "k4v4", TILE),
    "k2v2-g64": Preset("k2v2-g64", "k2v2", SMALL_TILE),
    "k4v2-g64": Preset("k4v2-g64", "k4v2", SMALL_TILE),
    "k4v4-g64": Preset("k4v4-g64", "k4v4", SMALL_TILE),
}

#: vLLM's default block size for its own 16-bit cache on CPU (GPU uses 16; the number of
#: tokens that fit differs by less than one block).
DEFAULT_FP16_BLOCK_SIZE = 128


@dataclass(frozen=True)
class ModelShape:
    """The attention shape of a model, as far as KV memory is concerned."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    #: bytes of one element in the model dtype (2 for bf16/fp16, 4 for fp32)
    dtype_bytes: int


def record_bytes(quantizer: str, head_dim: int, block_size: int) -> int:
    """Bytes of one record (K and V of one tile of one KV head), as the quantizer lays it out."""
    from kvarn_cli.kvcache.records import quantizer_for

    return int(quantizer_for(quantizer, head_dim, block_size).record_bytes)


def token_bytes(quantizer: str, head_dim: int, block_size: int) -> int:
    """Bytes per (token, KV head, layer) in the paged cache: the page's per-token cell size.

    vLLM pages are [heads, block_size, cell] bytes, so a record of R bytes needs a cell of
    ceil(R / G) bytes; the (at most G - 1) bytes of rounding per record are counted here.
    """
    return math.ceil(record_bytes(quantizer, head_dim, block_size) / block_size)


@dataclass(frozen=True)
class Allocation:
    """What one preset allocates for one model at one paged-cache budget."""

    preset: str
    block_size: int
    #: paged-cache bytes per token across all layers (K and V, scales and padding included)
    bytes_per_token: float
    #: bytes of one vLLM block across all layers
    block_bytes: int
    num_blocks: int
    #: tokens the paged cache holds (num_blocks * block_size, as vLLM reports it)
    capacity_tokens: int
    staging_slots: int
    #: bytes of the 16-bit sink/tail staging pool (0 for fp16), outside the paged budget
    staging_bytes: int
    #: paged bytes one K or V element costs, in bits
    bits_per_element: float

    @property
    def total_bytes(self) -> int:
        return self.num_blocks * self.block_bytes + self.staging_bytes

    def max_concurrent_seqs(self, max_model_len: int, max_num_seqs: int) -> int:
        """Sequences of `max_model_len` tokens that fit at once (vLLM keeps one block spare)."""
        per_seq = math.ceil(max_model_len / self.block_size)
        return max(0, min(max_num_seqs, (self.num_blocks - 1) // per_seq))


def preset_cell_bytes(preset: Preset, shape: ModelShape) -> tuple[int, int]:
    """(block_size, bytes per token per KV head per layer) of a preset's paged cache."""
    if preset.quantizer is None:
        return DEFAULT_FP16_BLOCK_SIZE, 2 * shape.head_dim * shape.dtype_bytes
    assert preset.block_size is not None
    return preset.block_size, token_bytes(preset.quantizer, shape.head_dim, preset.block_size)


def staging_slot_bytes(preset: Preset, shape: ModelShape) -> int:
    """Bytes of one 16-bit staging slot: K and V of one tile, every layer and KV head."""
    if preset.block_size is None:
        return 0
    return shape.num_layers * shape.num_kv_heads * preset.block_size * shape.head_dim * 2 * shape.dtype_bytes


def staging_slots(max_num_seqs: int) -> int:
    return STAGING_SLOTS_PER_SEQ * max_num_seqs


def sequence_bits(preset: Preset, shape: ModelShape, seq_len: int) -> float:
    """Bits per K or V element that one sequence of `seq_len` tokens costs: its paged blocks
    plus, for a quantized preset, the two 16-bit staging slots reserved for it. The paged
    figure (~2.3 bits for k2v2) holds only for long sequences; at 1k tokens the sink and tail
    slots are most of a sequence's memory (docs/BENCHMARKS.md runs 70-77)."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    block_size, cell = preset_cell_bytes(preset, shape)
    paged = math.ceil(seq_len / block_size) * block_size * shape.num_layers * shape.num_kv_heads * cell
    staging = STAGING_SLOTS_PER_SEQ * staging_slot_bytes(preset, shape) if preset.quantized else 0
    elements = seq_len * shape.num_layers * shape.num_kv_heads * shape.head_dim * 2
    return 8.0 * (paged + staging) / elements


def allocation(preset: Preset, shape: ModelShape, *, kv_cache_memory_bytes: int, max_num_seqs: int) -> Allocation:
    """Mirror of vLLM's sizing: num_blocks = budget // (layers * page bytes)."""
    block_size, cell = preset_cell_bytes(preset, shape)
    block_bytes = shape.num_layers * shape.num_kv_heads * block_size * cell
    num_blocks = kv_cache_memory_bytes // block_bytes
    slots = staging_slots(max_num_seqs) if preset.quantized else 0
    return Allocation(
        preset=preset.name,
        block_size=block_size,
        bytes_per_token=block_bytes / block_size,
        block_bytes=block_bytes,
        num_blocks=int(num_blocks),
        capacity_tokens=int(num_blocks * block_size),
        staging_slots=slots,
        staging_bytes=slots * staging_slot_bytes(preset, shape),
        bits_per_element=8.0 * cell / (2 * shape.head_dim),
    )


def paged_budget(preset: Preset, shape: ModelShape, *, total_bytes: int, max_num_seqs: int) -> int:
    """The `kv_cache_memory_bytes` to give vLLM so that paged cache + staging fit `total_bytes`."""
    if not preset.quantized:
        return total_bytes
    staging = staging_slots(max_num_seqs) * staging_slot_bytes(preset, shape)
    return max(0, total_bytes - staging)
