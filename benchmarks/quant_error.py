"""Quantization error of every kvarn quantizer on real post-RoPE Q/K/V of a model (issue 3).

Runs a few texts from the evaluation data through the model with transformers, capturing the
post-RoPE queries, keys and values of every attention layer; cuts each KV head's keys/values
into tiles of G tokens (skipping the first block, which kvarn keeps in full precision as the
attention sink) and measures, per quantizer:
  - attention-output error over a tile: the G tokens *after* the tile (all query heads of the
    KV head's group) attend to the tile's G keys alone; relative error ||O_hat - O|| / ||O||
    per tile (Frobenius) and per query;
  - per-token key-norm error | ||K_hat_t|| - ||K_t|| | / ||K_t||;
  - history attention error, the cache's situation: the last G tokens' queries attend
    causally to the whole text, with the first block (sink) and the last block (tail) exact
    and every block between them quantized; relative error per (text, layer, KV head).

    KVARN_DATA=../shared/data python benchmarks/quant_error.py --model models/smollm2-135m
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kvarn_cli.kernels import make_quantizer  # noqa: E402

# (quantizer name, scale dtype) rows of the table, KVarN first, then the baselines.
METHODS: list[tuple[str, str]] = [
    ("k2v2", "fp8"),
    ("k2v2", "fp16"),
    ("kivi2", "fp8"),
    ("kivi2", "fp16"),
    ("hadamard2", "fp8"),
    ("hadamard2", "fp16"),
    ("k4v2", "fp8"),
    ("k4v4", "fp8"),
    ("kivi4", "fp8"),
    ("fp8", "fp8"),
    ("fp16", "fp8"),
]


def load_texts(data_dir: Path, count: int) -> list[str]:
    """Long texts mixing the evaluation sets' problems and reference solutions."""
    sources = [
        ("math500.jsonl", ("problem", "solution")),
        ("gsm8k_test.jsonl", ("question", "answer")),
        ("humaneval.jsonl", ("prompt", "canonical_solution")),
        ("aime24.jsonl", ("problem", "solution")),
    ]
    texts = []
    for i in range(count):
        name, keys = sources[i % len(sources)]
        path = data_dir / name
        if not path.exists():
            raise SystemExit(f"{path}: not found; set KVARN_DATA to the data directory")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        start = (i // len(sources)) * 40
        texts.append("\n\n".join(f"{r[keys[0]]}\n{r[keys[1]]}" for r in rows[start : start + 40]))
    return texts


@dataclass
class Capture:
    q: list[torch.Tensor]  # per layer [Hq, T, D]
    k: list[torch.Tensor]  # per layer [Hkv, T, D]
    v: list[torch.Tensor]


def capture(model_path: Path, texts: list[str], tokens: int) -> tuple[list[Capture], dict]:
    """Post-RoPE Q/K/V of every layer, rounded to the model's dtype (what the cache sees)."""
    from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    store: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def capturing_attention(module, query, key, value, attention_mask, **kwargs):  # type: ignore[no-untyped-def]
        store[module.layer_idx] = (query[0].detach(), key[0].detach(), value[0].detach())
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("kvarn_capture", capturing_attention)
    tok = AutoTokenizer.from_pretrained(model_path)
    # the checkpoint's own dtype is what a serving engine's KV cache holds
    saved_dtype = AutoConfig.from_pretrained(model_path).dtype
    if isinstance(saved_dtype, str):
        saved_dtype = getattr(torch, saved_dtype.replace("torch.", ""), None)
    cache_dtype = saved_dtype if isinstance(saved_dtype, torch.dtype) and saved_dtype.is_floating_point else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="kvarn_capture")
    model.eval()
    caps = []
    for text in texts:
        ids = tok(text, return_tensors="pt").input_ids[:, :tokens]
        if ids.shape[1] < tokens:
            raise SystemExit(f"a text has only {ids.shape[1]} tokens, need {tokens}")
        store.clear()
        with torch.no_grad():
            model(ids, use_cache=False)
        layers = sorted(store)
        rnd = lambda t: t.to(cache_dtype).to(torch.float32)  # noqa: E731
        caps.append(Capture([rnd(store[i][0]) for i in layers], [rnd(store[i][1]) for i in layers], [rnd(store[i][2]) for i in layers]))
    cfg = model.config
    info = {"layers": cfg.num_hidden_layers, "q_heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim, "cache_dtype": str(cache_dtype).replace("torch.", "")}
    return caps, info


def make_tiles(caps: list[Capture], g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K, V tiles [N, G, D] (tiles 1 .. T/G - 2) and the next tile's queries [N, group*G, D].

    Tiles are ordered by (text, layer, KV head, tile), so each (text, layer, head) owns
    T/G - 2 consecutive tiles (history_error relies on this)."""
    ks, vs, qs = [], [], []
    for cap in caps:
        for q, k, v in zip(cap.q, cap.k, cap.v):
            hq, t, d = q.shape
            hkv = k.shape[0]
            group = hq // hkv
            n_tiles = t // g
            for h in range(hkv):
                for j in range(1, n_tiles - 1):
                    ks.append(k[h, j * g : (j + 1) * g])
                    vs.append(v[h, j * g : (j + 1) * g])
                    qs.append(q[h * group : (h + 1) * group, (j + 1) * g : (j + 2) * g].reshape(group * g, d))
    return torch.stack(ks), torch.stack(vs), torch.stack(qs)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = q @ k.transpose(1, 2) / k.shape[-1] ** 0.5
    return torch.softmax(scores, dim=-1) @ v


@dataclass
class History:
    """Full sequences per (text, layer, KV head) and the exact history attention output."""

    k: torch.Tensor  # [S, T, D]
    v: torch.Tensor
    q: torch.Tensor  # [S, group*G, D], the last G positions of the group's query heads
    mask: torch.Tensor  # [group*G, T] causal mask of those queries
    out: torch.Tensor  # [S, group*G, D]


def make_history(caps: list[Capture], g: int) -> History:
    ks, vs, qs = [], [], []
    for cap in caps:
        for q, k, v in zip(cap.q, cap.k, cap.v):
            hq, t, d = q.shape
            group = hq // k.shape[0]
            for h in range(k.shape[0]):
                ks.append(k[h])
                vs.append(v[h])
                qs.append(q[h * group : (h + 1) * group, t - g :].reshape(group * g, d))
    k, v, q = torch.stack(ks), torch.stack(vs), torch.stack(qs)
    t = k.shape[1]
    query_pos = torch.arange(t - g, t).repeat(q.shape[1] // g)
    mask = torch.arange(t)[None, :] <= query_pos[:, None]
    hist = History(k, v, q, mask, torch.empty(0))
    hist.out = history_attention(hist, k, v)
    return hist


def history_attention(hist: History, k: torch.Tensor, v: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    outs = []
    for i in range(0, k.shape[0], chunk):
        scores = hist.q[i : i + chunk] @ k[i : i + chunk].transpose(1, 2) / k.shape[-1] ** 0.5
        scores = scores.masked_fill(~hist.mask, float("-inf"))
        outs.append(torch.softmax(scores, dim=-1) @ v[i : i + chunk])
    return torch.cat(outs)


def history_error(hist: History, k_hat: torch.Tensor, v_hat: torch.Tensor, g: int) -> torch.Tensor:
    """Relative error per sequence with blocks 1 .. T/G-2 replaced by their quantized tiles."""
    s, t, d = hist.k.shape
    k_mix, v_mix = hist.k.clone(), hist.v.clone()
    k_mix[:, g : t - g] = k_hat.reshape(s, t - 2 * g, d)
    v_mix[:, g : t - g] = v_hat.reshape(s, t - 2 * g, d)
    out_hat = history_attention(hist, k_mix, v_mix)
    return (out_hat - hist.out).flatten(1).norm(dim=1) / hist.out.flatten(1).norm(dim=1)


def quantiles(x: torch.Tensor) -> tuple[float, float, float]:
    x = x.flatten().double()
    if x.numel() > 1_000_000:  # torch.quantile's input limit
        x = x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    return float(x.mean()), float(torch.quantile(x, 0.99)), float(x.max())


def measure(
    name: str, scale_dtype: str, k: torch.Tensor, v: torch.Tensor, q: torch.Tensor, out: torch.Tensor, hist: History
) -> dict:
    g, d = k.shape[1], k.shape[2]
    qz = make_quantizer(name, head_dim=d, block_size=g, scale_dtype=scale_dtype)
    t0 = time.perf_counter()
    k_hat, v_hat = qz.dequantize_batch(qz.quantize_batch(k, v))
    seconds = time.perf_counter() - t0
    out_hat = attention(q, k_hat, v_hat)
    tile_err = (out_hat - out).flatten(1).norm(dim=1) / out.flatten(1).norm(dim=1)
    query_err = (out_hat - out).norm(dim=-1) / out.norm(dim=-1)
    out_k_only = attention(q, k_hat, v)  # the keys' share of the error: exact values
    k_only_err = (out_k_only - out).flatten(1).norm(dim=1) / out.flatten(1).norm(dim=1)
    k_norm = k.norm(dim=-1)
    norm_err = (k_hat.norm(dim=-1) - k_norm).abs() / k_norm
    return {
        "name": name,
        "scales": scale_dtype if qz.layout.scheme in ("kvarn", "rtn") else "-",
        "bits": qz.bits_per_element,
        "tile": quantiles(tile_err),
        "k_only": quantiles(k_only_err),
        "query": quantiles(query_err),
        "knorm": quantiles(norm_err),
        "history": quantiles(history_error(hist, k_hat, v_hat, g)),
        "seconds": seconds,
    }


def varn_clamp_report(k: torch.Tensor, v: torch.Tensor) -> str:
    """How often VarN's -0.3 log-scale floor binds on these tiles (KVARN_METHOD.md step 2)."""
    import math

    from kvarn_cli.kernels.hadamard import hadamard_matrix
    from kvarn_cli.kernels.varn import varn_scales

    h = hadamard_matrix(k.shape[-1])
    floor = math.exp(-0.3) * (1 + 1e-4)
    parts = []
    for label, x, col, row in (("K", (k @ h).transpose(1, 2), "token", "channel"), ("V", v @ h, "channel", "token")):
        sc, sr = varn_scales(x)
        parts.append(f"{label}: {100 * float((sc <= floor).float().mean()):.1f}% of {col} scales and "
                     f"{100 * float((sr <= floor).float().mean()):.1f}% of {row} scales at the floor, "
                     f"median |x| {float(x.abs().median()):.3f}")
        del sc, sr
    return "VarN clamp: " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path(os.environ.get("KVARN_TEST_MODEL", REPO / "models/smollm2-135m")))
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("KVARN_DATA", REPO.parent / "shared/data")))
    parser.add_argument("--texts", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--block-size", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not (args.model / "config.json").exists():
        raise SystemExit(f"{args.model}: no model there (config.json missing)")
    torch.set_num_threads(args.threads)
    texts = load_texts(args.data, args.texts)
    caps, info = capture(args.model, texts, args.tokens)
    print(f"model {args.model.name}: {info}; {len(texts)} texts x {args.tokens} tokens; "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {datetime.date.today()}")
    for g in args.block_size:
        k, v, q = make_tiles(caps, g)
        out = attention(q, k, v)
        hist = make_history(caps, g)
        print(f"\n### G = {g}: {k.shape[0]} tiles (texts x layers x KV heads x tiles 1..T/G-2), "
              f"{q.shape[0] * q.shape[1]} queries, {k.shape[0] * g} key tokens\n")
        print(varn_clamp_report(k, v) + "\n")
        print("| method | scales | bits/elem | tile attn err mean | p99 | max | K-only tile attn err mean | p99 | max "
              "| per-query p99 | key-norm err mean | p99 | max | history attn err mean | p99 | max |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, sdt in METHODS:
            r = measure(name, sdt, k, v, q, out, hist)
            t, ko, qe, kn, hi = r["tile"], r["k_only"], r["query"], r["knorm"], r["history"]
            print(f"| {r['name']} | {r['scales']} | {r['bits']:.3f} | {t[0]:.4f} | {t[1]:.4f} | {t[2]:.4f} | "
                  f"{ko[0]:.4f} | {ko[1]:.4f} | {ko[2]:.4f} | {qe[1]:.4f} | {kn[0]:.4f} | {kn[1]:.4f} | {kn[2]:.4f} | "
                  f"{hi[0]:.4f} | {hi[1]:.4f} | {hi[2]:.4f} |", flush=True)


if __name__ == "__main__":
    main()
