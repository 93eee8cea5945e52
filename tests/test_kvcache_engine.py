"""The paged KVarN cache inside a real vLLM engine (SmolLM2-135M on CPU).

One engine per configuration is built in turn (module fixture `runs`), driven through the
same workloads, and freed before the next; the tests then compare what each recorded.
Engines run in float32 so that greedy decoding has few exact ties: in bf16 the top two
logits of this model often round to the same value, and even vLLM against itself (chunked
vs unchunked prefill) then picks different tokens within a few dozen steps.

Workloads:
- short chat prompts (< 128 tokens): within 64 new tokens every key comes from the 16-bit
  sink or tail, so quantized presets must reproduce fp16;
- 4-shot GSM8K prompts (~680 tokens, sharing a ~600-token prefix): most of the context
  is read from records; prefilled in chunks of 128 tokens, so every chunk attends to the
  quantized blocks before it (the paper's "accumulated" pseudo-decode);
- teacher forcing: the fp16 greedy continuation appended to those prompts, scored token by
  token (prompt_logprobs), again in chunks of 128.
"""

from __future__ import annotations

import gc
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = Path(os.environ.get("KVARN_TEST_MODEL", REPO / "models" / "smollm2-135m"))
DATA = Path(os.environ.get("KVARN_DATA", REPO.parent / "shared" / "data"))

pytestmark = [
    pytest.mark.engine,
    pytest.mark.model,
    pytest.mark.skipif(not (MODEL / "config.json").is_file(), reason=f"test model not found at {MODEL} (set KVARN_TEST_MODEL)"),
    pytest.mark.skipif(not (DATA / "gsm8k_test.jsonl").is_file(), reason=f"GSM8K not found in {DATA} (set KVARN_DATA)"),
]

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

KV_BYTES = 256 << 20
MAX_LEN = 1024
CHUNK = 128
NEW_TOKENS = 64


@dataclass
class Run:
    num_blocks: int
    block_size: int
    short: list[list[int]]
    fewshot: list[list[int]]
    fewshot_top2: list[list[dict[int, float]]]
    forced: list[list[dict[int, Any]]] = field(default_factory=list)
    forced_tokens: list[list[int]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    spills: int = 0
    restores: int = 0


def _prompts() -> tuple[list[list[int]], list[list[int]]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(MODEL))
    rows = [json.loads(line) for line in open(DATA / "gsm8k_test.jsonl")]

    def encode(text: str) -> list[int]:
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in rows[:4])
    short = [encode(r["question"]) for r in rows[20:26]]
    fewshot = [encode(shots + f"Question: {r['question']}\nAnswer:") for r in rows[10:16]]
    return short, fewshot


def _engine(config: str, **extra: Any) -> Any:
    from vllm import LLM

    from kvarn_cli import kvcache

    kwargs = kvcache.activate("fp16", 128) if config == "lossless" else kvcache.engine_kwargs(config)
    settings: dict[str, Any] = dict(
        model=str(MODEL),
        dtype="float32",
        max_model_len=MAX_LEN,
        kv_cache_memory_bytes=KV_BYTES,
        max_num_seqs=8,
        max_num_batched_tokens=CHUNK,
        enforce_eager=True,
        seed=0,
        disable_log_stats=False,
    )
    settings.update(extra)
    return LLM(**settings, **kwargs)


def _metrics(llm: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in llm.get_metrics():
        if metric.name in ("vllm:num_preemptions", "vllm:prefix_cache_hits", "vllm:prefix_cache_queries"):
            out[metric.name] = float(getattr(metric, "value", 0.0))
    return out


@pytest.fixture(scope="module")
def runs() -> dict[str, Run]:
    from vllm import SamplingParams

    from kvarn_cli import kvcache
    from kvarn_cli.kvcache import backend

    short, fewshot = _prompts()
    greedy = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, logprobs=2)
    results: dict[str, Run] = {}
    configs: dict[str, dict[str, Any]] = {
        "fp16": {},
        "k4v4": {},
        "k2v2": {},
        # lossless records through the KVarN path, under pressure: 12 blocks for 6 sequences
        # of ~6 blocks that share 4 prefix blocks -> preemption, recompute and prefix hits
        "lossless": {"kv_cache_memory_bytes": 12 * 30 * 3 * 128 * 64 * 2 * 2},
    }
    for name, extra in configs.items():
        llm = _engine(name, **extra)
        cc = llm.llm_engine.vllm_config.cache_config
        g_short = llm.generate([{"prompt_token_ids": p} for p in short], greedy, use_tqdm=False)
        g_few = llm.generate([{"prompt_token_ids": p} for p in fewshot], greedy, use_tqdm=False)
        run = Run(
            num_blocks=int(cc.num_gpu_blocks),
            block_size=int(cc.block_size),
            short=[list(o.outputs[0].token_ids) for o in g_short],
            fewshot=[list(o.outputs[0].token_ids) for o in g_few],
            fewshot_top2=[[{t: lp.logprob for t, lp in step.items()} for step in o.outputs[0].logprobs] for o in g_few],
        )
        if name != "lossless":
            reference = results.get("fp16", run).fewshot
            forced_prompts = [{"prompt_token_ids": p + c} for p, c in zip(fewshot, reference)]
            scored = llm.generate(forced_prompts, SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1), use_tqdm=False)
            run.forced = [list(o.prompt_logprobs) for o in scored]
            run.forced_tokens = [p["prompt_token_ids"] for p in forced_prompts]
        run.metrics = _metrics(llm)
        pools = backend.live_pools() if name != "fp16" else []
        run.spills = sum(p.spills for p in pools)
        run.restores = sum(p.restores for p in pools)
        results[name] = run
        del llm
        gc.collect()
    kvcache.deactivate()
    return results


def _agreement(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _gap(top2: dict[int, float]) -> float:
    values = sorted(top2.values(), reverse=True)
    return values[0] - values[1] if len(values) > 1 else math.inf


def test_quantized_presets_allocate_the_promised_capacity(runs: dict[str, Run]) -> None:
    fp16 = runs["fp16"].num_blocks * runs["fp16"].block_size
    k2v2 = runs["k2v2"].num_blocks * runs["k2v2"].block_size
    k4v4 = runs["k4v4"].num_blocks * runs["k4v4"].block_size
    assert runs["k2v2"].block_size == runs["k4v4"].block_size == 128
    assert k2v2 >= 6.5 * fp16
    assert k4v4 >= 3.5 * fp16


def test_kvarn_plan_predicts_the_engine_allocation(runs: dict[str, Run]) -> None:
    """`kvarn plan` (model config + kvarn_cli.kvcache layout) gives the blocks vLLM allocated."""
    from kvarn_cli.commands.plan import model_shape, plan_rows

    rows = {r["preset"]: r for r in plan_rows(model_shape(str(MODEL), "float32"), KV_BYTES, MAX_LEN, 8)}
    for preset in ("fp16", "k4v4", "k2v2"):
        assert rows[preset]["num_blocks"] == runs[preset].num_blocks, preset
        assert rows[preset]["block_size"] == runs[preset].block_size, preset
        assert rows[preset]["capacity_tokens"] == runs[preset].num_blocks * runs[preset].block_size


def test_lossless_records_reproduce_vllm_under_chunking_preemption_and_prefix_caching(runs: dict[str, Run]) -> None:
    """The plumbing test: with a lossless record the KVarN path must compute what vLLM's own
    backend computes, also when sequences are preempted and recomputed, share prefix blocks,
    and are prefilled in chunks next to decodes."""
    ref, got = runs["fp16"], runs["lossless"]
    assert got.metrics["vllm:num_preemptions"] > 0
    assert got.metrics["vllm:prefix_cache_hits"] > 0
    for a, b, top2 in zip(got.fewshot, ref.fewshot, ref.fewshot_top2):
        n = _agreement(a, b)
        # a divergence is only acceptable at an exact tie of fp16's two best tokens
        assert n == len(b) or _gap(top2[n]) < 1e-2
    for a, b in zip(got.short, ref.short):
        assert a == b


def test_16bit_sink_and_tail_keep_short_chats_identical(runs: dict[str, Run]) -> None:
    """Short prompts + 64 tokens never leave the sink and tail, which stay 16-bit."""
    for preset in ("k4v4", "k2v2"):
        for a, b in zip(runs[preset].short, runs["fp16"].short):
            assert a == b, preset


def _forced_stats(run: Run, ref: Run) -> tuple[float, float]:
    """(top-1 agreement with fp16, mean |delta logprob| of the actual next token) over the
    positions whose context includes blocks read from records (position >= 256)."""
    agree = total = 0
    delta = 0.0
    for got, want, tokens in zip(run.forced, ref.forced, ref.forced_tokens):
        for pos in range(256, len(tokens)):
            g, w = got[pos], want[pos]
            g_top = min(g.items(), key=lambda kv: kv[1].rank)[0]
            w_top = min(w.items(), key=lambda kv: kv[1].rank)[0]
            agree += int(g_top == w_top)
            delta += abs(g[tokens[pos]].logprob - w[tokens[pos]].logprob)
            total += 1
    return agree / total, delta / total


def test_quantized_history_stays_close_to_fp16_teacher_forced(runs: dict[str, Run]) -> None:
    k4_agree, k4_delta = _forced_stats(runs["k4v4"], runs["fp16"])
    k2_agree, k2_delta = _forced_stats(runs["k2v2"], runs["fp16"])
    print(f"teacher-forced top-1 agreement: k4v4 {k4_agree:.3f} k2v2 {k2_agree:.3f}; |dlogp| k4v4 {k4_delta:.3f} k2v2 {k2_delta:.3f}")
    # measured (2026-11-22, 6 prompts, 2,900 positions): k4v4 0.977 / 0.030, k2v2 0.911 / 0.240
    assert k4_agree >= 0.95 and k4_delta <= 0.06
    assert k2_agree >= 0.85 and k2_delta <= 0.40


def test_greedy_generation_over_quantized_history(runs: dict[str, Run]) -> None:
    ref = runs["fp16"]
    k4 = [_agreement(a, b) for a, b in zip(runs["k4v4"].fewshot, ref.fewshot)]
    k2 = [_agreement(a, b) for a, b in zip(runs["k2v2"].fewshot, ref.fewshot)]
    print(f"greedy agreement with fp16 (tokens): k4v4 {k4} k2v2 {k2}")
    # measured: k4v4 [26, 10, 17, 64, 0, 13], k2v2 [6, 7, 3, 3, 0, 1]. Divergence within
    # 64 tokens is the rule on these prompts even for an fp8 cache (this 135M model has many
    # near-ties); what this pins is that k4v4 follows fp16 clearly longer than k2v2.
    assert sum(k4) / len(k4) >= 12
    assert sum(k4) > 2 * sum(k2)


def _continuation_nll(prompts: list[list[int]], continuations: list[list[int]]) -> float:
    """Mean negative log-likelihood per token of `continuations` under the fp32 model
    (Hugging Face transformers, full precision, no KV quantization)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(MODEL), dtype=torch.float32)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for p, c in zip(prompts, continuations):
            ids = torch.tensor([p + c])
            logits = model(ids).logits[0, len(p) - 1 : -1]
            nll = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(c), reduction="sum")
            total += float(nll)
            count += len(c)
    return total / count


def _distinct_trigrams(seqs: list[list[int]]) -> float:
    """Mean share of distinct token 3-grams per sequence: low when text loops."""
    shares = []
    for seq in seqs:
        grams = [tuple(seq[i : i + 3]) for i in range(len(seq) - 2)]
        shares.append(len(set(grams)) / max(1, len(grams)))
    return sum(shares) / len(shares)


def test_k2v2_generations_are_coherent(runs: dict[str, Run]) -> None:
    """k2v2's greedy text, scored by the unquantized model, is about as likely as fp16's own
    text, and does not loop more than fp16's."""
    _, fewshot = _prompts()
    ref = _continuation_nll(fewshot, runs["fp16"].fewshot)
    k2 = _continuation_nll(fewshot, runs["k2v2"].fewshot)
    k4 = _continuation_nll(fewshot, runs["k4v4"].fewshot)
    distinct = {name: _distinct_trigrams(runs[name].fewshot) for name in ("fp16", "k4v4", "k2v2")}
    print(f"continuation NLL under the fp32 model: fp16 {ref:.3f} k4v4 {k4:.3f} k2v2 {k2:.3f}; distinct 3-grams {distinct}")
    # measured in two runs: fp16 0.404; k4v4 0.441, 0.421; k2v2 0.626, 0.791 nats/token
    assert k4 <= ref + 0.15
    assert k2 <= ref + 0.8
    assert distinct["k2v2"] >= 0.8 * distinct["fp16"]
