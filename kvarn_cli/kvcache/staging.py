"""Per-step bookkeeping of the 16-bit sink/tail staging pool: which tokens go where, which
blocks are quantized ("flushed") this step, and where attention reads every key from.

The plan is computed once per engine step from vLLM's batch description (block tables,
sequence and query lengths) and then applied by every layer (kvarn_cli.kvcache.compute),
so the Python work here is paid once per step, not once per layer. It is pure index
arithmetic on CPU; a GPU kernel can consume the same index tensors.

Rules (one vLLM block = one tile of G tokens):
- A block that becomes full during a step is quantized once, in that step, from its 16-bit
  staged tokens plus the step's new tokens, and its record is never rewritten. Tokens of
  the current step are attended to unquantized, so a block is read from its record only in
  later steps.
- A block that is still partial after the step (the tail) keeps its tokens in a staging slot.
- The first block of a sequence (the sink) keeps its 16-bit copy in a slot after its flush;
  attention prefers that copy whenever it is still resident.
- Slots are keyed by physical block id, so prefix-cached blocks shared by several sequences
  share one sink copy. A write at offset 0 means vLLM handed the block out afresh: any slot
  still keyed by it is stale and is dropped.
- When no slot is free, the least recently used slot that the current batch does not
  reference is reclaimed (sinks before tails on ties). A reclaimed sink simply falls back to
  its record. A reclaimed tail (its sequence was not scheduled this step, or it has
  finished and vLLM has not reused the block yet; the pool cannot tell which) is "spilled":
  its partial tile is quantized into the block's record, and if the sequence writes to the
  block again the prefix is restored from that record into a new slot. The block is then
  quantized again when it fills: the only case where a block's record is written twice.
- A decode token that completes its block is staged into the block's tail slot like any
  other, and the full slot is then quantized in place ("slot flush"): no tile is gathered
  and the step's attention reads the block from the slot. Only prefill chunks build flush
  tiles. So a decode-only step is a fixed sequence of kernels over per-row index arrays,
  which a CUDA graph can replay (kvarn_cli.kvcache.graph).
- Spills and restores ("maintenance") touch no token of the step: the metadata builder
  applies them to every layer before the step's layers run. A slot that this step reads is
  released only after the plan is made, so no restore can overwrite it before it is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

_TAIL = 0
_SINK = 1


class StagingPoolExhausted(RuntimeError):
    """More sequences in one batch than the pool has tail slots for (a sizing bug)."""


#: the one empty index list every plan shares: a plan has a few dozen index fields, most of them
#: empty on a decode step, and making each anew cost about as much as the rest of the plan's
#: tensors. Nothing writes into a plan's tensors (layers only read them).
_EMPTY_INDEX = torch.empty(0, dtype=torch.int64, device="cpu")  # (vLLM may import this under a CUDA default device)


def _long(values: list[int] | np.ndarray) -> torch.Tensor:
    # from_numpy shares the array as as_tensor would, at a fraction of its per-call cost (a
    # plan makes a few dozen of these every step); a read-only array is copied instead
    array = np.asarray(values, dtype=np.int64)
    if array.size == 0 and array.ndim == 1:
        return _EMPTY_INDEX
    return torch.from_numpy(array) if array.flags.writeable else torch.as_tensor(array)


def _no_index() -> torch.Tensor:
    return _EMPTY_INDEX


@dataclass
class AttentionGroup:
    """Requests attended together: K/V are assembled into [rows, heads, key_len, D]."""

    #: [rows, q_len] indices (into the step's tokens) of each row's queries
    q_tokens: torch.Tensor
    #: [rows] position of each row's first query (= tokens already in the cache)
    ctx: torch.Tensor
    #: padded key length, a multiple of G
    key_len: int
    # full blocks before this step, read from their records: row, block position, block id
    hist_row: torch.Tensor
    hist_pos: torch.Tensor
    hist_block: torch.Tensor
    # block position 0 read from its 16-bit sink slot instead
    sink_row: torch.Tensor
    sink_slot: torch.Tensor
    # blocks flushed this step, read from the step's 16-bit tiles
    tile_row: torch.Tensor
    tile_pos: torch.Tensor
    tile_index: torch.Tensor
    # the partial block after this step, read from its tail slot
    tail_row: torch.Tensor
    tail_pos: torch.Tensor
    tail_slot: torch.Tensor
    # this step's tokens, laid over the above unquantized: row, key position, token index
    new_row: torch.Tensor
    new_pos: torch.Tensor
    new_token: torch.Tensor
    # decode groups only (one query per row), in the form the Triton decode kernel takes
    # (kvarn_cli.kernels.triton_decode.decode_attention); empty for prefill groups.
    #: [rows, width] int32 record blocks of each row (the hist blocks, in order), 0-padded
    dec_table: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0, dtype=torch.int32))
    #: [rows] int32 number of valid entries of dec_table per row
    dec_nblk: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int32))
    #: [rows, 2] int32 16-bit slots (sink, tail), -1 = none, and how many of their tokens count
    dec_side_slot: torch.Tensor = field(default_factory=lambda: torch.empty(0, 2, dtype=torch.int32))
    dec_side_len: torch.Tensor = field(default_factory=lambda: torch.empty(0, 2, dtype=torch.int32))
    #: when the rows' queries are the step's tokens first, first+1, ... (the usual decode
    #: batch): that first token, so the kernel reads queries and writes outputs in place; else -1
    dec_first_token: int = -1
    #: a prefill chunk that starts its sequence (nothing cached before it): its first token.
    #: Its keys are exactly its own tokens, so attention needs neither records nor slots; else -1
    fresh_first_token: int = -1
    #: a decode group planned for the decode kernel alone (StagingPool kernel_decodes): its
    #: row lists (hist_*, sink_*, tail_*, new_*) are left empty, and only dec_* describe it
    kernel_only: bool = False


#: the row lists of a group, which only the PyTorch path reads
_ROW_LISTS = ("hist_row", "hist_pos", "hist_block", "sink_row", "sink_slot", "tail_row", "tail_pos", "tail_slot",
              "new_row", "new_pos", "new_token")


@dataclass
class StepPlan:
    """Everything a layer needs to update the cache and attend, for one engine step."""

    num_tokens: int
    # per token: tail slot (or -1), flush tile (or -1), offset inside its block
    token_slot: torch.Tensor
    token_tile: torch.Tensor
    token_offset: torch.Tensor
    # spills, applied first: quantize slot `spill_slot` (first `spill_fill` tokens) into block
    spill_slot: torch.Tensor
    spill_block: torch.Tensor
    spill_fill: torch.Tensor
    # flush tiles: block id; where its already-staged prefix comes from
    flush_block: torch.Tensor
    flush_prefix_slot: torch.Tensor  # slot holding the prefix, or -1
    flush_prefix_len: torch.Tensor
    flush_keep_slot: torch.Tensor  # slot that keeps the 16-bit tile as a sink, or -1
    # restores, applied with the spills before the step: record of block -> slot
    restore_slot: torch.Tensor
    restore_block: torch.Tensor
    # slot flushes, applied after the step's tokens are staged: full slot -> record of block
    fill_slot: torch.Tensor = field(default_factory=_no_index)
    fill_block: torch.Tensor = field(default_factory=_no_index)
    groups: list[AttentionGroup] = field(default_factory=list)
    #: decode-only steps on the Triton path: the step as fixed-address device arrays
    #: (kvarn_cli.kvcache.graph.DecodeArrays); the layers then read nothing else of the plan
    fixed: Any = None
    # The masks above, resolved to index lists once on the host when the plan is made, so a
    # layer on the GPU never waits on the device to learn which entries are set.
    #: tokens written to a tail slot: token index, slot, offset
    slot_token: torch.Tensor | None = None
    slot_id: torch.Tensor | None = None
    slot_offset: torch.Tensor | None = None
    #: tokens written to a flush tile: token index, tile, offset
    tile_token: torch.Tensor | None = None
    tile_id: torch.Tensor | None = None
    tile_offset: torch.Tensor | None = None
    #: flush tiles whose staged prefix is read from a slot: tile index, slot
    prefix_slot_tile: torch.Tensor | None = None
    prefix_slot: torch.Tensor | None = None
    #: flush tiles kept as a 16-bit sink: tile index, slot
    keep_tile: torch.Tensor | None = None
    keep_slot: torch.Tensor | None = None
    #: prefill chunks that start their sequence (groups with fresh_first_token >= 0), for one
    #: batched attention call: their query-token indices, concatenated, and the int32
    #: cumulative chunk lengths [chunks + 1]; fresh_max_len is the longest chunk
    fresh_index: torch.Tensor = field(default_factory=_no_index)
    fresh_cu: torch.Tensor = field(default_factory=lambda: torch.zeros(1, dtype=torch.int32))
    fresh_max_len: int = 0
    #: prefill chunks that continue a sequence (the other groups with more than one query),
    #: for one batched attention call over their keys packed in 16-bit: chunk i's queries are
    #: cont_index[cont_cu_q[i]:cont_cu_q[i+1]] and its keys (positions 0 .. ctx + q_len - 1)
    #: packed rows cont_cu_k[i]:cont_cu_k[i+1] (see `_pack_continued` for where each comes from)
    cont_index: torch.Tensor = field(default_factory=_no_index)
    cont_cu_q: torch.Tensor = field(default_factory=lambda: torch.zeros(1, dtype=torch.int32))
    cont_cu_k: torch.Tensor = field(default_factory=lambda: torch.zeros(1, dtype=torch.int32))
    cont_max_q: int = 0
    cont_max_k: int = 0
    #: packed key rows in all (= cont_cu_k[-1], kept on the host)
    cont_num_keys: int = 0
    #: record blocks: copy j puts block cont_rec_block[j] at packed rows cont_rec_dest[j] .. + G - 1;
    #: the PyTorch dequantization takes each block once (cont_rec_unique[cont_rec_src[j]]
    #: is cont_rec_block[j]), the Triton kernel reads every copy's record itself
    cont_rec_block: torch.Tensor = field(default_factory=_no_index)
    cont_rec_unique: torch.Tensor = field(default_factory=_no_index)
    cont_rec_src: torch.Tensor = field(default_factory=_no_index)
    cont_rec_dest: torch.Tensor = field(default_factory=_no_index)
    #: whole blocks from 16-bit sink slots, and from this step's flush tiles: source, first packed row
    cont_sink_slot: torch.Tensor = field(default_factory=_no_index)
    cont_sink_dest: torch.Tensor = field(default_factory=_no_index)
    cont_tile_index: torch.Tensor = field(default_factory=_no_index)
    cont_tile_dest: torch.Tensor = field(default_factory=_no_index)
    #: single tokens staged in a tail slot before this step: slot, offset, packed row
    cont_staged_slot: torch.Tensor = field(default_factory=_no_index)
    cont_staged_offset: torch.Tensor = field(default_factory=_no_index)
    cont_staged_dest: torch.Tensor = field(default_factory=_no_index)
    #: the chunks' own tokens: step token index, packed row
    cont_new_token: torch.Tensor = field(default_factory=_no_index)
    cont_new_dest: torch.Tensor = field(default_factory=_no_index)
    #: the sink and staged keys again one row each, as kernels.triton_pack.copy_rows takes
    #: them (the sink blocks' G rows, then the staged tokens): slot, offset, packed row
    cont_slot_row_slot: torch.Tensor = field(default_factory=_no_index)
    cont_slot_row_offset: torch.Tensor = field(default_factory=_no_index)
    cont_slot_row_dest: torch.Tensor = field(default_factory=_no_index)
    #: the tile keys one row each: tile, offset, packed row
    cont_tile_row_index: torch.Tensor = field(default_factory=_no_index)
    cont_tile_row_offset: torch.Tensor = field(default_factory=_no_index)
    cont_tile_row_dest: torch.Tensor = field(default_factory=_no_index)

    def __post_init__(self) -> None:
        if self.slot_token is not None:
            return
        if self.token_slot.device.type != "cpu":
            raise ValueError("make a StepPlan from host tensors, then move it with .to(device)")
        # in numpy: a torch call per mask costs several times more, and a plan is made on the
        # host every engine step
        slot, tile, offset = self.token_slot.numpy(), self.token_tile.numpy(), self.token_offset.numpy()
        to_slot, to_tile = np.flatnonzero(slot >= 0), np.flatnonzero(tile >= 0)
        self.slot_token, self.slot_id, self.slot_offset = _long(to_slot), _long(slot[to_slot]), _long(offset[to_slot])
        self.tile_token, self.tile_id, self.tile_offset = _long(to_tile), _long(tile[to_tile]), _long(offset[to_tile])
        prefix, keep_slots = self.flush_prefix_slot.numpy(), self.flush_keep_slot.numpy()
        from_slot, keep = np.flatnonzero(prefix >= 0), np.flatnonzero(keep_slots >= 0)
        self.prefix_slot_tile, self.prefix_slot = _long(from_slot), _long(prefix[from_slot])
        self.keep_tile, self.keep_slot = _long(keep), _long(keep_slots[keep])

    @property
    def num_flush(self) -> int:
        return int(self.flush_block.numel())

    @property
    def needs_maintenance(self) -> bool:
        return bool(self.spill_slot.numel() or self.restore_slot.numel())

    @classmethod
    def empty(cls, num_tokens: int) -> "StepPlan":
        """A plan that changes nothing (the template a captured CUDA graph is built from)."""
        none = torch.empty(0, dtype=torch.int64)
        return cls(num_tokens, token_slot=none, token_tile=none, token_offset=none, spill_slot=none,
                   spill_block=none, spill_fill=none, flush_block=none, flush_prefix_slot=none,
                   flush_prefix_len=none, flush_keep_slot=none, restore_slot=none, restore_block=none)

    def to(self, device: torch.device) -> "StepPlan":
        """The same plan with its index tensors on `device` (for GPU kernels).

        A plan holds a few dozen small tensors; they travel packed, one copy per dtype,
        because a host-to-device copy costs about the same for 8 bytes as for 8 kB.
        """
        owners: list[Any] = [self, *self.groups]
        names = [[f.name for f in fields(o) if isinstance(getattr(o, f.name), torch.Tensor)] for o in owners]
        tensors = [getattr(o, n) for o, ns in zip(owners, names) for n in ns]
        moved = iter(_move_packed(tensors, device))
        values = [{n: next(moved) for n in ns} for ns in names]
        groups = [replace(g, **v) for g, v in zip(self.groups, values[1:])]
        return replace(self, groups=groups, **values[0])


def _pack_continued(plan: StepPlan, groups: list[AttentionGroup], G: int) -> None:
    """Fill plan.cont_*: where each key of the continued prefill chunks `groups` (one row
    each, host tensors) comes from, as packed rows of one [keys, heads, D] array.

    A chunk of q tokens after ctx cached ones has keys 0 .. ctx + q - 1: the blocks full before
    the step from their records (block 0 from its sink slot while that is resident), the
    blocks this step fills from their flush tiles, the tokens staged before the step in the
    partial block after it from its tail slot, and the chunk's own tokens last (they overlay
    the tiles' and the tail's copies of themselves). The same sources `_group` lists for the
    PyTorch path, at the positions it assembles them.
    """
    q_lens = np.array([g.q_tokens.shape[1] for g in groups], dtype=np.int64)
    ctx = np.array([int(g.ctx[0]) for g in groups], dtype=np.int64)
    k_lens = ctx + q_lens
    base = np.concatenate([[0], np.cumsum(k_lens)])
    rec_block, rec_dest, sink_slot, sink_dest, tile_index, tile_dest = [], [], [], [], [], []
    staged_slot, staged_offset, staged_dest, new_token, new_dest = [], [], [], [], []
    for i, g in enumerate(groups):
        b = int(base[i])
        rec_block.append(g.hist_block.numpy())
        rec_dest.append(b + g.hist_pos.numpy() * G)
        sink_slot.append(g.sink_slot.numpy())
        sink_dest.append(np.full(g.sink_slot.shape[0], b, dtype=np.int64))
        tile_index.append(g.tile_index.numpy())
        tile_dest.append(b + g.tile_pos.numpy() * G)
        whole = G * (g.hist_block.shape[0] + g.sink_slot.shape[0] + g.tile_index.shape[0])  # keys 0 .. whole - 1
        if g.tail_slot.numel():
            old = np.arange(whole, int(ctx[i]), dtype=np.int64)  # staged before the step
            staged_slot.append(np.full(old.shape[0], int(g.tail_slot[0]), dtype=np.int64))
            staged_offset.append(old - whole)
            staged_dest.append(b + old)
        elif whole < ctx[i]:
            raise AssertionError(f"keys {whole}..{int(ctx[i]) - 1} of a continued chunk have no source")
        new_token.append(g.new_token.numpy())
        new_dest.append(b + g.new_pos.numpy())

    def cat(parts: list[np.ndarray]) -> torch.Tensor:
        return _long(np.concatenate(parts) if parts else np.empty(0, dtype=np.int64))

    blocks = np.concatenate(rec_block)
    unique, inverse = np.unique(blocks, return_inverse=True)
    plan.cont_index = torch.cat([g.q_tokens[0] for g in groups])
    plan.cont_cu_q = torch.from_numpy(np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32))
    plan.cont_cu_k = torch.from_numpy(base.astype(np.int32))
    plan.cont_max_q, plan.cont_max_k, plan.cont_num_keys = int(q_lens.max()), int(k_lens.max()), int(base[-1])
    plan.cont_rec_block = _long(blocks)
    plan.cont_rec_unique, plan.cont_rec_src = _long(unique), _long(inverse.reshape(-1))
    plan.cont_rec_dest = cat(rec_dest)
    plan.cont_sink_slot, plan.cont_sink_dest = cat(sink_slot), cat(sink_dest)
    plan.cont_tile_index, plan.cont_tile_dest = cat(tile_index), cat(tile_dest)
    plan.cont_staged_slot, plan.cont_staged_offset = cat(staged_slot), cat(staged_offset)
    plan.cont_staged_dest = cat(staged_dest)
    plan.cont_new_token, plan.cont_new_dest = cat(new_token), cat(new_dest)
    # per row: block sources expanded to their G rows
    offsets = np.arange(G, dtype=np.int64)

    def rows(index: torch.Tensor, first: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i, f = index.numpy(), first.numpy()
        return np.repeat(i, G), np.tile(offsets, i.shape[0]), (f[:, None] + offsets).reshape(-1)

    sink = rows(plan.cont_sink_slot, plan.cont_sink_dest)
    staged = (plan.cont_staged_slot.numpy(), plan.cont_staged_offset.numpy(), plan.cont_staged_dest.numpy())
    plan.cont_slot_row_slot, plan.cont_slot_row_offset, plan.cont_slot_row_dest = (
        _long(np.concatenate([a, b])) for a, b in zip(sink, staged))
    plan.cont_tile_row_index, plan.cont_tile_row_offset, plan.cont_tile_row_dest = (
        _long(a) for a in rows(plan.cont_tile_index, plan.cont_tile_dest))


@dataclass(frozen=True)
class DecodeStep:
    """A decode-only step for the decode kernel (StagingPool.plan_decodes), row i being token
    i: what graph.DecodeBuffers holds for it, as host arrays."""

    #: [rows, width] int32 record blocks of each row, 0-padded, and [rows] how many are valid
    table: np.ndarray
    nblk: np.ndarray
    #: [rows, 2] int32 16-bit (sink, tail) slots, -1 = none, and how many of their tokens count
    side_slot: np.ndarray
    side_len: np.ndarray
    #: [rows] int32 the slot and offset each row's token is staged at
    stage_slot: np.ndarray
    stage_offset: np.ndarray
    #: [fills] int32 slots that the step's tokens complete, quantized into these blocks after it
    fill_slot: np.ndarray
    fill_block: np.ndarray
    #: spills and restores to apply to every layer before the step (StepPlan's fields), or None
    maintenance: StepPlan | None


@dataclass(frozen=True)
class _DecodeRows:
    """The decode kernel's inputs for a decode group (StagingPool._decode_arrays), with the
    intermediates the PyTorch path's row lists are made from."""

    table: np.ndarray  # [rows, width] int32
    count: np.ndarray  # [rows] record blocks per row
    first: np.ndarray  # [rows] position of the first record block (1 when the sink is read from its slot)
    valid: np.ndarray  # [rows, width] bool
    sink_of: np.ndarray  # [rows] sink slot, -1 = none
    tail: np.ndarray  # [rows] tail slot, -1 = none
    side_slot: np.ndarray
    side_len: np.ndarray


#: bytes each packed tensor starts on. Triton compiles a kernel again for each pointer argument
#: that is or is not 16-byte aligned, so views at arbitrary offsets of one buffer made the
#: kernels compile mid-job as the plans' sizes changed (docs/BENCHMARKS.md runs 60-69).
PACK_ALIGN = 16


def _move_packed(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """`tensors` on `device`, in order, sent as one flat copy per dtype, each starting on a
    PACK_ALIGN-byte boundary of its buffer (which the allocator aligns further)."""
    out: list[torch.Tensor | None] = [None] * len(tensors)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    for dtype, idx in by_dtype.items():
        step = max(1, PACK_ALIGN // tensors[idx[0]].element_size())
        pad = torch.zeros(step, dtype=dtype)
        pieces, starts, size = [], [], 0
        for i in idx:
            n = tensors[i].numel()
            starts.append(size)
            pieces.append(tensors[i].reshape(-1))
            if n % step:
                pieces.append(pad[: step - n % step])
            size += -(-n // step) * step
        flat = torch.cat(pieces)
        if device.type == "cuda":
            flat = flat.pin_memory()
        flat = flat.to(device, non_blocking=True)
        for i, start in zip(idx, starts):
            out[i] = flat[start : start + tensors[i].numel()].view(tensors[i].shape)
    return [t for t in out if t is not None]


#: attention_budget_rows for the Triton path: its decode kernel reads records in place, so a
#: decode batch is never split (the budget bounds the PyTorch path's dequantized history)
UNSPLIT_DECODES = 1 << 62


class StagingPool:
    """Slot bookkeeping shared by all layers of one KV-cache group (same block ids)."""

    def __init__(
        self, num_slots: int, block_size: int, *, attention_budget_rows: int = 1 << 16, kernel_decodes: bool = False,
    ) -> None:
        if num_slots < 1:
            raise ValueError("the staging pool needs at least one slot")
        self.num_slots = num_slots
        self.block_size = block_size
        #: decode requests are attended in sub-batches of at most this many (row, key) pairs
        self.attention_budget_rows = attention_budget_rows
        #: decode groups carry only the decode kernel's inputs (AttentionGroup.kernel_only):
        #: on the Triton path nothing reads their row lists, which cost host time every step
        self.kernel_decodes = kernel_decodes
        self.slot_block = np.full(num_slots, -1, dtype=np.int64)
        self.slot_kind = np.zeros(num_slots, dtype=np.int8)
        self.slot_fill = np.zeros(num_slots, dtype=np.int64)
        self.slot_stamp = np.full(num_slots, -1, dtype=np.int64)
        self.block_slot: dict[int, int] = {}
        #: block_slot as an array indexed by block id (-1: no slot), grown on demand: the plan
        #: looks up every row's tail and sink blocks each step, which array indexing does at once
        self._slot_of_block = np.full(1024, -1, dtype=np.int64)
        self.free: list[int] = list(range(num_slots - 1, -1, -1))
        self.step = 0
        self._victims: list[int] | None = None
        # statistics, for tests and reports
        self.spills = 0
        self.restores = 0
        self.sink_fallbacks = 0

    # -- slot primitives ------------------------------------------------------------------
    def _bind(self, block: int, slot: int) -> None:
        """Slot `slot` now holds block `block` (the slot's own fields are the caller's)."""
        self.block_slot[block] = slot
        self.slot_block[slot] = block
        if block < 0:  # not a block id vLLM hands out (the warm-up's scratch table has one): dict only
            return
        table = self._slot_of_block
        if block >= table.shape[0]:
            grown = np.full(max(2 * table.shape[0], block + 1), -1, dtype=np.int64)
            grown[: table.shape[0]] = table
            self._slot_of_block = table = grown
        table[block] = slot

    def _slots_of(self, blocks: np.ndarray) -> np.ndarray:
        """The slot holding each of `blocks` (an int array of block ids), -1 where none does:
        block_slot's answers, by array indexing where every id is inside the array."""
        table = self._slot_of_block
        if blocks.size and (int(blocks.max()) >= table.shape[0] or int(blocks.min()) < 0):
            get = self.block_slot.get
            return np.array([get(b, -1) for b in blocks.tolist()], dtype=np.int64)
        return table[blocks]

    def _release(self, slot: int) -> None:
        block = int(self.slot_block[slot])
        if block >= 0 and self.block_slot.get(block) == slot:
            del self.block_slot[block]
            self._slot_of_block[block] = -1  # bound by _bind, which grew the array to cover it
        self.slot_block[slot] = -1
        self.slot_fill[slot] = 0
        self.free.append(slot)

    def _touch(self, slot: int) -> None:
        self.slot_stamp[slot] = self.step

    def _allocate(self, spills: list[tuple[int, int, int]], *, optional: bool) -> int | None:
        if not self.free:
            # an optional (sink) slot may displace another sink, never spill a tail
            self._evict_one(spills, sinks_only=optional)
        if not self.free:
            if optional:
                return None
            raise StagingPoolExhausted(
                f"all {self.num_slots} staging slots are referenced by this batch; "
                "the pool must hold 2 slots per schedulable sequence"
            )
        slot = self.free.pop()
        self._touch(slot)
        return slot

    def _evict_one(self, spills: list[tuple[int, int, int]], *, sinks_only: bool) -> None:
        if sinks_only:
            stale = [
                s
                for s in np.nonzero((self.slot_block >= 0) & (self.slot_stamp < self.step) & (self.slot_kind == _SINK))[0]
            ]
            if stale:
                self._release(int(min(stale, key=lambda s: int(self.slot_stamp[s]))))
            return
        if self._victims is None:
            live = np.nonzero((self.slot_block >= 0) & (self.slot_stamp < self.step))[0]
            # oldest first; on equal age sinks (which have a record to fall back on) first.
            # Sorted descending so that pop() yields the next victim.
            self._victims = sorted(
                (int(s) for s in live),
                key=lambda s: (int(self.slot_stamp[s]), 0 if self.slot_kind[s] == _SINK else 1),
                reverse=True,
            )
        while self._victims:
            slot = self._victims.pop()
            if self.slot_block[slot] < 0 or self.slot_stamp[slot] >= self.step:
                continue
            if self.slot_kind[slot] == _TAIL and self.slot_fill[slot] > 0:
                spills.append((slot, int(self.slot_block[slot]), int(self.slot_fill[slot])))
                self.spills += 1
            self._release(slot)
            return

    # -- the step plan --------------------------------------------------------------------
    def plan(
        self,
        query_start_loc: np.ndarray,
        seq_lens: np.ndarray,
        block_table: np.ndarray,
        num_tokens: int,
    ) -> StepPlan:
        """Plan one step. Arrays are CPU numpy: query_start_loc [R+1], seq_lens [R],
        block_table [R, max_blocks] (physical block ids), num_tokens = query_start_loc[-1]."""
        self.step += 1
        self._victims = None
        G = self.block_size
        qsl = query_start_loc.astype(np.int64)
        seq = seq_lens.astype(np.int64)
        num_reqs = int(seq.shape[0])
        qlen = qsl[1:] - qsl[:-1]
        ctx = seq - qlen
        full_before = ctx // G  # blocks complete before this step
        staged_before = ctx % G  # tokens of block `full_before` staged before this step
        full_after = seq // G
        staged_after = seq % G
        bt = block_table
        active = qlen > 0
        # the table columns any row reaches, which steps 1-4 index (as rows of Python lists
        # where they loop); the attention groups take the whole table
        used = min(int(bt.shape[1]), int(full_after.max(initial=0)) + 1)
        bt_used = bt[:num_reqs, :used]
        # Python loops run only over the rows with work beyond a lookup (a block that starts
        # or fills, a slot to allocate or restore): a decode batch has a few such rows per
        # step, and the slot lookups of every row are array indexing (_slots_of). The loops
        # read Python lists (one table row at a time): numpy scalar indexing costs several
        # times more.
        qlen_l = qlen.tolist()
        fb_l, sb_l = full_before.tolist(), staged_before.tolist()
        fa_l, sa_l = full_after.tolist(), staged_after.tolist()
        get = self.block_slot.get

        spills: list[tuple[int, int, int]] = []

        # 1. blocks written from offset 0 this step were handed out afresh: drop stale slots
        last_block = (seq - 1) // G
        first_fresh = full_before + (staged_before > 0)
        lb_l, ff_l = last_block.tolist(), first_fresh.tolist()
        for r in np.nonzero(active & (last_block >= first_fresh))[0].tolist():
            for block in bt_used[r, ff_l[r] : lb_l[r] + 1].tolist():
                slot = get(block)
                if slot is not None:
                    self._release(slot)

        # 2. slots the batch reads: continuing tails and sinks of context blocks
        continuing_rows = np.nonzero(active & (staged_before > 0))[0]
        self._stamp_reads(bt_used[continuing_rows, full_before[continuing_rows]], bt_used[np.nonzero(full_before >= 1)[0], 0])

        # 3. flushes: blocks [full_before, full_after) of each request fill up this step
        flush_block: list[int] = []
        flush_prefix_slot: list[int] = []
        flush_prefix_len: list[int] = []
        flush_keep_slot: list[int] = []
        fill_slot: list[int] = []
        fill_block: list[int] = []
        restore_slot: list[int] = []
        restore_block: list[int] = []
        release_after: list[int] = []  # slots this step reads: freed once the plan is made
        filled_by = np.full(num_reqs, -1, dtype=np.int64)  # decode rows whose slot is flushed
        tiles_of = np.zeros(num_reqs, dtype=np.int64)  # flush tiles of each row
        need_sink: list[int] = []  # flush indices of first blocks without a slot yet
        for r in np.nonzero(full_after > full_before)[0].tolist():
            tiles_before = len(flush_block)
            row = bt_used[r].tolist()
            for j in range(fb_l[r], fa_l[r]):
                block = row[j]
                prefix = sb_l[r] if j == fb_l[r] else 0
                slot = get(block) if prefix > 0 else None
                if prefix > 0 and slot is None:  # the prefix was spilled: back into a slot first
                    slot = self._restore_into_slot(block, prefix, spills, restore_slot, restore_block)
                by_slot = qlen_l[r] == 1 and slot is not None
                if by_slot:
                    # a decode completes the block: its token is staged into the slot, which
                    # is then quantized whole (no tile)
                    fill_slot.append(slot)
                    fill_block.append(block)
                    filled_by[r] = slot
                else:
                    flush_block.append(block)
                    flush_prefix_len.append(prefix)
                    flush_prefix_slot.append(-1 if slot is None else slot)
                if j == 0 and slot is not None:  # the staged first block becomes the sink
                    self.slot_kind[slot] = _SINK
                    self.slot_fill[slot] = G
                    self._touch(slot)
                    if not by_slot:  # the tile's 16-bit copy is written back into it
                        flush_keep_slot.append(slot)
                elif j == 0:
                    flush_keep_slot.append(-1)
                    need_sink.append(len(flush_block) - 1)
                else:
                    if not by_slot:
                        flush_keep_slot.append(-1)
                    if slot is not None:
                        release_after.append(slot)
            tiles_of[r] = len(flush_block) - tiles_before
        tile_base = np.cumsum(tiles_of) - tiles_of  # the row's first tile

        # 4. tails: the partial block after this step needs a slot (required). A continuing
        # tail whose slot is resident (most rows of a decode batch) only updates its count;
        # the other rows (a new block, a spilled prefix) take slots in row order.
        tail_slot = np.full(num_reqs, -1, dtype=np.int64)
        partial = staged_after > 0
        for r in np.nonzero(partial & ~active)[0].tolist():  # in the batch without new tokens: read only
            slot = get(int(bt_used[r, fa_l[r]]))
            tail_slot[r] = -1 if slot is None else slot
        growing = np.nonzero(partial & active)[0]
        prefix = np.where(full_after == full_before, staged_before, 0)[growing]
        tail_slot[growing] = self._place_tails(bt_used[growing, full_after[growing]], prefix, staged_after[growing],
                                               spills, restore_slot, restore_block)

        # 5. sinks for first blocks flushed straight from the step's tokens (optional)
        for f in need_sink:
            slot = self._allocate(spills, optional=True)
            if slot is None:
                self.sink_fallbacks += 1
                continue
            self._bind(flush_block[f], slot)
            self.slot_kind[slot] = _SINK
            self.slot_fill[slot] = G
            flush_keep_slot[f] = slot

        # 6. token routing: a tile for prefill tokens of blocks that fill, else the row's slot
        token_req = np.repeat(np.arange(num_reqs, dtype=np.int64), np.maximum(qlen, 0))
        token_pos = ctx[token_req] + (np.arange(num_tokens, dtype=np.int64) - qsl[token_req])
        token_blk = token_pos // G
        token_off = token_pos % G
        by_slot = filled_by[token_req]
        flushing = (token_blk < full_after[token_req]) & (by_slot < 0)
        token_tile = np.where(flushing, tile_base[token_req] + token_blk - full_before[token_req], -1)
        token_slot = np.where(flushing, -1, np.where(by_slot >= 0, by_slot, tail_slot[token_req]))

        plan = StepPlan(
            num_tokens=num_tokens,
            token_slot=_long(token_slot),
            token_tile=_long(token_tile),
            token_offset=_long(token_off),
            spill_slot=_long([s[0] for s in spills]),
            spill_block=_long([s[1] for s in spills]),
            spill_fill=_long([s[2] for s in spills]),
            flush_block=_long(flush_block),
            flush_prefix_slot=_long(flush_prefix_slot),
            flush_prefix_len=_long(flush_prefix_len),
            flush_keep_slot=_long(flush_keep_slot),
            restore_slot=_long(restore_slot),
            restore_block=_long(restore_block),
            fill_slot=_long(fill_slot),
            fill_block=_long(fill_block),
        )

        # 7. attention groups: decodes (one query) batched, each longer query on its own
        decodes = np.nonzero(qlen == 1)[0]
        prefills = [int(r) for r in np.nonzero(qlen > 1)[0]]
        for rows in self._decode_batches(decodes, seq):
            plan.groups.append(self._decode_group(rows, qsl, ctx, seq, bt, full_before, full_after, staged_after, tail_slot, filled_by))
        for r in prefills:
            plan.groups.append(self._group([r], qsl, qlen, ctx, seq, bt, full_before, full_after, staged_after, tile_base, tail_slot))
        # the groups `_group` marked fresh, listed for one batched attention call
        fresh = [(g.fresh_first_token, g.q_tokens.shape[1]) for g in plan.groups if g.fresh_first_token >= 0]
        if fresh:
            lens = np.array([n for _, n in fresh])
            plan.fresh_index = torch.from_numpy(np.concatenate([np.arange(a, a + n) for a, n in fresh]))
            plan.fresh_cu = torch.from_numpy(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
            plan.fresh_max_len = int(lens.max())
        continued = [g for g in plan.groups if g.q_tokens.shape[1] > 1 and g.fresh_first_token < 0]
        if continued:
            _pack_continued(plan, continued, G)

        for slot in release_after:
            self._release(slot)
        return plan

    def _stamp_reads(self, tail_blocks: np.ndarray, first_blocks: np.ndarray) -> None:
        """Mark the slots this step reads as used now, so no allocation of the step reclaims
        them: the staged tails of `tail_blocks`, and the 16-bit sinks of `first_blocks`."""
        tails = self._slots_of(tail_blocks)
        firsts = self._slots_of(first_blocks)
        firsts = firsts[firsts >= 0]
        self.slot_stamp[tails[tails >= 0]] = self.step
        self.slot_stamp[firsts[self.slot_kind[firsts] == _SINK]] = self.step

    def _place_tails(
        self, blocks: np.ndarray, prefix: np.ndarray, fill: np.ndarray,
        spills: list[tuple[int, int, int]], restore_slot: list[int], restore_block: list[int],
    ) -> np.ndarray:
        """The tail slot of each partial block `blocks[i]` that gets new tokens this step and
        then holds `fill[i]` of them, `prefix[i]` staged before the step (0: the block starts
        now). A resident slot (most rows of a decode batch) only updates its count, at once;
        the other rows (a new block, a spilled prefix) take slots in row order."""
        tail_slot = np.full(blocks.shape[0], -1, dtype=np.int64)
        continuing = np.flatnonzero(prefix > 0)
        resident = self._slots_of(blocks[continuing])
        kept_rows, kept = continuing[resident >= 0], resident[resident >= 0]
        self.slot_kind[kept] = _TAIL
        self.slot_fill[kept] = fill[kept_rows]
        self.slot_stamp[kept] = self.step
        tail_slot[kept_rows] = kept
        for i in np.flatnonzero(tail_slot < 0).tolist():
            block, staged = int(blocks[i]), int(prefix[i])
            if staged > 0:  # its prefix was spilled: bring it back from the record
                slot = self._restore_into_slot(block, staged, spills, restore_slot, restore_block)
            else:
                slot = self._allocate(spills, optional=False)
                assert slot is not None
                self._bind(block, slot)
            self.slot_kind[slot] = _TAIL
            self.slot_fill[slot] = int(fill[i])
            self._touch(slot)
            tail_slot[i] = slot
        return tail_slot

    def plan_decodes(self, seq_lens: np.ndarray, block_table: np.ndarray) -> DecodeStep:
        """plan() for a step in which row i decodes one token, token i (query_start_loc
        0, 1, .., R), on the decode kernel's path: the same slot decisions, returned as the
        arrays the CUDA-graph buffers take (kvarn_cli.kvcache.graph) without a StepPlan.

        Decode steps are most steps of a job, and with their kernels replayed from a CUDA
        graph the plan is what kvarn adds to vLLM's host time per step. Here each row is one
        token in one block, so the plan is a few array operations plus loops over the rows that
        open or complete a block; tests/test_kvcache_staging.py runs this and plan() side by
        side on random schedules."""
        G = self.block_size
        if G < 2:
            raise ValueError("a decode that completes a 1-token block needs a flush tile: plan() it")
        self.step += 1
        self._victims = None
        seq = seq_lens.astype(np.int64)
        n = int(seq.shape[0])
        bt = block_table
        ctx = seq - 1
        blk, off = ctx // G, ctx % G  # where the row's token lands
        here = bt[np.arange(n), blk]  # the block it lands in
        get = self.block_slot.get
        spills: list[tuple[int, int, int]] = []
        restore_slot: list[int] = []
        restore_block: list[int] = []

        # 1. a token at offset 0 opens a block vLLM handed out afresh: drop any stale slot of it
        for block in here[off == 0].tolist():
            slot = get(block)
            if slot is not None:
                self._release(slot)
        # 2. slots the batch reads
        self._stamp_reads(here[off > 0], bt[blk >= 1, 0])
        # 3. a token at offset G-1 completes its block: staged into the block's slot, which is
        # then quantized whole (the first block's slot stays as its 16-bit sink)
        filled_by = np.full(n, -1, dtype=np.int64)
        fill_slot: list[int] = []
        fill_block: list[int] = []
        release_after: list[int] = []
        completing = np.flatnonzero(off == G - 1)
        for r, block, first in zip(completing.tolist(), here[completing].tolist(), (blk[completing] == 0).tolist()):
            slot = get(block)
            if slot is None:  # the prefix was spilled: back into a slot first
                slot = self._restore_into_slot(block, G - 1, spills, restore_slot, restore_block)
            fill_slot.append(slot)
            fill_block.append(block)
            filled_by[r] = slot
            if first:  # (the slot is stamped already: read as the row's tail, or just allocated)
                self.slot_kind[slot] = _SINK
                self.slot_fill[slot] = G
            else:
                release_after.append(slot)
        # 4. the other rows' tails
        tail_slot = np.full(n, -1, dtype=np.int64)
        growing = np.flatnonzero(off < G - 1)
        tail_slot[growing] = self._place_tails(here[growing], off[growing], off[growing] + 1,
                                               spills, restore_slot, restore_block)
        # 5. the kernel's arrays, read before the filled slots are released
        arrays = self._decode_arrays(bt, blk, filled_by, tail_slot, (off + 1) % G)
        for slot in release_after:
            self._release(slot)
        maintenance = None
        if spills or restore_slot:
            maintenance = replace(
                StepPlan.empty(n),
                spill_slot=_long([s[0] for s in spills]), spill_block=_long([s[1] for s in spills]),
                spill_fill=_long([s[2] for s in spills]),
                restore_slot=_long(restore_slot), restore_block=_long(restore_block),
            )
        return DecodeStep(
            table=arrays.table, nblk=arrays.count.astype(np.int32), side_slot=arrays.side_slot, side_len=arrays.side_len,
            stage_slot=np.where(filled_by >= 0, filled_by, tail_slot).astype(np.int32), stage_offset=off.astype(np.int32),
            fill_slot=np.array(fill_slot, dtype=np.int32), fill_block=np.array(fill_block, dtype=np.int32),
            maintenance=maintenance,
        )

    def _decode_arrays(
        self, bt: np.ndarray, full_before: np.ndarray, filled: np.ndarray, tail_slot: np.ndarray, staged_after: np.ndarray,
    ) -> _DecodeRows:
        """The decode kernel's inputs for decode rows with block-table rows `bt`: records
        from the first block not read from a resident 16-bit sink up to `full_before`, the
        sink, and the tail: the slot `filled` by this step's token (read whole), else the
        partial block's `tail_slot` with its `staged_after` tokens."""
        G = self.block_size
        nb = full_before
        firsts = self._slots_of(bt[:, 0])
        sink_of = np.where((nb >= 1) & (firsts >= 0) & (self.slot_kind[np.maximum(firsts, 0)] == _SINK), firsts, -1)
        has_sink = sink_of >= 0
        first = has_sink.astype(np.int64)
        count = nb - first  # record blocks first .. nb-1 of each row
        width = max(1, int(count.max(initial=0)))
        col = np.arange(width)
        valid = col[None, :] < count[:, None]
        src = np.minimum(first[:, None] + col[None, :], bt.shape[1] - 1)
        table = np.where(valid, bt[np.arange(bt.shape[0])[:, None], src], 0).astype(np.int32)
        is_filled = filled >= 0
        tail = np.where(is_filled, filled, np.where(staged_after > 0, tail_slot, -1))
        side_slot = np.empty((bt.shape[0], 2), dtype=np.int32)
        side_slot[:, 0], side_slot[:, 1] = sink_of, tail
        side_len = np.empty((bt.shape[0], 2), dtype=np.int32)
        side_len[:, 0] = has_sink * G
        side_len[:, 1] = np.where(is_filled, G, np.where(tail >= 0, staged_after, 0))
        return _DecodeRows(table, count, first, valid, sink_of, tail, side_slot, side_len)

    def _restore_into_slot(
        self, block: int, fill: int, spills: list[tuple[int, int, int]], restore_slot: list[int], restore_block: list[int]
    ) -> int:
        """A slot for `block` whose first `fill` tokens come back from its (spilled) record."""
        slot = self._allocate(spills, optional=False)
        assert slot is not None
        restore_slot.append(slot)
        restore_block.append(block)
        self.restores += 1
        self._bind(block, slot)
        self.slot_kind[slot] = _TAIL
        self.slot_fill[slot] = fill
        return slot

    def _decode_batches(self, decodes: np.ndarray, seq: np.ndarray) -> list[np.ndarray]:
        """Decode rows in sub-batches of at most attention_budget_rows (row, key) pairs (the
        PyTorch path materializes [rows, key_len] K/V; the Triton path takes one batch)."""
        if decodes.size == 0:
            return []
        key_len = -(-seq[decodes] // self.block_size) * self.block_size
        if decodes.size * int(key_len.max()) <= self.attention_budget_rows:
            return [decodes]
        batches: list[np.ndarray] = []
        first, longest = 0, 0
        for i in range(decodes.size):
            longest_with = max(longest, int(key_len[i]))
            if i > first and (i - first + 1) * longest_with > self.attention_budget_rows:
                batches.append(decodes[first:i])
                first, longest_with = i, int(key_len[i])
            longest = longest_with
        batches.append(decodes[first:])
        return batches

    def _decode_group(
        self,
        rows: np.ndarray,
        qsl: np.ndarray,
        ctx: np.ndarray,
        seq: np.ndarray,
        bt: np.ndarray,
        full_before: np.ndarray,
        full_after: np.ndarray,
        staged_after: np.ndarray,
        tail_slot: np.ndarray,
        filled_by: np.ndarray,
    ) -> AttentionGroup:
        """The group of decode rows `rows`, built with array operations (it runs every step
        for the whole batch). A decode never builds a flush tile: the block its token
        completes is read from the slot that is flushed after the token is staged."""
        G = self.block_size
        n = rows.size
        nb = full_before[rows]
        dec = self._decode_arrays(bt[rows], nb, filled_by[rows], tail_slot[rows], staged_after[rows])
        starts = qsl[rows]
        first_token = int(starts[0]) if np.array_equal(starts, starts[0] + np.arange(n)) else -1
        key_len = -(-int(seq[rows].max()) // G) * G
        none = _long([])
        lists: dict[str, torch.Tensor] = dict.fromkeys(_ROW_LISTS, none)
        if not self.kernel_decodes:  # the row lists the PyTorch path assembles K/V from
            hist_row, hist_col = np.nonzero(dec.valid)
            sink_rows = np.nonzero(dec.sink_of >= 0)[0]
            tail_rows = np.nonzero(dec.tail >= 0)[0]
            tail_pos = np.where(filled_by[rows] >= 0, nb, full_after[rows])
            lists.update(
                hist_row=_long(hist_row),
                hist_pos=_long(dec.first[hist_row] + hist_col),
                hist_block=_long(dec.table[hist_row, hist_col]),
                sink_row=_long(sink_rows),
                sink_slot=_long(dec.sink_of[sink_rows]),
                tail_row=_long(tail_rows),
                tail_pos=_long(tail_pos[tail_rows]),
                tail_slot=_long(dec.tail[tail_rows]),
                new_row=_long(np.arange(n)),
                new_pos=_long(ctx[rows]),
                new_token=_long(starts),
            )
        return AttentionGroup(
            q_tokens=_long(starts[:, None]),
            ctx=_long(ctx[rows]),
            key_len=key_len,
            tile_row=none,
            tile_pos=none,
            tile_index=none,
            **lists,
            dec_table=torch.from_numpy(dec.table),
            dec_nblk=torch.from_numpy(dec.count.astype(np.int32)),
            dec_side_slot=torch.from_numpy(dec.side_slot),
            dec_side_len=torch.from_numpy(dec.side_len),
            dec_first_token=first_token,
            kernel_only=self.kernel_decodes,
        )

    def _group(
        self,
        rows: list[int],
        qsl: np.ndarray,
        qlen: np.ndarray,
        ctx: np.ndarray,
        seq: np.ndarray,
        bt: np.ndarray,
        full_before: np.ndarray,
        full_after: np.ndarray,
        staged_after: np.ndarray,
        tile_base: np.ndarray,
        tail_slot: np.ndarray,
    ) -> AttentionGroup:
        """The group of one prefill chunk (rows = [its request]; q_len > 1)."""
        G = self.block_size
        q = int(qlen[rows[0]])
        hist_row: list[int] = []
        hist_pos: list[int] = []
        hist_block: list[int] = []
        sink_row: list[int] = []
        sink_slot: list[int] = []
        tile_row: list[int] = []
        tile_pos: list[int] = []
        tile_index: list[int] = []
        tail_row: list[int] = []
        tail_pos: list[int] = []
        tail_slots: list[int] = []
        new_row: list[int] = []
        new_pos: list[int] = []
        new_token: list[int] = []
        q_tokens = np.zeros((len(rows), q), dtype=np.int64)
        longest = 0
        for i, r in enumerate(rows):
            longest = max(longest, int(seq[r]))
            q_tokens[i] = np.arange(qsl[r], qsl[r] + q)
            nb = int(full_before[r])
            start = 0
            if nb >= 1:
                slot = self.block_slot.get(int(bt[r, 0]))
                if slot is not None and self.slot_kind[slot] == _SINK:
                    sink_row.append(i)
                    sink_slot.append(slot)
                    start = 1
            for j in range(start, nb):
                hist_row.append(i)
                hist_pos.append(j)
                hist_block.append(int(bt[r, j]))
            for j in range(nb, int(full_after[r])):
                tile_row.append(i)
                tile_pos.append(j)
                tile_index.append(int(tile_base[r] + j - nb))
            if staged_after[r] > 0 and tail_slot[r] >= 0:
                tail_row.append(i)
                tail_pos.append(int(full_after[r]))
                tail_slots.append(int(tail_slot[r]))
            new_row.extend([i] * q)
            new_pos.extend(range(int(ctx[r]), int(ctx[r]) + q))
            new_token.extend(range(int(qsl[r]), int(qsl[r]) + q))
        key_len = -(-longest // G) * G
        fresh = len(rows) == 1 and int(ctx[rows[0]]) == 0
        return AttentionGroup(
            fresh_first_token=int(qsl[rows[0]]) if fresh else -1,
            q_tokens=_long(q_tokens),
            ctx=_long(ctx[rows]),
            key_len=key_len,
            hist_row=_long(hist_row),
            hist_pos=_long(hist_pos),
            hist_block=_long(hist_block),
            sink_row=_long(sink_row),
            sink_slot=_long(sink_slot),
            tile_row=_long(tile_row),
            tile_pos=_long(tile_pos),
            tile_index=_long(tile_index),
            tail_row=_long(tail_row),
            tail_pos=_long(tail_pos),
            tail_slot=_long(tail_slots),
            new_row=_long(new_row),
            new_pos=_long(new_pos),
            new_token=_long(new_token),
        )
