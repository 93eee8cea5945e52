# lease of 2026-11-23 (session 4), call B: VCM timing with a form that passes the descriptor check (data layout not matched: timing only)
R=$1
t() { echo "== $*"; }
t decode32k
timeout 240 python3 benchmarks/decode_attention.py --variants tmwhb,tmwhbvq,tmwhb3,tmwhb3b,tmwhbvqb,tmwhbvq3b --methods k2v2 \
  --shapes qwen3-4b,smollm2 --contexts 32768 --batches 1,8,32,64 --no-flush --out $R/decode32k.json > $R/decode32k.log 2>&1; grep -v "^flush" $R/decode32k.log | tail -12
t step_4k
timeout 150 python3 benchmarks/decode_step.py --shape qwen3-4b --rows 32 --contexts 100 --spread 4096 --methods k2v2 \
  --variants tmwhb,tmwhbvq,tmwhbb,tmwhbvqb,tmwhbvq3b --out $R/step_4k.json > $R/step_4k.log 2>&1; tail -3 $R/step_4k.log
t step_uniform
timeout 150 python3 benchmarks/decode_step.py --shape qwen3-4b --rows 32,64 --contexts 2048 --spread 1 --methods k2v2 \
  --variants tmwhb,tmwhbvq,tmwhb3,tmwhbvqb --out $R/step_2k.json > $R/step_2k.log 2>&1; tail -5 $R/step_2k.log
