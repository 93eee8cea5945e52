"""Debug helper: the k4v4 decode test case on CUDA, saved with its reference for offline checks."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import test_triton_kernels as T  # noqa: E402

from kvarn_cli.kernels import make_quantizer  # noqa: E402
from kvarn_cli.kernels.triton_decode import decode_attention  # noqa: E402
from kvarn_cli.kernels.triton_flush import flush_tiles  # noqa: E402

out_dir = Path(sys.argv[1])
for name, kvh, gqa, d, splits in (("k4v4", 2, 4, 64, 1), ("k2v2", 2, 4, 64, 1)):
    qz = make_quantizer(name, head_dim=d, block_size=128)
    k, v = T._tiles(6, kvh, d, seed=31 + d)
    rec = torch.empty(6, kvh, qz.record_bytes, dtype=torch.uint8, device="cuda")
    flush_tiles(qz, k, v, rec, torch.arange(6, dtype=torch.int32, device="cuda"))
    gen = torch.Generator().manual_seed(1)
    table = torch.arange(3, dtype=torch.int32).repeat(2, 1)
    nblk = torch.tensor([3, 1], dtype=torch.int32)
    for qscale in (0.1, 2.0):
        for qdt in (torch.float32, torch.bfloat16):
            q = (torch.randn(2, kvh * gqa, d, generator=gen) * qscale).to("cuda", qdt)
            ref = T._reference(qz, q, rec, table, nblk, None, None, None, None, 0.7 / d**0.5)
            for var in ("fast", "magic", "joined"):
                o = decode_attention(qz, q, rec, table.cuda(), nblk.cuda(), scale=0.7 / d**0.5, num_splits=splits, variant=var)
                rel = float((o.float().cpu() - ref).norm() / ref.norm())
                print(f"{name} q*{qscale} {qdt} {var}: rel {rel:.2e}")
    torch.save({"rec": rec.cpu(), "q": q.cpu(), "ref": ref, "out": o.cpu(), "k": k.cpu(), "v": v.cpu()}, out_dir / f"{name}.pt")
