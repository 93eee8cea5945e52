"""`kvarn model ...`: preparing model checkpoints for the engine."""

from __future__ import annotations

from pathlib import Path

import typer

from kvarn_cli.console import console

app = typer.Typer(help="Prepare model checkpoints for the engine.", no_args_is_help=True)


@app.command("import-gguf")
def import_gguf(
    gguf_file: Path = typer.Argument(..., help="A .gguf checkpoint (Llama/Qwen-style architectures)."),
    out_dir: Path = typer.Argument(..., help="Directory to create; pass it to `kvarn run --model`."),
    dtype: str = typer.Option("bfloat16", help="Weight dtype of the saved model: bfloat16, float16 or float32."),
) -> None:
    """Dequantize a GGUF checkpoint into a directory vLLM loads (config, tokenizer with chat template, safetensors).

    Example: kvarn model import-gguf SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2-135m
    """
    from kvarn_cli.errors import InputError
    from kvarn_cli.model_import import import_gguf as do_import

    if dtype not in ("bfloat16", "float16", "float32"):
        raise InputError(f"--dtype must be bfloat16, float16 or float32, got {dtype!r}")
    with console.status(f"importing {gguf_file} ..."):
        out = do_import(gguf_file, out_dir, dtype)
    console.print(f"model saved to [bold]{out}[/]")
