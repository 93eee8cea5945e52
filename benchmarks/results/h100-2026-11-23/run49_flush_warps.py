"""One all-layer flush launch (36 layers, Qwen3-4B shape) with 4 and 8 warps, F fills."""
import torch
import triton.testing as tt
from kvarn_cli.kernels import make_quantizer
from kvarn_cli.kernels.triton_flush import LayerSlots, flush_slots

q = make_quantizer("k2v2", head_dim=128, block_size=128)
layers = []
for _ in range(36):
    sk = torch.randn(128, 8, 128, 128, device="cuda", dtype=torch.bfloat16)
    layers.append((sk, torch.randn_like(sk), torch.empty(1024, 8, q.record_bytes, dtype=torch.uint8, device="cuda")))
table = LayerSlots(layers)
for fills in (1, 2, 8):
    ids = torch.arange(fills, dtype=torch.int32, device="cuda")
    for w in (4, 8):
        ms = tt.do_bench_cudagraph(lambda: flush_slots(q, table.slot_k, table.slot_v, ids, table.records, ids, num_warps=w, layers=table))
        print(f"fills {fills} warps {w}: {ms * 1e3:.1f} us", flush=True)
