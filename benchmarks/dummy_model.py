"""Write a model directory with a chosen Llama shape and no weights, for vLLM's dummy loader.

    python benchmarks/dummy_model.py /tmp/models/qwen3-4b-shape --like /tmp/models/smollm2-135m
    python benchmarks/e2e_gpu.py --model /tmp/models/qwen3-4b-shape --load-format dummy ...

Why: on SmolLM2-135M the H100's decode step is bound by vLLM's host work per request
(docs/BENCHMARKS.md runs 33-35), so a cache that fits more sequences cannot show what it buys.
A model whose GPU work outweighs the host's can, and its speed does not depend on trained
weights: vLLM's `load_format="dummy"` fills the weights with random values. Nothing is
downloaded; the tokenizer comes from the `--like` directory. The default shape is Qwen3-4B's
attention (36 layers, 32 query heads, 8 KV heads, head_dim 128, hidden 2560, MLP 9728) on
the Llama architecture, which vLLM and kvarn already run.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

#: files of the `--like` directory a model directory needs besides config.json
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
                   "special_tokens_map.json")


def write_model(out: Path, like: Path, layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int,
                intermediate: int) -> dict:
    """config.json for the shape (the rest of the config from `like`), plus its tokenizer files."""
    config = json.loads((like / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise SystemExit(f"{like}: expected a Llama config to copy, got model_type {config.get('model_type')!r}")
    if heads % kv_heads:
        raise SystemExit(f"--heads {heads} must be a multiple of --kv-heads {kv_heads}")
    config.update(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, head_dim=head_dim, intermediate_size=intermediate,
                  tie_word_embeddings=True, _model_name_or_path=f"dummy llama {layers}x{hidden} (kvarn benchmarks)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        if (like / name).exists():
            shutil.copy(like / name, out / name)
    return config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--like", type=Path, required=True, help="a Llama model directory: its config and tokenizer")
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--hidden", type=int, default=2560)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--intermediate", type=int, default=9728)
    args = ap.parse_args()
    config = write_model(args.out, args.like, args.layers, args.hidden, args.heads, args.kv_heads, args.head_dim,
                         args.intermediate)
    params = config["vocab_size"] * args.hidden + args.layers * (
        args.hidden * args.head_dim * (args.heads + 2 * args.kv_heads) + args.heads * args.head_dim * args.hidden
        + 3 * args.hidden * args.intermediate)
    print(f"{args.out}: {args.layers} layers, {args.heads}/{args.kv_heads} heads of {args.head_dim}, "
          f"~{params / 1e9:.2f}B parameters; load it with load_format='dummy'")


if __name__ == "__main__":
    main()
