"""Session 15: the one-launch decode kernel's variants timed against each other in run 119, as
text substitutions of the tree's cuda_decode_split.cu with spec.diff applied (f9be4cd + the
table entries read before nblk arrives, and the table's width passed for it; `patch -p1 <
spec.diff` in the repository; the kernel arguments are the same in all of them):

- base: first_blocks as committed in f9be4cd (the table read after nblk's load);
- spec: spec.diff's tree (both table entries read before nb arrives);
- spec_mN: spec with MERGE_AT_ONCE = N (partials per load round of the merge);
- spec_v4mN: as spec_mN with the merge's partial loads 16 bytes wide instead of 8.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
TREE = (ROOT / "kvarn_cli/kernels/cuda_decode_split.cu").read_text()

SPEC_FIRST = """  auto first_blocks = [&]() {
    const int id_cur = bt_row[min(cur, bt_width - 1)], id_nx = TICKETS ? bt_row[min(nx, bt_width - 1)] : 0;
    if (cur < (TICKETS ? nb : end)) copy_record(sbase, rec_h + (long long)id_cur * stride_rb, lane);
    cp_commit();
    if (TICKETS && nx < nb) {
      rec_nx = id_nx;
"""
BASE_FIRST = """  auto first_blocks = [&]() {
    if (cur < (TICKETS ? nb : end)) copy_record(sbase, rec_h + (long long)bt_row[cur] * stride_rb, lane);
    cp_commit();
    if (TICKETS && nx < nb) {
      rec_nx = bt_row[nx];
"""
MERGE = "constexpr int MERGE_AT_ONCE = 8;\n"
LOAD2 = """#pragma unroll
      for (int mv = 0; mv < NS; ++mv)
        a[u][mv] = ok ? __ldcg(reinterpret_cast<const float2*>(ws_acc + p * GP * D + hj * D + c0 + 2 * mv))
                      : make_float2(0.f, 0.f);
"""
LOAD4 = """#pragma unroll
      for (int mv = 0; mv < NS; mv += 2) {
        const float4 v = ok ? __ldcg(reinterpret_cast<const float4*>(ws_acc + p * GP * D + hj * D + c0 + 2 * mv))
                            : make_float4(0.f, 0.f, 0.f, 0.f);
        a[u][mv] = make_float2(v.x, v.y);
        a[u][mv + 1] = make_float2(v.z, v.w);
      }
"""


def sub(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def variants() -> dict[str, str]:
    out = {"base": sub(TREE, SPEC_FIRST, BASE_FIRST), "spec": TREE}
    for n in (11, 12):
        out[f"spec_m{n}"] = sub(TREE, MERGE, f"constexpr int MERGE_AT_ONCE = {n};\n")
        out[f"spec_v4m{n}"] = sub(out[f"spec_m{n}"], LOAD2, LOAD4)
    out["spec_v4m16"] = sub(sub(TREE, MERGE, "constexpr int MERGE_AT_ONCE = 16;\n"), LOAD2, LOAD4)
    return out
