"""The staging plan + layer compute against a reference, on a simulated block manager.

Every test drives the real StagingPool / update_cache / attend code through scenarios a
vLLM engine produces (chunked prefill, mixed prefill+decode batches, prefix caching, in-step
prefix sharing, preemption with recompute, sequences that pause while others run) and
checks each step's attention output against attention computed directly from the KVarN
rules (tests/kvcache_sim.py). The codec rounds to a 1/4 grid, so any key read from the wrong
place (a record instead of 16-bit staging or the reverse) shows up as an error of ~0.1.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from kvcache_sim import GridQuantizer, Request, Shape, SimEngine, reference_varlen  # noqa: E402

from kvarn_cli.kvcache.staging import StagingPool, StagingPoolExhausted, StepPlan  # noqa: E402

TOL = 1e-4
#: run a scenario with prefill chunks attended chunk by chunk in PyTorch (False) and with one
#: variable-length kernel call per step (True; tests/kvcache_sim.reference_varlen standing in
#: for vLLM's FlashAttention, which exists only on CUDA)
KERNEL = pytest.mark.parametrize("kernel", [False, True], ids=["torch", "varlen"])


def signed_permutation(d: int, seed: int) -> torch.Tensor:
    """An orthonormal rotation that is exact in floating point (so grid rounding is too)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(d, generator=g)
    signs = torch.randint(0, 2, (d,), generator=g).float() * 2 - 1
    m = torch.zeros(d, d)
    m[torch.arange(d), perm] = signs
    return m


def make_engine(
    num_blocks: int = 64, num_slots: int = 16, *, rotation: bool = True, prefix_caching: bool = True, varlen: Any = None
) -> SimEngine:
    shape = Shape()
    rot = signed_permutation(shape.head_dim, 3) if rotation else None
    return SimEngine(shape, num_blocks, num_slots, GridQuantizer(shape.head_dim, shape.block_size, rot),
                     prefix_caching=prefix_caching, varlen=varlen)


class CountingVarlen:
    """reference_varlen, counting its calls and the chunks it attended: fresh ones (keys
    are the queries' own tokens, one cu array for both) and continued ones."""

    def __init__(self) -> None:
        self.calls = 0
        self.fresh = 0
        self.continued = 0

    def __call__(self, q, k, v, out, cu_q, cu_k, max_q, max_k, scale):  # type: ignore[no-untyped-def]
        self.calls += 1
        if cu_k is cu_q:
            self.fresh += cu_q.numel() - 1
        else:
            self.continued += cu_q.numel() - 1
        reference_varlen(q, k, v, out, cu_q, cu_k, max_q, max_k, scale)


def tokens(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, 1000, n).tolist()


def test_a_block_that_fills_is_read_from_its_record_afterwards_and_the_sink_stays_16bit() -> None:
    eng = make_engine()
    req = Request(0, tokens(1, 23))
    eng.step([(req, 6)])  # blocks 0 full + 2 staged in block 1
    assert eng.pool.spills == 0
    for _ in range(17):
        plan = eng.step([(req, 1)])
        assert plan is not None
    assert eng.max_err < TOL
    # after the run: block 0 is a sink slot, blocks 1..4 are records only, block 5 is a tail
    blocks = req.blocks
    assert eng.pool.block_slot.get(blocks[0]) is not None
    for b in blocks[1:5]:
        assert b not in eng.pool.block_slot
    assert eng.pool.block_slot.get(blocks[5]) is not None
    # the records of flushed blocks hold exactly the rounded K of their tokens
    k_rec, _ = eng.codec.decode(eng.cache.records[torch.tensor([blocks[2]])], rotated=False)
    from kvcache_sim import _token_vectors

    expect = torch.stack([_token_vectors(req.hashes[p], eng.shape)[1] for p in range(8, 12)], dim=1)
    assert torch.allclose(k_rec[0], eng.quantizer.roundtrip(expect), atol=1e-6)


def test_reading_the_wrong_representation_is_detected() -> None:
    """Guard for the harness itself: if attention read the sink from its record, the
    reference (which expects 16-bit) would disagree by far more than the tolerance."""
    eng = make_engine()
    req = Request(0, tokens(2, 12))
    eng.step([(req, 8)])
    sink_slot = eng.pool.block_slot[req.blocks[0]]
    eng.cache.slot_k[sink_slot] = eng.quantizer.grid(eng.cache.slot_k[sink_slot])
    eng.step([(req, 1)])
    assert eng.max_err > 1e-2


@pytest.mark.parametrize("rotation", [False, True])
@KERNEL
def test_chunked_prefill_and_decode_mixed_in_one_batch(rotation: bool, kernel: bool) -> None:
    eng = make_engine(rotation=rotation, varlen=CountingVarlen() if kernel else None)
    a, b, c = Request(0, tokens(3, 40)), Request(1, tokens(4, 30)), Request(2, tokens(5, 9))
    eng.step([(a, 7)])
    eng.step([(a, 5), (b, 3)])
    eng.step([(a, 1), (b, 13), (c, 9)])  # a decode next to two prefills
    for _ in range(12):
        eng.step([(a, 1), (b, 1), (c, 1)])
    eng.step([(a, 1), (b, 9)])
    assert eng.steps == 16
    assert eng.pool.spills == 0
    assert eng.max_err < TOL


@KERNEL
def test_prefix_cache_hits_share_records_and_the_sink_copy(kernel: bool) -> None:
    eng = make_engine(varlen=CountingVarlen() if kernel else None)
    prompt = tokens(6, 14)
    a = Request(0, prompt + tokens(7, 6))
    eng.step([(a, 14)])
    for _ in range(6):
        eng.step([(a, 1)])
    a_blocks = list(a.blocks)
    eng.release(a)  # finished: its full blocks stay in the prefix cache
    b = Request(1, prompt + tokens(8, 5))
    eng.step([(b, 2)])  # hits blocks 0..2 of a (12 tokens), computes 2 more
    assert b.num_computed == 14
    assert b.blocks[:3] == a_blocks[:3]
    # the shared first block is read from a's 16-bit sink copy, not from its record
    assert eng.pool.block_slot.get(a_blocks[0]) is not None
    for _ in range(5):
        eng.step([(b, 1)])
    assert eng.max_err < TOL


@KERNEL
def test_a_block_filled_by_one_request_is_read_by_another_in_the_same_step(kernel: bool) -> None:
    eng = make_engine(varlen=CountingVarlen() if kernel else None)
    prompt = tokens(9, 13)
    a = Request(0, prompt + [1, 2, 3])
    b = Request(1, prompt + [4, 5, 6, 7, 8])
    plan = eng.step([(a, 13), (b, 2)])  # b is admitted after a cached blocks 0..2
    assert plan is not None
    assert b.num_computed == 14 and b.blocks[:3] == a.blocks[:3]  # 12 hit + 2 computed
    for _ in range(3):
        eng.step([(a, 1), (b, 1)])
    assert eng.max_err < TOL


@KERNEL
def test_preemption_with_recompute_and_with_prefix_hits(kernel: bool) -> None:
    for prefix_caching in (False, True):
        eng = make_engine(prefix_caching=prefix_caching, varlen=CountingVarlen() if kernel else None)
        a, b = Request(0, tokens(10, 30)), Request(1, tokens(11, 30))
        eng.step([(a, 10), (b, 6)])
        for _ in range(5):
            eng.step([(a, 1), (b, 1)])
        eng.release(b)  # preempted: everything freed
        for _ in range(3):
            eng.step([(a, 1)])
        eng.step([(b, 13)])  # resumed: recomputed (partly from cached blocks)
        for _ in range(4):
            eng.step([(a, 1), (b, 1)])
        assert eng.max_err < TOL, prefix_caching
        # with prefix caching the two full blocks computed before preemption are hits
        assert b.num_computed == (8 + 13 + 4 if prefix_caching else 13 + 4)


@pytest.mark.parametrize("resume_tokens", [1, 2])
@KERNEL
def test_small_pool_spills_paused_tails_and_brings_them_back(resume_tokens: int, kernel: bool) -> None:
    eng = make_engine(num_slots=4, varlen=CountingVarlen() if kernel else None)
    reqs = [Request(i, tokens(20 + i, 40)) for i in range(5)]
    eng.step([(reqs[0], 5), (reqs[1], 5)])  # 2 sinks, 2 tails: the pool is full
    eng.step([(reqs[0], 1), (reqs[1], 1)])  # tails hold 2 of 4 tokens
    # 0 and 1 pause while three new tails need slots: both sinks and one tail are reclaimed
    eng.step([(reqs[2], 7), (reqs[3], 2), (reqs[4], 3)])
    assert eng.pool.spills == 1
    assert eng.pool.sink_fallbacks == 1  # reqs[2]'s first block found no slot: record only
    plan = eng.step([(reqs[0], resume_tokens), (reqs[1], resume_tokens)])
    assert plan is not None
    # the spilled prefix comes back from the record into a slot, whether the block stays
    # partial (a tail) or fills right away (read as the flush tile's prefix)
    assert eng.pool.restores == 1
    assert plan.restore_slot.numel() == 1
    for _ in range(6):
        eng.step([(reqs[0], 1), (reqs[1], 1)])
    assert eng.max_err < TOL


@pytest.mark.parametrize("seed", [0, 1])
def test_random_schedules_match_the_reference(seed: int) -> None:
    """Many steps of random admissions, chunk sizes, pauses, preemptions and finishes."""
    eng = make_engine(num_blocks=48, num_slots=8)
    finished = _random_schedule(eng, seed)
    assert finished == 30
    assert eng.pool.spills > 0  # finished sequences' tails are reclaimed under pressure
    assert eng.max_err < TOL


def _random_schedule(eng: SimEngine, seed: int, steps: int = 400) -> int:
    """Random admissions, chunk sizes, pauses, preemptions and finishes; returns how many finished."""
    rng = np.random.default_rng(seed)
    # requests i and i+5 share prompts, so prefix hits happen
    waiting = [Request(i, tokens(100 + (i % 5), int(rng.integers(5, 50)))) for i in range(30)]
    running: list[Request] = []
    finished = 0
    for _ in range(steps):
        while waiting and len(running) < 4 and rng.random() < 0.5:
            running.append(waiting.pop(0))
        if not running and not waiting:
            break
        sched = []
        for r in running:
            if rng.random() < 0.15:
                continue  # not scheduled this step
            in_prefill = r.num_computed < len(r.tokens) // 2
            sched.append((r, int(rng.integers(1, 9)) if in_prefill else 1))
        eng.step(sched)
        for r in list(running):
            if r.num_computed >= len(r.tokens):
                eng.release(r)
                running.remove(r)
                finished += 1
            elif rng.random() < 0.03:
                eng.release(r)  # preempted; recomputed later
                running.remove(r)
                waiting.insert(0, r)
    return finished


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_pool_planning_for_the_decode_kernel_decides_alike_without_row_lists(seed: int) -> None:
    """The CUDA backend's pool (kernel_decodes) leaves out the row lists that only the PyTorch
    path reads. Fed the same batches as the general pool, it must make the same slot
    decisions and give the decode kernel the same inputs, through spills and restores."""
    from dataclasses import fields

    from kvarn_cli.kvcache.staging import _ROW_LISTS

    eng = make_engine(num_blocks=48, num_slots=8)
    twin = StagingPool(8, eng.G, kernel_decodes=True)
    general_plan = eng.pool.plan
    decode_groups = 0

    def plan_both(*args: object) -> StepPlan:
        nonlocal decode_groups
        plan = general_plan(*args)  # type: ignore[arg-type]
        other = twin.plan(*args)  # type: ignore[arg-type]
        for name in ("block_slot", "free", "spills", "restores", "sink_fallbacks"):
            assert getattr(twin, name) == getattr(eng.pool, name), name
        for name in ("slot_block", "slot_kind", "slot_fill", "slot_stamp"):
            assert np.array_equal(getattr(twin, name), getattr(eng.pool, name)), name
        for f in fields(StepPlan):
            if isinstance(getattr(plan, f.name), torch.Tensor):
                assert torch.equal(getattr(plan, f.name), getattr(other, f.name)), f.name
        assert len(plan.groups) == len(other.groups)
        for mine, theirs in zip(plan.groups, other.groups):
            decode = mine.q_tokens.shape[1] == 1
            assert theirs.kernel_only == decode and not mine.kernel_only
            decode_groups += decode
            for f in fields(mine):
                a, b = getattr(mine, f.name), getattr(theirs, f.name)
                if decode and f.name in _ROW_LISTS:
                    assert b.numel() == 0 < a.numel() or a.numel() == b.numel() == 0, f.name
                elif isinstance(a, torch.Tensor):
                    assert torch.equal(a, b), f.name
                elif f.name != "kernel_only":
                    assert a == b, f.name
        return plan

    eng.pool.plan = plan_both  # type: ignore[method-assign]
    assert _random_schedule(eng, seed) == 30
    assert decode_groups > 30 and eng.pool.spills > 0 and eng.max_err < TOL


def test_a_decode_group_planned_for_the_kernel_never_takes_the_pytorch_path() -> None:
    """A kernel-only group has no row lists to assemble K/V from: attending it on the PyTorch
    path must fail loudly, not attend to nothing."""
    from kvarn_cli.kvcache.compute import Codec, LayerCache, attend

    eng = make_engine()
    pool = StagingPool(16, eng.G, kernel_decodes=True)
    G = eng.G
    bt = np.array([[1, 2]])
    pool.plan(np.array([0, G + 1]), np.array([G + 1]), bt, G + 1)
    plan = pool.plan(np.array([0, 1]), np.array([G + 2]), bt, 1)
    assert plan.groups and plan.groups[0].kernel_only
    s = eng.shape
    codec = Codec(eng.quantizer, torch.device("cpu"), triton=False)
    cache = LayerCache(records=torch.zeros(4, s.kv_heads, codec.record_bytes, dtype=torch.uint8),
                       slot_k=torch.zeros(16, s.kv_heads, G, s.head_dim), slot_v=torch.zeros(16, s.kv_heads, G, s.head_dim))
    q = torch.zeros(1, s.q_heads, s.head_dim)
    kv = torch.zeros(1, s.kv_heads, s.head_dim)
    with pytest.raises(AssertionError, match="reached the PyTorch path"):
        attend(plan, codec, cache, q, kv, kv, (torch.empty(0), torch.empty(0)), torch.zeros_like(q), 1.0)


def test_the_pool_refuses_a_batch_it_cannot_stage() -> None:
    pool = StagingPool(num_slots=1, block_size=4)
    qsl = np.array([0, 2, 4])
    seq = np.array([2, 2])
    bt = np.array([[1], [2]])
    with pytest.raises(StagingPoolExhausted):
        pool.plan(qsl, seq, bt, 4)


def test_a_plan_resolves_its_masks_on_the_host_and_moves_packed() -> None:
    """Index lists equal the masks they stand for, and `.to()` keeps every tensor's values,
    shape and dtype (the GPU path relies on both: no layer asks the device about a mask)."""
    G = 4
    pool = StagingPool(8, G)
    bt = np.arange(12, dtype=np.int32).reshape(2, 6)
    # request 0: a 6-token prefill (fills block 0, stages 2); request 1: 3 tokens (tail only)
    plan = pool.plan(np.array([0, 6, 9]), np.array([6, 3]), bt, 9)
    assert torch.equal(plan.slot_token, torch.nonzero(plan.token_slot >= 0).flatten())
    assert torch.equal(plan.slot_id, plan.token_slot[plan.token_slot >= 0])
    assert torch.equal(plan.tile_token, torch.nonzero(plan.token_tile >= 0).flatten())
    assert torch.equal(plan.tile_offset, plan.token_offset[plan.token_tile >= 0])
    assert torch.equal(plan.keep_slot, plan.flush_keep_slot[plan.flush_keep_slot >= 0])
    assert plan.tile_token.numel() == 4 and plan.slot_token.numel() == 5
    moved = plan.to(torch.device("cpu"))
    for name in ("token_slot", "slot_token", "tile_id", "flush_block", "keep_tile"):
        a, b = getattr(plan, name), getattr(moved, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    for g0, g1 in zip(plan.groups, moved.groups):
        assert torch.equal(g0.dec_table, g1.dec_table) and g0.dec_table.dtype == g1.dec_table.dtype
        assert torch.equal(g0.q_tokens, g1.q_tokens) and g0.dec_first_token == g1.dec_first_token
    # the next step decodes one token per request: the rows are tokens 0, 1 in order
    step = pool.plan(np.array([0, 1, 2]), np.array([7, 4]), bt, 2)
    decode = [g for g in step.groups if g.q_tokens.shape[1] == 1]
    assert len(decode) == 1 and decode[0].dec_first_token == 0


@pytest.mark.parametrize("chunk", [4, 1024])
def test_fresh_prefill_attends_causally_over_its_own_tokens(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first prefill chunk skips records and slots; sliced or not it is causal GQA attention."""
    from kvarn_cli.kvcache import compute

    monkeypatch.setattr(compute, "QUERY_CHUNK", chunk)
    gen = torch.Generator().manual_seed(0)
    T, L, first, hq, hkv, d = 16, 10, 3, 4, 2, 8
    q, k, v = (torch.randn(T, h, d, generator=gen) for h in (hq, hkv, hkv))
    out = torch.zeros(T, hq, d)
    compute._attend_fresh(first, L, q, k, v, out, scale=0.3)
    for t in range(L):
        for h in range(hq):
            keys, vals = k[first : first + t + 1, h // 2], v[first : first + t + 1, h // 2]
            want = torch.softmax(keys @ q[first + t, h] * 0.3, dim=0) @ vals
            torch.testing.assert_close(out[first + t, h], want, rtol=1e-5, atol=1e-5)
    assert bool((out[:first] == 0).all()) and bool((out[first + L :] == 0).all())


def test_fresh_chunks_are_listed_for_one_batched_attention_call() -> None:
    """A step mixing a decode, a continued prefill and two sequence-starting chunks lists
    exactly the fresh chunks' tokens and lengths, in the token order of the step."""
    G = 4
    pool = StagingPool(16, G)
    bt = np.arange(1, 1 + 4 * 4).reshape(4, 4)
    # step 1: requests 0 and 1 start (5 and 2 tokens)
    first = pool.plan(np.array([0, 5, 7]), np.array([5, 2]), bt[:2], 7)
    assert first.fresh_index.tolist() == list(range(7))
    assert first.fresh_cu.tolist() == [0, 5, 7] and first.fresh_cu.dtype == torch.int32
    assert first.fresh_max_len == 5
    # step 2: request 0 decodes, request 1 continues its prefill (3 tokens), 2 and 3 start (2, 6)
    qsl = np.array([0, 1, 4, 6, 12])
    step = pool.plan(qsl, np.array([6, 5, 2, 6]), bt, 12)
    assert step.fresh_index.tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    assert step.fresh_cu.tolist() == [0, 2, 8] and step.fresh_max_len == 6
    fresh_groups = [g for g in step.groups if g.fresh_first_token >= 0]
    assert [g.fresh_first_token for g in fresh_groups] == [4, 6]
    moved = step.to(torch.device("cpu"))
    assert moved.fresh_cu.tolist() == [0, 2, 8] and moved.fresh_max_len == 6


def test_batched_fresh_attention_matches_chunk_by_chunk() -> None:
    """The batched path gives the chunk-by-chunk result (here with a reference kernel in
    place of vLLM's FlashAttention, which only exists on CUDA) and leaves other rows alone."""
    from kvarn_cli.kvcache import compute

    G = 4
    pool = StagingPool(16, G)
    bt = np.arange(1, 1 + 3 * 4).reshape(3, 4)
    pool.plan(np.array([0, 5]), np.array([5]), bt[:1], 5)
    plan = pool.plan(np.array([0, 1, 4, 10]), np.array([6, 3, 6]), bt, 10)  # a decode, then two fresh chunks
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(10, h, 8, generator=gen).to(torch.bfloat16) for h in (4, 2, 2))

    def reference(qf, kf, vf, out, cu, cu_k, max_len, max_k, scale):  # type: ignore[no-untyped-def]
        assert max_len == max_k == int((cu[1:] - cu[:-1]).max()) and cu_k is cu
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
            compute._attend_fresh(a, b - a, qf, kf, vf, out, scale)

    batched = torch.full((10, 4, 8), 7.0, dtype=torch.bfloat16)
    assert compute._attend_fresh_batched(plan, q, k, v, batched, 0.3, reference)
    single = torch.full((10, 4, 8), 7.0, dtype=torch.bfloat16)
    for g in plan.groups:
        if g.fresh_first_token >= 0:
            compute._attend_fresh(g.fresh_first_token, g.q_tokens.shape[1], q, k, v, single, 0.3)
    torch.testing.assert_close(batched, single)
    assert bool((batched[0] == 7.0).all())  # the decode row is not the fresh path's
    # no kernel (a CPU tensor, or float32 on CUDA): the caller attends chunk by chunk
    assert compute._vllm_varlen(q) is None
    assert not compute._attend_fresh_batched(plan, q, k, v, batched, 0.3, None)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_continued_chunks_in_one_varlen_call_match_the_reference(seed: int) -> None:
    """The random schedules (prefix hits, chunks after chunks, preemption with recompute,
    spills and restores) with every prefill chunk attended by one variable-length kernel
    call per step over keys packed from records, sinks, tiles and staged tails: each step's
    output still matches the rule-based reference, and the continued chunks really took it."""
    kernel = CountingVarlen()
    eng = make_engine(num_blocks=48, num_slots=8, varlen=kernel)
    assert _random_schedule(eng, seed) == 30
    assert eng.pool.spills > 0
    assert kernel.continued > 20 and kernel.fresh > 0
    assert eng.max_err < TOL


def test_continued_chunks_read_each_shared_record_once() -> None:
    """Two chunks after the same cached prefix dequantize its blocks once per layer; each
    chunk's packed keys start with them, its staged tail tokens and its own tokens follow."""
    kernel = CountingVarlen()
    eng = make_engine(varlen=kernel)
    G = eng.G
    prompt = tokens(20, 3 * G + 2)
    a = Request(0, prompt + tokens(21, 8))
    eng.step([(a, 3 * G + 2)])
    eng.step([(a, 1)])
    cached = list(a.blocks[:3])
    eng.release(a)  # its three full blocks stay cached
    b, c = Request(1, prompt + tokens(22, 9)), Request(2, prompt + tokens(23, 9))
    plan = eng.step([(b, 3), (c, 5)])  # both hit blocks 0..2, then compute 3 and 5 tokens
    assert plan is not None and b.num_computed == 3 * G + 3 and c.num_computed == 3 * G + 5
    assert plan.cont_cu_q.tolist() == [0, 3, 8] and plan.cont_cu_k.tolist() == [0, 3 * G + 3, 6 * G + 8]
    assert plan.cont_num_keys == 6 * G + 8 and plan.cont_max_q == 5 and plan.cont_max_k == 3 * G + 5
    # block 0 from the sink a left behind; blocks 1 and 2 from records, dequantized once for both
    assert plan.cont_sink_dest.tolist() == [0, 3 * G + 3]
    assert plan.cont_rec_unique.tolist() == sorted(cached[1:]) and plan.cont_rec_src.numel() == 4
    assert plan.cont_rec_block.tolist() == cached[1:] * 2
    assert plan.cont_rec_unique[plan.cont_rec_src].tolist() == plan.cont_rec_block.tolist()
    assert plan.cont_rec_dest.tolist() == [G, 2 * G, 4 * G + 3, 5 * G + 3]
    assert plan.cont_new_dest.tolist() == [3 * G + i for i in range(3)] + [6 * G + 3 + i for i in range(5)]
    assert plan.cont_staged_slot.numel() == 0  # the hits end on a block boundary
    # b fills its block 3 (a flush tile) and goes on; c continues inside its block 4, whose
    # first token was staged last step and is read from c's tail slot
    plan = eng.step([(b, 4), (c, 2)])
    assert plan is not None
    assert plan.cont_cu_k.tolist() == [0, 3 * G + 7, 6 * G + 14]
    assert plan.cont_tile_dest.tolist() == [3 * G]
    assert plan.cont_staged_dest.tolist() == [(3 * G + 7) + 4 * G] and plan.cont_staged_offset.tolist() == [0]
    assert kernel.calls == 3  # a's fresh prefill, then one call for each step of continued chunks
    assert eng.max_err < TOL


def test_continued_chunks_keep_the_pytorch_path_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """KVARN_BATCHED_PREFILL=0 sends continued chunks through the PyTorch path even with a
    kernel at hand (for comparisons inside one engine); fresh chunks still use the kernel."""
    from kvarn_cli.kvcache import compute

    monkeypatch.setenv(compute.ENV_BATCHED_PREFILL, "0")
    kernel = CountingVarlen()
    eng = make_engine(varlen=kernel)
    a = Request(0, tokens(30, 40))
    eng.step([(a, 10)])
    eng.step([(a, 10)])
    eng.step([(a, 10)])
    assert kernel.calls == kernel.fresh == 1 and kernel.continued == 0
    assert eng.max_err < TOL


def test_cuda_graph_padding_rows_are_not_planned() -> None:
    """vLLM pads a decode batch to a captured graph size with requests of sequence length 0
    whose host block-table rows still name earlier requests' blocks. Planned as requests,
    they would release a live sequence's slot and stage their dummy token into it; the
    builder plans only the real requests (graph.real_requests)."""
    from kvarn_cli.kvcache.graph import real_requests

    G = 4
    bt = np.array([[1, 2, 0, 0], [3, 4, 0, 0], [3, 4, 0, 0], [1, 2, 0, 0]])  # rows 2, 3: stale copies
    pool = StagingPool(8, G)
    pool.plan(np.array([0, 6, 11]), np.array([6, 5]), bt[:2], 11)  # two prompts: tails in blocks 2 and 4
    live = dict(pool.block_slot)
    assert 2 in live and 4 in live

    seq = np.array([7, 6, 0, 0])  # one decode each, then two padding rows
    qsl = np.array([0, 1, 2, 3, 4])
    assert real_requests(seq, bt[:, 0], 4, 0) == 2
    n = real_requests(seq, bt[:, 0], 4, 0)
    plan = pool.plan(qsl[: n + 1], seq[:n], bt[:n], int(qsl[n]))
    assert plan.num_tokens == 2 and plan.slot_token.tolist() == [0, 1]
    assert pool.block_slot[2] == live[2] and pool.block_slot[4] == live[4]

    # what the padding rows would have done: write their dummy tokens into the live slots
    bad = StagingPool(8, G)
    bad.plan(np.array([0, 6, 11]), np.array([6, 5]), bt[:2], 11)
    wrong = bad.plan(qsl, seq, bt, 4)
    padding_writes = {int(s) for t, s in zip(wrong.slot_token.tolist(), wrong.slot_id.tolist()) if t >= 2}
    assert padding_writes and padding_writes <= set(live.values())

    with pytest.raises(ValueError):
        real_requests(np.array([5, 0, 3]), np.array([1, 2, 3]), 3, 0)
    with pytest.raises(ValueError):  # a dummy row (null block) before a real one
        real_requests(np.array([1, 5]), np.array([0, 3]), 2, 0)
    assert real_requests(np.array([0, 0]), np.array([1, 2]), 2, 0) == 0
    assert real_requests(np.array([1, 1, 1]), np.array([0, 0, 0]), 3, 0) == 0  # a dummy batch


def test_decode_buffers_hand_out_each_steps_fills_once() -> None:
    """A CUDA-graph decode step does not flush the blocks its tokens fill; the builder takes
    those (slot, block) pairs from the buffers and flushes them before the next step. Each
    step's fills are handed out once, and rewriting the buffers while some are still pending
    (which would lose those blocks' records) is refused."""
    from kvarn_cli.kvcache.graph import DecodeBuffers

    G = 4
    bt = np.array([[1, 2, 5], [3, 4, 6]])
    pool = StagingPool(8, G)
    pool.plan(np.array([0, 3, 9]), np.array([3, 6]), bt, 9)  # prompts of 3 and 6 tokens
    buffers = DecodeBuffers(4, 3, torch.device("cpu"))
    plan = pool.plan(np.array([0, 1, 2]), np.array([4, 7]), bt, 2)  # row 0's token fills block 1
    assert buffers.fits(plan, 3)
    buffers.load(plan, 3)
    with pytest.raises(RuntimeError, match="1 slot flushes were not taken"):
        buffers.load(plan, 3)
    fills = buffers.take_fills()
    assert fills is not None
    slots, blocks = fills
    assert blocks.tolist() == [1] and slots.tolist() == plan.fill_slot.tolist()
    assert buffers.take_fills() is None

    plan = pool.plan(np.array([0, 1, 2]), np.array([5, 8]), bt, 2)  # row 1's token fills block 4
    buffers.load(plan, 3)
    assert buffers.take_fills()[1].tolist() == [4]  # type: ignore[index]
    plan = pool.plan(np.array([0, 1, 2]), np.array([6, 9]), bt, 2)  # nothing fills
    buffers.load(plan, 3)
    assert buffers.take_fills() is None


@pytest.mark.parametrize("seed", [0, 1])
def test_block_ids_past_the_slot_lookup_array_grow_it_and_it_agrees_with_the_dict(seed: int) -> None:
    """The pool answers "which slot holds block b" for every row of a step at once from an
    array indexed by block id (StagingPool._slots_of), kept beside the block_slot dict. With
    block ids handed out from the top of a 2,100-block cache (past the array's first 1,024
    entries) a random schedule must still match the reference, and after every step the array
    must say what the dict says, nothing more."""
    eng = make_engine(num_blocks=2100, num_slots=8)
    eng.free = list(range(eng.num_blocks - 1, 0, -1))  # the highest ids first
    pool = eng.pool
    planned = pool.plan
    steps = 0

    def plan_and_check(*args: object) -> StepPlan:
        nonlocal steps
        plan = planned(*args)  # type: ignore[arg-type]
        table = pool._slot_of_block
        bound = np.nonzero(table >= 0)[0]
        assert {int(b): int(table[b]) for b in bound} == {b: s for b, s in pool.block_slot.items() if b >= 0}
        steps += 1
        return plan

    pool.plan = plan_and_check  # type: ignore[method-assign]
    assert _random_schedule(eng, seed) == 30
    assert steps > 50 and pool._slot_of_block.shape[0] >= 2048 and pool.spills > 0
    assert eng.max_err < TOL
    # ids past the array and negative ones read as "no slot" unless the dict has them
    assert pool._slots_of(np.array([10**6, -7])).tolist() == [-1, -1]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_decode_steps_planned_straight_into_the_graph_buffers_match_plan_and_load(seed: int) -> None:
    """On CUDA the builder plans a decode-only step with StagingPool.plan_decodes and writes
    it into the CUDA-graph buffers with DecodeBuffers.load_decodes: no StepPlan, no decode
    group. Fed the same batches as plan() + DecodeBuffers.load on a twin pool, it must leave
    the pool in the same state, fill the buffers with the same values (padding rows
    included), and hand the builder the same spills and restores, through random
    admissions, preemptions, prefix hits and a pool small enough to spill."""
    from kvarn_cli.kvcache.graph import DecodeBuffers, decode_only
    from kvarn_cli.kvcache.staging import UNSPLIT_DECODES

    eng = make_engine(num_blocks=240, num_slots=8)
    G = eng.G
    planned, direct = (StagingPool(8, G, attention_budget_rows=UNSPLIT_DECODES, kernel_decodes=True) for _ in range(2))
    old_buffers, new_buffers = (DecodeBuffers(8, 24, torch.device("cpu")) for _ in range(2))
    rng = np.random.default_rng(seed)
    general_plan = eng.pool.plan
    counts = {"decode steps": 0, "fills": 0, "spills": 0, "restores": 0, "restored fills": 0, "other steps": 0}

    def plan_all(qsl: np.ndarray, seq: np.ndarray, bt: np.ndarray, num_tokens: int) -> StepPlan:
        plan = general_plan(qsl, seq, bt, num_tokens)
        n = seq.shape[0]
        if not decode_only(qsl, n):
            planned.plan(qsl, seq, bt, num_tokens)
            direct.plan(qsl, seq, bt, num_tokens)
            counts["other steps"] += 1
        else:
            rows = n + int(rng.integers(0, 3))  # padded as vLLM pads a graph batch
            old = planned.plan(qsl, seq, bt, num_tokens)
            assert old_buffers.fits(old, rows)
            old_buffers.load(old, rows)
            step = direct.plan_decodes(seq, bt)
            new_buffers.load_decodes(step, rows)
            assert np.array_equal(new_buffers._host, old_buffers._host)
            for buffers in (old_buffers, new_buffers):
                fills = buffers.take_fills()
            assert (fills is None) == (old.fill_slot.numel() == 0)
            if step.maintenance is None:
                assert not old.needs_maintenance
            else:
                for name in ("spill_slot", "spill_block", "spill_fill", "restore_slot", "restore_block"):
                    assert torch.equal(getattr(step.maintenance, name), getattr(old, name)), name
            counts["decode steps"] += 1
            counts["fills"] += old.fill_slot.numel()
            counts["spills"] += old.spill_slot.numel()
            counts["restores"] += old.restore_slot.numel()
            # a decode completing a block whose staged prefix was spilled
            counts["restored fills"] += len(set(old.restore_block.tolist()) & set(old.fill_block.tolist()))
        for name in ("block_slot", "free", "step", "spills", "restores", "sink_fallbacks"):
            assert getattr(direct, name) == getattr(planned, name), name
        for name in ("slot_block", "slot_kind", "slot_fill", "slot_stamp", "_slot_of_block"):
            assert np.array_equal(getattr(direct, name), getattr(planned, name)), name
        return plan

    eng.pool.plan = plan_all  # type: ignore[method-assign]
    assert _random_schedule(eng, seed) == 30
    assert _rotating_schedule(eng, seed) == 12
    assert counts["decode steps"] > 150 and counts["other steps"] > 20 and counts["fills"] > 50, counts
    assert counts["spills"] > 0 and counts["restores"] > counts["restored fills"] > 0, counts

    assert eng.max_err < TOL


def _rotating_schedule(eng: SimEngine, seed: int) -> int:
    """Eight requests running, at most four scheduled in a step (as under a token budget): the
    others' tails are spilled to make room and restored when they decode again, mostly in
    decode-only steps. Returns how many finished."""
    rng = np.random.default_rng(seed)
    waiting = [Request(100 + i, tokens(200 + i, int(rng.integers(40, 90)))) for i in range(12)]
    running: list[Request] = []
    finished = 0
    while waiting or running:
        while waiting and len(running) < 8:
            running.append(waiting.pop(0))
        chosen = rng.permutation(len(running))[: int(rng.integers(1, 5))]
        eng.step([(running[i], 1 if running[i].num_computed >= 8 else 8) for i in sorted(chosen.tolist())])
        for r in list(running):
            if r.num_computed >= len(r.tokens):
                eng.release(r)
                running.remove(r)
                finished += 1
    return finished


def test_plan_decodes_refuses_one_token_blocks() -> None:
    """With 1-token blocks a decode's block is full at once and must be flushed from a tile,
    which the graph buffers have no room for: plan() does that step."""
    with pytest.raises(ValueError, match="1-token block"):
        StagingPool(4, 1).plan_decodes(np.array([3]), np.array([[1, 2, 3]]))
