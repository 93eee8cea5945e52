"""The vLLM plug-in leaves vLLM alone unless kvarn asked for a quantized cache."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from kvarn_cli import kvcache

vllm = pytest.importorskip("vllm")


def _cpu_build() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


#: tests that assert what the CPU build of vLLM (CI's, 0.32) selects or lacks; the CUDA build on
#: the GPU machine (0.26) picks other backends and has no page-spec hook, and failed these alike
#: before and after session 20's changes (benchmarks/results/h100-2026-11-24k/run164_*)
cpu_build_only = pytest.mark.skipif(not _cpu_build(), reason="asserts the CPU build of vLLM's backends")


def _cpu_attn_path() -> str:
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    return AttentionBackendEnum.CPU_ATTN.get_path()


def test_plugin_is_inert_without_kvarn_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvarn_cli.kvcache import plugin

    kvcache.deactivate()
    monkeypatch.delenv(kvcache.ENV_QUANTIZER, raising=False)
    plugin.register()
    assert _cpu_attn_path() == "vllm.v1.attention.backends.cpu_attn.CPUAttentionBackend"


@cpu_build_only
def test_plugin_and_presets_switch_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvarn_cli.kvcache import plugin

    monkeypatch.setenv(kvcache.ENV_QUANTIZER, "k2v2")
    monkeypatch.setenv(kvcache.ENV_BLOCK_SIZE, "128")
    plugin.register()  # what a vLLM worker process does at start-up
    assert _cpu_attn_path() == kvcache.BACKEND_CLASS
    assert kvcache.engine_kwargs("fp16") == {}
    assert _cpu_attn_path() != kvcache.BACKEND_CLASS
    assert kvcache.engine_kwargs("k4v4") == {"block_size": 128}
    assert _cpu_attn_path() == kvcache.BACKEND_CLASS
    import os

    assert os.environ[kvcache.ENV_QUANTIZER] == "k4v4"
    kvcache.deactivate()
    assert kvcache.ENV_QUANTIZER not in os.environ
    assert _cpu_attn_path() != kvcache.BACKEND_CLASS


def test_backend_api_check_names_missing_symbols(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvarn_cli import vllm_compat
    from kvarn_cli.errors import EngineError

    assert vllm_compat.check_backend_api() == vllm.__version__
    monkeypatch.setattr(vllm_compat, "BACKEND_SYMBOLS", vllm_compat.BACKEND_SYMBOLS + (("vllm.v1.attention.backend", "NoSuchThing"),))
    with pytest.raises(EngineError, match="NoSuchThing"):
        vllm_compat.check_backend_api()


@cpu_build_only
def test_backend_api_check_falls_back_to_the_legacy_page_spec_internals(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a vLLM without `customize_spec` (0.26) the check demands the internals the page-spec
    hook uses instead, and names the first one missing."""
    from kvarn_cli import vllm_compat
    from kvarn_cli.errors import EngineError

    # this vLLM (0.32) has the hook, so the legacy set is not consulted even if it is absent here
    assert vllm_compat.has_page_spec_hook()
    monkeypatch.setattr(vllm_compat, "LEGACY_PAGE_SPEC_SYMBOLS", (("vllm.v1.kv_cache_interface", "NoSuchSpec"),))
    assert vllm_compat.check_backend_api() == vllm.__version__
    # a vLLM without the hook: the legacy set decides
    monkeypatch.setattr(vllm_compat, "PAGE_SPEC_HOOK_SYMBOLS", (("vllm.v1.attention.backend", "AttentionBackend.no_hook"),))
    assert not vllm_compat.has_page_spec_hook()
    with pytest.raises(EngineError, match="NoSuchSpec"):
        vllm_compat.check_backend_api()
    monkeypatch.setattr(vllm_compat, "LEGACY_PAGE_SPEC_SYMBOLS", (("vllm.v1.kv_cache_interface", "AttentionSpec"),))
    assert vllm_compat.check_backend_api() == vllm.__version__


def test_page_spec_hook_rewrites_only_layers_whose_backend_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 0.26 hook wraps Attention.get_kv_cache_spec; exercised here on this vLLM's Attention
    class with the hook forced on, and undone afterwards."""
    from vllm.model_executor.layers.attention.attention import Attention

    from kvarn_cli import vllm_compat

    api = vllm_compat.backend_api()
    monkeypatch.setattr(api, "has_page_spec_hook", False)
    monkeypatch.setattr(Attention, "get_kv_cache_spec", lambda self, cfg: ("spec", cfg))
    vllm_compat.install_page_spec_hook()
    wrapped = Attention.get_kv_cache_spec
    vllm_compat.install_page_spec_hook()  # idempotent: no second wrapper
    assert Attention.get_kv_cache_spec is wrapped

    class Plain:
        attn_backend = object()

    class Asking:
        class attn_backend:  # noqa: N801 - stands for a backend class
            @staticmethod
            def kvarn_page_spec(spec: object) -> object:
                return ("kvarn", spec)

    assert wrapped(Plain(), "cfg") == ("spec", "cfg")
    assert wrapped(Asking(), "cfg") == ("kvarn", ("spec", "cfg"))


class _FakeCudaTable:
    """A device block table as host_block_table sees one: a CUDA device, a storage address
    and `.cpu()` (which on a GPU would wait for the queued kernels)."""

    def __init__(self, tensor: Any) -> None:
        from types import SimpleNamespace

        self.tensor = tensor
        self.device = SimpleNamespace(type="cuda")
        self.shape = tensor.shape
        self.cpu_calls = 0

    def data_ptr(self) -> int:
        return int(self.tensor.data_ptr())

    def cpu(self) -> Any:
        self.cpu_calls += 1
        return self.tensor.clone()


def test_host_block_table_mirror_is_found_by_device_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    """The metadata builder reads vLLM's host copy of the block table instead of `.cpu()` on
    the device one (a sync that would serialize planning with the GPU). vLLM freezes the
    garbage collector's heap after start-up, which hides every object from the search; on
    the H100 it found nothing there and the builder synced on every step (run 30)."""
    import gc

    import numpy as np
    import torch

    from kvarn_cli import vllm_compat

    class CpuGpuBuffer:  # vLLM's: .gpu and its pinned host twin .np
        def __init__(self, device_tensor: torch.Tensor, host: np.ndarray) -> None:
            self.gpu, self.np = device_tensor, host

    class BlockTable:  # the shape of vLLM's BlockTable: .block_table is a CpuGpuBuffer
        def __init__(self, device_tensor: torch.Tensor, host: np.ndarray) -> None:
            self.block_table = CpuGpuBuffer(device_tensor, host)

    # the heap scan alone (no model runner among the callers; reading the callers' locals
    # would also keep this test's own locals alive)
    monkeypatch.setattr(vllm_compat, "_buffer_from_callers", lambda ptr: None)
    monkeypatch.setattr(vllm_compat, "_HOST_BUFFERS", {})
    monkeypatch.setattr(vllm_compat, "_HOST_BUFFERS_MISSING", set())
    storage = torch.arange(12, dtype=torch.int32).view(4, 3)
    host = storage.numpy().copy()
    owner = BlockTable(storage, host)
    assert vllm_compat._find_host_buffer(storage) is owner.block_table
    assert vllm_compat._find_host_buffer(torch.zeros(4, 3)) is None
    # a CPU table is read directly (vLLM on CPU)
    assert np.array_equal(vllm_compat.host_block_table(storage[:2]), storage[:2].numpy())

    table = _FakeCudaTable(storage[:2])
    gc.freeze()  # as vLLM leaves the heap after start-up: gc.get_objects() lists none of it
    try:
        rows = vllm_compat.host_block_table(table)
        assert gc.get_freeze_count() > 0  # the search froze the heap again
    finally:
        gc.unfreeze()
    assert table.cpu_calls == 0 and np.shares_memory(rows, host)
    host[0, 0] = 99  # vLLM writes the next step's table on the host: the builder sees it
    assert vllm_compat.host_block_table(table)[0, 0] == 99 and table.cpu_calls == 0

    # vLLM replaced its input batch: the buffer it dropped is not read again
    del owner
    gc.collect()
    fresh = np.full((4, 3), 7, dtype=np.int32)
    replacement = BlockTable(storage, fresh)
    assert np.shares_memory(vllm_compat.host_block_table(table), fresh)
    del replacement


def test_host_block_table_is_found_through_the_calling_model_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cheap way first: the builder is called by vLLM's model runner, whose
    input_batch.block_table.block_tables hold the buffer; no heap scan is needed."""
    import gc
    from types import SimpleNamespace

    import numpy as np
    import torch

    from kvarn_cli import vllm_compat

    storage = torch.arange(8, dtype=torch.int32).view(4, 2)
    host = storage.numpy().copy()

    class CpuGpuBuffer:
        def __init__(self) -> None:
            self.gpu, self.np = storage, host

    class Runner:  # the attribute path of vLLM's GPUModelRunner
        def __init__(self) -> None:
            self.input_batch = SimpleNamespace(block_table=SimpleNamespace(
                block_tables=[SimpleNamespace(block_table=CpuGpuBuffer())]))

        def build_metadata(self) -> object:
            return vllm_compat.host_block_table(_FakeCudaTable(storage[:3]))

    def no_scan() -> list[object]:
        raise AssertionError("the heap was scanned")

    monkeypatch.setattr(gc, "get_objects", no_scan)
    monkeypatch.setattr(vllm_compat, "_HOST_BUFFERS", {})
    monkeypatch.setattr(vllm_compat, "_HOST_BUFFERS_MISSING", set())
    rows = Runner().build_metadata()
    assert np.shares_memory(rows, host) and rows.shape == (3, 2)


def _builder(monkeypatch: pytest.MonkeyPatch, max_num_seqs: int, block_size: int, triton: bool = False,
             device: str = "cpu"):  # type: ignore[no-untyped-def]
    """The KVarN metadata builder as vLLM makes one, with only the config it reads (`triton`:
    on the Triton path, as on CUDA; on CPU the kernels then run in the interpreter)."""
    from types import SimpleNamespace

    import torch

    monkeypatch.setenv(kvcache.ENV_QUANTIZER, "k2v2")
    monkeypatch.setenv(kvcache.ENV_BLOCK_SIZE, str(block_size))
    if triton:
        monkeypatch.setenv("KVARN_FORCE_TRITON", "1")
    else:
        monkeypatch.delenv("KVARN_FORCE_TRITON", raising=False)
    from kvarn_cli.kvcache.backend import KVarNMetadataBuilder

    config = SimpleNamespace(
        scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs), parallel_config=None,
        model_config=SimpleNamespace(max_model_len=1024, dtype=torch.float32, get_num_attention_heads=lambda parallel: 6),
    )
    spec = SimpleNamespace(block_size=block_size, head_size=64, num_kv_heads=2)
    return KVarNMetadataBuilder(spec, ["layer.0"], config, torch.device(device))


def _batch(query_lens: list[int], seq_lens: list[int], table: list[list[int]]):  # type: ignore[no-untyped-def]
    """A CommonAttentionMetadata-shaped batch (the fields the builder reads), on the host."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    qsl = torch.tensor(np.concatenate([[0], np.cumsum(query_lens)]), dtype=torch.int32)
    seq = torch.tensor(seq_lens, dtype=torch.int32)
    return SimpleNamespace(query_start_loc_cpu=qsl, seq_lens_cpu_upper_bound=seq, seq_lens=seq,
                           block_table_tensor=torch.tensor(table, dtype=torch.int32), num_reqs=len(seq_lens))


def test_builder_compiles_the_eager_steps_kernels_at_engine_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the Triton path the builder runs two scratch eager steps when vLLM makes it
    (engine start; kvcache.warmup), on records of the backend's page shape and slots of the
    model's dtype and the layers' shape, with the model's query heads, so their kernels
    specialize as a job's steps do (tests/test_kernel_specializations.py checks that a job
    then launches nothing new). The PyTorch path launches nothing."""
    pytest.importorskip("triton")
    import torch

    from kvarn_cli.kvcache import backend as backend_mod
    from kvarn_cli.kvcache.backend import KVarNAttentionBackend
    from kvarn_cli.kvcache.compute import records_view
    from kvarn_cli.kvcache.records import quantizer_for

    sys.path.insert(0, os.path.dirname(__file__))
    from triton_launches import recording

    calls: list[tuple] = []
    real = backend_mod.warm_eager_steps

    def spy(codec, cache, q_heads, dtype):  # type: ignore[no-untyped-def]
        calls.append((codec.triton, cache.records.stride(), tuple(cache.records.shape[1:]), cache.slot_k.dtype,
                      tuple(cache.slot_k.shape[1:]), q_heads, dtype))
        real(codec, cache, q_heads, dtype)

    monkeypatch.setattr(backend_mod, "warm_eager_steps", spy)
    with recording() as seen:
        _builder(monkeypatch, 4, 64)
    assert calls == [] and seen == {}
    # compiled kernels launch only on CUDA tensors (on the H100 a CPU builder failed here);
    # without CUDA, or under the interpreter, the CPU builder runs them in the interpreter
    interpreted = not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
    with recording() as seen:
        builder = _builder(monkeypatch, 4, 64, triton=True, device="cpu" if interpreted else "cuda")
    assert builder.buffers is not None
    pages = torch.zeros(KVarNAttentionBackend.get_kv_cache_shape(3, 64, 2, 64), dtype=torch.uint8)
    rb = quantizer_for("k2v2", 64, 64).record_bytes
    assert calls == [(True, records_view(pages, rb).stride(), (2, rb), torch.float32, (2, 64, 64), 6, torch.float32)]
    # on CUDA the CUDA split kernel (cuda_decode, not a Triton launch) decodes instead of the
    # Triton split and reduce kernels
    decode = {"_reduce_kernel", "_split_kernel_tm"} if interpreted else set()
    assert {"_flush_kernel", "_stage_kernel"} | decode <= set(seen), sorted(seen)


def test_builder_leaves_the_staging_pool_alone_in_vllms_dummy_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before capturing each CUDA-graph size, vLLM 0.26 runs a dummy decode batch through the
    builder: rows of length 1 whose block-table rows are the null block (seen on the H100,
    benchmarks/results/h100-2026-11-22/run28_trace_graphs.jsonl). Planned as requests, each
    took a staging slot that nothing released, so the first blocks of real prompts found no
    slot for their 16-bit sink copy. The builder plans none of those rows."""
    G, seqs = 64, 4
    builder = _builder(monkeypatch, seqs, G)
    null = vllm_compat_null_block()
    for rows in (4, 2, 1):  # the capture sizes, largest first
        md = builder.build(0, _batch([1] * rows, [1] * rows, [[null, null]] * rows))
        assert md.num_actual_tokens == 0 and md.plan.num_tokens == 0
    assert builder.pool.block_slot == {}

    # real prompts after the captures: two with a full first block get their sink slots
    md = builder.build(0, _batch([100, 70, 5], [100, 70, 5], [[1, 2], [3, 4], [5, 0]]))
    assert md.num_actual_tokens == 175
    assert builder.pool.sink_fallbacks == 0
    assert {1, 3} <= set(builder.pool.block_slot)  # the sinks of blocks 1 and 3

    # a decode batch padded from 3 to 4 rows: the padding row is not planned either
    md = builder.build(0, _batch([1, 1, 1, 1], [101, 71, 6, 0], [[1, 2], [3, 4], [5, 0], [null, null]]))
    assert md.num_actual_tokens == 3 and md.plan.num_tokens == 3


def test_builder_without_the_row_filter_would_leak_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the dummy batches did to the pool before the builder filtered them: the same
    StagingPool, planned over those rows directly, holds a slot per row for the null block."""
    import numpy as np

    builder = _builder(monkeypatch, 4, 64)
    null = vllm_compat_null_block()
    for rows in (4, 2, 1):
        builder.pool.plan(np.arange(rows + 1), np.ones(rows), np.full((rows, 2), null), rows)
    held = [s for s, b in enumerate(builder.pool.slot_block) if b == null]
    assert len(held) >= 4


def test_builder_plans_decode_only_steps_straight_into_the_graph_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the Triton path a decode-only step (one token per real row, padding rows after)
    skips the StepPlan: the builder plans it with StagingPool.plan_decodes into the CUDA-graph
    buffers. Those must hold what plan() + DecodeBuffers.load put there on a twin pool, step
    after step as rows complete blocks; a step with a prefill chunk still gets a full plan."""
    pytest.importorskip("triton")
    import numpy as np
    import torch

    from kvarn_cli.kvcache.graph import DecodeBuffers
    from kvarn_cli.kvcache.staging import UNSPLIT_DECODES, StagingPool

    G = 64
    interpreted = not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
    builder = _builder(monkeypatch, 4, G, triton=True, device="cpu" if interpreted else "cuda")
    assert builder.buffers is not None
    # the fills' flush needs vLLM's layers, which this builder has none of: take them only
    flushed: list[int] = []

    def take_fills() -> None:
        fills = builder.buffers.take_fills()
        if fills is not None:
            flushed.extend(fills[1].tolist())

    monkeypatch.setattr(builder, "_flush_last_decode", take_fills)
    twin = StagingPool(builder.pool.num_slots, G, attention_budget_rows=UNSPLIT_DECODES, kernel_decodes=True)
    twin_buffers = DecodeBuffers(4, builder.buffers.width, torch.device("cpu"))
    null = vllm_compat_null_block()
    table = [[1, 2, 7], [3, 4, 8], [5, 6, 9]]

    def step(query_lens: list[int], seq_lens: list[int], padding: int) -> object:
        lens = seq_lens + [0] * padding
        md = builder.build(0, _batch(query_lens + [1] * padding, lens, table + [[null] * 3] * padding))
        qsl = np.concatenate([[0], np.cumsum(query_lens)])
        plan = twin.plan(qsl, np.array(seq_lens), np.array(table), int(qsl[-1]))
        if md.plan.fixed is not None:
            twin_buffers.load(plan, len(lens))
            twin_buffers.take_fills()
            assert np.array_equal(builder.buffers._host, twin_buffers._host)
        assert builder.pool.block_slot == twin.block_slot and np.array_equal(builder.pool.slot_fill, twin.slot_fill)
        return md.plan

    # vLLM's dummy decode batch before a graph capture: all rows are stand-ins, nothing is planned
    md = builder.build(0, _batch([1, 1], [1, 1], [[null] * 3] * 2))
    assert md.plan.fixed is not None and md.plan.fixed.rows == 2 and md.num_actual_tokens == 0
    assert builder.pool.block_slot == {} and builder.buffers.take_fills() is None
    twin.plan(np.array([0]), np.zeros(0, dtype=np.int64), np.zeros((0, 3), dtype=np.int64), 0)  # (the same pool step)
    seq = [100, 60, 5]
    assert step(seq, seq, 0).fixed is None  # prompts
    for i in range(70):  # the rows complete blocks on the way (at 64 and 128 tokens)
        seq = [n + 1 for n in seq]
        builder.direct_decodes = i not in (40, 41)  # (a benchmark's switch: plan() + load, to the same effect)
        plan = step([1, 1, 1], seq, i % 2)
        assert plan.fixed is not None and plan.fixed.rows == 3 + i % 2 and bool(plan.groups) != builder.direct_decodes
        if i == 30:  # a decode step with a prefill chunk of another request is planned in full
            table.append([10, 11, 12])
            mixed = step([1, 1, 1, 20], seq + [20], 0)
            assert mixed.fixed is None and len(mixed.groups) == 2
            table.pop()  # (its request then pauses)
    step([1, 1, 1], [n + 1 for n in seq], 0)  # (its build takes the last step's fills)
    # blocks completed by decodes: row 0's second, row 1's first two, row 2's first
    assert sorted(flushed) == [2, 3, 4, 5]


def vllm_compat_null_block() -> int:
    from kvarn_cli import vllm_compat

    return vllm_compat.backend_api().null_block_id


@cpu_build_only
def test_decode_graphs_are_declared_on_cuda_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA with the Triton decode path the builder lets vLLM capture uniform decode
    steps by default; KVARN_DECODE_GRAPHS=0 and the CPU platform never do."""
    from types import SimpleNamespace

    from kvarn_cli.kvcache import backend

    monkeypatch.setenv(kvcache.ENV_QUANTIZER, "k2v2")
    monkeypatch.setenv(kvcache.ENV_BLOCK_SIZE, "64")
    support = backend._api.AttentionCGSupport
    spec = SimpleNamespace(block_size=64, head_size=64)
    monkeypatch.delenv(backend.ENV_DECODE_GRAPHS, raising=False)
    assert backend.KVarNMetadataBuilder.get_cudagraph_support(None, spec) == support.NEVER  # this CPU box

    monkeypatch.setattr(backend._api.current_platform, "is_cuda_alike", lambda: True)
    monkeypatch.setattr(backend.KVarNMetadataBuilder, "_triton_decodes", staticmethod(lambda device, head_size: True))
    assert backend.KVarNMetadataBuilder.get_cudagraph_support(None, spec) == support.UNIFORM_SINGLE_TOKEN_DECODE
    monkeypatch.setenv(backend.ENV_DECODE_GRAPHS, "0")
    assert backend.KVarNMetadataBuilder.get_cudagraph_support(None, spec) == support.NEVER


def test_builder_dumps_the_stacks_of_a_step_that_stalls(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """KVARN_STALL_DUMP_S: a step whose next build has not come after that long gets every
    Python stack of the process on fd 2 (the engine core's stderr); a step that is followed
    in time gets nothing, and without the variable nothing is ever armed."""
    import faulthandler
    import time

    from kvarn_cli.errors import EngineError
    from kvarn_cli.kvcache.backend import ENV_STALL_DUMP

    def a_stalled_step() -> None:
        time.sleep(1.0)

    try:
        monkeypatch.setenv(ENV_STALL_DUMP, "0.3")
        builder = _builder(monkeypatch, 4, 64)
        builder.build(0, _batch([5], [5], [[1, 0]]))
        a_stalled_step()
        first = capfd.readouterr().err
        assert "most recent call first" in first and "a_stalled_step" in first

        builder.build(0, _batch([1], [6], [[1, 0]]))
        builder.build(0, _batch([1], [7], [[1, 0]]))  # in time: re-arms, the first timer never fires
        faulthandler.cancel_dump_traceback_later()
        assert "most recent call first" not in capfd.readouterr().err

        monkeypatch.delenv(ENV_STALL_DUMP)
        quiet = _builder(monkeypatch, 4, 64)
        quiet.build(0, _batch([5], [5], [[2, 0]]))
        a_stalled_step()
        assert "most recent call first" not in capfd.readouterr().err

        monkeypatch.setenv(ENV_STALL_DUMP, "soon")
        with pytest.raises(EngineError, match="KVARN_STALL_DUMP_S='soon'"):
            _builder(monkeypatch, 4, 64)
    finally:
        faulthandler.cancel_dump_traceback_later()


def test_host_block_table_of_another_shape_is_not_read_and_is_reported_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A host copy whose width differs from the device table's (another block size, another
    vLLM layout) is not the same table: the builder reads the device table, and says once
    that every step now waits for the GPU, instead of being slow without a word."""
    import logging

    import numpy as np
    import torch

    from kvarn_cli import vllm_compat

    class CpuGpuBuffer:  # vLLM's, a host twin of another width
        def __init__(self, device_tensor: torch.Tensor) -> None:
            self.gpu, self.np = device_tensor, np.zeros((4, 6), dtype=np.int32)

    storage = torch.arange(12, dtype=torch.int32).view(4, 3)
    buffer = CpuGpuBuffer(storage)
    monkeypatch.setattr(vllm_compat, "_HOST_BUFFERS", {})
    monkeypatch.setattr(vllm_compat, "_HOST_BUFFERS_MISSING", set())
    monkeypatch.setattr(vllm_compat, "_HOST_BUFFERS_MISMATCHED", set())
    monkeypatch.setattr(vllm_compat, "_find_host_buffer", lambda table: buffer)
    table = _FakeCudaTable(storage[:2])
    with caplog.at_level(logging.WARNING, logger="kvarn"):
        first = vllm_compat.host_block_table(table)
        second = vllm_compat.host_block_table(table)
    assert np.array_equal(first, storage[:2].numpy()) and np.array_equal(second, first)
    assert table.cpu_calls == 2
    warnings = [r for r in caplog.records if "waits for the GPU" in r.getMessage()]
    assert len(warnings) == 1 and "(4, 6)" in warnings[0].getMessage()


def test_v2_runner_block_tables_are_mirrored_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's V2 runner keeps block tables on the device only. kvarn copies every staged
    write into a host array and, inside the runner's step, picks the batch's rows by its
    idx_mapping_np: the builder plans without a device sync, from the same ids. A dummy
    batch reads as null blocks (it must not touch the staging pool)."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from kvarn_cli import vllm_compat

    class StagedWriteTensor:  # vLLM's: .gpu, writes staged then applied on the device
        def __init__(self, rows: int, width: int) -> None:
            self.gpu = torch.zeros(rows, width, dtype=torch.int32)
            self.staged: list[tuple[int, int, list[int]]] = []

        def stage_write(self, index: int, start: int, x: list[int]) -> None:
            self.staged.append((index, start, list(x)))

        def apply(self) -> None:
            for index, start, ids in self.staged:
                self.gpu[index, start : start + len(ids)] = torch.tensor(ids, dtype=torch.int32)
            self.staged.clear()

    class BlockTables:
        def __init__(self, rows: int, width: int) -> None:
            self.block_tables = [StagedWriteTensor(rows, width)]
            self.input_block_tables = [torch.zeros(rows, width, dtype=torch.int32)]
            self.num_blocks = np.zeros((1, rows), dtype=np.int64)

        def append_block_ids(self, req_index: int, new_block_ids: tuple[list[int], ...], overwrite: bool) -> None:
            start = 0 if overwrite else int(self.num_blocks[0, req_index])
            self.block_tables[0].stage_write(req_index, start, [2 * b for b in new_block_ids[0]])  # vLLM may rewrite ids
            self.num_blocks[0, req_index] = start + len(new_block_ids[0])

        def gather(self, idx: np.ndarray, padded: int) -> torch.Tensor:
            self.block_tables[0].apply()
            out = self.input_block_tables[0]
            out.zero_()
            out[: idx.shape[0]] = self.block_tables[0].gpu[torch.from_numpy(idx).long()]
            return out[:padded]

    class Runner:  # the V2 GPUModelRunner's shape: self.block_tables, locals input_batch and dummy_run
        def __init__(self) -> None:
            self.block_tables = BlockTables(6, 4)

        def execute_model(self, idx: list[int], padded: int, dummy_run: bool = False) -> tuple[np.ndarray, torch.Tensor]:
            input_batch = SimpleNamespace(idx_mapping_np=np.array(idx, dtype=np.int32))
            device_table = self.block_tables.gather(input_batch.idx_mapping_np, padded)
            return build(_FakeCudaTable(device_table)), device_table

    def build(table: _FakeCudaTable) -> np.ndarray:  # the builder, two frames below the runner's step
        rows = vllm_compat.host_block_table(table)
        assert table.cpu_calls == 0  # no wait for the GPU
        return rows

    monkeypatch.setattr(vllm_compat, "_V2_TABLES_MADE", False)  # set by the first mirrored BlockTables
    assert vllm_compat.mirror_v2_block_tables(BlockTables, StagedWriteTensor)
    assert vllm_compat.mirror_v2_block_tables(BlockTables, StagedWriteTensor)  # once only
    runner = Runner()
    runner.block_tables.append_block_ids(3, ([5, 6],), overwrite=True)
    runner.block_tables.append_block_ids(1, ([7],), overwrite=True)
    host, device = runner.execute_model([3, 1], padded=4)
    assert np.array_equal(host, device.numpy()) and host.shape == (4, 4)
    runner.block_tables.append_block_ids(1, ([8, 9],), overwrite=False)  # a request grows
    runner.block_tables.append_block_ids(3, ([4],), overwrite=True)  # a new request in a reused row
    host, device = runner.execute_model([1, 3], padded=2)
    assert host.tolist() == device.numpy().tolist() == [[14, 16, 18, 0], [8, 12, 0, 0]]
    dummy, _ = runner.execute_model([0, 1], padded=2, dummy_run=True)
    assert not dummy.any()
