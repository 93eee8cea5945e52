"""The Triton kernels of eager steps, compiled when the engine starts instead of mid-job.

Triton compiles a kernel on its first launch with each new specialization: argument dtypes,
constexpr values, and for every integer argument whether it is 1 or divisible by 16, for
every pointer whether it is 16-byte aligned. On the H100 a compile of kvarn's decode kernels
holds the step for seconds, and that time lands in a job's throughput. vLLM's start-up
compiles only what it runs: the decode-only steps of its CUDA-graph captures (decode_fixed).
The eager steps (a prefill next to decode rows, spills and restores, a slot that a decode
token fills outside a graph, every step with graphs off) launch the same kernels with other
specializations, so their first occurrence in a job compiled them, again for each new
combination: one step of 13.4 s at the start of each own-process pass (docs/BENCHMARKS.md
runs 60-61), gone in-process, where all prompts arrived before the first step and no step
mixed prefill and decode rows.

Two things keep a job's steps from compiling: arguments that vary from step to step are
not specialized on (plans' arrays start 16-byte aligned, staging.PACK_ALIGN and
graph.DecodeBuffers; counts and widths are do_not_specialize, triton_decode.RUNTIME_SIZES),
and `warm_eager_steps` runs two real eager steps on scratch storage shaped like a layer's.
tests/test_kernel_specializations.py checks that a varied schedule launches nothing the
warm-up did not.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kvarn_cli.kvcache.compute import Codec, LayerCache, attend, flush_decode_fills, maintain, update_cache
from kvarn_cli.kvcache.staging import UNSPLIT_DECODES, StagingPool

#: scratch storage of the warm-up: blocks and staging slots it uses
WARM_BLOCKS = 5
WARM_SLOTS = 4


def warm_eager_steps(codec: Codec, cache: LayerCache, q_heads: int, dtype: torch.dtype, varlen: Any = None) -> None:
    """Run two eager steps of the Triton path on `cache` (scratch: WARM_BLOCKS records and
    WARM_SLOTS slots, laid out as a layer's, which it overwrites), as the builder and a layer
    run them, plans moved to the device and all:

    1. prefills of 2G+1 and 2G-1 tokens: the tile flush (blocks filled by a prefill), their
       sink copies and the staging of their partial tiles;
    2. one decode token each: decode attention over a record and the 16-bit slots, and the
       slot flush of the block the second one fills;
    2b. two more tokens each, as continued prefill chunks: their history records, sink slots
       and staged tokens laid down for the variable-length attention (kernels.triton_dequant,
       kernels.triton_pack; `varlen` as compute.attend takes it, None = vLLM's FlashAttention
       where it runs);
    2c. continued chunks again, the first one filling its block: its flush tile's rows too
       (float32, another specialization of triton_pack's row copy);
    3. that flush again as the builder runs it after a CUDA-graph decode step: one launch for
       every layer (compute.flush_decode_fills over triton_flush.LayerSlots; here two layers,
       the scratch twice), int32 (slot, block) pairs as graph.DecodeBuffers hands them out.

    Does nothing on the PyTorch path, which compiles nothing."""
    if not codec.triton:
        return
    device = cache.records.device
    G = cache.slot_k.shape[2]
    kv_heads, d = cache.slot_k.shape[1], cache.slot_k.shape[3]
    if cache.records.shape[0] < WARM_BLOCKS or cache.slot_k.shape[0] < WARM_SLOTS:
        raise ValueError(f"the warm-up needs {WARM_BLOCKS} blocks and {WARM_SLOTS} slots")
    pool = StagingPool(WARM_SLOTS, G, attention_budget_rows=UNSPLIT_DECODES, kernel_decodes=True)
    table = np.array([[0, 1, 2], [3, 4, -1]], dtype=np.int32)
    gen = torch.Generator(device=device).manual_seed(0)
    steps = (([2 * G + 1, 2 * G - 1], [2 * G + 1, 2 * G - 1]), ([1, 1], [2 * G + 2, 2 * G]), ([2, 2], [2 * G + 4, 2 * G + 2]),
             ([G - 4, 2], [3 * G, 2 * G + 4]))
    for query_lens, seq_lens in steps:
        qsl = np.concatenate([[0], np.cumsum(query_lens)]).astype(np.int32)
        tokens = int(qsl[-1])
        plan = pool.plan(qsl, np.array(seq_lens, dtype=np.int32), table, tokens).to(device)
        q = torch.randn(tokens, q_heads, d, generator=gen, device=device).to(dtype)
        k = torch.randn(tokens, kv_heads, d, generator=gen, device=device).to(dtype)
        v = torch.randn(tokens, kv_heads, d, generator=gen, device=device).to(dtype)
        if plan.needs_maintenance:
            maintain(plan, codec, cache)
        tiles = update_cache(plan, codec, cache, k, v)
        attend(plan, codec, cache, q, k, v, tiles, torch.empty_like(q), scale=d**-0.5, varlen=varlen)
    from kvarn_cli.kernels.triton_flush import LayerSlots

    layers = LayerSlots([(cache.slot_k, cache.slot_v, cache.records)] * 2)
    slots = torch.tensor([0, 1], dtype=torch.int32, device=device)
    blocks = torch.tensor([3, 4], dtype=torch.int32, device=device)
    flush_decode_fills(codec, layers, slots, blocks)
