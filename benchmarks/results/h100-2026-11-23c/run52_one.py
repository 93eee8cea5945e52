import sys, torch
sys.path.insert(0, "tests"); sys.path.insert(0, ".")
import test_triton_kernels as T
v = sys.argv[1]
c = T.CASES[int(sys.argv[2])]
try:
    T.test_decode_matches_dequantized_sdpa(v, *c); print(v, c, "ok", flush=True)
except AssertionError as e: print(v, c, "assert", str(e)[:60], flush=True)
