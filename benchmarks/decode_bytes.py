"""KV bytes one decode row reads per step, averaged over a job's contexts: a quantized preset
against vLLM's fp8 cache.

Why: the paged bits of k2v2 (2.28 per element at d = 128) are not what a decode step reads
at short contexts. Each row also reads its 16-bit sink (the first block, once full) and its
16-bit tail (the block being filled), which the method keeps unquantized; the records are read
only for the full blocks past the sink. docs/BENCHMARKS.md runs 70-77 use these figures to
explain why k2v2 trails fp8 on 1k-2k-token jobs. Arithmetic from kvarn's layout code only,
no GPU: a row with `ctx` tokens reads
    sink + tail: (G if ctx >= G else 0) + ctx mod G tokens at 16 bits,
    records:     max(0, ctx // G - 1) * G tokens at the preset's paged bytes per token,
against fp8's ctx tokens at half of 16-bit's bytes.

    python benchmarks/decode_bytes.py --shape qwen3-4b --prompt-tokens 91 --max-tokens 1024,2048,4096
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_step import SHAPES  # noqa: E402

from kvarn_cli import kvcache  # noqa: E402


def mean_row_bytes(preset: str, dims: dict[str, int], prompt_tokens: int, max_tokens: int) -> dict[str, float]:
    """Per decode step of one row, averaged over contexts prompt_tokens .. prompt_tokens +
    max_tokens - 1: bytes `preset` reads, bytes fp8 reads, and the 16-bit share of the former."""
    g = kvcache.allocation(preset, **dims, kv_cache_memory_bytes=0, max_num_seqs=1).block_size
    b16 = kvcache.bytes_per_token("fp16", **dims)
    rec = kvcache.bytes_per_token(preset, **dims)
    side = records = fp8 = 0.0
    for ctx in range(prompt_tokens, prompt_tokens + max_tokens):
        full = ctx // g
        side += ((g if full else 0) + ctx % g) * b16
        records += max(0, full - 1) * g * rec
        fp8 += ctx * b16 / 2
    total = side + records
    return {"bytes": total / max_tokens, "fp8_bytes": fp8 / max_tokens, "ratio_to_fp8": total / fp8,
            "share_16bit": side / total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=tuple(SHAPES), default="qwen3-4b")
    ap.add_argument("--preset", default="k2v2")
    ap.add_argument("--prompt-tokens", type=int, default=91, help="mean prompt length of the job")
    ap.add_argument("--max-tokens", default="1024,2048,4096", help="generated tokens per request, comma-separated jobs")
    args = ap.parse_args()
    layers, kv_heads, _, head_dim = SHAPES[args.shape]
    dims = {"num_layers": layers, "num_kv_heads": kv_heads, "head_dim": head_dim, "dtype_bytes": 2}
    print(f"{args.shape}, {args.preset}, prompt {args.prompt_tokens} tokens")
    print(f"{'generated':>9} {'MB/step':>8} {'fp8 MB':>7} {'x fp8':>6} {'16-bit share':>12}")
    for m in (int(x) for x in args.max_tokens.split(",")):
        r = mean_row_bytes(args.preset, dims, args.prompt_tokens, m)
        print(f"{m:9d} {r['bytes'] / 1e6:8.1f} {r['fp8_bytes'] / 1e6:7.1f} {r['ratio_to_fp8']:6.2f} {r['share_16bit']:12.2f}")


if __name__ == "__main__":
    main()
