"""`kvarn merge`: one run directory from the shards of a sharded (e.g. Slurm array) run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from kvarn_cli.console import console


def merge(
    shard_dirs: list[Path] = typer.Argument(..., help="The shard run directories (all N of them)."),
    out: Path = typer.Option(..., "--out", "-o", help="Merged run directory to create."),
    input: Optional[Path] = typer.Option(None, "--input", help="The job file, if it moved since the shards ran (its sha256 must match)."),
) -> None:
    """Merge shard runs into one: checks they belong together, with no gaps and no duplicates.

    Example: kvarn merge runs/r1-shard-* --out runs/r1
    """
    from kvarn_cli.merge import merge_runs

    summary = merge_runs(list(shard_dirs), out, input)
    console.print(f"merged {summary['shards']} shards into [bold]{out}[/]: {summary['records']} records, {summary['skipped']} skipped")
