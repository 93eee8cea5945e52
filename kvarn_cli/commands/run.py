"""`kvarn run`: generate completions for a job file on the embedded vLLM engine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer


def run(
    input: Path = typer.Argument(..., help="Job file: JSONL, one object a line with 'id' and 'prompt' or 'messages'."),
    model: str = typer.Option(..., "--model", "-m", help="Hugging Face hub id or local model directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory. If it holds an earlier attempt of the same run, the run resumes."),
    preset: Optional[str] = typer.Option(None, "--preset", help="KV cache preset: fp16 (vLLM's own cache), k2v2, k4v2, k4v4 (KVarN records, K/V bits, 128-token tiles), or their -g64 forms (64-token tiles: half the 16-bit sink/tail memory per sequence, for short sequences and small models). Default fp16."),
    bits: Optional[int] = typer.Option(None, "--bits", help="Shorthand for the preset: 2 = k2v2, 4 = k4v4, 16 = fp16."),
    max_tokens: int = typer.Option(4096, "--max-tokens", help="Most tokens to generate per completion."),
    temperature: float = typer.Option(0.6, "--temperature", help="Sampling temperature; 0 is greedy."),
    top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling probability mass."),
    n: int = typer.Option(1, "--n", help="Completions per record (for pass@k and majority vote)."),
    seed: int = typer.Option(0, "--seed", help="Base seed; each record's seed derives from it and the record id, so results do not depend on batching or resumes."),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", help="Context length (prompt + completion); default: the model's."),
    kv_cache_memory: Optional[str] = typer.Option(None, "--kv-cache-memory", help="Size of vLLM's paged KV cache, e.g. 4GiB (quantized presets add a 16-bit sink/tail pool on top; `kvarn plan` shows both). Default: 2GiB on CPU, vLLM's GPU memory sizing on GPUs."),
    max_num_seqs: Optional[int] = typer.Option(None, "--max-num-seqs", help="Most sequences in flight at once. Default: 32 for quantized presets (each holds 2 blocks of 16-bit sink/tail staging), vLLM's default for fp16. On a GPU use 1, 2, 4 or a multiple of 8: vLLM captures decode CUDA graphs for those batch sizes and pads other batches up to the next (KVARN_DECODE_GRAPHS=0 turns the graphs off for quantized presets)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Run only slice I of N (I/N, round-robin over input lines). Default: from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT when set."),
    on_error: str = typer.Option("fail", "--on-error", help="fail: stop before generating if any record is bad. skip: run the good ones, list the bad in DIR/skipped.jsonl, exit 3."),
    shadow_check: int = typer.Option(0, "--shadow-check", help="Before the run, measure the preset's next-token KL and top-1 agreement against a 16-bit cache on N random records (transformers; see `kvarn analyze`). Written to DIR/shadow_check.json and shown with the run's stats."),
    enforce_eager: Optional[bool] = typer.Option(None, "--enforce-eager/--no-enforce-eager", help="Run the model eagerly (no torch.compile / CUDA graphs). Default: eager on CPU, compiled on GPU."),
) -> None:
    """Generate completions for every record of INPUT and write DIR/outputs.jsonl and DIR/stats.json.

    Example: kvarn run prompts.jsonl --model Qwen/Qwen3-4B --out runs/r1 --max-tokens 8192

    Exit codes: 0 done; 2 bad input; 3 done but some records skipped; 75 interrupted (re-run to resume).
    """
    from kvarn_cli import kvcache
    from kvarn_cli.errors import InputError
    from kvarn_cli.jobs import parse_shard
    from kvarn_cli.runner import RunRequest, Sampling, execute
    from kvarn_cli.sizes import parse_size

    if bits is not None and bits not in kvcache.BITS_TO_PRESET:
        raise InputError(f"--bits {bits} is not available; choose one of {sorted(kvcache.BITS_TO_PRESET)}")
    from_bits = kvcache.BITS_TO_PRESET[bits] if bits is not None else None
    if preset is not None and from_bits is not None and preset != from_bits:
        raise InputError(f"--bits {bits} means preset {from_bits!r}, which contradicts --preset {preset!r}")
    chosen = kvcache.check_preset(preset or from_bits or "fp16")
    if on_error not in ("fail", "skip"):
        raise InputError(f"--on-error must be 'fail' or 'skip', got {on_error!r}")
    for name, value, low in (("--max-tokens", max_tokens, 1), ("--n", n, 1), ("--shadow-check", shadow_check, 0)):
        if value < low:
            raise InputError(f"{name} must be at least {low}, got {value}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise InputError("--temperature must be >= 0 and --top-p in (0, 1]")
    shard_spec = shard
    if shard_spec is None and os.environ.get("SLURM_ARRAY_TASK_COUNT") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        env = os.environ
        base = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        shard_spec = f"{int(env['SLURM_ARRAY_TASK_ID']) - base}/{env['SLURM_ARRAY_TASK_COUNT']}"
    req = RunRequest(
        input=input,
        out=out,
        model=model,
        preset=chosen,
        sampling=Sampling(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed),
        max_model_len=max_model_len,
        kv_cache_memory_bytes=parse_size(kv_cache_memory, "--kv-cache-memory") if kv_cache_memory else None,
        max_num_seqs=max_num_seqs,
        shard=parse_shard(shard_spec) if shard_spec else None,
        on_error=on_error,
        enforce_eager=enforce_eager,
        shadow_check=shadow_check,
    )
    code = execute(req)
    raise typer.Exit(code)
