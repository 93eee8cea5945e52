"""Decode-attention microbenchmark on CUDA: KVarN Triton kernel (k2v2, k4v4) vs bf16 attention.

    PYTHONUNBUFFERED=1 python benchmarks/decode_attention.py --out results.json
    # quick comparison of split-kernel variants at 32k (about 2-3 minutes on an H100):
    PYTHONUNBUFFERED=1 python benchmarks/decode_attention.py --out quick.json \
        --variants hilo,tmw,tmwb,tmwhb,tmwb8 --methods k2v2 --contexts 32768 --batches 1,32,64 --no-flush

For each model shape, context length L and batch B it times one decode step of one layer:
- bf16: FlashAttention through torch SDPA on contiguous K/V [B, Hkv, L, D] with the GQA
  group as the query length (q [B, Hkv, Hq/Hkv, D]): one read of each KV head, no paging,
  the most favourable bf16 case;
- kvarn: `decode_attention` over a paged cache with L/G - 1 quantized blocks per sequence at
  random block ids, plus a 16-bit sink slot (G tokens) and a tail slot (G/2 tokens): L + G/2
  tokens in all (G: the preset's block size, 128, or 64 for the -g64 presets).
Times are medians of CUDA-graph replays (triton.testing.do_bench_cudagraph); each replay
runs the step over enough independent copies of the inputs (>= 256 MB) that nothing is
served from the 50 MB L2, and the time is divided by the number of copies.
Bytes moved: every cache byte the step must read (records, or bf16 K/V; plus the 16-bit
slots for kvarn) and q/out. The fraction of HBM bandwidth is against a device-to-device copy
measured in the same run (bytes read + written).
Also times the flush kernel for B tiles x Hkv heads (every sequence filling a tile in the
same step, the worst case) against the decode step. Only the flush, old (v1) against new
(fast*) kernels and warp counts, in well under a minute:

    PYTHONUNBUFFERED=1 python benchmarks/decode_attention.py --only flush --methods k2v2 --out flush.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvarn_cli import kvcache  # noqa: E402
from kvarn_cli.kernels import make_quantizer  # noqa: E402
from kvarn_cli.kernels.triton_decode import (  # noqa: E402
    AUTO_VARIANT, decode_attention, default_splits, resolve_variant,
)
from kvarn_cli.kernels.triton_common import kernel_layout  # noqa: E402
from kvarn_cli.kernels.triton_flush import DEFAULT_VARIANT, VARIANTS, default_warps, flush_tiles  # noqa: E402

SHAPES = {"smollm2": (3, 9, 64), "qwen3-4b": (8, 32, 128)}  # (kv heads, q heads, head dim)
MIN_BYTES_PER_REPLAY = 256 << 20
MAX_COPIES = 256


def copy_bandwidth() -> float:
    """Device-to-device copy of 2 GiB: bytes read + written per second."""
    n = 1 << 31
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    a.random_(0, 255)
    ms = do_bench_cudagraph(lambda: b.copy_(a), return_mode="median")
    del a, b
    torch.cuda.empty_cache()
    return 2 * n / (ms * 1e-3)


def read_bandwidth() -> float:
    """Read-only stream: sum of a 4 GiB bf16 tensor (bytes read per second)."""
    x = torch.randn(1 << 31, dtype=torch.bfloat16, device="cuda")
    ms = do_bench_cudagraph(lambda: x.sum(dtype=torch.float32), return_mode="median")
    del x
    torch.cuda.empty_cache()
    return 2 * (1 << 31) / (ms * 1e-3)


def timed(fns: list) -> float:
    """Median ms of one call, from CUDA-graph replays of all `fns` in a row."""
    for fn in fns:
        fn()
    torch.cuda.synchronize()

    def step() -> None:
        for fn in fns:
            fn()

    return do_bench_cudagraph(step, return_mode="median") / len(fns)


def copies_for(nbytes: int) -> int:
    return max(1, min(MAX_COPIES, math.ceil(MIN_BYTES_PER_REPLAY / max(nbytes, 1))))


def bf16_case(batch: int, kvh: int, qh: int, d: int, ctx: int) -> tuple[float, int]:
    nbytes = 2 * batch * kvh * ctx * d * 2
    fns = []
    keep = []
    for _ in range(copies_for(nbytes)):
        q = torch.randn(batch, kvh, qh // kvh, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(batch, kvh, ctx, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(batch, kvh, ctx, d, device="cuda", dtype=torch.bfloat16)
        keep.append((q, k, v))
        fns.append(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v))
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        ms = timed(fns)
    del keep, fns
    torch.cuda.empty_cache()
    return ms, nbytes + 2 * batch * qh * d * 2


def quantizer_for(method: str, d: int):  # type: ignore[no-untyped-def]
    """The quantizer of a --methods entry, a kvcache preset: "k2v2" with 128-token blocks,
    "k2v2-g64" with 64."""
    preset = kvcache.get_preset(method)
    return make_quantizer(preset.quantizer, head_dim=d, block_size=preset.block_size)


def record_pool(name: str, kvh: int, d: int, tiles: int = 64) -> torch.Tensor:
    """Realistic records: `tiles` random K/V tiles per head quantized by the Triton flush."""
    qz = quantizer_for(name, d)
    g = qz.block_size
    gen = torch.Generator(device="cuda").manual_seed(0)
    k = torch.randn(tiles, kvh, g, d, device="cuda", generator=gen) * (1 + 4 * torch.rand(1, 1, 1, d, device="cuda", generator=gen))
    v = torch.randn(tiles, kvh, g, d, device="cuda", generator=gen) * 0.3
    pool = torch.empty(tiles, kvh, qz.record_bytes, dtype=torch.uint8, device="cuda")
    flush_tiles(qz, k, v, pool, torch.arange(tiles, dtype=torch.int32, device="cuda"))
    return pool


def kvarn_case(name: str, batch: int, kvh: int, qh: int, d: int, ctx: int, pool: torch.Tensor,
               eager_runs: int = 0, **kw: object) -> tuple[float, int]:
    """eager_runs > 0: no timing, just that many plain launches of one copy (for profilers)."""
    qz = quantizer_for(name, d)
    g = qz.block_size
    nblk = ctx // g - 1
    side_tokens = g + g // 2
    rec_bytes = batch * kvh * nblk * qz.record_bytes
    side_bytes = 2 * batch * kvh * side_tokens * d * 2
    fns = []
    keep = []
    for _ in range(1 if eager_runs else copies_for(rec_bytes + side_bytes)):
        idx = torch.randint(0, pool.shape[0], (batch * nblk,), device="cuda")
        recs = pool[idx]
        table = torch.randperm(batch * nblk, device="cuda", dtype=torch.int32).view(batch, nblk)
        nb = torch.full((batch,), nblk, dtype=torch.int32, device="cuda")
        sk = torch.randn(2 * batch, kvh, g, d, device="cuda", dtype=torch.bfloat16)
        sv = torch.randn(2 * batch, kvh, g, d, device="cuda", dtype=torch.bfloat16)
        slots = torch.arange(2 * batch, dtype=torch.int32, device="cuda").view(batch, 2)
        lens = torch.tensor([g, g // 2], dtype=torch.int32, device="cuda").repeat(batch, 1)
        q = torch.randn(batch, qh, d, device="cuda", dtype=torch.bfloat16)
        out = torch.empty_like(q)
        keep.append((recs, table, nb, sk, sv, slots, lens, q, out))
        fns.append(lambda a=keep[-1]: decode_attention(qz, a[7], a[0], a[1], a[2], a[3], a[4], a[5], a[6], out=a[8], **kw))
    if eager_runs:
        for _ in range(eager_runs):
            fns[0]()
        torch.cuda.synchronize()
        ms = 0.0
    else:
        ms = timed(fns)
    del keep, fns
    torch.cuda.empty_cache()
    return ms, rec_bytes + side_bytes + 2 * batch * qh * d * 2


def resolved(variant: str, method: str, d: int, gqa: int) -> str:
    """The variant decode_attention runs for `variant` (AUTO_VARIANT resolved)."""
    if variant != AUTO_VARIANT:
        return variant
    lay = kernel_layout(quantizer_for(method, d).layout)
    return resolve_variant(lay, gqa, torch.device("cuda"))


def flush_case(name: str, batch: int, kvh: int, d: int, variant: str = DEFAULT_VARIANT, num_warps: int | None = None) -> float:
    qz = quantizer_for(name, d)
    g = qz.block_size
    k = torch.randn(batch, kvh, g, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(batch, kvh, g, d, device="cuda", dtype=torch.bfloat16)
    recs = torch.empty(4 * batch, kvh, qz.record_bytes, dtype=torch.uint8, device="cuda")
    ids = torch.randperm(4 * batch, device="cuda", dtype=torch.int32)[:batch].contiguous()
    return timed([lambda: flush_tiles(qz, k, v, recs, ids, num_warps=num_warps, variant=variant)])


def flush_only(args: argparse.Namespace) -> None:
    """Time only the flush: every variant and warp count on every shape, method and B."""
    result: dict = {"device": torch.cuda.get_device_name(), "triton": triton.__version__, "flush": []}
    for shape in args.shapes.split(","):
        kvh, _, d = SHAPES[shape]
        warps = sorted({default_warps(d) if w == "auto" else int(w) for w in args.flush_warps.split(",")})
        for m in args.methods.split(","):
            for batch in (int(x) for x in args.batches.split(",")):
                line = f"flush {shape:8s} {m} B={batch:3d} ({batch}x{kvh} tiles):"
                for variant in args.flush_variants.split(","):
                    for w in warps if variant != "v1" else [8]:
                        ms = flush_case(m, batch, kvh, d, variant, w)
                        result["flush"].append({"shape": shape, "method": m, "batch": batch, "variant": variant,
                                                "num_warps": w, "ms": ms})
                        line += f"  {variant}/w{w} {ms * 1e3:6.1f}us"
                print(line)
                args.out.write_text(json.dumps(result, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--contexts", default="1024,4096,16384,32768,65536")
    ap.add_argument("--shapes", default="smollm2,qwen3-4b")
    ap.add_argument("--methods", default="k2v2,k4v4", help="kvcache presets (k2v2, k4v4, k2v2-g64 for 64-token blocks, ...)")
    ap.add_argument("--variants", default="fast,hilo,magic", help="first one is tuned")
    ap.add_argument("--tune", action="store_true",
                    help="also time the first variant at 32k with half and twice the split count default_splits picks")
    ap.add_argument("--no-flush", action="store_true", help="skip the flush-kernel timings")
    ap.add_argument("--only", choices=("flush",), help="time only the flush kernel (each variant, warp count)")
    ap.add_argument("--flush-variants", default=",".join(VARIANTS), help="with --only flush")
    ap.add_argument("--flush-warps", default="auto,8", help="with --only flush: warps for the fast variants")
    args = ap.parse_args()
    if args.only == "flush":
        flush_only(args)
        return
    batches = [int(x) for x in args.batches.split(",")]
    contexts = [int(x) for x in args.contexts.split(",")]
    methods = args.methods.split(",")
    dev = torch.cuda.get_device_name()
    copy_bw = copy_bandwidth()
    read_bw = read_bandwidth()
    bw = max(copy_bw, read_bw)
    print(f"device {dev}  torch {torch.__version__}  triton {triton.__version__}  copy bandwidth {copy_bw / 1e12:.3f} TB/s"
          f"  read bandwidth {read_bw / 1e12:.3f} TB/s (fractions below are of the larger)")
    result: dict = {"device": dev, "copy_bandwidth": copy_bw, "read_bandwidth": read_bw, "decode": [], "flush": [], "tune": []}
    variants = args.variants.split(",")
    keys = [(m, var) for m in methods for var in variants]

    def save() -> None:
        args.out.write_text(json.dumps(result, indent=1))

    for shape in args.shapes.split(","):
        kvh, qh, d = SHAPES[shape]
        pools = {m: record_pool(m, kvh, d) for m in methods}
        for ctx in contexts:
            for batch in batches:
                t0 = time.time()
                row = {"shape": shape, "ctx": ctx, "batch": batch}
                ms, nbytes = bf16_case(batch, kvh, qh, d, ctx)
                row["bf16_ms"], row["bf16_bytes"] = ms, nbytes
                for m, var in keys:
                    ms, nbytes = kvarn_case(m, batch, kvh, qh, d, ctx, pools[m], variant=var)
                    row[f"{m}_{var}_ms"], row[f"{m}_{var}_bytes"] = ms, nbytes
                result["decode"].append(row)
                save()
                line = f"{shape:9s} L={ctx:6d} B={batch:3d}  bf16 {row['bf16_ms'] * 1e3:8.1f}us ({row['bf16_bytes'] / row['bf16_ms'] / 1e9 / bw * 1e12:4.0%})"
                for m, var in keys:
                    key = f"{m}_{var}"
                    frac = row[f"{key}_bytes"] / (row[f"{key}_ms"] * 1e-3) / bw
                    line += f"  {m}/{var} {row[f'{key}_ms'] * 1e3:7.1f}us x{row['bf16_ms'] / row[f'{key}_ms']:5.2f} ({frac:4.0%})"
                print(line + f"  [{time.time() - t0:.1f}s]")
        for m in [] if args.no_flush else methods:
            for batch in batches:
                ms = flush_case(m, batch, kvh, d)
                result["flush"].append({"shape": shape, "method": m, "batch": batch, "ms": ms})
                print(f"flush {shape} {m} B={batch}: {ms * 1e3:.1f}us for {batch}x{kvh} tiles")
                save()
        if args.tune:
            # the heuristic's split count for the first variant, and half and twice that,
            # at every batch (32k): does default_splits pick the fastest of its neighbours?
            var = variants[0]
            for m in methods:
                nblk = 32768 // quantizer_for(m, d).block_size - 1
                for batch in batches:
                    chosen = default_splits(resolved(var, m, d, qh // kvh), quantizer_for(m, d),
                                            qh // kvh, batch, kvh, nblk, torch.device("cuda"))
                    for splits in sorted({max(1, chosen // 2), chosen, min(nblk, 2 * chosen)}):
                        kw = {"num_splits": splits, "variant": var}
                        ms, nbytes = kvarn_case(m, batch, kvh, qh, d, 32768, pools[m], **kw)
                        result["tune"].append({"shape": shape, "method": m, "batch": batch, **kw, "chosen": chosen,
                                               "ms": ms, "bytes": nbytes})
                        print(f"tune {shape} {m} B={batch} {kw}{' (chosen)' if splits == chosen else ''}: "
                              f"{ms * 1e3:.1f}us ({nbytes / ms / 1e9 / bw * 1e12:.0%})")
                        save()
        del pools
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
