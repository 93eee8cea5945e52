"""Session 15, run 121: the candidate (the working tree: spec.diff's table reads, and 11
partials per merge round for 2-bit K codes) against the committed kernel, as text
substitutions of the tree's cuda_decode_split.cu (the kernel arguments are the same in all:
the table's width is passed to each, and unused by head):

- head: f9be4cd's first_blocks and merge width (8);
- spec8: the tree with the merge width back at 8;
- new: the tree.
"""

from __future__ import annotations

from pathlib import Path

import variants119 as v119

ROOT = Path(__file__).resolve().parents[3]
TREE = (ROOT / "kvarn_cli/kernels/cuda_decode_split.cu").read_text()
NEW_MERGE = "constexpr int MERGE_AT_ONCE = KB == 2 ? 11 : 8;\n"


def variants() -> dict[str, str]:
    spec8 = v119.sub(TREE, NEW_MERGE, v119.MERGE)
    return {"head": v119.sub(spec8, v119.SPEC_FIRST, v119.BASE_FIRST), "spec8": spec8, "new": TREE}
