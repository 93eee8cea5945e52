"""Load a model, run every method over every text, pool the numbers; and the shadow check."""

from __future__ import annotations

from typing import Any, Callable

import torch

from kvarn_cli.analyze import capture
from kvarn_cli.analyze.metrics import TextMetrics, choose_bin_size, summarize
from kvarn_cli.analyze.modes import MODES, QuantizerFactory, pseudo_decode
from kvarn_cli.errors import InputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise InputError(f"unknown device {device!r}; expected cpu, cuda or auto")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """float32 on CPU (fast there, and the cleanest reference), bf16 on CUDA, unless told."""
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; expected auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(name: str, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """(model, tokenizer) from a hub id or a local directory, eval mode, on device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot load model {name!r} with transformers: {first}") from None
    model.to(device).eval()
    return model, tokenizer


def head_dim_of(model: Any) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head_dim = getattr(config, "head_dim", None)
    return int(head_dim or config.hidden_size // config.num_attention_heads)


def default_factory() -> QuantizerFactory:
    from kvarn_cli.kernels import make_quantizer

    return make_quantizer


def known_methods() -> tuple[str, ...]:
    from kvarn_cli.kernels import QUANTIZER_NAMES

    return tuple(QUANTIZER_NAMES)


def analyze_token_texts(
    model: Any,
    texts: list[list[int]],
    methods: list[str],
    *,
    block: int,
    modes: tuple[str, ...] = MODES,
    factory: QuantizerFactory | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Every method in every mode over every text, pooled.

    Returns {"methods": {name: {mode: summary}}, "bin_size", "position_bins",
    "first_scored_position", "bits_per_element": {name: float}}; progress, if given, is
    called with (blocks_done, blocks_total) over all texts, after each block.
    """
    make = factory or default_factory()
    head_dim = head_dim_of(model)
    quantizers = {m: make(m, head_dim=head_dim, block_size=block) for m in methods}
    max_len = max(len(t) for t in texts)
    bin_size = choose_bin_size(max_len, block)
    num_bins = (max_len + bin_size - 1) // bin_size
    first_scored = 2 * block
    per_track: dict[tuple[str, str], list[TextMetrics]] = {}
    blocks_total = sum(-(-len(ids) // block) for ids in texts)
    blocks_done = 0

    def on_block() -> None:
        nonlocal blocks_done
        blocks_done += 1
        if progress is not None:
            progress(blocks_done, blocks_total)

    recorder = capture.AttentionRecorder(model)
    try:
        for ids in texts:
            result = pseudo_decode(model, torch.tensor(ids), quantizers, block=block, modes=modes,
                                   recorder=recorder, on_block=on_block)
            for key, metrics in result.items():
                per_track.setdefault(key, []).append(metrics)
    finally:
        recorder.close()
    out: dict[str, Any] = {
        "methods": {
            m: {mode: summarize(per_track[(m, mode)], first_scored=first_scored, bin_size=bin_size,
                                num_bins=num_bins) for mode in modes}
            for m in methods
        },
        "bin_size": bin_size,
        "position_bins": [[b * bin_size, min((b + 1) * bin_size, max_len)] for b in range(num_bins)],
        "first_scored_position": first_scored,
        "bits_per_element": {
            m: float(q.bits_per_element) if hasattr(q, "bits_per_element") else None
            for m, q in quantizers.items()
        },
    }
    return out


def shadow_check(
    model: str,
    texts: list[str],
    preset: str,
    *,
    block: int = 128,
    device: str = "auto",
    max_tokens: int = 2048,
    continue_tokens: int = 0,
) -> dict[str, Any]:
    """Expected fidelity of `preset` against the 16-bit cache on a few job texts, accumulated mode.

    Texts are tokenized as given (pass the chat-rendered prompt plus a completion where there is
    one). Only positions at or after 2*block can see a quantized block, so short prompts score
    nothing; continue_tokens > 0 first extends each text greedily with the 16-bit model by exactly
    that many tokens (EOS suppressed: a short chat answer would otherwise end before any
    position reads quantized history), the pseudo-decode of the model's own continuation. Returns
    {"preset", "kl_mean", "kl_p99", "top1_agreement", "scored_positions", "texts", "tokens",
    "tokens_per_text", "block"}; kl/top1 are None when no position was scored.
    """
    if preset not in known_methods():
        raise InputError(f"unknown preset {preset!r} for the shadow check; expected one of: {', '.join(known_methods())}")
    dev = resolve_device(device)
    hf_model, tokenizer = load_model(model, dev, resolve_dtype("auto", dev))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    token_texts: list[list[int]] = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True, return_tensors="pt")["input_ids"][:, :max_tokens]
        if continue_tokens > 0 and ids.shape[1] < max_tokens:
            with torch.inference_mode():
                new = min(continue_tokens, max_tokens - ids.shape[1])
                ids = hf_model.generate(
                    ids.to(dev), max_new_tokens=new, min_new_tokens=new,
                    do_sample=False, pad_token_id=pad_id,
                ).cpu()
        token_texts.append(ids[0].tolist())
    if not token_texts:
        raise InputError("shadow check needs at least one text")
    result = analyze_token_texts(hf_model, token_texts, [preset], block=block, modes=("accumulated",))
    summary = result["methods"][preset]["accumulated"]
    return {
        "preset": preset,
        "kl_mean": summary["kl_mean"],
        "kl_p99": summary["kl_p99"],
        "top1_agreement": summary["top1_agreement"],
        "scored_positions": summary["scored_positions"],
        "texts": len(token_texts),
        "tokens": sum(len(t) for t in token_texts),
        "tokens_per_text": [len(t) for t in token_texts],
        "block": block,
    }
