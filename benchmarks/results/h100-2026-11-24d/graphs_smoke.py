"""Session 13, run 102: SmolLM2 (bf16) with the k2v2 cache in one vLLM engine with its decode
CUDA graphs on, 8 GSM8K prompts at once, 200 greedy tokens each, written as JSON (tokens and
their logprobs per prompt). Run once with the default decode (the CUDA kernel, at head_dim 64
in one launch) and once with KVARN_DECODE_VARIANT=hilo (the Triton split and reduce kernels),
then `compare A.json B.json`.

    python graphs_smoke.py MODEL GSM8K.jsonl OUT.json
    python graphs_smoke.py compare A.json B.json
"""

from __future__ import annotations

import json
import sys


def generate(model: str, data: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams

    from kvarn_cli import kvcache

    rows = [json.loads(line) for line in open(data)][:8]
    prompts = [f"Question: {r['question']}\nAnswer: Let's think step by step." for r in rows]
    llm = LLM(model=model, dtype="bfloat16", max_model_len=1024, kv_cache_memory_bytes=64 << 20, max_num_seqs=8,
              seed=0, **kvcache.engine_kwargs("k2v2"))
    params = SamplingParams(max_tokens=200, temperature=0.0, logprobs=1, ignore_eos=True)
    outs = llm.generate(prompts, params, use_tqdm=False)
    result = []
    for o in outs:
        c = o.outputs[0]
        result.append({"tokens": list(c.token_ids), "logprobs": [d[t].logprob for t, d in zip(c.token_ids, c.logprobs)]})
    with open(out_path, "w") as f:
        json.dump(result, f)


def compare(a_path: str, b_path: str) -> None:
    a, b = json.load(open(a_path)), json.load(open(b_path))
    for i, (x, y) in enumerate(zip(a, b)):
        same = next((k for k, (s, t) in enumerate(zip(x["tokens"], y["tokens"])) if s != t), len(x["tokens"]))
        diff = [abs(s - t) for s, t in zip(x["logprobs"][:same], y["logprobs"][:same])]
        print(f"prompt {i}: first {same} of {len(x['tokens'])} greedy tokens equal; logprob |diff| "
              f"max {max(diff or [0]):.4f} mean {sum(diff) / max(1, len(diff)):.5f}")


if __name__ == "__main__":
    if sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        generate(*sys.argv[1:4])
