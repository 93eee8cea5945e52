"""`kvarn score DIR`: check the answers of a run and write DIR/scores.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from kvarn_cli.console import console, err_console


def score(
    run_dir: Path = typer.Argument(..., help="A run directory written by `kvarn run --out DIR`."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON (for scripts) instead of a table."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Checks to run at once (default: one per CPU core)."),
    timeout: float = typer.Option(10.0, "--timeout", min=0.1, help="Wall-clock seconds allowed to each HumanEval completion's tests."),
) -> None:
    """Check every completion against its record's answer and write DIR/scores.json.

    Math tasks (math, aime, gsm8k) compare the final answer (the last \\boxed{}, or for GSM8K the last number) with math-verify; humaneval runs the code with the record's tests in a sandbox. Reports pass@1, unbiased pass@k and majority-vote accuracy per task; records without a task or an answer are counted as not scored.

    Example: kvarn score runs/r1 --workers 8
    """
    from kvarn_cli.scoring.report import progress_bar, run_label, sandbox_note, score_table
    from kvarn_cli.scoring.run_files import SCORES, require_run_dir
    from kvarn_cli.scoring.score_run import ScoreOptions, score_run

    require_run_dir(run_dir)
    options = ScoreOptions(workers=workers, code_timeout_s=timeout)
    with progress_bar(err_console, f"scoring {run_label(run_dir)}") as (set_total, advance):
        scores = score_run(run_dir, options, progress=advance, on_total=set_total, warn=_warn)
    if json_output:
        payload = {"run_dir": str(run_dir), "scores": str(run_dir / SCORES), "summary": scores["summary"], "scoring": scores["scoring"]}
        sys.stdout.write(json.dumps(payload, indent=1) + "\n")
        return
    console.print(score_table(scores["summary"], f"kvarn score {run_dir}"))
    note = sandbox_note(scores["scoring"]["sandbox_layers"])
    if note:
        err_console.print(f"[yellow]{note}[/]")
    console.print(f"per-record verdicts: [bold]{run_dir / SCORES}[/]")


def _warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False)
