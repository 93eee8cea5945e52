"""The embedded vLLM engine: built once per run, driven request by request.

kvarn drives `LLMEngine.add_request`/`step` itself (rather than `LLM.generate`) so that every
finished record is written the moment it finishes, progress is live, KV usage can be sampled
during the run, and a SIGTERM can stop between steps without losing finished work.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any

from kvarn_cli import kvcache, vllm_compat
from kvarn_cli.errors import EngineError, InputError

# vLLM logs engine details and tuning hints at INFO/WARNING; a batch tool's stderr should carry progress and
# problems. Users who want the engine's log set VLLM_LOGGING_LEVEL themselves.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

#: CPU engines need an explicit KV size (vLLM's default takes a fraction of RAM and fails when
#: that much is not free); GPUs default to vLLM's own gpu_memory_utilization sizing.
DEFAULT_CPU_KV_BYTES = 2 * 2**30


@dataclass(frozen=True)
class EngineSettings:
    model: str
    preset: str = "fp16"
    max_model_len: int | None = None
    kv_cache_memory_bytes: int | None = None
    seed: int = 0
    dtype: str = "auto"
    max_num_seqs: int | None = None
    #: None = eager on CPU (torch.compile warm-up costs ~65 s there and gains nothing measurable), graphs on GPU.
    enforce_eager: bool | None = None


@dataclass
class Completion:
    """Accumulates one request's streamed (delta) outputs, one slot per sample."""

    n: int
    num_prompt_tokens: int = 0

    def __post_init__(self) -> None:
        self.texts: list[list[str]] = [[] for _ in range(self.n)]
        self.num_tokens: list[int] = [0] * self.n
        self.finish_reasons: list[str | None] = [None] * self.n


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


class Engine:
    """A vLLM engine configured for one KV-cache preset."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.vllm_version = vllm_compat.check_engine_api()
        kvcache.check_preset(settings.preset)
        kwargs: dict[str, Any] = dict(
            model=settings.model,
            seed=settings.seed,
            dtype=settings.dtype,
            disable_log_stats=False,
            enforce_eager=(not cuda_available()) if settings.enforce_eager is None else settings.enforce_eager,
        )
        if settings.max_model_len is not None:
            kwargs["max_model_len"] = settings.max_model_len
        if settings.max_num_seqs is not None:
            kwargs["max_num_seqs"] = settings.max_num_seqs
        elif kvcache.get_preset(settings.preset).quantized:
            kwargs["max_num_seqs"] = kvcache.default_max_num_seqs(settings.preset)
        kv_bytes = settings.kv_cache_memory_bytes
        if kv_bytes is None and not cuda_available():
            kv_bytes = DEFAULT_CPU_KV_BYTES
        if kv_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = kv_bytes
        kwargs.update(kvcache.engine_kwargs(settings.preset))

        from vllm import LLM

        if os.path.isdir(settings.model) and not os.path.isfile(os.path.join(settings.model, "config.json")):
            raise InputError("model directory has no config.json", path=settings.model)
        try:
            self.llm = LLM(**kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineError(f"the vLLM engine failed to start for {settings.model!r}: {exc}") from exc
        self.core = self.llm.llm_engine
        self.tokenizer = self.llm.get_tokenizer()
        self.shape = vllm_compat.model_shape(self.llm)
        self.allocation = vllm_compat.cache_allocation(self.llm)

    # -- requests -------------------------------------------------------------------------
    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of `messages` rendered with the model's chat template, ready to generate."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise InputError(f"model {self.settings.model!r} has no chat template; kvarn sends prompts as chats")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(t) for t in ids]

    def add(self, request_id: str, prompt_ids: list[int], params: Any) -> None:
        self.core.add_request(request_id, {"prompt_token_ids": prompt_ids}, params)

    def step(self) -> list[Any]:
        return self.core.step()

    def has_unfinished(self) -> bool:
        return bool(self.core.has_unfinished_requests())

    def abort(self, request_ids: list[str]) -> None:
        if request_ids:
            self.core.abort_request(request_ids)

    def gauges(self) -> dict[str, float]:
        return vllm_compat.read_gauges(self.llm)

    # -- description ----------------------------------------------------------------------
    def describe_engine(self) -> dict[str, Any]:
        import torch

        device = self.shape["device"]
        if device == "cuda" and torch.cuda.is_available():
            device_name = torch.cuda.get_device_name(0)
        else:
            device_name = platform.processor() or platform.machine()
        return {
            "vllm_version": self.vllm_version,
            "torch_version": torch.__version__,
            "device": device,
            "device_name": device_name,
            "model": self.settings.model,
            "dtype": self.shape["dtype"],
            "num_layers": self.shape["num_layers"],
            "num_kv_heads": self.shape["num_kv_heads"],
            "head_dim": self.shape["head_dim"],
            "max_model_len": self.shape["max_model_len"],
        }

    def describe_kv_cache(self) -> dict[str, Any]:
        """The KV cache as allocated: block counts come from the engine, sizes from its model shape."""
        preset = self.settings.preset
        dtype_bytes = 4 if self.shape["dtype"] == "float32" else 2
        shape = {key: self.shape[key] for key in ("num_layers", "num_kv_heads", "head_dim")}
        bytes_per_token = kvcache.bytes_per_token(preset, dtype_bytes=dtype_bytes, **shape)
        alloc = self.allocation
        capacity = alloc["num_blocks"] * alloc["block_size"]
        memory = alloc["kv_cache_memory_bytes"]
        if memory is None:  # GPU sizing by utilization: report what the blocks occupy
            memory = int(capacity * bytes_per_token)
        # quantized presets keep each sequence's sink and tail block in 16-bit beside the paged cache
        max_num_seqs = int(vllm_compat.vllm_config(self.llm).scheduler_config.max_num_seqs)
        staging = kvcache.staging_bytes(preset, dtype_bytes=dtype_bytes, max_num_seqs=max_num_seqs, **shape)
        return {
            "preset": preset,
            "bits_per_element": kvcache.bits_per_element(preset, head_dim=self.shape["head_dim"], dtype_bytes=dtype_bytes),
            "bytes_per_token": bytes_per_token,
            "block_size": alloc["block_size"],
            "num_blocks": alloc["num_blocks"],
            "capacity_tokens": capacity,
            "kv_cache_memory_bytes": int(memory),
            "staging_bytes": int(staging),
            "total_kv_bytes": int(memory) + int(staging),
            "cache_dtype": alloc["cache_dtype"],
        }
