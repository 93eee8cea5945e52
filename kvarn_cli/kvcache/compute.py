"""One layer's work on the paged KVarN cache, in PyTorch: apply a step plan
(kvarn_cli.kvcache.staging) to write the step's K/V, quantize the blocks that filled, and
attend over quantized history + 16-bit sink/tail + the step's own unquantized tokens.

Attention runs in the Hadamard-rotated domain: records dequantize straight into it
(`rotated=True`), staging slots hold rotated 16-bit K/V, the query is rotated and the output
rotated back. H is orthonormal, so q·k and the weighted sum of V are unchanged; this saves
rotating every history token at every step. Every gather and scatter is batched over the
whole step; the only Python loops are over attention groups (one batch of decodes, one per
longer query) and over query chunks of very long prefills.

On CUDA (or with KVARN_FORCE_TRITON=1, which runs them in Triton's interpreter when
TRITON_INTERPRET=1) the two hot paths use the Triton kernels of kvarn_cli.kernels: flushes
and spills quantize straight into the paged records (triton_flush.flush_tiles), and decode
groups attend with triton_decode.decode_attention over records + sink/tail slots. Prefill
chunks take vLLM's variable-length FlashAttention, one call per layer for the chunks that
start their sequence and one for those that continue one (their keys dequantized and packed
in 16-bit first); flush prefixes read back from a record and restores stay in PyTorch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from kvarn_cli.kvcache.staging import AttentionGroup, StepPlan

#: 1: use the Triton kernels on a CPU tensor too (tests, under TRITON_INTERPRET=1);
#: 0: use the PyTorch path on CUDA too (to compare the two inside one engine); unset: by device.
ENV_FORCE_TRITON = "KVARN_FORCE_TRITON"

#: Kernel variants the backend uses (kvarn_cli.kernels.triton_decode.VARIANTS / triton_flush.VARIANTS);
#: unset = each module's default. For benchmarking variants inside a real engine.
ENV_DECODE_VARIANT = "KVARN_DECODE_VARIANT"
ENV_FLUSH_VARIANT = "KVARN_FLUSH_VARIANT"
#: 1: decode attention with fixed block ranges per split, so that a rerun of the same batch
#: gives the same bits; unset or 0: the CUDA kernel at head_dim 64 deals blocks out to its
#: splits as they ask (faster; the float rounding varies from run to run, see
#: kernels/cuda_decode.split).
ENV_DETERMINISTIC_DECODE = "KVARN_DETERMINISTIC_DECODE"

#: 0: prefill chunks that continue a sequence attend chunk by chunk in PyTorch even where
#: vLLM's FlashAttention could take them all at once (to compare the two inside one engine).
ENV_BATCHED_PREFILL = "KVARN_BATCHED_PREFILL"
#: "0": on the Triton path, lay continued chunks' keys down with PyTorch indexing and matmuls
#: (about forty launches per layer) instead of kernels.triton_pack's four to five, for comparisons
ENV_PACK_KERNELS = "KVARN_PACK_KERNELS"

#: Longer prefill chunks are attended in slices of this many queries (bounds the score memory).
QUERY_CHUNK = 1024


@dataclass
class LayerCache:
    """One layer's storage: vLLM's paged records and kvarn's 16-bit staging slots."""

    #: [num_blocks, kv_heads, record_bytes] uint8 view of the layer's vLLM page tensor
    records: torch.Tensor
    #: [num_slots, kv_heads, G, D] rotated K / V, model dtype
    slot_k: torch.Tensor
    slot_v: torch.Tensor


def records_view(pages: torch.Tensor, record_bytes: int) -> torch.Tensor:
    """The [num_blocks, kv_heads, record_bytes] records inside one layer's vLLM pages
    [num_blocks, kv_heads, ...] (uint8; a head's page may run past its record)."""
    blocks, heads = pages.shape[0], pages.shape[1]
    return pages.view(blocks, heads, -1)[:, :, :record_bytes]


def triton_kernels_apply(quantizer: Any) -> bool:
    """Whether the Triton kernels handle this quantizer's records (KVarN, fp8 scales, 2/4 bits)."""
    layout = getattr(quantizer, "layout", None)
    if layout is None:
        return False
    try:
        from kvarn_cli.kernels.triton_common import kernel_layout
    except ImportError:  # no triton installed
        return False
    try:
        kernel_layout(layout)
    except ValueError:
        return False
    return True


def use_triton(device: torch.device, quantizer: Any) -> bool:
    """The rule for taking the Triton path: CUDA tensors (or KVARN_FORCE_TRITON) and a
    quantizer the kernels handle."""
    forced = os.environ.get(ENV_FORCE_TRITON)
    wanted = device.type == "cuda" if forced not in ("0", "1") else forced == "1"
    return wanted and triton_kernels_apply(quantizer)


class Codec:
    """The quantizer plus its rotation, with the few tensor shapes this module uses.

    `triton` picks the kernels: None decides by device (CUDA, or KVARN_FORCE_TRITON=1) and
    by whether the kernels handle the quantizer; other codecs always take the PyTorch path.
    """

    def __init__(self, quantizer: Any, device: torch.device, *, triton: bool | None = None) -> None:
        self.q = quantizer
        self.record_bytes = int(quantizer.record_bytes)
        rot = getattr(quantizer, "rotation", None)
        self.rotation: torch.Tensor | None = None if rot is None else rot.to(device=device, dtype=torch.float32)
        #: its transpose, contiguous, for kernels that take the matrix as it is applied
        self.rotation_t: torch.Tensor | None = None if self.rotation is None else self.rotation.T.contiguous()
        if triton is None:
            triton = use_triton(device, quantizer)
        elif triton and not triton_kernels_apply(quantizer):
            raise ValueError(f"the Triton kernels do not handle {quantizer!r}")
        self.triton = triton
        if triton and device.type == "cuda":
            from kvarn_cli.kernels import cuda_decode

            # the one-launch decode's counters, allocated now rather than at a first call that
            # vLLM might make while capturing a CUDA graph (where they cannot be)
            cuda_decode.split_counters(device, cuda_decode.MIN_COUNTERS)
        #: kernel-variant overrides, read once (the hot path runs per layer and step)
        self.flush_kernel_args: dict[str, str] = {}
        self.decode_kernel_args: dict[str, Any] = {}
        if os.environ.get(ENV_FLUSH_VARIANT):
            self.flush_kernel_args["variant"] = os.environ[ENV_FLUSH_VARIANT]
        if os.environ.get(ENV_DECODE_VARIANT):
            self.decode_kernel_args["variant"] = os.environ[ENV_DECODE_VARIANT]
        if os.environ.get(ENV_DETERMINISTIC_DECODE, "0") not in ("", "0"):
            self.decode_kernel_args["deterministic"] = True
        self.batched_prefill = os.environ.get(ENV_BATCHED_PREFILL, "1") != "0"
        self.pack_kernels = os.environ.get(ENV_PACK_KERNELS, "1") != "0"

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.rotation is None else x @ self.rotation

    def unrotate(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.rotation is None else x @ self.rotation.T

    def encode(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """[n, H, G, D] unrotated float K/V -> [n, H, record_bytes] records."""
        n, h, g, d = k.shape
        recs = self.q.quantize_batch(k.reshape(n * h, g, d), v.reshape(n * h, g, d))
        return recs.view(n, h, self.record_bytes)

    def flush(self, k: torch.Tensor, v: torch.Tensor, records: torch.Tensor, blocks: torch.Tensor) -> None:
        """Quantize [n, H, G, D] unrotated float K/V into records[blocks] (paged cache, in place)."""
        if self.triton:
            from kvarn_cli.kernels.triton_flush import flush_tiles

            flush_tiles(self.q, k.contiguous(), v.contiguous(), records, blocks, **self.flush_kernel_args)
        else:
            records[blocks] = self.encode(k, v)

    def flush_slots(self, cache: LayerCache, slots: torch.Tensor, blocks: torch.Tensor) -> None:
        """Quantize full staging slots (rotated, model dtype) into records[blocks], in place."""
        if self.triton:
            from kvarn_cli.kernels.triton_flush import flush_slots

            flush_slots(self.q, cache.slot_k, cache.slot_v, slots.to(torch.int32), cache.records,
                        blocks.to(torch.int32), **self.flush_kernel_args)
        else:
            k = self.unrotate(cache.slot_k[slots].float())
            v = self.unrotate(cache.slot_v[slots].float())
            cache.records[blocks] = self.encode(k, v)

    def decode(self, recs: torch.Tensor, *, rotated: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """[n, H, record_bytes] -> float32 K, V [n, H, G, D] (rotated domain if `rotated`)."""
        n, h, _ = recs.shape
        k, v = self.q.dequantize_batch(recs.reshape(n * h, self.record_bytes), rotated=rotated)
        return k.view(n, h, *k.shape[1:]), v.view(n, h, *v.shape[1:])


def maintain(plan: StepPlan, codec: Codec, cache: LayerCache) -> None:
    """Apply the plan's spills and restores to one layer, before any of the step's tokens.

    Spills: partial tails whose slot is reclaimed are quantized into their record, the missing
    positions filled by repeating the staged tokens (keeps VarN's statistics sane). Restores:
    a spilled tail comes back from its record into its new slot (a slot spilled this step may
    be one of them, so spills go first). In vLLM the metadata builder calls this for every
    layer, so a CUDA graph of the step's layers never needs to.
    """
    G = cache.slot_k.shape[2]
    if plan.spill_slot.numel():
        sk = codec.unrotate(cache.slot_k[plan.spill_slot].float())
        sv = codec.unrotate(cache.slot_v[plan.spill_slot].float())
        pos = torch.arange(G, device=sk.device).unsqueeze(0) % plan.spill_fill.unsqueeze(1)  # [S, G]
        idx = pos[:, None, :, None].expand_as(sk)
        codec.flush(sk.gather(2, idx), sv.gather(2, idx), cache.records, plan.spill_block)
    if plan.restore_slot.numel():
        rk, rv = codec.decode(cache.records[plan.restore_block], rotated=True)
        cache.slot_k[plan.restore_slot] = rk.to(cache.slot_k.dtype)
        cache.slot_v[plan.restore_slot] = rv.to(cache.slot_v.dtype)


def update_cache(plan: StepPlan, codec: Codec, cache: LayerCache, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Write the step's K/V [T, H, D] into staging slots and flushed records (after
    `maintain` has run for this plan and layer).

    Returns the flush tiles in the rotated domain ([F, H, G, D] float32, K and V), which this
    step's attention reads for the blocks that prefill chunks filled. Order matters: the
    tiles' staged prefixes are read before the step's tokens and sink copies are written,
    because the plan may hand a slot read this step to another block.
    """
    G = cache.slot_k.shape[2]
    dtype = cache.slot_k.dtype
    recs = cache.records

    # 1. flush tiles of prefill chunks: gather the staged prefixes (unrotated, float32)
    nf = plan.num_flush
    tk = tv = None
    if nf:
        heads, d = cache.slot_k.shape[1], cache.slot_k.shape[3]
        tk = torch.zeros(nf, heads, G, d, device=key.device)
        tv = torch.zeros(nf, heads, G, d, device=key.device)
        if plan.prefix_slot.numel():
            tk[plan.prefix_slot_tile] = codec.unrotate(cache.slot_k[plan.prefix_slot].float())
            tv[plan.prefix_slot_tile] = codec.unrotate(cache.slot_v[plan.prefix_slot].float())

    # 2. the step's tokens: rotated into their slots, unrotated into their flush tiles
    if plan.slot_token.numel():
        if codec.triton and codec.rotation is not None:
            from kvarn_cli.kernels.triton_stage import stage_tokens

            stage_tokens(key, value, plan.slot_token, plan.slot_id, plan.slot_offset,
                         cache.slot_k, cache.slot_v)
        else:
            ks, vs = key[plan.slot_token].float(), value[plan.slot_token].float()
            cache.slot_k[plan.slot_id, :, plan.slot_offset] = codec.rotate(ks).to(dtype)
            cache.slot_v[plan.slot_id, :, plan.slot_offset] = codec.rotate(vs).to(dtype)

    # 3. slots that decode tokens completed: quantized whole, in place
    if plan.fill_slot.numel():
        codec.flush_slots(cache, plan.fill_slot, plan.fill_block)
    if not nf:
        return torch.empty(0, device=key.device), torch.empty(0, device=key.device)
    assert tk is not None and tv is not None
    tk[plan.tile_id, :, plan.tile_offset] = key[plan.tile_token].float()
    tv[plan.tile_id, :, plan.tile_offset] = value[plan.tile_token].float()

    # 4. flush tiles: quantize once into the paged records; first blocks keep a 16-bit sink copy
    codec.flush(tk, tv, recs, plan.flush_block)
    tk_rot, tv_rot = codec.rotate(tk), codec.rotate(tv)
    if plan.keep_slot.numel():
        cache.slot_k[plan.keep_slot] = tk_rot[plan.keep_tile].to(dtype)
        cache.slot_v[plan.keep_slot] = tv_rot[plan.keep_tile].to(dtype)
    return tk_rot, tv_rot


def decode_fixed(
    fixed: Any, codec: Codec, cache: LayerCache, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    output: torch.Tensor, scale: float,
) -> None:
    """A decode-only step on the Triton path: launches whose grids depend only on the (padded)
    batch size and whose inputs sit at fixed addresses (kvarn_cli.kvcache.graph), so vLLM can
    capture the whole step in a CUDA graph and replay it.

    The slots this step's tokens fill are not flushed here: the step reads those blocks from
    their slots, and the builder flushes them in every layer with one launch before the next
    step (flush_decode_fills), so steps in which no block fills launch no flush.

    query/output [T, Hq, D], key/value [T, H, D]; row i of `fixed` is the step's token i.
    """
    from kvarn_cli.kernels.triton_decode import decode_attention
    from kvarn_cli.kernels.triton_stage import stage_tokens

    n = fixed.rows
    stage_tokens(key[:n], value[:n], fixed.tokens, fixed.stage_slot, fixed.stage_offset,
                 cache.slot_k, cache.slot_v)
    # the split count follows from the batch size and the table width (fixed per graph)
    decode_attention(
        codec.q, query[:n], cache.records, fixed.table, fixed.nblk,
        cache.slot_k, cache.slot_v, fixed.side_slot, fixed.side_len, scale=scale,
        out=output[:n], **codec.decode_kernel_args,
    )


def flush_decode_fills(codec: Codec, layers: Any, slots: torch.Tensor, blocks: torch.Tensor) -> None:
    """Quantize the slots that a decode_fixed step filled into their records, in every layer
    of `layers` (triton_flush.LayerSlots) at once. Must run after that step and before any
    later step reads those records or rewrites those slots: the builder runs it first thing
    in the next build, on the stream the steps run on.

    Inside the step, beside the decode on a second stream, the flush cost a launch per layer
    in every step, most of which had nothing to flush (117 µs per step at 64 rows on the
    Qwen3-4B shape, docs/BENCHMARKS.md runs 37-38). This costs ~0.2 ms per filled block over
    36 layers and nothing in a step where no block fills (runs 40-42).
    """
    from kvarn_cli.kernels.triton_flush import flush_slots

    flush_slots(codec.q, layers.slot_k, layers.slot_v, slots, layers.records, blocks, layers=layers,
                **codec.flush_kernel_args)


def attend(
    plan: StepPlan,
    codec: Codec,
    cache: LayerCache,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    tiles: tuple[torch.Tensor, torch.Tensor],
    output: torch.Tensor,
    scale: float,
    varlen: Any = None,
) -> None:
    """Causal attention of the step's queries [T, Hq, D] into `output` [T, Hq, D].

    `varlen` is the variable-length attention kernel for prefill chunks (the signature of
    vllm_compat.varlen_flash_attention); None takes vLLM's FlashAttention where it runs (CUDA,
    16-bit), else the chunks are attended one by one in PyTorch.
    """
    T = plan.num_tokens
    rotated: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    if varlen is None and (plan.fresh_index.numel() or plan.cont_index.numel()):
        varlen = _vllm_varlen(query)
    fresh_done = _attend_fresh_batched(plan, query, key, value, output, scale, varlen)
    continued_done = codec.batched_prefill and _attend_continued_batched(
        plan, codec, cache, query, key, value, tiles, output, scale, varlen)
    for group in plan.groups:
        if codec.triton and group.q_tokens.shape[1] == 1:
            _decode_group_triton(group, codec, cache, query, output, scale)
            continue
        if group.kernel_only:
            raise AssertionError("a decode group planned for the Triton kernel reached the PyTorch path "
                                 "(StagingPool kernel_decodes and Codec.triton disagree)")
        if group.fresh_first_token >= 0:
            if not fresh_done:
                _attend_fresh(group.fresh_first_token, group.q_tokens.shape[1], query, key, value, output, scale)
            continue
        if continued_done and group.q_tokens.shape[1] > 1:
            continue
        if rotated is None:  # a pure-decode step on the Triton path never needs these
            rotated = (codec.rotate(query[:T].float()), codec.rotate(key[:T].float()), codec.rotate(value[:T].float()))
        _attend_group(group, codec, cache, *rotated, tiles, output, scale)


def _decode_group_triton(
    group: AttentionGroup,
    codec: Codec,
    cache: LayerCache,
    query: torch.Tensor,
    output: torch.Tensor,
    scale: float,
) -> None:
    """One query per row, with the Triton decode kernel: records in the block table, the
    sink and the tail (the step's token already written there) from the staging slots."""
    from kvarn_cli.kernels.triton_decode import decode_attention

    if group.tile_row.numel():
        raise AssertionError("a decode row never reads a flush tile (staging.StagingPool.plan)")
    tokens = group.q_tokens[:, 0]
    rows_out = None
    if group.dec_first_token >= 0:  # rows are the step's tokens first..first+rows-1: no gather/scatter
        span = slice(group.dec_first_token, group.dec_first_token + tokens.shape[0])
        q = query[span]
        rows_out = output[span]
        if q.stride(2) != 1 or rows_out.stride(2) != 1 or output.dtype != query.dtype:
            q, rows_out = query[tokens].contiguous(), None
    else:
        q = query[tokens].contiguous()
    out = decode_attention(
        codec.q, q, cache.records, group.dec_table, group.dec_nblk,
        cache.slot_k, cache.slot_v, group.dec_side_slot, group.dec_side_len, scale=scale,
        out=rows_out, **codec.decode_kernel_args,
    )
    if out is not rows_out:
        output[tokens] = out.to(output.dtype)


def _vllm_varlen(query: torch.Tensor) -> Any:
    """vLLM's variable-length FlashAttention where it can attend `query` (CUDA, 16-bit), else None."""
    if query.device.type != "cuda" or query.dtype not in (torch.float16, torch.bfloat16):
        return None
    from kvarn_cli import vllm_compat

    return vllm_compat.varlen_flash_attention()


def _attend_fresh_batched(
    plan: StepPlan, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, output: torch.Tensor, scale: float,
    varlen: Any,
) -> bool:
    """All of the step's sequence-starting prefill chunks in one variable-length attention
    call (vLLM's FlashAttention on CUDA in 16-bit, as vLLM's own backend attends them),
    instead of a handful of PyTorch ops per chunk and layer. False without a kernel (CPU,
    float32 models): the caller then attends chunk by chunk."""
    if plan.fresh_index.numel() == 0 or varlen is None:
        return False
    idx = plan.fresh_index
    out = torch.empty((idx.numel(), *output.shape[1:]), dtype=query.dtype, device=output.device)
    varlen(query[idx], key[idx], value[idx], out, plan.fresh_cu, plan.fresh_cu, plan.fresh_max_len,
           plan.fresh_max_len, scale)
    output[idx] = out.to(output.dtype)
    return True


def _attend_continued_batched(
    plan: StepPlan, codec: Codec, cache: LayerCache, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    tiles: tuple[torch.Tensor, torch.Tensor], output: torch.Tensor, scale: float, varlen: Any,
) -> bool:
    """All of the step's prefill chunks that continue a sequence (after a prefix-cache hit,
    a preemption's recompute, or an earlier chunk) in one variable-length attention call.

    Their keys are packed in the query's dtype, in the rotated domain (records dequantize
    straight into it; slots and tiles hold it): record blocks (on the Triton path one launch
    of kernels.triton_dequant for all of them; in PyTorch each block once, however many chunks
    share it), sink slots, flush tiles, staged tail tokens, then the chunks' own tokens
    (plan.cont_*, staging._pack_continued). On the Triton path kernels.triton_pack copies the
    slot and tile rows and, up to triton_pack.ROTATE_MAX_HEAD_DIM, rotates the chunks' K, V
    and queries and the output back, one launch each; the PyTorch ops it replaces were ~40
    host-bound launches per layer (docs/BENCHMARKS.md runs 152-156). The kernel masks causally
    from the end of each chunk's keys. The PyTorch path instead pads every chunk to whole
    blocks and attends in float32 with an explicit mask, a few dozen launches per chunk and
    layer (0.1-0.2 s steps where preempted sequences came back, docs/BENCHMARKS.md run 127).
    False without a kernel: the caller then attends chunk by chunk.
    """
    if plan.cont_index.numel() == 0 or varlen is None:
        return False
    heads, G, d = cache.slot_k.shape[1], cache.slot_k.shape[2], cache.slot_k.shape[3]
    dtype, dev = query.dtype, query.device
    packed_k = torch.empty(plan.cont_num_keys, heads, d, dtype=dtype, device=dev)
    packed_v = torch.empty_like(packed_k)

    if codec.triton and plan.cont_rec_block.numel():
        from kvarn_cli.kernels.triton_dequant import dequantize_rows

        dequantize_rows(codec.q, cache.records, plan.cont_rec_block, plan.cont_rec_dest, packed_k, packed_v)
    pack = codec.triton and codec.pack_kernels and codec.rotation is not None and codec.rotation_t is not None
    if pack:
        from kvarn_cli.kernels.triton_pack import ROTATE_MAX_HEAD_DIM, copy_rows, rotate_rows

        copy_rows(cache.slot_k, cache.slot_v, plan.cont_slot_row_slot, plan.cont_slot_row_offset,
                  plan.cont_slot_row_dest, packed_k, packed_v)
        if plan.cont_tile_row_index.numel():
            copy_rows(tiles[0], tiles[1], plan.cont_tile_row_index, plan.cont_tile_row_offset, plan.cont_tile_row_dest,
                      packed_k, packed_v)
        if d <= ROTATE_MAX_HEAD_DIM and codec.rotation is not None and codec.rotation_t is not None:
            rotate_rows(key, plan.cont_new_token, codec.rotation, packed_k, plan.cont_new_dest)
            rotate_rows(value, plan.cont_new_token, codec.rotation, packed_v, plan.cont_new_dest)
            q = rotate_rows(query, plan.cont_index, codec.rotation)
            out = torch.empty_like(q)
            varlen(q, packed_k, packed_v, out, plan.cont_cu_q, plan.cont_cu_k, plan.cont_max_q, plan.cont_max_k, scale)
            rotate_rows(out, None, codec.rotation_t, output, plan.cont_index)
            return True

    def put_blocks(dest: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Blocks k, v [n, heads, G, D] at packed rows dest[j] .. dest[j] + G - 1."""
        rows = (dest[:, None] + torch.arange(G, device=dev)).reshape(-1)
        packed_k[rows] = k.transpose(1, 2).reshape(-1, heads, d).to(dtype)
        packed_v[rows] = v.transpose(1, 2).reshape(-1, heads, d).to(dtype)

    if plan.cont_rec_block.numel() and not codec.triton:
        hk, hv = codec.decode(cache.records[plan.cont_rec_unique], rotated=True)
        put_blocks(plan.cont_rec_dest, hk[plan.cont_rec_src], hv[plan.cont_rec_src])
    if plan.cont_sink_slot.numel() and not pack:
        put_blocks(plan.cont_sink_dest, cache.slot_k[plan.cont_sink_slot], cache.slot_v[plan.cont_sink_slot])
    if plan.cont_tile_index.numel() and not pack:
        put_blocks(plan.cont_tile_dest, tiles[0][plan.cont_tile_index], tiles[1][plan.cont_tile_index])
    if plan.cont_staged_slot.numel() and not pack:
        packed_k[plan.cont_staged_dest] = cache.slot_k[plan.cont_staged_slot, :, plan.cont_staged_offset].to(dtype)
        packed_v[plan.cont_staged_dest] = cache.slot_v[plan.cont_staged_slot, :, plan.cont_staged_offset].to(dtype)
    new = plan.cont_new_token
    packed_k[plan.cont_new_dest] = codec.rotate(key[new].float()).to(dtype)
    packed_v[plan.cont_new_dest] = codec.rotate(value[new].float()).to(dtype)
    idx = plan.cont_index
    q = codec.rotate(query[idx].float()).to(dtype)
    out = torch.empty_like(q)
    varlen(q, packed_k, packed_v, out, plan.cont_cu_q, plan.cont_cu_k, plan.cont_max_q, plan.cont_max_k, scale)
    output[idx] = codec.unrotate(out.float()).to(output.dtype)
    return True


def _attend_fresh(
    first: int, length: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, output: torch.Tensor,
    scale: float,
) -> None:
    """Causal attention of a prefill chunk that starts its sequence: its keys are exactly its
    own tokens (the step's unquantized K/V), so no record is read and, attention being
    invariant under the rotation, nothing is rotated. Float32 like the general path."""
    span = slice(first, first + length)
    q = query[span].float().transpose(0, 1).unsqueeze(0)  # [1, Hq, L, D]
    k = key[span].float().transpose(0, 1).unsqueeze(0)  # [1, Hkv, L, D]
    v = value[span].float().transpose(0, 1).unsqueeze(0)
    gqa = q.shape[1] != k.shape[1]
    if length <= QUERY_CHUNK:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    else:  # slices of queries over the keys up to their end (bounds the score memory)
        parts = []
        for start in range(0, length, QUERY_CHUNK):
            stop = min(length, start + QUERY_CHUNK)
            q_pos = torch.arange(start, stop, device=q.device)
            mask = torch.arange(stop, device=q.device)[None, :] <= q_pos[:, None]
            parts.append(F.scaled_dot_product_attention(
                q[:, :, start:stop], k[:, :, :stop], v[:, :, :stop], attn_mask=mask, scale=scale, enable_gqa=gqa))
        out = torch.cat(parts, dim=2)
    output[span] = out[0].transpose(0, 1).to(output.dtype)


def _assemble(
    group: AttentionGroup,
    codec: Codec,
    cache: LayerCache,
    new: torch.Tensor,
    tile: torch.Tensor,
    slots: torch.Tensor,
    hist: torch.Tensor | None,
) -> torch.Tensor:
    rows = group.q_tokens.shape[0]
    heads, G, d = slots.shape[1], slots.shape[2], slots.shape[3]
    out = torch.zeros(rows, heads, group.key_len, d, device=slots.device)
    blocks = out.view(rows, heads, group.key_len // G, G, d)
    if hist is not None:
        blocks[group.hist_row, :, group.hist_pos] = hist
    if group.sink_row.numel():
        blocks[group.sink_row, :, torch.zeros_like(group.sink_row)] = slots[group.sink_slot].float()
    if group.tile_row.numel():
        blocks[group.tile_row, :, group.tile_pos] = tile[group.tile_index]
    if group.tail_row.numel():
        blocks[group.tail_row, :, group.tail_pos] = slots[group.tail_slot].float()
    out[group.new_row, :, group.new_pos] = new[group.new_token]
    return out


def _attend_group(
    group: AttentionGroup,
    codec: Codec,
    cache: LayerCache,
    q_rot: torch.Tensor,
    k_rot: torch.Tensor,
    v_rot: torch.Tensor,
    tiles: tuple[torch.Tensor, torch.Tensor],
    output: torch.Tensor,
    scale: float,
) -> None:
    hist_k = hist_v = None
    if group.hist_block.numel() and group.q_tokens.shape[0] == 1:
        # one sequence's blocks are distinct (and torch.unique would wait on the GPU)
        hist_k, hist_v = codec.decode(cache.records[group.hist_block], rotated=True)
    elif group.hist_block.numel():
        # blocks shared through prefix caching are dequantized once per layer and step
        unique, inverse = torch.unique(group.hist_block, return_inverse=True)
        hist_k, hist_v = codec.decode(cache.records[unique], rotated=True)
        hist_k, hist_v = hist_k[inverse], hist_v[inverse]
    K = _assemble(group, codec, cache, k_rot, tiles[0], cache.slot_k, hist_k)
    V = _assemble(group, codec, cache, v_rot, tiles[1], cache.slot_v, hist_v)
    del hist_k, hist_v
    rows, q_len = group.q_tokens.shape
    q = q_rot[group.q_tokens].transpose(1, 2)  # [rows, Hq, q_len, D]
    key_pos = torch.arange(group.key_len, device=q_rot.device)
    gqa = q.shape[1] != K.shape[1]
    for start in range(0, q_len, QUERY_CHUNK):
        stop = min(q_len, start + QUERY_CHUNK)
        q_pos = group.ctx[:, None] + torch.arange(start, stop, device=q_rot.device)[None, :]  # [rows, chunk]
        mask = (key_pos[None, None, :] <= q_pos[:, :, None]).unsqueeze(1)  # [rows, 1, chunk, L]
        out = F.scaled_dot_product_attention(
            q[:, :, start:stop], K, V, attn_mask=mask, scale=scale, enable_gqa=gqa
        )
        out = codec.unrotate(out).transpose(1, 2)  # [rows, chunk, Hq, D]
        tokens = group.q_tokens[:, start:stop].reshape(-1)
        output[tokens] = out.reshape(tokens.numel(), out.shape[2], out.shape[3]).to(output.dtype)
