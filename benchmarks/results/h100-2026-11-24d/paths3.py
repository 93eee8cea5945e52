"""Session 13, run 105: where run 103's kernel paths part (one launch against two, token 69 of
250, SmolLM2 k2v2, eager, float32): the same generation as tests/triton_engine_smoke.py with
the engine in this process, the top 5 logprobs of every step written out, for the one-launch
decode (`one`), the two-launch decode (`two`: cuda_decode._fusable refuses every output) and
the PyTorch path (`torch`, run with KVARN_FORCE_TRITON=0); then `compare` prints the top-2
gap of each path at the first step where they part.

    python paths3.py {one,two,torch} MODEL DATA_DIR OUT.json
    python paths3.py compare A.json B.json
"""

from __future__ import annotations

import json
import os
import sys

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


def generate(mode: str, model: str, data: str, out_path: str) -> None:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from kvarn_cli import kvcache

    if mode == "two":
        from kvarn_cli.kernels import cuda_decode

        cuda_decode._fusable = lambda query, out: False
    tok = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for line in open(f"{data}/gsm8k_test.jsonl")]
    text = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in rows[:3])
    ids = tok(text)["input_ids"][:200]
    llm = LLM(model=model, dtype="float32", max_model_len=512, kv_cache_memory_bytes=64 << 20, max_num_seqs=2,
              max_num_batched_tokens=128, enforce_eager=True, seed=0, **kvcache.engine_kwargs("k2v2"))
    params = SamplingParams(max_tokens=250, temperature=0.0, logprobs=5)
    out = llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0].outputs[0]
    steps = [sorted(((t, lp.logprob) for t, lp in d.items()), key=lambda x: -x[1])[:5] for d in out.logprobs]
    with open(out_path, "w") as f:
        json.dump({"tokens": list(out.token_ids), "top": steps}, f)


def compare(a_path: str, b_path: str) -> None:
    a, b = json.load(open(a_path)), json.load(open(b_path))
    k = next((i for i, (s, t) in enumerate(zip(a["tokens"], b["tokens"])) if s != t), None)
    if k is None:
        print(f"{a_path} vs {b_path}: all {len(a['tokens'])} tokens equal")
        return
    for name, run in ((a_path, a), (b_path, b)):
        (t1, l1), (t2, l2) = run["top"][k][:2]
        print(f"{name}: step {k}: top tokens {t1} ({l1:.6f}), {t2} ({l2:.6f}), gap {l1 - l2:.2e}")


if __name__ == "__main__":
    if sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        generate(*sys.argv[1:5])
