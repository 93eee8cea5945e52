"""`kvarn jobs ...`: making job files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from kvarn_cli.console import console

app = typer.Typer(help="Make job files (JSONL prompts) for `kvarn run`.", no_args_is_help=True)


@app.command("from-dataset")
def from_dataset(
    name: str = typer.Argument(..., help="math500, aime24, gsm8k or humaneval."),
    source: str = typer.Option(..., "--source", help="A JSONL file or a directory holding the standard file (math500.jsonl, aime24.jsonl, gsm8k_test.jsonl, humaneval.jsonl), or 'hf' to download from the Hugging Face hub."),
    out: Path = typer.Option(..., "--out", help="Job file to write (JSONL)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Keep only this many records."),
    seed: Optional[int] = typer.Option(None, "--seed", help="With --limit: sample records at random with this seed (kept in dataset order) instead of taking the first ones."),
) -> None:
    """Write a job file for a standard benchmark, with `task` and `answer` set for `kvarn score`.

    Example: kvarn jobs from-dataset math500 --source ../shared/data --limit 50 --seed 0 --out jobs/math50.jsonl
    """
    import orjson

    from kvarn_cli.datasets import build_jobs

    jobs = build_jobs(name, source, limit, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as fh:
        for job in jobs:
            fh.write(orjson.dumps(job) + b"\n")
    tmp.replace(out)
    console.print(f"wrote {len(jobs)} {name} jobs to [bold]{out}[/]")
