"""Lease 4 of session 11 (issue 6): kernel sources at default_splits' count, 32k.

For every shape, method and batch: bf16 SDPA, then each source (name=path) at the split count
default_splits picks, and the first source also at twice the waves (cuda_splits with
CUDA_WAVES = 2). The reduce kernel is the working tree's for all.

    python ab4.py --out ab4.json v4=kvarn_cli/kernels/cuda_decode_split.cu v3=split_v3.cu ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from decode_attention import G, SHAPES, bf16_case, kvarn_case, read_bandwidth, record_pool  # noqa: E402

from kvarn_cli.kernels import cuda_decode, make_quantizer, triton_decode  # noqa: E402
from kvarn_cli.kernels.triton_common import kernel_layout  # noqa: E402


def use(text: str) -> None:
    cuda_decode._source_text = lambda: text  # type: ignore[assignment]
    cuda_decode._KERNELS.clear()
    cuda_decode._RESIDENT.clear()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", default="smollm2,qwen3-4b")
    ap.add_argument("--methods", default="k2v2,k4v4")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--ctx", type=int, default=32768)
    ap.add_argument("sources", nargs="+")
    args = ap.parse_args()
    sources = {s.split("=", 1)[0]: Path(s.split("=", 1)[1]).read_text() for s in args.sources}
    bw = read_bandwidth()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    nblk = args.ctx // G - 1
    print(f"{torch.cuda.get_device_name()} read bandwidth {bw / 1e12:.3f} TB/s, {sms} SMs")
    rows = []
    for shape in args.shapes.split(","):
        kvh, qh, d = SHAPES[shape]
        gqa = qh // kvh
        gp = max(16, triton.next_power_of_2(gqa))
        for method in args.methods.split(","):
            pool = record_pool(method, kvh, d)
            qz = make_quantizer(method, head_dim=d, block_size=G)
            for batch in [int(b) for b in args.batches.split(",")]:
                bf_ms, bf_bytes = bf16_case(batch, kvh, qh, d, args.ctx)
                line = f"{shape:8s} {method} B={batch:2d} bf16 {bf_ms * 1e3:7.1f}us"
                for i, (name, text) in enumerate(sources.items()):
                    use(text)
                    resident = cuda_decode.resident_per_sm(kernel_layout(qz.layout), qz.layout, gqa, gp, 0)
                    chosen = triton_decode.default_splits("cuda", qz, gqa, batch, kvh, nblk, torch.device("cuda"))
                    counts = [("default", chosen)]
                    if i == 0:
                        triton_decode.CUDA_WAVES = 2
                        two = triton_decode.cuda_splits(batch, kvh, nblk, sms, resident)
                        triton_decode.CUDA_WAVES = 1
                        if two != chosen:
                            counts.append(("w2", two))
                    for label, splits in counts:
                        ms, nbytes = kvarn_case(method, batch, kvh, qh, d, args.ctx, pool, variant="cuda", num_splits=splits)
                        rows.append({"shape": shape, "method": method, "batch": batch, "source": name, "label": label,
                                     "splits": splits, "resident": resident, "ms": ms, "bytes": nbytes,
                                     "bf16_ms": bf_ms, "bf16_bytes": bf_bytes, "bw": bw})
                        line += (f" | {name} {label} r{resident} s{splits} {ms * 1e3:6.1f}us x{bf_ms / ms:4.2f}"
                                 f" {nbytes / ms / 1e9 / bw * 1e12:3.0%}")
                print(line, flush=True)
                args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
