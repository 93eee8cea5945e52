"""Session 15, run 120: the merge's partials per load round for 2-bit K codes (variants.py),
SmolLM2 shape, in one process: outputs against base's, registers and local memory, then the
decode time of each case, variants timed in the order of VARIANTS, back, and again
(CUDA-graph replays as benchmarks/decode_attention.py times them), then the merge's timeline
of base and k2m11 at 1, 32 and 64 rows (timeline.py's stamps).

    python ab11.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "h100-2026-11-24e"))  # timeline: inputs, timed_case, stamps
sys.path.insert(0, str(HERE.parent / "h100-2026-11-24d"))  # ab6.attr: cuFuncGetAttribute

import ab10  # noqa: E402
import timeline as tl  # noqa: E402
import variants  # noqa: E402
from ab6 import attr  # noqa: E402



def main() -> None:
    ab10.load(variants.variants())
    ab10.VARIANTS[:] = list(ab10.SOURCES)
    print(torch.cuda.get_device_name(), flush=True)
    for name in ("k2v2", "k4v4"):
        ab10.agree(name, 32, 32768)
    names = ab10.VARIANTS
    cases = [("k2v2", b, 32768) for b in (32, 1, 8, 64)] + [("k2v2", b, 16384) for b in (8, 32)]
    cases += [("k2v2", b, 4096) for b in (8, 64)] + [("k4v4", 32, 32768)]
    for m, b, ctx in cases:
        t: dict[str, list[float]] = {}
        for name in names + names[::-1] + names:
            ab10.use(name)
            t.setdefault(name, []).append(tl.timed_case(m, b, 3, 9, 64, True, ctx))
        base = min(t["base"])
        print(f"smollm2 {m} L={ctx:5d} B={b:2d}: " + "  ".join(f"{k} " + " ".join(f"{x:6.1f}" for x in v) for k, v in t.items())
              + "  | min ratio to base: " + " ".join(f"{k} {min(v) / base:.3f}" for k, v in t.items() if k != "base"), flush=True)
    for name in names:
        for key, kernel in ab10.CACHES[name][0].items():
            print(f"{name} kb{key[2]} vb{key[3]} D{key[1]} fused{int(key[-2])} tickets{int(key[-1])}: "
                  f"{attr(kernel, 4)} regs, {attr(kernel, 3)} B local", flush=True)
    for name in ("base", "k2m11"):
        print(f"--- timeline of {name}")
        tl.TEXT = ab10.SOURCES[name]
        tl.patched(tl.STAMP)
        for b in (1, 32, 64):
            tl.timeline("k2v2", b, 32768)


if __name__ == "__main__":
    main()
