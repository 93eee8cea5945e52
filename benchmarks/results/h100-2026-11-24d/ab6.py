"""Session 13, run 100: why the one-launch decode at head_dim 64 (run 99) was slower for k2v2.
For source patches of the fused kernel: registers, local memory and programs per SM of every
compiled kernel, and the decode time at 32k (SmolLM2 shape, 32 and 64 rows; CUDA-graph
replays as benchmarks/decode_attention.py times them). "reduce" is the two-launch path (a
float32 output), the rest the one-launch path with the patch named.

    python ab6.py
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from decode_attention import G, copies_for, record_pool, timed  # noqa: E402
from kvarn_cli.kernels import cuda_decode, make_quantizer  # noqa: E402
from kvarn_cli.kernels.triton_decode import decode_attention  # noqa: E402

TEXT = cuda_decode.SOURCE.read_text()
PATCHES = {
    "fused": [],
    "reduce": [],
    "lb16": [("__launch_bounds__(32) kvarn_split", "__launch_bounds__(32, 16) kvarn_split")],
    "nomerge": [("      merge_out(part0, nsplit,", "      if (nsplit < 0) merge_out(part0, nsplit,")],
    "nocount": [("    if (last_split(count + (long long)b * gridDim.y + kvh, nsplit))", "    if (nsplit < 0)")],
    "norot": [("    rotate_query(qhead, stride_qh, __int_as_float(qk_scale_bits), qs);", "")],
}


def attr(kernel, which: int) -> int:
    from torch.cuda import _utils

    lib = (getattr(_utils, "_get_gpu_runtime_library", None) or _utils._get_cuda_library)()
    v = ctypes.c_int(0)
    lib.cuFuncGetAttribute(ctypes.byref(v), ctypes.c_int(which), kernel.func)
    return v.value


def case(name: str, batch: int, out_dtype: torch.dtype) -> float:
    kvh, qh, d, ctx = 3, 9, 64, 32768
    qz = make_quantizer(name, head_dim=d, block_size=G)
    pool = record_pool(name, kvh, d)
    nblk = ctx // G - 1
    nbytes = batch * kvh * nblk * qz.record_bytes + 2 * batch * kvh * (G + G // 2) * d * 2
    fns, keep = [], []
    for _ in range(copies_for(nbytes)):
        recs = pool[torch.randint(0, pool.shape[0], (batch * nblk,), device="cuda")]
        table = torch.randperm(batch * nblk, device="cuda", dtype=torch.int32).view(batch, nblk)
        nb = torch.full((batch,), nblk, dtype=torch.int32, device="cuda")
        sk = torch.randn(2 * batch, kvh, G, d, device="cuda", dtype=torch.bfloat16)
        sv = torch.randn(2 * batch, kvh, G, d, device="cuda", dtype=torch.bfloat16)
        slots = torch.arange(2 * batch, dtype=torch.int32, device="cuda").view(batch, 2)
        lens = torch.tensor([G, G // 2], dtype=torch.int32, device="cuda").repeat(batch, 1)
        q = torch.randn(batch, qh, d, device="cuda", dtype=torch.bfloat16)
        out = torch.empty(q.shape, device="cuda", dtype=out_dtype)
        keep.append((recs, table, nb, sk, sv, slots, lens, q, out))
        fns.append(lambda a=keep[-1]: decode_attention(qz, a[7], a[0], a[1], a[2], a[3], a[4], a[5], a[6], out=a[8], variant="cuda"))
    us = timed(fns) * 1e3
    del keep, fns
    torch.cuda.empty_cache()
    return us


def main() -> None:
    for patch, subs in PATCHES.items():
        text = TEXT
        for old, new in subs:
            assert text.count(old) == 1, old
            text = text.replace(old, new)
        cuda_decode._source_text = lambda t=text: t
        cuda_decode._KERNELS.clear()
        out_dtype = torch.float32 if patch == "reduce" else torch.bfloat16
        times = [f"{name} B={b} {case(name, b, out_dtype):7.1f}us" for name in ("k2v2", "k4v4") for b in (32, 64)]
        kinfo = []
        for key, kernel in cuda_decode._KERNELS.items():
            regs, local = attr(kernel, 4), attr(kernel, 3)
            occ = cuda_decode._occupancy(kernel, 0)
            kinfo.append(f"[kb{key[2]} q{key[-2]} fused{int(key[-1])}: {regs} regs, {local} B local, occ(no smem) {occ}]")
        print(f"{patch:8s} " + " | ".join(times) + "  " + " ".join(kinfo), flush=True)


if __name__ == "__main__":
    main()
