#!/usr/bin/env bash
# Writes the kernel sources that runs 84-87 compared (s1.sh, s2.sh, s4.sh read them from this folder):
#   split_v1.cu  the kernel of 76b5483 (session 10)
#   split_v3.cu  the kernel of 322d095 (session 11, committed)
#   split_v2.cu  split_v3.cu with split_v1.cu's epilogue (all GP partial rows written): the kernel of run 84
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$(git -C "$here" rev-parse --show-toplevel)"
git show 76b5483:kvarn_cli/kernels/cuda_decode_split.cu > "$here/split_v1.cu"
git show 322d095:kvarn_cli/kernels/cuda_decode_split.cu > "$here/split_v3.cu"
python3 - "$here" <<'PY'
import sys
here = sys.argv[1]
v1 = open(f"{here}/split_v1.cu").read()
v3 = open(f"{here}/split_v3.cu").read()
old_tail = v1[v1.index("  const bool real = j < GQA;"):v1.rindex("}")]
new_tail = v3[v3.index("  // only the GQA real rows"):v3.rindex("}")]
open(f"{here}/split_v2.cu", "w").write(v3.replace(new_tail, old_tail))
PY
echo "wrote $here/split_v1.cu split_v2.cu split_v3.cu"
