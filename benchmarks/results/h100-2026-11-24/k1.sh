#!/usr/bin/env bash
# Lease 1 of 2026-11-24 (issue 6): the CUDA split kernel's first build, tests and 32k timing.
# Needs only the device image (torch 2.11, triton 3.6, nvcc): no vLLM.  $1: output folder.
set -u
R=${1:?output folder}
mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'nvrtc api', hasattr(torch.cuda, '_compile_kernel'), torch.cuda.get_device_name())"
git log -1 --format='commit %h %s' 2>/dev/null || true
python3 - > "$R/sources.txt" <<'PY'
from kvarn_cli.kernels import make_quantizer
from kvarn_cli.kernels.triton_common import kernel_layout
from kvarn_cli.kernels.cuda_decode import source_for
for name, d, g in (("k2v2", 64, 3), ("k2v2", 128, 4), ("k4v4", 128, 4)):
    path = f"/tmp/{name}_{d}_{g}.cu"
    open(path, "w").write(source_for(kernel_layout(make_quantizer(name, head_dim=d, block_size=128).layout), g, 16))
    print(path)
PY
for f in $(cat "$R/sources.txt"); do
  echo "== $f"
  timeout 90 nvcc -std=c++17 -gencode=arch=compute_90,code=sm_90 -cubin -Xptxas -v -o /tmp/x.cubin "$f" 2>&1 | grep -E 'error|warning|registers|spill|stack' | head -20
done 2>&1 | tee "$R/ptxas.log"
timeout 120 python3 - <<'PY' 2>&1 | tail -30 | tee "$R/compile.log"
import torch
from kvarn_cli.kernels import make_quantizer
from kvarn_cli.kernels.triton_common import kernel_layout
from kvarn_cli.kernels.cuda_decode import _compiled, source_for
lay = kernel_layout(make_quantizer("k2v2", head_dim=64, block_size=128).layout)
_compiled(source_for(lay, 3, 16), 0)
print("nvrtc compile ok")
PY
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py -k "cuda or rotated or (decode_matches and hilo)" 2>&1 | tail -25 | tee "$R/tests.log"
timeout 240 python3 benchmarks/decode_attention.py --variants cuda,tmwhb --methods k2v2 --contexts 32768 \
  --batches 1,32,64 --no-flush --out "$R/decode.json" 2>&1 | tee "$R/decode.log" | tail -25
