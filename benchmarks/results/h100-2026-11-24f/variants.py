"""Session 15, run 120: the merge's partials per load round (MERGE_AT_ONCE) for 2-bit K codes
only, as text substitutions of the tree's cuda_decode_split.cu; 4-bit K codes keep 8, where
11 spilled and was 2-4% slower in run 119.

- base: the tree (8);
- k2mN: N partials per round where KB == 2.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
TREE = (ROOT / "kvarn_cli/kernels/cuda_decode_split.cu").read_text()
MERGE = "constexpr int MERGE_AT_ONCE = 8;\n"


def variants() -> dict[str, str]:
    assert TREE.count(MERGE) == 1
    out = {"base": TREE}
    for n in (10, 11, 12):
        out[f"k2m{n}"] = TREE.replace(MERGE, f"constexpr int MERGE_AT_ONCE = KB == 2 ? {n} : 8;\n")
    return out
