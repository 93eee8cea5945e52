"""Session 14, run 107: where the one-launch decode's time goes at head_dim 64 (SmolLM2 shape,
32k), and two split-count questions, kernel only.

1. Timeline: a source patch stamps %globaltimer at each program's start, after its 16-bit
   slots, after its block loop, and (last split only) after the merge, into the unused rows
   GQA.. of its partial's max/sum (the merge reads rows < GQA only). Eager launches over 16
   independent input copies; medians over them, in microseconds from the first program's start.
2. Slot cost: the split count's slot weight (cuda_decode.slot_blocks: 7 blocks for a bf16
   slot of k2v2 at D = 64) swept, and the same inputs with no slot, timed as
   benchmarks/decode_attention.py times (CUDA-graph replays over >= 256 MB of copies).
3. Waves at head_dim 128 (Qwen3-4B shape): triton_decode.CUDA_WAVES 1 against 2, batches
   1-64, k2v2 and k4v4.

    python timeline.py
"""

from __future__ import annotations

import statistics
import struct
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from decode_attention import G, copies_for, record_pool, timed  # noqa: E402
from kvarn_cli.kernels import cuda_decode, make_quantizer, triton_decode  # noqa: E402
from kvarn_cli.kernels.triton_decode import decode_attention, default_splits  # noqa: E402

TEXT = cuda_decode.SOURCE.read_text()
STAMP = [
    ('extern "C" __global__ void KVARN_BOUNDS kvarn_split(',
     '__device__ __forceinline__ unsigned long long gtime() { unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }\n'
     'extern "C" __global__ void KVARN_BOUNDS kvarn_split('),
    ("  const int nb = nblk[b];\n", "  const int nb = nblk[b];\n  const unsigned long long t0 = gtime();\n"),
    ("                                    : SlotState{};\n",
     "                                    : SlotState{};\n"
     "  if (lane == 0) { unsigned long long* tt = reinterpret_cast<unsigned long long*>(ws_ml + (((long long)b * gridDim.y + kvh) * nsplit + s) * 2 * GP + 4);"
     " tt[0] = t0; tt[1] = gtime(); }\n"),
    ("  write_partial(acc, m_run, head_sum(l_run), part0 + s, ws_acc, ws_ml);\n",
     "  const unsigned long long t2 = gtime();\n"
     "  write_partial(acc, m_run, head_sum(l_run), part0 + s, ws_acc, ws_ml);\n"
     "  if (lane == 0) { unsigned long long* tt = reinterpret_cast<unsigned long long*>(ws_ml + (part0 + s) * 2 * GP + 4);"
     " tt[2] = t2; tt[3] = 0; }\n"),
    ("      merge_out(part0, nsplit,", "    { merge_out(part0, nsplit,"),
    ("__int_as_float(inv_sqrt_d_bits));\n",
     "__int_as_float(inv_sqrt_d_bits));\n"
     "      if (lane == 0) reinterpret_cast<unsigned long long*>(ws_ml + (part0 + s) * 2 * GP + 4)[3] = gtime(); }\n"),
]


def patched(subs: list[tuple[str, str]]) -> None:
    text = TEXT
    for old, new in subs:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    cuda_decode._source_text = lambda t=text: t
    cuda_decode._KERNELS.clear()
    cuda_decode._RESIDENT.clear()


def inputs(name: str, batch: int, kvh: int, qh: int, d: int, ctx: int, pool: torch.Tensor, slots: bool):
    nblk = ctx // G - 1
    recs = pool[torch.randint(0, pool.shape[0], (batch * nblk,), device="cuda")]
    table = torch.randperm(batch * nblk, device="cuda", dtype=torch.int32).view(batch, nblk)
    nb = torch.full((batch,), nblk, dtype=torch.int32, device="cuda")
    sk = torch.randn(2 * batch, kvh, G, d, device="cuda", dtype=torch.bfloat16)
    sv = torch.randn(2 * batch, kvh, G, d, device="cuda", dtype=torch.bfloat16)
    sl = torch.arange(2 * batch, dtype=torch.int32, device="cuda").view(batch, 2)
    lens = torch.tensor([G, G // 2] if slots else [0, 0], dtype=torch.int32, device="cuda").repeat(batch, 1)
    q = torch.randn(batch, qh, d, device="cuda", dtype=torch.bfloat16)
    return recs, table, nb, sk, sv, sl, lens, q, torch.empty_like(q)


def timeline(name: str, batch: int, ctx: int = 32768) -> None:
    kvh, qh, d = 3, 9, 64
    qz = make_quantizer(name, head_dim=d, block_size=G)
    pool = record_pool(name, kvh, d)
    nblk = ctx // G - 1
    splits = default_splits("cuda", qz, qh // kvh, batch, kvh, nblk, torch.device("cuda"))
    parts = batch * kvh * splits
    ws = (torch.empty(parts * 16 * d, device="cuda"), torch.zeros(parts * 32, device="cuda"))
    rows = []
    for it in range(17):
        a = inputs(name, batch, kvh, qh, d, ctx, pool, True)
        ws[1].zero_()
        torch.cuda.synchronize()
        decode_attention(qz, a[7], a[0], a[1], a[2], a[3], a[4], a[5], a[6], out=a[8], workspace=ws, variant="cuda")
        torch.cuda.synchronize()
        if it == 0:
            continue  # compiles
        raw = ws[1].view(parts, 32)[:, 4:12].contiguous().cpu().numpy().tobytes()
        t = [struct.unpack_from("<4Q", raw, 32 * p) for p in range(parts)]
        t00 = min(x[0] for x in t)
        us = lambda v: (v - t00) / 1e3  # noqa: E731
        s_of = [p % splits for p in range(parts)]
        slot_p = [p for p in range(parts) if s_of[p] < 2]
        plain_p = [p for p in range(parts) if s_of[p] >= 2]
        rows.append({
            "start_spread": us(max(x[0] for x in t)),
            "slot_time_slotsplits": statistics.median((t[p][1] - t[p][0]) / 1e3 for p in slot_p),
            "loop_end_slotsplits_median": statistics.median(us(t[p][2]) for p in slot_p),
            "loop_end_slotsplits_max": max(us(t[p][2]) for p in slot_p),
            "loop_end_plain_median": statistics.median(us(t[p][2]) for p in plain_p),
            "loop_end_plain_max": max(us(t[p][2]) for p in plain_p),
            "loop_time_plain_median": statistics.median((t[p][2] - t[p][1]) / 1e3 for p in plain_p),
            "merge_time_median": statistics.median((x[3] - x[2]) / 1e3 for x in t if x[3]),
            "end": max(us(x[3]) for x in t if x[3]),
        })
    print(f"timeline {name} L={ctx} B={batch} splits={splits} ({parts} programs), us, median over {len(rows)} eager calls:")
    for key in rows[0]:
        print(f"  {key:28s} {statistics.median(r[key] for r in rows):8.2f}  (min {min(r[key] for r in rows):7.2f}, max {max(r[key] for r in rows):7.2f})")
    sys.stdout.flush()


def timed_case(name: str, batch: int, kvh: int, qh: int, d: int, slots: bool, ctx: int = 32768) -> float:
    qz = make_quantizer(name, head_dim=d, block_size=G)
    pool = record_pool(name, kvh, d)
    nbytes = batch * kvh * (ctx // G - 1) * qz.record_bytes + 2 * batch * kvh * (G + G // 2) * d * 2
    keep, fns = [], []
    for _ in range(copies_for(nbytes)):
        a = inputs(name, batch, kvh, qh, d, ctx, pool, slots)
        keep.append(a)
        fns.append(lambda a=a: decode_attention(qz, a[7], a[0], a[1], a[2], a[3], a[4], a[5], a[6], out=a[8], variant="cuda"))
    us = timed(fns) * 1e3
    del keep, fns
    torch.cuda.empty_cache()
    return us


def main() -> None:
    print(torch.cuda.get_device_name(), flush=True)
    patched(STAMP)
    for name in ("k2v2", "k4v4"):
        for batch in (32, 64):
            timeline(name, batch)
    patched([])
    base = cuda_decode.slot_blocks
    for name in ("k2v2", "k4v4"):
        for batch in (32, 64):
            line = f"slots {name} B={batch}:"
            for w in (None, 4, 10, 14, 20):
                cuda_decode.slot_blocks = base if w is None else (lambda lay, side, w=w: w)
                line += f"  w={w or 'default'} {timed_case(name, batch, 3, 9, 64, True):6.1f}"
            cuda_decode.slot_blocks = base
            line += f"  no-slots {timed_case(name, batch, 3, 9, 64, False):6.1f}"
            print(line + " us", flush=True)
    for name in ("k4v4", "k2v2"):
        for batch in (1, 8, 32, 64):
            line = f"waves {name} D=128 B={batch}:"
            for waves in (1, 2):
                triton_decode.CUDA_WAVES = waves
                line += f"  {waves}: {timed_case(name, batch, 8, 32, 128, True):7.1f}"
            triton_decode.CUDA_WAVES = 1
            print(line + " us", flush=True)


if __name__ == "__main__":
    main()
