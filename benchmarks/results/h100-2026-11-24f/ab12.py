"""Session 15, run 121: the candidate kernel (variants121.py) against head in one process, both
shapes: outputs against head's, registers and local memory, then the decode time of each case,
head, spec8, new, new, spec8, head, head, spec8, new (CUDA-graph replays as
benchmarks/decode_attention.py times them).

    python ab12.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "h100-2026-11-24e"))  # timeline: inputs, timed_case
sys.path.insert(0, str(HERE.parent / "h100-2026-11-24d"))  # ab6.attr: cuFuncGetAttribute

import ab10  # noqa: E402
import timeline as tl  # noqa: E402
import variants121  # noqa: E402
from ab6 import attr  # noqa: E402


def main() -> None:
    ab10.load(variants121.variants())
    ab10.VARIANTS[:] = list(ab10.SOURCES)
    print(torch.cuda.get_device_name(), flush=True)
    for name in ("k2v2", "k4v4"):
        ab10.agree(name, 32, 32768)
        ab10.agree(name, 1, 32768)
    names = ab10.VARIANTS
    shapes = {"smollm2": (3, 9, 64), "qwen3-4b": (8, 32, 128)}
    cases = [("smollm2", "k2v2", b, 32768) for b in (32, 1, 8, 64)]
    cases += [("smollm2", "k2v2", b, 16384) for b in (8, 32)] + [("smollm2", "k2v2", b, 4096) for b in (8, 64)]
    cases += [("smollm2", "k4v4", b, 32768) for b in (8, 32, 64)]
    cases += [("qwen3-4b", m, 32, 32768) for m in ("k2v2", "k4v4")]
    for shape, m, b, ctx in cases:
        kvh, qh, d = shapes[shape]
        t: dict[str, list[float]] = {}
        for name in names + names[::-1] + names:
            ab10.use(name)
            t.setdefault(name, []).append(tl.timed_case(m, b, kvh, qh, d, True, ctx))
        head = min(t["head"])
        print(f"{shape:8s} {m} L={ctx:5d} B={b:2d}: " + "  ".join(f"{k} " + " ".join(f"{x:6.1f}" for x in v) for k, v in t.items())
              + "  | min ratio to head: " + " ".join(f"{k} {min(v) / head:.3f}" for k, v in t.items() if k != "head"), flush=True)
    for name in names:
        for key, kernel in ab10.CACHES[name][0].items():
            print(f"{name} kb{key[2]} vb{key[3]} D{key[1]} fused{int(key[-2])} tickets{int(key[-1])}: "
                  f"{attr(kernel, 4)} regs, {attr(kernel, 3)} B local", flush=True)


if __name__ == "__main__":
    main()
