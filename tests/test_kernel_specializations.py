"""A job's steps launch no Triton kernel specialization that the engine's start did not.

On the H100 the own-process engine held one step at the start of each pass for 13.4 s and
3.7 s (docs/BENCHMARKS.md runs 60-61): eager steps (prefill rows next to decode rows)
launched the decode, staging and slot-flush kernels with specializations no earlier launch
had, so Triton compiled them mid-job. What varied: pointers into the packed plan arrays
(aligned or not, by the sizes before them), the split count (a constexpr), table widths and
counts equal to 1 or divisible by 16. Here the keys Triton would compile for are computed
under the interpreter (tests/triton_launches.py) and compared.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

sys.path.insert(0, os.path.dirname(__file__))

from kvcache_sim import Request, SimEngine, reference_varlen  # noqa: E402
from test_kvcache_triton import SHAPE, mixed_schedule, tokens  # noqa: E402
from triton_launches import aligned, differing, recording  # noqa: E402

from kvarn_cli.kernels import make_quantizer  # noqa: E402
from kvarn_cli.kvcache.compute import LayerCache  # noqa: E402
from kvarn_cli.kvcache.graph import DecodeBuffers  # noqa: E402
from kvarn_cli.kvcache.staging import _move_packed  # noqa: E402
from kvarn_cli.kvcache.warmup import WARM_BLOCKS, WARM_SLOTS, warm_eager_steps  # noqa: E402

DTYPES = [torch.int32, torch.int64, torch.float32, torch.uint8]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(DTYPES), st.integers(0, 37)), min_size=1, max_size=12))
def test_packed_plan_arrays_start_16_byte_aligned_and_keep_their_values(specs: list[tuple[torch.dtype, int]]) -> None:
    tensors = [torch.arange(n).to(dtype) for dtype, n in specs]
    moved = _move_packed(tensors, torch.device("cpu"))
    assert len(moved) == len(tensors)
    for t, m in zip(tensors, moved):
        assert m.dtype == t.dtype and m.shape == t.shape and torch.equal(m, t)
        assert aligned(m), (t.dtype, t.numel(), m.data_ptr() % 16)


@pytest.mark.parametrize("max_rows", [1, 2, 3, 5, 8, 13])
def test_decode_buffers_arrays_start_16_byte_aligned(max_rows: int) -> None:
    buffers = DecodeBuffers(max_rows, 3, torch.device("cpu"))
    for rows in {1, max_rows}:
        arrays = buffers.arrays(rows)
        for name in ("table", "nblk", "side_slot", "side_len", "tokens", "stage_slot", "stage_offset", "fill_slot", "fill_block"):
            assert aligned(getattr(arrays, name)), (max_rows, rows, name)


def _engine(fixed_padding: int | None = None) -> SimEngine:
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the simulated engine runs the kernels on CPU tensors: needs TRITON_INTERPRET=1")
    qz = make_quantizer("k2v2", head_dim=SHAPE.head_dim, block_size=SHAPE.block_size)
    return SimEngine(SHAPE, num_blocks=24, num_slots=8, quantizer=qz, triton=True, reference=False,
                     fixed_padding=fixed_padding, move_plans=True, varlen=reference_varlen)


def _warm_keys(eng: SimEngine) -> dict[str, set[tuple]]:
    """The keys of warm_eager_steps on scratch storage laid out as the engine's layer."""
    c = eng.cache
    scratch = LayerCache(
        records=torch.zeros(WARM_BLOCKS, *c.records.shape[1:], dtype=c.records.dtype),
        slot_k=torch.zeros(WARM_SLOTS, *c.slot_k.shape[1:], dtype=c.slot_k.dtype),
        slot_v=torch.zeros(WARM_SLOTS, *c.slot_v.shape[1:], dtype=c.slot_v.dtype),
    )
    with recording() as warm:
        warm_eager_steps(eng.codec, scratch, SHAPE.q_heads, c.slot_k.dtype, varlen=reference_varlen)
    return warm


def _varied_schedule() -> tuple[list[Request], list[list[tuple[Request, int]]]]:
    """The mixed schedule, then batches of 1 to 5 rows, new prompts arriving next to decode
    rows one or two at a time (as requests reach vLLM's own-process engine core), tables
    of 1 to 5 blocks: sizes that are 1, divisible by 16 or neither."""
    G = SHAPE.block_size
    a, b = Request(0, tokens(1, 260)), Request(1, tokens(2, 260))
    c = Request(2, tokens(1, 64) + tokens(3, 200))
    steps = mixed_schedule(a, b, c)
    more = [Request(10 + i, tokens(30 + i, 5 * G)) for i in range(3)]
    d, e, f = more
    steps += [[(a, 1), (b, 1), (c, 1), (d, 17)], [(a, 1), (d, 1), (e, 2 * G + 5)], [(d, 1), (e, 1), (f, 16)]]
    steps += [[(a, 1), (b, 1), (c, 1), (d, 1), (e, 1), (f, 1)] for _ in range(3)]
    steps += [[(f, 1)], [(f, 3 * G)], [(e, 1), (f, 1)], [(e, 1), (f, 40)]]  # f's last chunk reads records
    return [a, b, c, *more], steps


def test_a_varied_job_launches_only_what_the_engine_start_warmed() -> None:
    """Every eager step of a varied job, plans packed as for a GPU, launches the kernels
    with the specializations warm_eager_steps launched at start: no compile mid-job."""
    eng = _engine()
    warm = _warm_keys(eng)
    assert {"_flush_kernel", "_stage_kernel", "_reduce_kernel", "_dequant_rows_kernel"} <= set(warm), sorted(warm)
    assert any(name.startswith("_split_kernel") for name in warm), sorted(warm)
    _, steps = _varied_schedule()
    with recording() as job:
        for step in steps:
            eng.step(step)
    assert eng.shadow_err < 1e-2, eng.shadow_err
    assert "_dequant_rows_kernel" in job  # continued chunks over records ran
    for name, keys in job.items():
        new = keys - warm.get(name, set())
        assert not new, (name, differing(keys | warm.get(name, set())))


def test_graph_steps_launch_one_specialization_whatever_the_batch() -> None:
    """Decode-only steps in the CUDA-graph form, batches of 1 to 6 rows padded by 3: one
    key per kernel and array form (vLLM captures each size once; the key must not depend on
    the data), and the layered flush of their filled blocks as the warm-up launched it."""
    eng = _engine(fixed_padding=3)
    warm = _warm_keys(eng)
    _, steps = _varied_schedule()
    with recording() as job:
        for step in steps:
            eng.step(step)
        eng.flush_last_decode()
    assert eng.fixed_steps >= 8, eng.fixed_steps
    for name in ("_stage_kernel", "_reduce_kernel"):
        assert len(job[name]) <= 2, (name, differing(job[name]))  # eager and graph-form arrays
    # the fills of graph steps are flushed outside the graphs, in every layer at once: that
    # launch is not captured at start, so the warm-up must have made it
    new = job["_flush_kernel"] - warm["_flush_kernel"]
    assert not new, differing(job["_flush_kernel"] | warm["_flush_kernel"])


def test_warm_up_does_nothing_on_the_pytorch_path() -> None:
    qz = make_quantizer("k2v2", head_dim=SHAPE.head_dim, block_size=SHAPE.block_size)
    eng = SimEngine(SHAPE, num_blocks=24, num_slots=8, quantizer=qz, triton=False, reference=False)
    c = eng.cache
    scratch = LayerCache(records=torch.zeros(WARM_BLOCKS, *c.records.shape[1:], dtype=torch.uint8),
                         slot_k=torch.zeros(WARM_SLOTS, *c.slot_k.shape[1:]), slot_v=torch.zeros(WARM_SLOTS, *c.slot_v.shape[1:]))
    with recording() as seen:
        warm_eager_steps(eng.codec, scratch, SHAPE.q_heads, torch.float32)
    assert seen == {} and not bool(scratch.records.any()) and not bool(scratch.slot_k.any())


def test_warm_up_needs_its_scratch_blocks_and_slots() -> None:
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1")
    eng = _engine()
    c = eng.cache
    small = LayerCache(records=c.records[:2], slot_k=c.slot_k, slot_v=c.slot_v)
    with pytest.raises(ValueError, match="blocks"):
        warm_eager_steps(eng.codec, small, SHAPE.q_heads, torch.float32)


def test_decode_kernels_leave_every_step_size_unspecialized() -> None:
    """Each decode kernel lists exactly the RUNTIME_SIZES among its parameters as
    do_not_specialize (named per kernel, since older Triton rejects names a kernel lacks)."""
    import inspect

    from kvarn_cli.kernels import triton_decode as td
    from triton_launches import kernels

    decode = {n: k for n, k in kernels().items() if getattr(td, n, None) is k}
    assert {"_split_kernel_tm", "_split_kernel_joined", "_split_kernel_balanced", "_reduce_kernel"} <= set(decode)
    for name, kernel in decode.items():
        params = list(inspect.signature(kernel.fn).parameters)
        raw = getattr(kernel, "do_not_specialize", None) or kernel.kwargs.get("do_not_specialize") or []
        listed = {params[a] if isinstance(a, int) else a for a in raw}  # some Triton versions keep indices
        assert listed == set(params) & set(td.RUNTIME_SIZES), (name, listed)
