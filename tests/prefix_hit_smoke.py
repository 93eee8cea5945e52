"""Greedy generation twice over the same chat prompts in one vLLM engine with a KVarN preset:
the second pass hits the prefix cache on every full first block, so its prefill reads the
first block from the cache (its 16-bit sink copy while resident) instead of computing it.
Prints both passes' first tokens and exits 1 if any request's two passes differ in their
first --tokens tokens (greedy, so they should not: a prefix hit changes where keys are read
from, not their values while the sink copy is resident). Run on the GPU machine, where the
CPU tests cannot reach the CUDA paths.

usage: python tests/prefix_hit_smoke.py MODEL GSM8K_JSONL [PRESET] [--tokens N] [--no-async] [--eager]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("preset", nargs="?", default="k2v2-g64")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=12)
    ap.add_argument("--no-async", action="store_true", help="turn vLLM's asynchronous scheduling off")
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs at all (enforce_eager)")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    from kvarn_cli import kvcache

    kwargs = kvcache.engine_kwargs(args.preset) if args.preset != "fp16" else {}
    if args.no_async:
        kwargs["async_scheduling"] = False
    llm = LLM(model=args.model, dtype="bfloat16", seed=0, max_model_len=1024, kv_cache_memory_bytes=256 << 20,
              max_num_seqs=16, enforce_eager=args.eager, **kwargs)
    tok = llm.get_tokenizer()
    with open(args.data, encoding="utf-8") as fh:
        rows = [json.loads(line) for _, line in zip(range(args.prompts), fh)]
    prompts = [tok.apply_chat_template([{"role": "user", "content": r["question"]}], add_generation_prompt=True,
                                       tokenize=True) for r in rows]
    prompts = [p["input_ids"] if hasattr(p, "keys") else p for p in prompts]
    params = SamplingParams(max_tokens=args.tokens, temperature=0.0)
    passes = []
    for _ in range(2):
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        passes.append([list(o.outputs[0].token_ids) for o in outs])
    bad = 0
    for i, (a, b) in enumerate(zip(*passes)):
        same = a == b
        bad += not same
        print(f"prompt {i} ({len(prompts[i])} tokens): {'same' if same else 'DIFFERENT'}  pass0 {a}  pass1 {b}")
    print(f"{args.preset}: {len(prompts) - bad} of {len(prompts)} prompts generate the same tokens with a prefix hit")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
