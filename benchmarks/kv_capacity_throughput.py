"""Capacity and throughput of the cache presets at one fixed KV memory, in one session.

Every preset gets the same prompts (4-shot GSM8K, ~680 tokens with SmolLM2's template) and
the same paged KV budget, chosen so that fp16 cannot hold all sequences at once and must
queue or preempt. With --equal-total the quantized presets instead get the budget minus
their 16-bit sink/tail staging pool, so paged cache + staging equals fp16's paged cache.

The engine is driven step by step (LLMEngine.add_request/step) so that KV usage and the
number of running sequences can be sampled after every step.

Example (the run in docs/BENCHMARKS.md):
    OMP_NUM_THREADS=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_OMP_THREADS_BIND=nobind \
    python benchmarks/kv_capacity_throughput.py --model models/smollm2-135m \
        --kv-cache-memory 70MiB --prompts 8 --max-tokens 256 --max-num-seqs 8
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "models" / "smollm2-135m"))
    p.add_argument("--data", default=os.environ.get("KVARN_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--kv-cache-memory", default="70MiB", help="paged KV budget given to every preset")
    p.add_argument("--presets", default="fp16,k4v4,k2v2")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--equal-total", action="store_true", help="subtract each preset's staging pool from its paged budget")
    p.add_argument("--json", dest="json_out", default=None, help="also write the results here")
    return p.parse_args()


def prompts(model: str, data: str, n: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for line in open(Path(data) / "gsm8k_test.jsonl")]
    shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in rows[:4])
    out = []
    for r in rows[10 : 10 + n]:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": shots + f"Question: {r['question']}\nAnswer:"}], add_generation_prompt=True, tokenize=True
        )
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out


def gauges(llm: Any) -> dict[str, float]:
    values: dict[str, float] = {}
    for metric in llm.get_metrics():
        if metric.name in ("vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:num_preemptions"):
            values[metric.name] = float(getattr(metric, "value", 0.0))
    return values


def run_preset(preset: str, args: argparse.Namespace, ids: list[list[int]], budget: int, shape: dict[str, Any]) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    from kvarn_cli import kvcache

    paged = budget
    if args.equal_total:
        paged = kvcache.paged_budget(preset, **shape, total_bytes=budget, max_num_seqs=args.max_num_seqs)
    kwargs = kvcache.engine_kwargs(preset)
    llm = LLM(
        model=args.model,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        kv_cache_memory_bytes=paged,
        max_num_seqs=args.max_num_seqs,
        enforce_eager=True,
        seed=0,
        disable_log_stats=False,
        **kwargs,
    )
    cc = llm.llm_engine.vllm_config.cache_config
    engine = llm.llm_engine
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    for i, p in enumerate(ids):
        engine.add_request(f"r{i}", {"prompt_token_ids": p}, params)
    peak_usage = 0.0
    peak_running = 0
    generated = 0
    steps = 0
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                generated += len(out.outputs[0].token_ids)
        steps += 1
        g = gauges(llm)
        peak_usage = max(peak_usage, g.get("vllm:kv_cache_usage_perc", 0.0))
        peak_running = max(peak_running, int(g.get("vllm:num_requests_running", 0)))
    wall = time.perf_counter() - start
    final = gauges(llm)
    staging = kvcache.staging_bytes(preset, **shape, max_num_seqs=args.max_num_seqs)
    result = {
        "preset": preset,
        "paged_bytes": int(paged),
        "staging_bytes": int(staging),
        "num_blocks": int(cc.num_gpu_blocks),
        "block_size": int(cc.block_size),
        "capacity_tokens": int(cc.num_gpu_blocks) * int(cc.block_size),
        "peak_kv_usage": peak_usage,
        "peak_kv_tokens": int(round(peak_usage * int(cc.num_gpu_blocks) * int(cc.block_size))),
        "peak_running": peak_running,
        "preemptions": int(final.get("vllm:num_preemptions", 0)),
        "generated_tokens": generated,
        "steps": steps,
        "wall_s": wall,
        "tokens_per_s": generated / wall,
    }
    del engine, llm
    gc.collect()
    return result


def main() -> None:
    args = parse_args()
    from kvarn_cli import kvcache
    from kvarn_cli.commands.plan import model_shape
    from kvarn_cli.sizes import parse_size

    budget = parse_size(args.kv_cache_memory, "--kv-cache-memory")
    s = model_shape(args.model, args.dtype)
    shape = {k: s[k] for k in ("num_layers", "num_kv_heads", "head_dim", "dtype_bytes")}
    ids = prompts(args.model, args.data, args.prompts)
    results = []
    for preset in args.presets.split(","):
        kvcache.check_preset(preset)
        results.append(run_preset(preset, args, ids, budget, shape))
        print(json.dumps(results[-1]), flush=True)
    kvcache.deactivate()
    mib = 1 << 20
    print(
        f"\n{len(ids)} prompts of {min(map(len, ids))}-{max(map(len, ids))} tokens, {args.max_tokens} new tokens each, "
        f"max_num_seqs {args.max_num_seqs}, {args.dtype}, KV budget {budget / mib:.0f} MiB"
        + (" (paged + staging)" if args.equal_total else " (paged)")
    )
    print("| preset | paged MiB | 16-bit staging MiB | capacity tokens | peak KV usage | peak running seqs | preemptions | generated tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['preset']} | {r['paged_bytes'] / mib:.1f} | {r['staging_bytes'] / mib:.1f} | {r['capacity_tokens']:,} | "
            f"{100 * r['peak_kv_usage']:.0f}% ({r['peak_kv_tokens']:,} tok) | {r['peak_running']} | {r['preemptions']} | "
            f"{r['tokens_per_s']:.1f} |"
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
