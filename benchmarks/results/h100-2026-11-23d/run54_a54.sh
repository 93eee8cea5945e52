# lease of 2026-11-23 (session 5), call A: branch wip/v-channel-major (K correction summed apart) on CUDA:
# kernel tests, 32k decode and mixed-context step against main's tree (.gpuwork/main) in the same run
R=$1
t() { echo "== $*"; }
t tests
timeout 230 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py tests/test_triton_stage.py \
  tests/test_kvcache_triton.py > $R/tests.log 2>&1; echo "exit $?"; tail -4 $R/tests.log
t decode32k_branch
timeout 150 python3 benchmarks/decode_attention.py --variants tmwhb,tmwhb3,tmwhbb,tmwhb3b --methods k2v2 \
  --shapes qwen3-4b,smollm2 --contexts 32768 --batches 1,8,32,64 --no-flush --out $R/decode32k_branch.json > $R/decode32k_branch.log 2>&1; echo "exit $?"; grep -v "^flush" $R/decode32k_branch.log | tail -8
t decode32k_main
(cd .gpuwork/main && PYTHONPATH=/tmp/site:$PWD timeout 120 python3 benchmarks/decode_attention.py --variants tmwhb,tmwhb3b --methods k2v2 \
  --shapes qwen3-4b,smollm2 --contexts 32768 --batches 1,8,32,64 --no-flush --out $R/decode32k_main.json > $R/decode32k_main.log 2>&1); echo "exit $?"; grep -v "^flush" $R/decode32k_main.log | tail -8
t step_4k_branch
timeout 100 python3 benchmarks/decode_step.py --shape qwen3-4b --rows 32 --contexts 100 --spread 4096 --methods k2v2 \
  --variants tmwhb,tmwhb3,tmwhbb,tmwhb3b --out $R/step_4k_branch.json > $R/step_4k_branch.log 2>&1; echo "exit $?"; tail -4 $R/step_4k_branch.log
t step_4k_main
(cd .gpuwork/main && PYTHONPATH=/tmp/site:$PWD timeout 100 python3 benchmarks/decode_step.py --shape qwen3-4b --rows 32 --contexts 100 --spread 4096 --methods k2v2 \
  --variants tmwhb,tmwhb3b --out $R/step_4k_main.json > $R/step_4k_main.log 2>&1); echo "exit $?"; tail -4 $R/step_4k_main.log
