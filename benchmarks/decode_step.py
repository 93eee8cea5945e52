"""GPU time of one whole decode step's attention work, every layer, as vLLM replays it.

The end-to-end run (benchmarks/e2e_gpu.py) measures wall time per engine step, which mixes
vLLM's host work, the model's matmuls and prefill steps. This isolates the part kvarn owns:
for a batch of R sequences at realistic contexts, the KV work of one decode step across L
layers, captured in one CUDA graph as vLLM captures it, against vLLM's own bf16 path
(reshape_and_cache_flash + FlashAttention over a paged cache) at the same batch and contexts.
It also times each of kvarn's launches alone, so the step's cost can be split by kernel:

- stage: write the step's K/V (rotated) into the tail slots;
- flush: quantize the slots that the step's tokens complete (--fill rows of R), in every
  layer with one launch, as the builder does before the next step (the step itself reads
  those blocks from their slots); the step's time includes it;
- decode: split-K attention over the records + merge with the 16-bit sink/tail slots;
- decode, no slots: the same without the slots (what the slots cost the merge kernel).

Contexts: each row's context is one of --contexts (cycled) plus a uniform offset in
[0, --spread), so the rows sit at different points of their blocks as in a real batch.
Each layer has its own records, slots and bf16 cache (no L2 reuse across layers).

    python benchmarks/decode_step.py --rows 104,128 --contexts 300,700,1100 --out step.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvarn_cli.kernels import make_quantizer  # noqa: E402
from kvarn_cli.kvcache.compute import Codec, LayerCache, decode_fixed, flush_decode_fills  # noqa: E402
from kvarn_cli.kvcache.graph import DecodeArrays  # noqa: E402

SHAPES = {"smollm2": (30, 3, 9, 64), "qwen3-4b": (36, 8, 32, 128)}  # layers, kv heads, q heads, head dim
BF16_BLOCK = 16  # vLLM's default block size for the bf16 cache


@dataclass
class Batch:
    """Host description of one decode step: per-row context (this step's token included)."""

    ctx: list[int]
    G: int

    @property
    def rows(self) -> int:
        return len(self.ctx)

    def width(self) -> int:
        return max(1, max(math.ceil(c / self.G) for c in self.ctx))


def make_batch(rows: int, contexts: list[int], spread: int, G: int, seed: int) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    offs = torch.randint(0, max(1, spread), (rows,), generator=gen).tolist()
    return Batch([contexts[i % len(contexts)] + offs[i] for i in range(rows)], G)


def kvarn_arrays(batch: Batch, fill: int, device: torch.device) -> DecodeArrays:
    """The graph buffers of the step: row i owns slots 2i (sink) and 2i+1 (tail) and blocks
    i*W .. i*W+W-1 (in a shuffled order); its token goes to the tail. The first `fill` rows
    (or, with fill < 0, the rows whose token completes a block) flush their tail."""
    R, G, W = batch.rows, batch.G, batch.width()
    table = torch.zeros(R, W, dtype=torch.int32)
    nblk = torch.zeros(R, dtype=torch.int32)
    side_slot = torch.full((R, 2), -1, dtype=torch.int32)
    side_len = torch.zeros(R, 2, dtype=torch.int32)
    stage_slot = torch.full((R,), -1, dtype=torch.int32)
    stage_offset = torch.zeros(R, dtype=torch.int32)
    fill_slot = torch.full((R,), -1, dtype=torch.int32)
    fill_block = torch.full((R,), -1, dtype=torch.int32)
    perm = torch.randperm(R * W, generator=torch.Generator().manual_seed(1)).to(torch.int32).view(R, W)
    nf = 0
    for i, c in enumerate(batch.ctx):
        tail = (c - 1) % G + 1  # tokens in the tail block, this one included
        full = (c - tail) // G  # full blocks before it
        if full >= 1:  # block 0 is the sink, in its slot; the others are records
            side_slot[i, 0], side_len[i, 0] = 2 * i, G
            nblk[i] = full - 1
            table[i, : full - 1] = perm[i, : full - 1]
        side_slot[i, 1], side_len[i, 1] = 2 * i + 1, tail
        stage_slot[i], stage_offset[i] = 2 * i + 1, tail - 1
        completes = tail == G if fill < 0 else i < fill
        if completes:
            fill_slot[nf], fill_block[nf] = 2 * i + 1, int(perm[i, W - 1])
            nf += 1
    to = lambda t: t.to(device)  # noqa: E731
    return DecodeArrays(
        rows=R, table=to(table), nblk=to(nblk), side_slot=to(side_slot), side_len=to(side_len),
        tokens=to(torch.arange(R, dtype=torch.int32)), stage_slot=to(stage_slot), stage_offset=to(stage_offset),
        fill_slot=to(fill_slot), fill_block=to(fill_block),
    )


def timed(fn: Callable[[], None], device: torch.device) -> float:
    """Median ms of one call, from CUDA-graph replays (on CPU: one plain call, nan)."""
    if device.type != "cuda":
        fn()
        return float("nan")
    from triton.testing import do_bench_cudagraph

    fn()
    torch.cuda.synchronize()
    return float(do_bench_cudagraph(fn, return_mode="median"))


def layer_tensors(codec: Codec, batch: Batch, shape: tuple[int, int, int, int], layers: int, device: torch.device,
                  dtype: torch.dtype) -> tuple[list[LayerCache], list[tuple[torch.Tensor, ...]]]:
    """Each layer's own records, slots, and q/k/v/out for one decode step of `batch`, as
    kvarn_arrays lays them out (row i: slots 2i and 2i+1, blocks i*W ..). The records are
    realistic: random tiles quantized by the flush kernel, copied to every block."""
    from kvarn_cli.kernels.triton_flush import flush_tiles

    _, kvh, qh, d = shape
    G, R, W = batch.G, batch.rows, batch.width()
    gen = torch.Generator(device=device).manual_seed(0)
    seed_k = torch.randn(8, kvh, G, d, device=device, generator=gen) * (1 + 4 * torch.rand(1, 1, 1, d, device=device, generator=gen))
    seed_v = torch.randn(8, kvh, G, d, device=device, generator=gen) * 0.3
    seed = torch.empty(8, kvh, codec.record_bytes, dtype=torch.uint8, device=device)
    flush_tiles(codec.q, seed_k, seed_v, seed, torch.arange(8, dtype=torch.int32, device=device))
    caches, qkv = [], []
    for _ in range(layers):
        records = seed[torch.arange(R * W, device=device) % 8].contiguous()
        slot_k = torch.randn(2 * R, kvh, G, d, device=device, dtype=dtype, generator=gen)
        slot_v = torch.randn(2 * R, kvh, G, d, device=device, dtype=dtype, generator=gen)
        caches.append(LayerCache(records=records, slot_k=slot_k, slot_v=slot_v))
        q = torch.randn(R, qh, d, device=device, dtype=dtype, generator=gen)
        k = torch.randn(R, kvh, d, device=device, dtype=dtype, generator=gen)
        v = torch.randn(R, kvh, d, device=device, dtype=dtype, generator=gen)
        qkv.append((q, k, v, torch.empty_like(q)))
    return caches, qkv


def kvarn_timings(method: str, batch: Batch, fill: int, shape: tuple[int, int, int, int], layers: int,
                  device: torch.device, dtype: torch.dtype, variants: list[str] = [],
                  split_counts: list[int] = []) -> dict[str, float]:
    from kvarn_cli.kernels.triton_decode import decode_attention
    from kvarn_cli.kernels.triton_flush import LayerSlots
    from kvarn_cli.kernels.triton_stage import stage_tokens

    _, kvh, qh, d = shape
    G = batch.G
    codec = Codec(make_quantizer(method, head_dim=d, block_size=G), device, triton=True)
    fixed = kvarn_arrays(batch, fill, device)
    caches, qkv = layer_tensors(codec, batch, shape, layers, device, dtype)
    scale = 1.0 / math.sqrt(d)
    all_layers = LayerSlots([(c.slot_k, c.slot_v, c.records) for c in caches])
    nf = int((fixed.fill_slot >= 0).sum())

    def flush() -> None:  # the builder's one launch before the next step
        if nf:
            flush_decode_fills(codec, all_layers, fixed.fill_slot[:nf], fixed.fill_block[:nf])

    def layers_only() -> None:
        for c, (q, k, v, o) in zip(caches, qkv):
            decode_fixed(fixed, codec, c, q, k, v, o, scale)

    def step() -> None:
        layers_only()
        flush()

    def stage() -> None:
        for c, (q, k, v, o) in zip(caches, qkv):
            stage_tokens(k, v, fixed.tokens, fixed.stage_slot, fixed.stage_offset, c.slot_k, c.slot_v)

    def decode(side: bool, **kw: object) -> Callable[[], None]:
        kw = {**codec.decode_kernel_args, **kw}

        def run() -> None:
            for c, (q, k, v, o) in zip(caches, qkv):
                if side:
                    decode_attention(codec.q, q, c.records, fixed.table, fixed.nblk, c.slot_k, c.slot_v,
                                     fixed.side_slot, fixed.side_len, scale=scale, out=o, **kw)
                else:
                    decode_attention(codec.q, q, c.records, fixed.table, fixed.nblk, scale=scale, out=o, **kw)
        return run

    out = {
        "step_ms": timed(step, device),
        "layers_ms": timed(layers_only, device),
        "stage_ms": timed(stage, device),
        "flush_ms": timed(flush, device) if nf else 0.0,
        "decode_ms": timed(decode(True), device),
        "decode_no_slots_ms": timed(decode(False), device),
        "flush_rows": nf,
        "record_bytes": layers * kvh * int(fixed.nblk.sum().item()) * codec.record_bytes,
    }
    for variant in variants:  # the decode alone, per kernel variant and split count
        for splits in split_counts or [None]:
            key = f"decode_{variant}" + (f"_s{splits}" if splits else "")
            out[key + "_ms"] = timed(decode(True, variant=variant, num_splits=splits), device)
    del caches, qkv
    return out


def bf16_timings(batch: Batch, shape: tuple[int, int, int, int], layers: int, device: torch.device) -> dict[str, float]:
    """vLLM's bf16 decode: reshape_and_cache_flash, then FlashAttention over the paged cache."""
    from vllm import _custom_ops as ops
    from vllm.v1.attention.backends.fa_utils import get_flash_attn_version
    from vllm.vllm_flash_attn import flash_attn_varlen_func

    _, kvh, qh, d = shape
    R = batch.rows
    B = BF16_BLOCK
    W = max(math.ceil(c / B) for c in batch.ctx)
    ctx = torch.tensor(batch.ctx, dtype=torch.int32, device=device)
    table = torch.randperm(R * W, device=device).to(torch.int32).view(R, W)
    slot_mapping = (table[torch.arange(R, device=device), (ctx - 1) // B].long() * B + (ctx - 1) % B)
    cu_q = torch.arange(R + 1, dtype=torch.int32, device=device)
    one = torch.ones((), dtype=torch.float32, device=device)
    fa = get_flash_attn_version()
    layers_data = []
    for _ in range(layers):
        kc = torch.randn(R * W, B, kvh, d, device=device, dtype=torch.bfloat16)
        vc = torch.randn(R * W, B, kvh, d, device=device, dtype=torch.bfloat16)
        q = torch.randn(R, qh, d, device=device, dtype=torch.bfloat16)
        k = torch.randn(R, kvh, d, device=device, dtype=torch.bfloat16)
        v = torch.randn(R, kvh, d, device=device, dtype=torch.bfloat16)
        layers_data.append((kc, vc, q, k, v, torch.empty_like(q)))
    scale = 1.0 / math.sqrt(d)

    def step() -> None:
        for kc, vc, q, k, v, o in layers_data:
            ops.reshape_and_cache_flash(k, v, kc, vc, slot_mapping, "auto", one, one)
            flash_attn_varlen_func(q=q, k=kc, v=vc, out=o, cu_seqlens_q=cu_q, max_seqlen_q=1, seqused_k=ctx,
                                   max_seqlen_k=max(batch.ctx), softmax_scale=scale, causal=True,
                                   block_table=table, fa_version=fa)

    ms = timed(step, device)
    del layers_data
    return {"bf16_step_ms": ms, "bf16_bytes": layers * 2 * sum(batch.ctx) * kvh * d * 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="104,128", help="batch sizes (sequences decoding together)")
    ap.add_argument("--contexts", default="300,700,1100", help="tokens per sequence, cycled over the rows")
    ap.add_argument("--spread", type=int, default=128, help="uniform offset added to each row's context")
    ap.add_argument("--shape", choices=tuple(SHAPES), default="smollm2")
    ap.add_argument("--layers", type=int, default=0, help="0 = the shape's layer count")
    ap.add_argument("--methods", default="k2v2,k4v4")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--fill", type=int, default=-1,
                    help="rows that flush their tail this step; -1 = those whose token completes a block")
    ap.add_argument("--variants", default="", help="also time the decode alone with these kernel variants (e.g. hilo,tmwh)")
    ap.add_argument("--splits", default="", help="... and these split counts (default: the kernel's own choice)")
    ap.add_argument("--no-bf16", action="store_true", help="skip vLLM's bf16 path (e.g. without vLLM)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = SHAPES[args.shape]
    layers = args.layers or shape[0]
    contexts = [int(x) for x in args.contexts.split(",")]
    result: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/decode_step.py " + " ".join(sys.argv[1:]),
        "rows": [],
    }
    for rows in (int(x) for x in args.rows.split(",")):
        batch = make_batch(rows, contexts, args.spread, args.block_size, seed=rows)
        row: dict = {"rows": rows, "layers": layers, "mean_ctx": sum(batch.ctx) / rows}
        if not args.no_bf16:
            row.update(bf16_timings(batch, shape, layers, device))
        for m in args.methods.split(","):
            variants = [v for v in args.variants.split(",") if v]
            splits = [int(x) for x in args.splits.split(",") if x]
            for key, val in kvarn_timings(m, batch, args.fill, shape, layers, device, dtype, variants, splits).items():
                row[f"{m}_{key}"] = val
        result["rows"].append(row)
        line = f"R={rows:4d} L={layers} mean ctx {row['mean_ctx']:.0f}:"
        if "bf16_step_ms" in row:
            line += f" bf16 {row['bf16_step_ms'] * 1e3:7.1f}us"
        for m in args.methods.split(","):
            line += (f" | {m} step {row[f'{m}_step_ms'] * 1e3:7.1f}us = stage {row[f'{m}_stage_ms'] * 1e3:.1f}"
                     f" + flush({row[f'{m}_flush_rows']}) {row[f'{m}_flush_ms'] * 1e3:.1f}"
                     f" + decode {row[f'{m}_decode_ms'] * 1e3:.1f} (no slots {row[f'{m}_decode_no_slots_ms'] * 1e3:.1f})")
            line += f" (step without the flush: {row[f'{m}_layers_ms'] * 1e3:.1f})"
            if "bf16_step_ms" in row:
                line += f" x{row['bf16_step_ms'] / row[f'{m}_step_ms']:.2f} of bf16"
            extra = {k[len(m) + 1: -3]: v for k, v in row.items() if k.startswith(f"{m}_decode_") and k not in (f"{m}_decode_ms", f"{m}_decode_no_slots_ms")}
            if extra:
                line += "\n    decode alone: " + "  ".join(f"{k} {v * 1e3:.1f}us" for k, v in extra.items())
        print(line, flush=True)
        if args.out:
            args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
