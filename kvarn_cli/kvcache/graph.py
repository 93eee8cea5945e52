"""Decode-only steps as fixed-address device arrays, so vLLM can capture them in CUDA graphs.

In a captured graph the layers' Python does not run on replay: every kernel reads its inputs
from the addresses it was captured with, over the grid it was captured with. So a decode
step on the Triton path (kvarn_cli.kvcache.compute.decode_fixed) takes all it needs from one
persistent int32 buffer that the metadata builder rewrites before each step:

- the decode kernel's block table [rows, W] (W = blocks of the longest sequence the engine
  allows), record counts, and (sink, tail) slots with their token counts;
- the staging kernel's (slot, offset) per token;
- the slot flushes (slot, block) of the blocks the step's tokens complete. The step itself
  does not flush them (it reads those blocks from their slots): the builder quantizes them
  in every layer with one launch before the next step (`take_fills`,
  compute.flush_decode_fills), so a step in which no block fills launches no flush at all.

Rows past the batch (vLLM pads a batch up to a captured size) read nothing and write
nothing: slot -1, no records. The host side is one pinned buffer, sent with one copy; an
event keeps the next step from rewriting it while the copy may still be reading it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from kvarn_cli.kvcache.staging import DecodeStep, StepPlan

#: int32 arrays of one value per row, in buffer order after the table [R, W] and the side
#: slots and lengths [R, 2] each (the decode kernel wants those two row-major)
_ROW_FIELDS = ("nblk", "tokens", "stage_slot", "stage_offset", "fill_slot", "fill_block")


@dataclass(frozen=True)
class DecodeArrays:
    """The device views one decode step reads; `rows` is the (padded) batch size."""

    rows: int
    table: torch.Tensor  # [rows, W] int32
    nblk: torch.Tensor  # [rows] int32
    side_slot: torch.Tensor  # [rows, 2] int32
    side_len: torch.Tensor  # [rows, 2] int32
    tokens: torch.Tensor  # [rows] int32: row i stages token i
    stage_slot: torch.Tensor  # [rows] int32, -1 = nothing to stage
    stage_offset: torch.Tensor  # [rows] int32
    fill_slot: torch.Tensor  # [rows] int32, -1 = no flush
    fill_block: torch.Tensor  # [rows] int32


class DecodeBuffers:
    """The persistent buffer behind DecodeArrays, for batches of up to `max_rows` sequences
    of up to `width` blocks."""

    def __init__(self, max_rows: int, width: int, device: torch.device) -> None:
        self.max_rows = max_rows
        self.width = width
        self.device = device
        # each array starts 16 bytes apart at least (a multiple of 4 int32 rows), as eager
        # steps' arrays do (staging.PACK_ALIGN): the kernels then specialize alike on both
        # paths, and the graphs' capture compiles the eager steps' kernels too
        R = -(-max_rows // 4) * 4
        size = R * (width + 4 + len(_ROW_FIELDS))
        pinned = device.type == "cuda"
        self._host_t = torch.zeros(size, dtype=torch.int32, pin_memory=pinned)
        self._host = self._host_t.numpy()
        self._dev = torch.zeros(size, dtype=torch.int32, device=device)
        self._sent: torch.cuda.Event | None = None
        self._fills = 0  # slot flushes of the last loaded step not yet taken
        W, F = width, len(_ROW_FIELDS)
        cuts = np.cumsum([0, R * W, 2 * R, 2 * R, F * R])
        shapes = ((R, W), (R, 2), (R, 2), (F, R))
        self._host_table, self._host_side_slot, self._host_side_len, self._host_rows = (
            self._host[a:b].reshape(shape) for a, b, shape in zip(cuts[:-1], cuts[1:], shapes)
        )
        self._dev_table, self._dev_side_slot, self._dev_side_len, self._dev_rows = (
            self._dev[a:b].view(shape) for a, b, shape in zip(cuts[:-1], cuts[1:], shapes)
        )
        self._host_rows[_ROW_FIELDS.index("tokens")] = np.arange(R, dtype=np.int32)
        self._blank()
        #: the device views of each batch size seen: they never change, and making them is ten
        #: tensor slices, host time on every decode step otherwise
        self._arrays: dict[int, DecodeArrays] = {}
        #: take_fills' device views of each number of fills seen
        self._fill_views: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _blank(self) -> None:
        """Every row reads and writes nothing."""
        rows = self._host_rows
        self._host_side_slot[:] = -1
        self._host_side_len[:] = 0
        for name in ("stage_slot", "fill_slot", "fill_block"):
            rows[_ROW_FIELDS.index(name)] = -1
        for name in ("nblk", "stage_offset"):
            rows[_ROW_FIELDS.index(name)] = 0

    def fits(self, plan: StepPlan, rows: int) -> bool:
        """Whether `plan` (of a batch padded to `rows`) is a decode-only step these buffers
        can hold: no prefill tile, at most one decode group whose row i is token i."""
        if rows > self.max_rows or plan.num_flush or len(plan.groups) > 1:
            return False
        if not plan.groups:
            return plan.num_tokens <= rows
        group = plan.groups[0]
        return (
            group.q_tokens.shape[1] == 1
            and group.dec_first_token == 0
            and plan.num_tokens == group.q_tokens.shape[0]
            and group.dec_table.shape[1] <= self.width
        )

    def _write(self) -> None:
        if self.device.type == "cuda":
            if self._sent is None:
                self._sent = torch.cuda.Event()
            self._dev.copy_(self._host_t, non_blocking=True)
            self._sent.record()
        else:
            self._dev.copy_(self._host_t)

    def _wait_for_last_copy(self) -> None:
        if self._sent is not None:
            self._sent.synchronize()

    def _check_no_fills(self) -> None:
        if self._fills:
            raise RuntimeError(f"the last decode step's {self._fills} slot flushes were not taken (take_fills) before the buffer was rewritten")

    def take_fills(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The (slot, block) pairs [n] int32 of the last loaded step's slot flushes, as device
        views, or None if it had none; each step's fills are handed out once. Launch their
        flush before the next `load`: its copy into the buffer is ordered after that launch
        on the stream."""
        n, self._fills = self._fills, 0
        if n == 0:
            return None
        views = self._fill_views.get(n)
        if views is None:  # (slicing a device tensor costs host time every step otherwise)
            idx = _ROW_FIELDS.index
            self._fill_views[n] = views = (self._dev_rows[idx("fill_slot"), :n], self._dev_rows[idx("fill_block"), :n])
        return views

    def load(self, plan: StepPlan, rows: int) -> DecodeArrays:
        """Write a decode-only step (host plan, `fits`) into the buffer; its device views."""
        assert plan.slot_token is not None and plan.slot_id is not None and plan.slot_offset is not None
        g = plan.groups[0] if plan.groups else None
        return self._load(
            rows,
            None if g is None else (g.dec_table.numpy(), g.dec_nblk.numpy(), g.dec_side_slot.numpy(), g.dec_side_len.numpy()),
            (plan.slot_token.numpy(), plan.slot_id.numpy(), plan.slot_offset.numpy()),
            (plan.fill_slot.numpy(), plan.fill_block.numpy()),
        )

    def load_decodes(self, step: DecodeStep, rows: int) -> DecodeArrays:
        """Write a step planned by StagingPool.plan_decodes (row i = token i) into the buffer,
        padded to `rows`; its device views."""
        n, w = step.table.shape
        if rows > self.max_rows or n > rows or w > self.width:
            raise ValueError(f"a decode step of {n} rows (padded to {rows}) and {w} blocks does not fit buffers "
                             f"of {self.max_rows} rows and {self.width} blocks")
        return self._load(rows, (step.table, step.nblk, step.side_slot, step.side_len),
                          (slice(0, n), step.stage_slot, step.stage_offset), (step.fill_slot, step.fill_block))

    def _load(
        self, rows: int, kernel: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None,
        staged: tuple[np.ndarray | slice, np.ndarray, np.ndarray], fills: tuple[np.ndarray, np.ndarray],
    ) -> DecodeArrays:
        """Write one step: the decode kernel's (table, nblk, side_slot, side_len) of its first
        rows (None: no decode rows), the staging kernel's (tokens, slot, offset), the slot
        flushes (slot, block). Every other row reads and writes nothing."""
        self._check_no_fills()
        self._wait_for_last_copy()
        self._blank()
        hr = self._host_rows
        idx = _ROW_FIELDS.index
        if kernel is not None:
            table, nblk, side_slot, side_len = kernel
            n, w = table.shape
            self._host_table[:n, :w] = table
            hr[idx("nblk"), :n] = nblk
            self._host_side_slot[:n] = side_slot
            self._host_side_len[:n] = side_len
        tokens, slot, offset = staged
        hr[idx("stage_slot"), tokens] = slot
        hr[idx("stage_offset"), tokens] = offset
        fill_slot, fill_block = fills
        nf = fill_slot.shape[0]
        hr[idx("fill_slot"), :nf] = fill_slot
        hr[idx("fill_block"), :nf] = fill_block
        self._fills = nf
        self._write()
        return self.arrays(rows)

    def load_blank(self, rows: int) -> DecodeArrays:
        """A step in which every row is padding (what a CUDA graph is captured from)."""
        if rows > self.max_rows:
            raise ValueError(f"a decode batch of {rows} rows exceeds the {self.max_rows} the buffers hold")
        self._check_no_fills()
        self._wait_for_last_copy()
        self._blank()
        self._write()
        return self.arrays(rows)

    def arrays(self, rows: int) -> DecodeArrays:
        made = self._arrays.get(rows)
        if made is not None:
            return made
        dr = self._dev_rows
        idx = _ROW_FIELDS.index
        self._arrays[rows] = made = DecodeArrays(
            rows=rows,
            table=self._dev_table[:rows],
            nblk=dr[idx("nblk"), :rows],
            side_slot=self._dev_side_slot[:rows],
            side_len=self._dev_side_len[:rows],
            tokens=dr[idx("tokens"), :rows],
            stage_slot=dr[idx("stage_slot"), :rows],
            stage_offset=dr[idx("stage_offset"), :rows],
            fill_slot=dr[idx("fill_slot"), :rows],
            fill_block=dr[idx("fill_block"), :rows],
        )
        return made


def real_requests(seq_lens: np.ndarray, first_blocks: np.ndarray, num_reqs: int, null_block: int) -> int:
    """How many of a batch's `num_reqs` rows are real requests, to be planned; the rest are
    vLLM's stand-ins, which come last and must not touch the staging pool.

    - Padding up to a captured CUDA-graph size: rows of sequence length 0 whose *device*
      block-table rows vLLM points at the null block; the host copy the builder reads may
      still name an earlier request's blocks there.
    - Dummy batches (the warm-up before each graph capture, profiling runs): rows of length
      1 whose table rows are the null block. Planned, each took a staging slot for the null
      block that no request ever released: at startup the captures of a 16-sequence engine
      held 27 of its 32 slots, so real sequences' first blocks lost their 16-bit sink copies.

    `first_blocks` is column 0 of the host block table; no real request owns the null block.
    """
    seq = np.asarray(seq_lens[:num_reqs])
    real_rows = (seq > 0) & (np.asarray(first_blocks[:num_reqs]) != null_block)
    real = int(np.count_nonzero(real_rows))
    if real and not bool(real_rows[:real].all()):
        raise ValueError("a padding or dummy row before a real request: not vLLM's batch layout")
    return real


def decode_only(query_start_loc: np.ndarray, num_reqs: int) -> bool:
    """Whether the step's first `num_reqs` rows each have one query token, token i in row i
    (StagingPool.plan_decodes' batches)."""
    return int(query_start_loc[num_reqs]) == num_reqs and bool((np.diff(query_start_loc[: num_reqs + 1]) == 1).all())


def table_width(max_model_len: int, block_size: int) -> int:
    return max(1, math.ceil(max_model_len / block_size))
