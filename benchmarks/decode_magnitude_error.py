"""Error of the Triton decode kernel against dequantize + SDPA on the same records as K and Q
grow (the kvcache Triton path showed larger differences on SmolLM2's real magnitudes than on
the unit-scale test tiles; docs/KV_CACHE.md "CUDA path"). Runs on CUDA, or on CPU with
TRITON_INTERPRET=1. Prints the per-(sequence, head) max relative error per variant.

usage: TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/decode_magnitude_error.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import test_triton_kernels as T  # noqa: E402

from kvarn_cli.kernels import make_quantizer  # noqa: E402
from kvarn_cli.kernels.triton_decode import decode_attention  # noqa: E402
from kvarn_cli.kernels.triton_flush import flush_tiles  # noqa: E402


def main() -> None:
    G, d, kv_heads, gqa = 128, 64, 3, 3  # SmolLM2's attention shape
    dev = T.DEVICE
    qz = make_quantizer("k2v2", head_dim=d, block_size=G)
    print("k_scale q_scale k_outlier variant max_rel")
    for k_scale, q_scale, outlier in ((1, 1, 0), (3, 3, 0), (3, 3, 30), (1, 6, 0)):
        k, v = T._tiles(2, kv_heads, d, seed=5)
        k = k * k_scale
        k[..., :4] += outlier  # a few channels with a large offset, as in post-RoPE keys
        recs = torch.empty(2, kv_heads, qz.record_bytes, dtype=torch.uint8, device=dev)
        flush_tiles(qz, k, v, recs, torch.arange(2, dtype=torch.int32, device=dev))
        q = (torch.randn(2, kv_heads * gqa, d, generator=torch.Generator().manual_seed(1)) * q_scale).to(dev)
        table = torch.tensor([[0, 1], [1, 0]], dtype=torch.int32)
        nblk = torch.tensor([2, 1], dtype=torch.int32)
        ref = T._reference(qz, q, recs, table, nblk, None, None, None, None, 1 / 8)
        for variant in ("hilo", "tmwhb"):
            out = decode_attention(qz, q, recs, table.to(dev), nblk.to(dev), scale=1 / 8, num_splits=1, variant=variant)
            rel = ((out.float().cpu() - ref).norm(dim=-1) / ref.norm(dim=-1)).max()
            print(k_scale, q_scale, outlier, variant, f"{float(rel):.2e}")


if __name__ == "__main__":
    main()
