"""Why the split kernel of run 94 is slower at head_dim 128 (session 12, issue 6): the same
cases timed with the kernel built with and without --maxrregcount=255, with the slots passed
and without any (side=None: the block loop alone), and the registers and local memory the
driver reports for each build.

    python ab5.py
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from decode_attention import G, SHAPES, timed, record_pool  # noqa: E402

from kvarn_cli.kernels import cuda_decode, make_quantizer  # noqa: E402
from kvarn_cli.kernels.triton_decode import decode_attention, default_splits  # noqa: E402


def attrs() -> str:
    from torch.cuda import _utils

    lib = (getattr(_utils, "_get_gpu_runtime_library", None) or _utils._get_cuda_library)()
    out = []
    for key, k in cuda_decode._KERNELS.items():
        regs, local = ctypes.c_int(0), ctypes.c_int(0)
        lib.cuFuncGetAttribute(ctypes.byref(regs), 4, k.func)
        lib.cuFuncGetAttribute(ctypes.byref(local), 3, k.func)
        out.append(f"D={key[1]} k{key[2]}v{key[3]} side{key[-1]}: {regs.value} regs, {local.value} B local")
    return "; ".join(out)


def case(shape: str, method: str, batch: int, ctx: int = 32768) -> dict[str, object]:
    kvh, qh, d = SHAPES[shape]
    qz = make_quantizer(method, head_dim=d, block_size=G)
    pool = record_pool(method, kvh, d)
    nblk = ctx // G - 1
    recs = pool[torch.randint(0, pool.shape[0], (batch * nblk,), device="cuda")]
    table = torch.randperm(batch * nblk, device="cuda", dtype=torch.int32).view(batch, nblk)
    nb = torch.full((batch,), nblk, dtype=torch.int32, device="cuda")
    sk = torch.randn(2 * batch, kvh, G, d, device="cuda", dtype=torch.bfloat16)
    sv = torch.randn_like(sk)
    slots = torch.arange(2 * batch, dtype=torch.int32, device="cuda").view(batch, 2)
    lens = torch.tensor([G, G // 2], dtype=torch.int32, device="cuda").repeat(batch, 1)
    q = torch.randn(batch, qh, d, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)
    with_side = timed([lambda: decode_attention(qz, q, recs, table, nb, sk, sv, slots, lens, out=out, variant="cuda")])
    no_side = timed([lambda: decode_attention(qz, q, recs, table, nb, out=out, variant="cuda")])
    splits = default_splits("cuda", qz, qh // kvh, batch, kvh, nblk, q.device)
    return {"with": with_side * 1e3, "without": no_side * 1e3, "splits": splits}


CASES = [("smollm2", "k2v2", 32), ("smollm2", "k2v2", 64), ("qwen3-4b", "k2v2", 32), ("qwen3-4b", "k4v4", 32)]
for name, opts in (("maxrregcount=255", ["-std=c++17", "--maxrregcount=255"]), ("ptxas default", ["-std=c++17"])):
    cuda_decode.NVRTC_OPTIONS = opts
    cuda_decode._KERNELS.clear()
    cuda_decode._RESIDENT.clear()
    for shape, method, batch in CASES:
        r = case(shape, method, batch)
        print(f"{name:17s} {shape:9s} {method} B={batch}: slots {r['with']:7.1f}us  none {r['without']:7.1f}us  "
              f"splits {r['splits']}", flush=True)
    print(f"{name}: {attrs()}", flush=True)
