"""`kvarn analyze`: measure what each KV-cache method costs in accuracy on your model and data."""

from __future__ import annotations

import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from kvarn_cli.errors import InputError

DEFAULT_METHODS = "fp16,fp8,kivi2,hadamard2,k2v2,k4v2,k4v4"
BLOCK_SIZES = (64, 128)


def _parse_methods(methods: str) -> list[str]:
    from kvarn_cli.analyze.core import known_methods

    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise InputError("--methods is empty; expected a comma-separated list such as " + DEFAULT_METHODS)
    known = known_methods()
    unknown = [m for m in names if m not in known]
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(unknown)} in --methods; expected some of: {', '.join(known)}")
    return list(dict.fromkeys(names))


def analyze(
    model: str = typer.Option(..., "--model", help="Hub id or local directory of a Llama/Qwen-style causal LM."),
    text: Optional[Path] = typer.Option(None, "--text", help="A UTF-8 text file to analyze (one text)."),
    jobs: Optional[Path] = typer.Option(
        None, "--jobs",
        help="A JSONL job file (or a finished run's outputs.jsonl, or a dataset file): consecutive records "
        "(prompt through the chat template + completions[0]/solution/answer) are concatenated into long texts.",
    ),
    methods: str = typer.Option(DEFAULT_METHODS, "--methods", help="Comma-separated KV-cache methods to measure."),
    out: Path = typer.Option(..., "--out", help="Output directory for analysis.json and the PNG plots."),
    max_tokens: int = typer.Option(4096, "--max-tokens", min=1, help="Tokens per text."),
    block: int = typer.Option(128, "--block", help="Tile / cache block size G (64 or 128)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16."),
    num_texts: int = typer.Option(1, "--num-texts", min=1, help="With --jobs: how many texts to build and pool."),
) -> None:
    """Measure each method's error against the 16-bit cache, static and accumulated (pseudo-decode).

    Writes OUT/analysis.json, OUT/error_vs_position.png, OUT/kl_by_method.png, OUT/kl_vs_position.png.
    """
    if (text is None) == (jobs is None):
        raise InputError("give exactly one of --text FILE or --jobs FILE.jsonl")
    source = text if text is not None else jobs
    assert source is not None
    if not source.is_file():
        raise InputError("no such file", str(source))
    if block not in BLOCK_SIZES:
        raise InputError(f"--block {block} is not supported; expected one of {', '.join(map(str, BLOCK_SIZES))}")
    method_names = _parse_methods(methods)

    import torch

    from rich.console import Console

    from kvarn_cli.analyze import core, report, texts
    from kvarn_cli.console import console, err_console

    dev = core.resolve_device(device)
    torch_dtype = core.resolve_dtype(dtype, dev)
    err_console.print(f"loading {model} on {dev} ({str(torch_dtype).removeprefix('torch.')})")
    hf_model, tokenizer = core.load_model(model, dev, torch_dtype)
    if text is not None:
        token_texts = texts.texts_from_file(tokenizer, text, max_tokens)
    else:
        assert jobs is not None
        token_texts = texts.texts_from_jobs(tokenizer, jobs, max_tokens, num_texts)
    usable = [t for t in token_texts if len(t.ids) > 2 * block]
    if not usable:
        longest = max(len(t.ids) for t in token_texts)
        raise InputError(
            f"the longest text has {longest} tokens; analyze needs more than 2 x --block = {2 * block} "
            "(the first block stays 16-bit and only later blocks read a quantized one)",
            str(source),
        )
    total = sum(len(t.ids) for t in usable)
    err_console.print(
        f"{len(usable)} text(s), {total} tokens; {len(method_names)} methods x 2 modes, block {block}"
    )

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("blocks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task("blocks", total=None)
        result = core.analyze_token_texts(
            hf_model, [t.ids for t in usable], method_names, block=block,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    import transformers

    analysis = {
        "metadata": {
            "command": "kvarn " + shlex.join(sys.argv[1:]),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": model,
            "device": str(dev),
            "dtype": str(torch_dtype).removeprefix("torch."),
            "block": block,
            "bin_size": result["bin_size"],
            "first_scored_position": result["first_scored_position"],
            "num_texts": len(usable),
            "total_tokens": total,
            "texts": [{"source": t.source, "tokens": len(t.ids)} for t in usable],
            "methods": method_names,
            "modes": ["static", "accumulated"],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "definitions": {
                "reference": "same model and tokens, 16-bit cache (float32 models: K/V rounded to fp16), "
                "fed in the same blocks",
                "accumulated": "pseudo-decode: each full block's own K/V is quantized after the block and "
                "written back; later blocks attend to it",
                "static": "each full block's quantized K/V is the quantization of the reference's K/V; "
                "queries and the current block come from the run itself",
                "sink": "block 0 stays 16-bit; the current block is unquantized",
                "scored_positions": "KL, top-1, NLL and attn_mae_mean use positions >= first_scored_position "
                "(= 2 x block), the ones that can see a quantized block",
                "attn_mae": "mean |a - a_ref| of each layer's attention output (input of o_proj, heads "
                "concatenated), averaged over channels, then layers and positions",
                "kl": "KL(p_ref || p) of the next-token distribution, natural log",
                "key_norm_rel_error": "(||K^_t|| - ||K_t||) / ||K_t|| per layer, KV head and quantized token, "
                "K_t = quantizer input",
            },
        },
        "bits_per_element": result["bits_per_element"],
        "position_bins": result["position_bins"],
        "methods": result["methods"],
    }
    out.mkdir(parents=True, exist_ok=True)
    json_path = report.write_json(out, analysis)
    plots = report.write_plots(out, analysis)
    # Piped output (logs, CI) would be cut to 80 columns; give it room for every column.
    table_console = console if console.is_terminal else Console(width=132)
    table_console.print(report.summary_table(analysis))
    console.print(f"wrote {json_path} and {', '.join(p.name for p in plots)}")
