"""Pseudo-decode: feed a text block by block and quantize the cache as the engine does.

The engine keeps the first block of a sequence 16-bit (sink), keeps the block being filled
unquantized, and quantizes a block once it holds `block` tokens ("flush"). Feeding a text in
chunks of exactly `block` tokens and flushing after each chunk reproduces that: every query
sees the sink, the flushed (quantized) earlier blocks, and its own block unquantized.

Two modes, both run in lockstep with the 16-bit reference on the same chunk (so no logits or
attention outputs of a whole text are ever held in memory):
- accumulated: a block's K/V is computed by this run itself (its hidden states already carry
  the error of the quantized history), then quantized and written back. This is decoding.
- static: a block's quantized K/V is the quantization of the *reference's* K/V for that block
  (all K/V computed in full precision first, then quantized). Queries and the current block's
  K/V still come from this run, so errors propagate through depth within a position but never
  through time. accumulated - static is the error that accumulates over the sequence.

"16-bit" means the engine's 16-bit cache: a float32 model's K/V are stored rounded to fp16
(fp16/bf16 models store their own dtype). The reference and the sink use that rounding, so the
`fp16` method reproduces the reference exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from kvarn_cli.analyze import capture
from kvarn_cli.analyze.metrics import TextMetrics, next_token_log_probs

MODES: tuple[str, ...] = ("static", "accumulated")

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: ([heads, n, D], [heads, n, D])


class Quantizer(Protocol):
    def quantize_batch(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...

    def dequantize_batch(self, records: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


QuantizerFactory = Callable[..., Quantizer]


def to_16bit(x: torch.Tensor) -> torch.Tensor:
    """What the engine's 16-bit cache stores for x."""
    if x.dtype == torch.float32 or x.dtype == torch.float64:
        return x.to(torch.float16).to(x.dtype)
    return x


def round_trip(quantizer: Quantizer, kv: KV) -> KV:
    """quantize_batch -> dequantize_batch of one block in every layer at once: one tile per KV
    head and layer, the exact bytes the engine would store."""
    heads = [k.shape[0] for k, _ in kv]
    k = torch.cat([k for k, _ in kv]).float()
    v = torch.cat([v for _, v in kv]).float()
    k_hat, v_hat = quantizer.dequantize_batch(quantizer.quantize_batch(k, v))
    dtype, device = kv[0][0].dtype, kv[0][0].device
    k_parts = k_hat.to(device=device, dtype=dtype).split(heads)
    v_parts = v_hat.to(device=device, dtype=dtype).split(heads)
    return list(zip(k_parts, v_parts))


@dataclass
class Track:
    """One (method, mode) run over one text, with its own cache."""

    method: str
    mode: str
    quantizer: Quantizer
    cache: Any
    metrics: TextMetrics


def _forward(model: torch.nn.Module, chunk: torch.Tensor, cache: Any, recorder: capture.AttentionRecorder
             ) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(input_ids=chunk.unsqueeze(0), past_key_values=cache, use_cache=True)
    return next_token_log_probs(out.logits[0]), recorder.take()


def pseudo_decode(
    model: torch.nn.Module,
    ids: torch.Tensor,
    quantizers: dict[str, Quantizer],
    *,
    block: int,
    modes: tuple[str, ...] = MODES,
    recorder: capture.AttentionRecorder | None = None,
    on_block: Callable[[], None] | None = None,
) -> dict[tuple[str, str], TextMetrics]:
    """Run every (method, mode) over one text (1-D token ids) and return its per-position errors.

    on_block, if given, is called after each block (for progress display).
    """
    own_recorder = recorder is None
    rec = recorder or capture.AttentionRecorder(model)
    num_layers = rec.num_layers
    device = next(model.parameters()).device
    ids = ids.to(device)
    total = int(ids.shape[0])
    ref_cache = capture.new_cache()
    tracks: list[Track] = []
    try:
        with torch.inference_mode():
            for start in range(0, total, block):
                end = min(start + block, total)
                chunk = ids[start:end]
                next_ids = ids[start + 1 : end + 1]
                ref_logp, ref_attn = _forward(model, chunk, ref_cache, rec)
                ref_kv = capture.read_block(ref_cache, num_layers, start, end)
                if not tracks:  # heads known only after the first forward
                    heads = ref_kv[0][0].shape[0]
                    tracks = [
                        Track(m, mode, q, capture.new_cache(), TextMetrics(num_layers, heads, total))
                        for m, q in quantizers.items()
                        for mode in modes
                    ]
                full = end - start == block
                for track in tracks:
                    logp, attn = _forward(model, chunk, track.cache, rec)
                    track.metrics.add_outputs(start, attn, ref_attn, logp, ref_logp, next_ids)
                    if not full:
                        continue  # the last, partial block is never flushed: nothing reads it later
                    source = ref_kv if track.mode == "static" else capture.read_block(
                        track.cache, num_layers, start, end)
                    if start == 0:
                        stored = [(to_16bit(k), to_16bit(v)) for k, v in source]
                    else:
                        stored = round_trip(track.quantizer, source)
                        track.metrics.add_norms(start, source, stored)
                    capture.write_block(track.cache, start, end, stored)
                if full:
                    capture.write_block(ref_cache, start, end, [(to_16bit(k), to_16bit(v)) for k, v in ref_kv])
                if on_block is not None:
                    on_block()
    finally:
        if own_recorder:
            rec.close()
    return {(t.method, t.mode): t.metrics for t in tracks}
