"""One layer's attention for prefill chunks that continue a sequence: kvarn's keys packed
for vLLM's variable-length FlashAttention (one call; keys laid down by kernels.triton_pack,
and by PyTorch indexing as before it, KVARN_PACK_KERNELS=0) against its PyTorch path
(float32, one padded, masked attention per chunk), on the same cache state.

Such chunks come from prefix-cache hits (a few-shot prompt: every request after the first
continues after the cached examples), from preempted sequences' recompute, and from prompts
longer than one step's token budget. Two cases per model shape:
- hits: R requests, each continuing with --new tokens after the same --prefix cached tokens
  (records, the first block from its sink slot), all in one step;
- recompute: one request continuing with --chunk tokens after --context cached tokens.

    python benchmarks/prefill_continued.py --rows 1,16,64          # on the GPU machine
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvarn_cli import vllm_compat  # noqa: E402
from kvarn_cli.kernels import make_quantizer  # noqa: E402
from kvarn_cli.kvcache.compute import Codec, LayerCache, attend, update_cache  # noqa: E402
from kvarn_cli.kvcache.staging import StagingPool  # noqa: E402

#: (name, kv heads, query heads, head dim)
SHAPES = (("smollm2", 3, 9, 64), ("qwen3-4b", 8, 32, 128))


def time_ms(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Median of `repeats` timed calls after two warm-ups (CUDA events around eager calls).
    Not do_bench_cudagraph as the decode benchmarks use: both paths here are bound by their
    host-side launches, which a graph replay would hide."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def one_case(shape: tuple[str, int, int, int], preset: str, G: int, cached: int, new: int, rows: int,
             shared: bool, repeats: int) -> dict[str, float | int | str]:
    """Plan a first step that prefills `cached` tokens (one request, or `rows` of them when
    not `shared`), then a step where `rows` requests each continue with `new` tokens; time
    that step's attention both ways."""
    name, H, Hq, D = shape
    dev = torch.device("cuda")
    qz = make_quantizer(preset, head_dim=D, block_size=G)
    codec = Codec(qz, dev)
    width = -(-(cached + new) // G)
    first_rows = 1 if shared else rows
    blocks = first_rows * width + rows * width + 1
    cache = LayerCache(
        records=torch.zeros(blocks, H, qz.record_bytes, dtype=torch.uint8, device=dev),
        slot_k=torch.zeros(4 * rows + 4, H, G, D, dtype=torch.bfloat16, device=dev),
        slot_v=torch.zeros(4 * rows + 4, H, G, D, dtype=torch.bfloat16, device=dev),
    )
    pool = StagingPool(4 * rows + 4, G, kernel_decodes=True)
    gen = torch.Generator(device=dev).manual_seed(0)

    def tensors(T: int) -> tuple[torch.Tensor, ...]:
        q = torch.randn(T, Hq, D, generator=gen, device=dev).to(torch.bfloat16)
        k, v = (torch.randn(T, H, D, generator=gen, device=dev).to(torch.bfloat16) for _ in range(2))
        return q, k, v

    own = np.arange(1, 1 + first_rows * width).reshape(first_rows, width)
    qsl = np.arange(first_rows + 1) * cached
    plan = pool.plan(qsl, np.full(first_rows, cached), own, int(qsl[-1])).to(dev)
    q, k, v = tensors(int(qsl[-1]))
    tiles = update_cache(plan, codec, cache, k, v)
    attend(plan, codec, cache, q, k, v, tiles, torch.empty_like(q), D**-0.5)

    if shared:  # each request: the cached whole blocks (a hit covers no partial block), then its own
        full = cached // G
        ctx = full * G
        table = np.zeros((rows, width), dtype=np.int64)
        table[:, :full] = own[0, :full]
        table[:, full:] = 1 + first_rows * width + np.arange(rows * (width - full)).reshape(rows, -1)
    else:  # each request goes on in its own blocks
        ctx, table = cached, own
    qsl = np.arange(rows + 1) * new
    plan = pool.plan(qsl, np.full(rows, ctx + new), table, int(qsl[-1])).to(dev)
    q, k, v = tensors(int(qsl[-1]))
    tiles = update_cache(plan, codec, cache, k, v)
    outs = {}
    result: dict[str, float | int | str] = {"shape": name, "preset": preset, "G": G, "rows": rows,
                                            "cached": ctx, "new": new}
    # (label, one FlashAttention call, keys laid down by kernels.triton_pack)
    for label, batched, pack in (("flash_ms", True, True), ("flash_torchpack_ms", True, False), ("torch_ms", False, True)):
        codec.batched_prefill, codec.pack_kernels = batched, pack
        out = torch.zeros_like(q)

        def run() -> None:
            attend(plan, codec, cache, q, k, v, tiles, out, D**-0.5)  # noqa: B023

        result[label] = round(time_ms(run, repeats), 3)
        outs[label] = out.float()
    err = (outs["flash_ms"] - outs["torch_ms"]).norm(dim=-1) / outs["torch_ms"].norm(dim=-1)
    result["max_rel_diff"] = round(float(err.max()), 4)
    result["pack_kernels_equal"] = bool(torch.equal(outs["flash_ms"], outs["flash_torchpack_ms"]))
    result["speedup"] = round(float(result["torch_ms"]) / float(result["flash_ms"]), 2)
    result["pack_speedup"] = round(float(result["flash_torchpack_ms"]) / float(result["flash_ms"]), 2)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="k2v2")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--rows", default="1,16,64", help="requests continuing after the same cached prefix")
    ap.add_argument("--prefix", type=int, default=1288, help="shared prompt tokens (an 8-shot GSM8K prompt)")
    ap.add_argument("--new", type=int, default=80, help="tokens each hit request computes")
    ap.add_argument("--context", type=int, default=4096, help="recompute: tokens cached before the chunk")
    ap.add_argument("--chunk", type=int, default=2048, help="recompute: tokens in the chunk")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    if not torch.cuda.is_available() or vllm_compat.varlen_flash_attention() is None:
        raise SystemExit(f"needs CUDA and vLLM's FlashAttention ({vllm_compat.varlen_flash_attention_missing()})")
    print(f"{torch.cuda.get_device_name()}; attention of one layer, median of {args.repeats}, ms")
    for shape in SHAPES:
        cases = [(args.prefix, args.new, int(r), True) for r in args.rows.split(",")]
        cases.append((args.context, args.chunk, 1, False))
        for cached, new, rows, shared in cases:
            res = one_case(shape, args.preset, args.block_size, cached, new, rows, shared, args.repeats)
            kind = "hits" if shared else "recompute"
            print(f"{res['shape']:9s} {kind:9s} rows {rows:3d} cached {res['cached']:5d} new {new:5d}: "
                  f"flash {res['flash_ms']:8.3f} (PyTorch packing {res['flash_torchpack_ms']:8.3f}, "
                  f"x{res['pack_speedup']:5.2f}, same bits {res['pack_kernels_equal']})  torch {res['torch_ms']:8.3f}  "
                  f"x{res['speedup']:6.2f}  max rel diff {res['max_rel_diff']}", flush=True)


if __name__ == "__main__":
    main()
