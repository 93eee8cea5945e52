"""Session 15, run 119: the one-launch decode's prologue and merge (variants.py) timed against
each other in one process, SmolLM2 shape (3 KV heads, 9 query heads, head_dim 64): first the
outputs of every variant against base's on the same inputs, then registers and local memory,
then the decode time of each case, variants in the order of VARIANTS and back (CUDA-graph
replays as benchmarks/decode_attention.py times them), then the timelines of base and of the
best variant at 1 and 32 rows (timeline.py's stamps). Run on spec.diff's tree (see
variants119.py).

    python ab10.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "h100-2026-11-24e"))  # timeline: inputs, timed_case, stamps
sys.path.insert(0, str(HERE.parent / "h100-2026-11-24d"))  # ab6.attr: cuFuncGetAttribute

import timeline as tl  # noqa: E402
import variants119 as variants  # noqa: E402
from ab6 import attr  # noqa: E402
from decode_attention import G, record_pool  # noqa: E402
from kvarn_cli.kernels import cuda_decode, make_quantizer  # noqa: E402
from kvarn_cli.kernels.triton_decode import decode_attention  # noqa: E402

VARIANTS = ["base", "spec", "spec_m11", "spec_v4m12", "spec_v4m16"]
SOURCES: dict[str, str] = {}  # filled by main (ab11.py fills its own)
CACHES: dict[str, tuple[dict, dict]] = {}


def load(sources: dict[str, str]) -> None:
    SOURCES.clear()
    SOURCES.update(sources)
    CACHES.clear()
    CACHES.update({name: ({}, {}) for name in sources})


def use(name: str) -> None:
    cuda_decode._source_text = lambda t=SOURCES[name]: t
    cuda_decode._KERNELS, cuda_decode._RESIDENT = CACHES[name]


def agree(name: str, batch: int, ctx: int) -> None:
    """Each variant's output against the first's (deterministic ranges, so only the merge differs)."""
    torch.manual_seed(0)
    qz = make_quantizer(name, head_dim=64, block_size=G)
    a = tl.inputs(name, batch, 3, 9, 64, ctx, record_pool(name, 3, 64), True)
    outs = {}
    for v in VARIANTS:
        use(v)
        out = torch.empty_like(a[7])
        decode_attention(qz, a[7], a[0], a[1], a[2], a[3], a[4], a[5], a[6], out=out, variant="cuda", deterministic=True)
        outs[v] = out.float()
    ref = outs[VARIANTS[0]]
    print(f"agree {name} B={batch} L={ctx}: " + "  ".join(
        f"{v} {((outs[v] - ref).abs().max() / ref.abs().max()).item():.1e}" for v in VARIANTS[1:]), flush=True)


def main() -> None:
    load(variants.variants())
    print(torch.cuda.get_device_name(), flush=True)
    for name in ("k2v2", "k4v4"):
        agree(name, 32, 32768)
        agree(name, 1, 32768)
    cases = [("k2v2", b, 32768) for b in (32, 1, 8, 64)] + [("k4v4", b, 32768) for b in (32, 64)]
    cases += [("k2v2", 64, 4096), ("k2v2", 32, 16384)]
    for m, b, ctx in cases:
        t: dict[str, list[float]] = {}
        for name in VARIANTS + VARIANTS[::-1]:
            use(name)
            t.setdefault(name, []).append(tl.timed_case(m, b, 3, 9, 64, True, ctx))
        base = min(t["base"])
        print(f"smollm2 {m} L={ctx:5d} B={b:2d}: " + "  ".join(f"{k} {v[0]:6.1f} {v[1]:6.1f}" for k, v in t.items())
              + "  | ratio to base: " + " ".join(f"{k} {min(v) / base:.3f}" for k, v in t.items() if k != "base"), flush=True)
    for name in VARIANTS:
        for key, kernel in CACHES[name][0].items():
            print(f"{name} kb{key[2]} vb{key[3]} D{key[1]} fused{int(key[-2])} tickets{int(key[-1])}: "
                  f"{attr(kernel, 4)} regs, {attr(kernel, 3)} B local", flush=True)
    for name in ("base", sys.argv[1] if len(sys.argv) > 1 else "spec_v4m12"):
        print(f"--- timeline of {name}")
        tl.TEXT = SOURCES[name]
        tl.patched(tl.STAMP)
        for b in (1, 32):
            tl.timeline("k2v2", b, 32768)


if __name__ == "__main__":
    main()
