"""The KVarN attention backend for vLLM: paged cache of KVarN records + 16-bit sink/tail.

Installed by kvarn_cli.kvcache.activate (in kvarn's process) and the `vllm.general_plugins`
entry point (in vLLM's worker processes) in place of CPU_ATTN on CPU, or as CUSTOM on CUDA.

- `customize_spec` turns each attention layer's cache into uint8 pages whose per-token cell
  is record_bytes / G, so vLLM's block manager sizes and allocates the quantized cache
  itself: one block = one tile of G tokens = one record per KV head and layer.
- The metadata builder runs once per step and turns the batch into a StepPlan (which tokens
  go to which staging slot or flush tile, where every key is read from); it owns the
  staging pool's bookkeeping, which is shared by all layers because they share block ids.
- The impl applies the plan to its layer: writes, flushes and attention (kvarn_cli.kvcache
  .compute): PyTorch on CPU; on CUDA the flushes and the decode attention go through the
  Triton kernels (kvarn_cli.kernels.triton_flush / triton_decode), prefill chunks stay PyTorch.
- On the Triton path a decode-only step is three fixed-grid launches per layer (stage,
  split-K decode, merge) over arrays at fixed addresses (kvarn_cli.kvcache.graph), so the
  builder can declare CUDA-graph support for uniform single-token decode batches
  (KVARN_DECODE_GRAPHS=0 turns that off): vLLM then captures whole decode steps and replays
  them without running any layer's Python. What a replay cannot do (spills and restores of
  staging slots) the builder applies to every layer before the step, and it flushes the
  blocks a decode step filled in every layer with one launch before the next step. The
  rows vLLM pads such a batch with, and the dummy batches it warms up each capture with,
  are left out of the plan (graph.real_requests).

The preset travels in environment variables because `customize_spec` runs without a
current vLLM config.
"""

from __future__ import annotations

import faulthandler
import os
import weakref
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch

from kvarn_cli import vllm_compat
from kvarn_cli.errors import EngineError
from kvarn_cli.kvcache import ENV_BLOCK_SIZE, ENV_QUANTIZER
from kvarn_cli.kvcache.compute import (
    Codec, LayerCache, attend, decode_fixed, flush_decode_fills, maintain, records_view, update_cache, use_triton,
)
from kvarn_cli.kvcache.graph import DecodeBuffers, decode_only, real_requests, table_width
from kvarn_cli.kvcache.layout import staging_slots, token_bytes
from kvarn_cli.kvcache.records import quantizer_for
from kvarn_cli.kvcache.staging import UNSPLIT_DECODES, StagingPool, StepPlan
from kvarn_cli.kvcache.warmup import WARM_BLOCKS, WARM_SLOTS, warm_eager_steps

_api = vllm_compat.backend_api()

#: "0": no decode CUDA graphs; decode steps then run eagerly, layer by layer, through the
#: same fixed-array kernels (slower: the step becomes host-bound). On by default since the
#: builder leaves vLLM's padding and warm-up rows alone: with graphs on, the prefix-hit smoke
#: gives the eager path's greedy tokens (benchmarks/results/h100-2026-11-22/run29_prefix.log).
ENV_DECODE_GRAPHS = "KVARN_DECODE_GRAPHS"

#: Staging pools of the builders alive in this process (diagnostics: spills, restores).
_POOLS: "weakref.WeakSet[StagingPool]" = weakref.WeakSet()


def live_pools() -> list[StagingPool]:
    return list(_POOLS)


def active_codec() -> tuple[str, int]:
    """(quantizer name, tile size G) that kvarn asked for, from the environment."""
    name = os.environ.get(ENV_QUANTIZER)
    block = os.environ.get(ENV_BLOCK_SIZE)
    if not name or not block:
        raise EngineError(
            f"the KVarN attention backend is installed but {ENV_QUANTIZER}/{ENV_BLOCK_SIZE} are not set; "
            "build engines through kvarn_cli.kvcache.engine_kwargs"
        )
    return name, int(block)


class KVarNAttentionBackend(_api.AttentionBackend):  # type: ignore[misc,name-defined]
    accept_output_buffer: bool = True
    forward_includes_kv_cache_update: bool = True
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list[Any]] = ["auto"]

    @staticmethod
    def get_name() -> str:
        # vLLM looks the name up in AttentionBackendEnum: report the member we replace
        return str(vllm_compat.backend_slot(_api).name)

    @staticmethod
    def get_impl_cls() -> type["KVarNAttentionImpl"]:
        return KVarNAttentionImpl

    @staticmethod
    def get_builder_cls() -> type["KVarNMetadataBuilder"]:
        return KVarNMetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec: Any = None) -> list[Any]:
        return [active_codec()[1]]

    @classmethod
    def supports_head_size(cls, head_size: int) -> bool:
        return head_size > 0 and head_size & (head_size - 1) == 0  # Hadamard needs 2^n

    @classmethod
    def supported_kv_cache_layouts(cls) -> tuple[Any, ...]:
        # [layer, block, head, token, cell]: each (block, head) record is contiguous (vLLM 0.32)
        return (_api.KVCacheLayout.LBHNC,)

    @staticmethod
    def get_kv_cache_shape(
        num_blocks: int, block_size: int, num_kv_heads: int, head_size: int, cache_dtype_str: str = "auto"
    ) -> tuple[int, ...]:
        # vLLM 0.26 views each layer's uint8 pages through this shape: one record per (block, head)
        name, _ = active_codec()
        return (num_blocks, num_kv_heads, block_size * token_bytes(name, head_size, block_size))

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type == _api.AttentionType.DECODER

    @classmethod
    def customize_spec(cls, spec: Any) -> Any:
        name, block_size = active_codec()
        if spec.block_size != block_size:
            raise EngineError(
                f"the KVarN cache needs vLLM blocks of one tile ({block_size} tokens), got {spec.block_size}; "
                "pass the block_size from kvarn_cli.kvcache.engine_kwargs"
            )
        return vllm_compat.fixed_cell_spec(spec, token_bytes(name, spec.head_size, block_size))

    #: vLLM 0.26 has no customize_spec; vllm_compat.install_page_spec_hook calls this instead.
    kvarn_page_spec = customize_spec


#: Seconds. When set, every step's metadata build arms a timer that prints all Python stacks
#: of this process to stderr (fd 2, faulthandler) if the next build has not come by then:
#: what a multi-second step inside vLLM's engine-core process is doing, which a watcher in
#: the front-end process cannot see (benchmarks/e2e_gpu.py --core-stall-dump). A diagnostic.
ENV_STALL_DUMP = "KVARN_STALL_DUMP_S"


def stall_dump_after() -> float | None:
    """ENV_STALL_DUMP as seconds, None when unset."""
    raw = os.environ.get(ENV_STALL_DUMP, "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:  # NaN too
        raise EngineError(f"{ENV_STALL_DUMP}={raw!r}: expected seconds (a number > 0)")
    return seconds


@dataclass
class KVarNMetadata:
    num_actual_tokens: int
    plan: StepPlan


class KVarNMetadataBuilder(_api.AttentionMetadataBuilder):  # type: ignore[misc,name-defined]
    #: plan decode-only steps straight into the CUDA-graph buffers (_decode_step); off, they
    #: take plan() and DecodeBuffers.load like other steps, to the same effect.
    #: benchmarks/profile_admission.py --ab-direct turns it off and on between passes of one
    #: engine, to time both ways on the same host state.
    direct_decodes: ClassVar[bool] = True

    def __init__(self, kv_cache_spec: Any, layer_names: list[str], vllm_config: Any, device: torch.device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        max_seqs = vllm_config.scheduler_config.max_num_seqs
        slots = staging_slots(max_seqs)
        self.buffers: DecodeBuffers | None = None
        if self._triton_decodes(device, kv_cache_spec.head_size):
            self.pool = StagingPool(slots, kv_cache_spec.block_size, attention_budget_rows=UNSPLIT_DECODES,
                                    kernel_decodes=True)
            width = table_width(vllm_config.model_config.max_model_len, kv_cache_spec.block_size)
            self.buffers = DecodeBuffers(max_seqs, width, device)
            self._warm_eager_steps(kv_cache_spec, vllm_config, device)
        else:
            self.pool = StagingPool(slots, kv_cache_spec.block_size)
        self._layers: list[tuple[Any, Any]] | None = None
        #: (codec, triton_flush.LayerSlots) of every layer, made on the first flush; vLLM binds
        #: each layer's pages once and each impl makes its slots once, so they never move
        self._layer_slots: tuple[Codec, Any] | None = None
        self._stall_dump_s = stall_dump_after()
        #: the plan object of each (tokens, rows) of decode-only steps (_decode_step)
        self._decode_plans: dict[tuple[int, int], StepPlan] = {}
        _POOLS.add(self.pool)

    @staticmethod
    def _warm_eager_steps(spec: Any, vllm_config: Any, device: torch.device) -> None:
        """Compile the Triton kernels of eager steps before the job starts
        (warmup.warm_eager_steps), on scratch records of the backend's own page shape and
        slots of the layers' shape, so they specialize as the layers' storage does."""
        name, block = active_codec()
        codec = Codec(quantizer_for(name, spec.head_size, block), device)
        model = vllm_config.model_config
        shape = KVarNAttentionBackend.get_kv_cache_shape(WARM_BLOCKS, block, spec.num_kv_heads, spec.head_size)
        slots = (WARM_SLOTS, spec.num_kv_heads, block, spec.head_size)
        cache = LayerCache(
            records=records_view(torch.zeros(shape, dtype=torch.uint8, device=device), codec.record_bytes),
            slot_k=torch.zeros(slots, dtype=model.dtype, device=device),
            slot_v=torch.zeros(slots, dtype=model.dtype, device=device),
        )
        warm_eager_steps(codec, cache, model.get_num_attention_heads(vllm_config.parallel_config), model.dtype)

    @staticmethod
    def _triton_decodes(device: torch.device, head_size: int) -> bool:
        """Whether this process's layers will attend decodes with the Triton kernel (Codec's rule)."""
        name, block = active_codec()
        return use_triton(device, quantizer_for(name, head_size, block))

    @classmethod
    def get_cudagraph_support(cls, vllm_config: Any, kv_cache_spec: Any) -> Any:
        support = _api.AttentionCGSupport
        if not _api.current_platform.is_cuda_alike() or os.environ.get(ENV_DECODE_GRAPHS) == "0":
            return support.NEVER
        cuda = torch.device("cuda")
        return support.UNIFORM_SINGLE_TOKEN_DECODE if cls._triton_decodes(cuda, kv_cache_spec.head_size) else support.NEVER

    def _maintain(self, plan: StepPlan) -> None:
        """Spills and restores, applied to every layer before the step's layers run."""
        if self._layers is None:
            self._layers = vllm_compat.attention_layers(self.vllm_config, self.layer_names)
        for impl, kv_cache in self._layers:
            cache = impl.layer_cache(kv_cache)
            if cache is not None:  # a layer that has not run yet has nothing staged
                maintain(plan, impl.codec, cache)

    def _flush_last_decode(self) -> None:
        """Quantize the blocks that the last CUDA-graph decode step filled, in every layer with
        one launch (compute.flush_decode_fills), before this step's layers (or maintenance)
        read those records or reuse those slots: stream order does the rest."""
        fills = None if self.buffers is None else self.buffers.take_fills()
        if fills is None:
            return
        if self._layer_slots is None:
            from kvarn_cli.kernels.triton_flush import LayerSlots

            layers = vllm_compat.attention_layers(self.vllm_config, self.layer_names)
            caches = [impl.layer_cache(kv) for impl, kv in layers]
            if any(c is None for c in caches):
                raise EngineError("a KVarN decode step ran before every layer had its cache and slots")
            slots = LayerSlots([(c.slot_k, c.slot_v, c.records) for c in caches if c is not None])
            self._layer_slots = (layers[0][0].codec, slots)
        codec, slots = self._layer_slots
        flush_decode_fills(codec, slots, *fills)

    def build(self, common_prefix_len: int, common_attn_metadata: Any, fast_build: bool = False) -> KVarNMetadata:
        if self._stall_dump_s is not None:  # re-arming cancels the last step's timer
            faulthandler.dump_traceback_later(self._stall_dump_s, file=2)
        self._flush_last_decode()
        cam = common_attn_metadata
        qsl = cam.query_start_loc_cpu.numpy()
        seq_lens = cam.seq_lens_cpu_upper_bound if cam.seq_lens_cpu_upper_bound is not None else cam.seq_lens
        seq = seq_lens.cpu().numpy()
        table = vllm_compat.host_block_table(cam.block_table_tensor)
        # only the real requests: the rows vLLM pads a CUDA-graph batch with, and its dummy
        # warm-up batches, must not touch the staging pool (their kernel rows read and write nothing)
        reqs = real_requests(seq, table[: cam.num_reqs, 0], cam.num_reqs, _api.null_block_id)
        num_tokens = int(qsl[reqs])
        if (self.direct_decodes and self.buffers is not None and cam.num_reqs <= self.buffers.max_rows
                and decode_only(qsl, reqs)):
            return KVarNMetadata(num_actual_tokens=num_tokens, plan=self._decode_step(seq[:reqs], table[:reqs], cam.num_reqs))
        plan = self.pool.plan(qsl[: reqs + 1], seq[:reqs], table[:reqs], num_tokens)
        fixed = self.buffers is not None and self.buffers.fits(plan, cam.num_reqs)
        moved = plan.to(self.device) if self.device.type != "cpu" and (plan.needs_maintenance or not fixed) else plan
        if plan.needs_maintenance:
            self._maintain(moved)
        if fixed:
            assert self.buffers is not None
            plan.fixed = self.buffers.load(plan, cam.num_reqs)
        else:
            plan = moved
        return KVarNMetadata(num_actual_tokens=num_tokens, plan=plan)

    def _decode_step(self, seq_lens: np.ndarray, table: np.ndarray, rows: int) -> StepPlan:
        """A decode-only step straight into the CUDA-graph buffers (StagingPool.plan_decodes),
        padded to `rows`: most steps of a job, and host time vLLM waits for on each."""
        assert self.buffers is not None
        step = self.pool.plan_decodes(seq_lens, table)
        if step.maintenance is not None:
            self._maintain(step.maintenance.to(self.device) if self.device.type != "cpu" else step.maintenance)
        fixed = self.buffers.load_decodes(step, rows)
        key = (int(seq_lens.shape[0]), rows)
        plan = self._decode_plans.get(key)
        if plan is None or plan.fixed is not fixed:
            # the layers read only `fixed` (the same device views for every step of `rows`)
            self._decode_plans[key] = plan = replace(StepPlan.empty(key[0]), fixed=fixed)
        return plan

    def build_for_cudagraph_capture(self, common_attn_metadata: Any) -> KVarNMetadata:
        """A decode step in which every row is padding: the graph is captured from the
        kernels' launches, never from the data, and the staging pool is left alone."""
        cam = common_attn_metadata
        if self.buffers is None:
            raise EngineError("CUDA-graph capture of the KVarN cache needs the Triton decode path")
        self._flush_last_decode()
        num_tokens = int(cam.num_actual_tokens)
        plan = replace(StepPlan.empty(num_tokens), fixed=self.buffers.load_blank(cam.num_reqs))
        return KVarNMetadata(num_actual_tokens=num_tokens, plan=plan)


class KVarNAttentionImpl(_api.AttentionImpl):  # type: ignore[misc,name-defined]
    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int | None = None,
        alibi_slopes: list[float] | None = None,
        sliding_window: int | None = None,
        kv_cache_dtype: str = "auto",
        logits_soft_cap: float | None = None,
        attn_type: str = "decoder",
        kv_sharing_target_layer_name: str | None = None,
        **extra: Any,
    ) -> None:
        unsupported = {
            "ALiBi": alibi_slopes is not None,
            "sliding-window attention": sliding_window is not None,
            "logit soft-capping": bool(logits_soft_cap),
            "attention sinks": extra.get("sinks") is not None,
            "cross-layer KV sharing": kv_sharing_target_layer_name is not None,
            f"{attn_type} attention": attn_type != _api.AttentionType.DECODER,
        }
        missing = [what for what, used in unsupported.items() if used]
        if missing:
            raise EngineError(f"the KVarN cache does not support {', '.join(missing)} (use --preset fp16 for this model)")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        self.kv_cache_dtype = kv_cache_dtype
        self.attn_type = attn_type
        self.kv_sharing_target_layer_name = None
        name, self.block_size = active_codec()
        self.quantizer = quantizer_for(name, head_size, self.block_size)
        config = _api.get_current_vllm_config()
        self.num_slots = staging_slots(config.scheduler_config.max_num_seqs)
        self.codec: Codec | None = None
        self.slot_k: torch.Tensor | None = None
        self.slot_v: torch.Tensor | None = None

    def _staging(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.slot_k is None or self.slot_v is None:
            shape = (self.num_slots, self.num_kv_heads, self.block_size, self.head_size)
            self.slot_k = torch.zeros(shape, dtype=like.dtype, device=like.device)
            self.slot_v = torch.zeros(shape, dtype=like.dtype, device=like.device)
        return self.slot_k, self.slot_v

    def layer_cache(self, kv_cache: torch.Tensor | None) -> LayerCache | None:
        """This layer's records (a view of vLLM's pages) and staging slots; None before the
        layer has run (no slots yet) or while vLLM has not bound its pages."""
        if self.slot_k is None or self.slot_v is None or self.codec is None or kv_cache is None or kv_cache.numel() == 0:
            return None
        return LayerCache(records=records_view(kv_cache, self.codec.record_bytes), slot_k=self.slot_k, slot_v=self.slot_v)

    def forward(
        self,
        layer: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: KVarNMetadata | None,
        output: torch.Tensor | None = None,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        assert output is not None
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("fused output quantization is not supported by the KVarN cache")
        if attn_metadata is None:  # profiling / warm-up without a batch
            return output
        if self.codec is None:
            self.codec = Codec(self.quantizer, query.device)
        self._staging(query)
        cache = self.layer_cache(kv_cache)
        assert cache is not None
        plan = attn_metadata.plan
        out = output.view(-1, self.num_heads, self.head_size)
        q = query.view(-1, self.num_heads, self.head_size)
        if plan.fixed is not None:
            decode_fixed(plan.fixed, self.codec, cache, q, key, value, out, self.scale)
            return output
        tiles = update_cache(plan, self.codec, cache, key, value)
        attend(plan, self.codec, cache, q, key, value, tiles, out, self.scale)
        return output
