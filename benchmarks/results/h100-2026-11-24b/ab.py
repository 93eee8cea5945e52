"""A/B of CUDA split-kernel sources at 32k in one process (session 11, issue 6).

Each source (name=path.cu) is swapped into kernels/cuda_decode.py in turn; for every shape,
method and batch: bf16 SDPA (FlashAttention), then each source at the split count
choose_splits picks and at half and twice that, and the largest relative difference of each
source's output from the first one's on the same inputs (a quick agreement check; the pytest
run checks against the float32 reference).

    python ab.py --out ab.json v1=split_v1.cu v2=kvarn_cli/kernels/cuda_decode_split.cu
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from decode_attention import G, SHAPES, bf16_case, kvarn_case, read_bandwidth, record_pool  # noqa: E402

from kvarn_cli.kernels import cuda_decode, make_quantizer  # noqa: E402
from kvarn_cli.kernels.triton_decode import choose_splits, decode_attention, programs_per_sm  # noqa: E402


def use(text: str) -> None:
    cuda_decode._source_text = lambda: text  # type: ignore[assignment]
    cuda_decode._KERNELS.clear()


def outputs(name: str, batch: int, kvh: int, qh: int, d: int, pool: torch.Tensor) -> torch.Tensor:
    """One call at 4k context on fixed inputs (same for every source)."""
    qz = make_quantizer(name, head_dim=d, block_size=G)
    gen = torch.Generator(device="cuda").manual_seed(3)
    nblk = 31
    idx = torch.randint(0, pool.shape[0], (batch * nblk,), device="cuda", generator=gen)
    recs = pool[idx]
    table = torch.randperm(batch * nblk, device="cuda", dtype=torch.int32, generator=gen).view(batch, nblk)
    nb = torch.full((batch,), nblk, dtype=torch.int32, device="cuda")
    q = torch.randn(batch, qh, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    return decode_attention(qz, q, recs, table, nb, variant="cuda").float()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", default="qwen3-4b,smollm2")
    ap.add_argument("--methods", default="k2v2,k4v4")
    ap.add_argument("--batches", default="1,32,64")
    ap.add_argument("--ctx", type=int, default=32768)
    ap.add_argument("sources", nargs="+", help="name=path of a .cu source; the first is the agreement reference")
    args = ap.parse_args()
    sources = {s.split("=", 1)[0]: Path(s.split("=", 1)[1]).read_text() for s in args.sources}
    bw = read_bandwidth()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{torch.cuda.get_device_name()} read bandwidth {bw / 1e12:.3f} TB/s, {sms} SMs")
    rows = []
    for shape in args.shapes.split(","):
        kvh, qh, d = SHAPES[shape]
        for method in args.methods.split(","):
            pool = record_pool(method, kvh, d)
            ref_out = None
            for name, text in sources.items():
                use(text)
                o = outputs(method, 8, kvh, qh, d, pool)
                if ref_out is None:
                    ref_out = o
                diff = float((o - ref_out).norm() / ref_out.norm())
                print(f"agree {shape} {method} {name}: rel diff to first {diff:.2e} finite {bool(torch.isfinite(o).all())}")
                rows.append({"kind": "agree", "shape": shape, "method": method, "source": name, "rel_diff": diff})
            for batch in [int(b) for b in args.batches.split(",")]:
                bf_ms, bf_bytes = bf16_case(batch, kvh, qh, d, args.ctx)
                chosen = choose_splits(batch, kvh, args.ctx // G - 1, sms, programs_per_sm("cuda", d))
                line = f"{shape:8s} {method} B={batch:2d} bf16 {bf_ms * 1e3:7.1f}us ({bf_bytes / bf_ms / 1e9 / bw * 1e12:3.0%})"
                for name, text in sources.items():
                    use(text)
                    for splits in sorted({max(1, chosen // 2), chosen, 2 * chosen}):
                        ms, nbytes = kvarn_case(method, batch, kvh, qh, d, args.ctx, pool, variant="cuda", num_splits=splits)
                        rows.append({"kind": "time", "shape": shape, "method": method, "batch": batch, "source": name,
                                     "splits": splits, "chosen": chosen, "ms": ms, "bytes": nbytes, "bf16_ms": bf_ms,
                                     "bw": bw})
                        mark = "*" if splits == chosen else ""
                        line += f" | {name} s{splits}{mark} {ms * 1e3:6.1f}us x{bf_ms / ms:4.2f} {nbytes / ms / 1e9 / bw * 1e12:3.0%}"
                print(line, flush=True)
                args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
