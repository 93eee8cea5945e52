# lease of 2026-11-23 (session 3), call A: balanced split kernels on the H100
R=$1
t() { echo "== $*"; }
t tests
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py \
  -k "tmwhbb or tmwhb3b or balanced or small_workspace or every_layer" > $R/tests.log 2>&1; tail -4 $R/tests.log
t decode32k
timeout 280 python3 benchmarks/decode_attention.py --variants tmwhb,tmwhb3,tmwhbb,tmwhb3b --methods k2v2 \
  --contexts 32768 --batches 1,8,32,64 --no-flush --out $R/decode32k.json > $R/decode32k.log 2>&1; grep -v "^flush" $R/decode32k.log | tail -45
t step_4k
timeout 150 python3 benchmarks/decode_step.py --shape qwen3-4b --rows 32 --contexts 100 --spread 4096 --methods k2v2 \
  --variants tmwhb,tmwhb3,tmwhbb,tmwhb3b --out $R/step_4k.json > $R/step_4k.log 2>&1; tail -4 $R/step_4k.log
python3 -c "import json,sys;[print(r) for r in json.load(open(sys.argv[1]))['rows']]" $R/step_4k.json
t step_uniform
timeout 150 python3 benchmarks/decode_step.py --shape qwen3-4b --rows 32,64 --contexts 2048 --spread 1 --methods k2v2 \
  --variants tmwhb,tmwhb3,tmwhbb,tmwhb3b --out $R/step_2k.json > $R/step_2k.log 2>&1; tail -4 $R/step_2k.log
python3 -c "import json,sys;[print(r) for r in json.load(open(sys.argv[1]))['rows']]" $R/step_2k.json
t tune
timeout 120 python3 benchmarks/decode_attention.py --variants tmwhb3b --methods k2v2 --shapes qwen3-4b \
  --contexts 32768 --batches 8,64 --no-flush --tune --out $R/tune.json > $R/tune.log 2>&1; grep "^tune" $R/tune.log
