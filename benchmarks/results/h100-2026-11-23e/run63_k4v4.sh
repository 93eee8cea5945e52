# lease of 2026-11-23 (session 7), run 63: the 4k job for k4v4. Lost: the device call's own limit (285 s) came
# before the script's (272 s plus the dummy model and Python start), and the lease's budget was spent
R=$1
PROMPTS=32 TOKENS=4096 WARMUP=4 PASSES=2 PRESETS=k4v4 TOTAL_TIMEOUT=272 PRESET_TIMEOUT=266 OUT=$R bash benchmarks/gpu_session.sh dummy >/dev/null 2>&1
python3 benchmarks/results/h100-2026-11-23e/summ.py $R/e2e_dummy.json | cut -c1-1500
