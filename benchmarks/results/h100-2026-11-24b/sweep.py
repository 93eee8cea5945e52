"""Split counts for the CUDA split kernel at 32k (session 11, issue 6, lease 2).

For every shape, method and batch: bf16 SDPA, the run-84 kernel (split_v2.cu, which writes
all GP partial rows) at the split count of runs 79-85 (a power of two near 16 programs per SM
at D = 64, 8 at D = 128), and the working tree's kernel at that count, at default_splits' and
at counts that fill the SMs once or twice with resident programs (cuda_decode.resident_per_sm),
capped at 2, 4, 8 and 16 blocks per split.

    python sweep.py --out sweep.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from decode_attention import G, SHAPES, bf16_case, kvarn_case, read_bandwidth, record_pool  # noqa: E402

from kvarn_cli.kernels import cuda_decode, make_quantizer  # noqa: E402
from kvarn_cli.kernels.triton_common import kernel_layout  # noqa: E402
from kvarn_cli.kernels.triton_decode import choose_splits, default_splits  # noqa: E402


def use(text: str) -> None:
    cuda_decode._source_text = lambda: text  # type: ignore[assignment]
    cuda_decode._KERNELS.clear()
    cuda_decode._RESIDENT.clear()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", default="qwen3-4b,smollm2")
    ap.add_argument("--methods", default="k2v2,k4v4")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--ctx", type=int, default=32768)
    args = ap.parse_args()
    old = (HERE / "split_v2.cu").read_text()
    new = cuda_decode.SOURCE.read_text()
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
            use(new)
            resident = cuda_decode.resident_per_sm(kernel_layout(qz.layout), qz.layout, gqa, gp, 0)
            print(f"{shape} {method}: {resident} resident programs per SM")
            for batch in [int(b) for b in args.batches.split(",")]:
                bf_ms, bf_bytes = bf16_case(batch, kvh, qh, d, args.ctx)
                old_rule = choose_splits(batch, kvh, nblk, sms, {64: 16, 128: 8}[d])  # runs 79-85
                chosen = default_splits("cuda", qz, gqa, batch, kvh, nblk, torch.device("cuda"))
                cands = {"default": chosen, "old": old_rule}
                for waves in (1, 2):
                    full = max(1, waves * resident * sms // (batch * kvh))
                    for per in (2, 4, 8, 16):
                        cands[f"w{waves}c{per}"] = max(1, min(full, nblk // per))
                line = f"{shape:8s} {method} B={batch:2d} bf16 {bf_ms * 1e3:7.1f}us"
                runs = [("v2", old, old_rule, "old")]
                seen: set[int] = set()
                for label, splits in cands.items():
                    if splits not in seen:
                        seen.add(splits)
                        runs.append(("v3", new, splits, label))
                    else:
                        line += f" [{label}={splits}]"
                for src, text, splits, label in runs:
                    use(text)
                    ms, nbytes = kvarn_case(method, batch, kvh, qh, d, args.ctx, pool, variant="cuda", num_splits=splits)
                    rows.append({"shape": shape, "method": method, "batch": batch, "source": src, "label": label,
                                 "splits": splits, "resident": resident, "ms": ms, "bytes": nbytes, "bf16_ms": bf_ms,
                                 "bw": bw})
                    line += f" | {src} {label} s{splits} {ms * 1e3:6.1f}us x{bf_ms / ms:4.2f} {nbytes / ms / 1e9 / bw * 1e12:3.0%}"
                print(line, flush=True)
                args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
