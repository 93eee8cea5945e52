"""Greedy generation of SmolLM2 in a real vLLM engine with the KVarN k2v2 cache, written as
JSON (tokens, their logprobs): run once normally and once with KVARN_FORCE_TRITON=1 (and
TRITON_INTERPRET=1 on CPU) to compare the PyTorch and Triton paths of kvcache.compute inside
vLLM. Used by tests/test_kvcache_triton.py (opt-in: slow under the interpreter).

usage: python tests/triton_engine_smoke.py MODEL DATA_DIR OUT.json MAX_TOKENS [flush-only]

`flush-only` (diagnostic) keeps attention on the PyTorch path while flushes use the kernels,
to tell the flush's and the decode kernel's share of a difference apart.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from kvarn_cli import kvcache

    model, data, out_path, max_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if sys.argv[5:] == ["flush-only"]:
        _attend_in_pytorch()
    tok = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for line in open(f"{data}/gsm8k_test.jsonl")]
    text = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in rows[:3])
    # 200 prompt tokens: block 0 (G = 128) is flushed in the prefill, and a generation of
    # 56+ tokens fills block 1 by a decode step
    ids = tok(text)["input_ids"][:200]
    llm = LLM(model=model, dtype="float32", max_model_len=512, kv_cache_memory_bytes=64 << 20, max_num_seqs=2,
              max_num_batched_tokens=128, enforce_eager=True, seed=0, **kvcache.engine_kwargs("k2v2"))
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=1)
    out = llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0].outputs[0]
    logprobs = [d[t].logprob for t, d in zip(out.token_ids, out.logprobs)]
    with open(out_path, "w") as f:
        json.dump({"tokens": list(out.token_ids), "logprobs": logprobs}, f)


def _attend_in_pytorch() -> None:
    import copy

    from kvarn_cli.kvcache import backend, compute

    attend = compute.attend

    def pytorch_attend(plan, codec, *args, **kwargs):  # type: ignore[no-untyped-def]
        codec = copy.copy(codec)
        codec.triton = False
        return attend(plan, codec, *args, **kwargs)

    backend.attend = pytorch_attend


if __name__ == "__main__":
    main()
