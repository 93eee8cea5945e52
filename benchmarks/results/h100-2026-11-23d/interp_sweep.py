# Relative error of decode variants against the dequantized reference over 8 random inputs per kernel-test case, CPU interpreter
# (docs/BENCHMARKS.md runs 54-57):  TRITON_INTERPRET=1 .venv/bin/python benchmarks/results/h100-2026-11-23d/interp_sweep.py tmwhb hilo
import sys, torch
sys.path[:0] = ['tests', '.']
import test_triton_kernels as T
from kvarn_cli.kernels import make_quantizer
from kvarn_cli.kernels.triton_flush import flush_tiles
from kvarn_cli.kernels.triton_decode import decode_attention
vars_ = sys.argv[1:]
for ci in range(3):
    name, kv_heads, gqa, d, splits, with_side = T.CASES[ci]
    qz = make_quantizer(name, head_dim=d, block_size=T.G)
    errs = {v: [] for v in vars_}
    for seed in range(8):
        gen = torch.Generator().manual_seed(100 * seed + 5 + d + kv_heads)
        k, v = T._tiles(6, kv_heads, d, seed=1000 * seed + 31 + d)
        rec = torch.empty(6, kv_heads, qz.record_bytes, dtype=torch.uint8)
        flush_tiles(qz, k, v, rec, torch.arange(6, dtype=torch.int32))
        nblk = torch.tensor([3, 1, 2], dtype=torch.int32)
        table = torch.stack([torch.randperm(6, generator=gen)[:3] for _ in range(3)]).to(torch.int32)
        q = torch.randn(3, kv_heads * gqa, d, generator=gen) * 2
        ref = T._reference(qz, q, rec, table, nblk, None, None, None, None, 0.7 / d**0.5)
        for var in vars_:
            out = decode_attention(qz, q, rec, table, nblk, scale=0.7 / d**0.5, num_splits=splits, variant=var)
            errs[var].append(float((out - ref).norm() / ref.norm()))
    for var in vars_:
        e = torch.tensor(errs[var])
        print(name, var, f"mean {e.mean():.2e} max {e.max():.2e}", " ".join(f"{x:.1e}" for x in e))
