"""Session 13, run 101: the one-launch decode at head_dim 64 as committed (MIN_PROGRAMS,
fence.acq_rel) against source patches of it, timed as ab6.py times them: the count's fences
back to fence.sc ("sc"), 4 or 16 partials in flight per merge step, and the two launches.

    python ab7.py
"""

from __future__ import annotations

import ab6

ab6.PATCHES = {
    "commit": [],
    "reduce": [],
    "sc": [('asm volatile("fence.acq_rel.gpu;" ::: "memory");', 'asm volatile("fence.sc.gpu;" ::: "memory");')],
    "merge4": [("constexpr int MERGE_AT_ONCE = 8;", "constexpr int MERGE_AT_ONCE = 4;")],
    "merge16": [("constexpr int MERGE_AT_ONCE = 8;", "constexpr int MERGE_AT_ONCE = 16;")],
}
ab6.main()
