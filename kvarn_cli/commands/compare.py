"""`kvarn compare DIR_A DIR_B ...`: runs side by side, and the problems whose verdict differs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from kvarn_cli.console import console, err_console

#: Differing problems listed in the table; --json lists all of them.
MAX_LISTED = 40


def compare(
    run_dirs: List[Path] = typer.Argument(..., help="Two or more run directories written by `kvarn run --out`."),
    json_output: bool = typer.Option(False, "--json", help="Print the comparison as JSON (for scripts) instead of tables."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="For runs not scored yet: checks to run at once."),
    timeout: float = typer.Option(10.0, "--timeout", min=0.1, help="For runs not scored yet: seconds per HumanEval completion."),
) -> None:
    """Compare runs: accuracy, generated tokens, tokens/s, KV cache capacity and peak usage, and the problems whose verdict differs.

    Runs without an up-to-date scores.json are scored first, as `kvarn score` would.

    Example: kvarn compare runs/fp16 runs/kvarn2
    """
    from kvarn_cli.scoring.compare_runs import compare_runs
    from kvarn_cli.scoring.report import progress_bar
    from kvarn_cli.scoring.score_run import ScoreOptions

    options = ScoreOptions(workers=workers, code_timeout_s=timeout)
    with progress_bar(err_console, "scoring") as (set_total, advance):
        hooks = {"progress": advance, "on_total": set_total, "warn": _warn}
        result = compare_runs(run_dirs, options, hooks)
    if json_output:
        sys.stdout.write(json.dumps(result, indent=1) + "\n")
        return
    _print_tables(result)


def _warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False)


def _print_tables(result: dict[str, Any]) -> None:
    from rich.table import Table

    from kvarn_cli.scoring.report import count, pct

    runs = result["runs"]
    names = [Path(run["run_dir"]).name or run["run_dir"] for run in runs]
    if len(set(names)) < len(names):
        names = [run["run_dir"] for run in runs]

    table = Table(title="kvarn compare", title_justify="left")
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")

    def row(label: str, values: list[str]) -> None:
        table.add_row(label, *values)

    row("model", [str(run["model"] or "-") for run in runs])
    row("preset", [str(run["preset"] or "-") for run in runs])
    row("records (scored)", [f"{count(run['records'])} ({count(run['scored'])})" for run in runs])
    row("pass@1 (accuracy)", [pct(run["pass@1"]) for run in runs])
    tasks = sorted({task for run in runs for task in run["by_task"]})
    if len(tasks) > 1:
        for task in tasks:
            row(f"  {task}", [pct(run["by_task"].get(task)) for run in runs])
    if any(run["maj@k"] is not None and run["k"] > 1 for run in runs):
        row("maj@k", ["-" if run["maj@k"] is None else f"{pct(run['maj@k'])} (k={run['k']})" for run in runs])
    row("generated tokens", [count(run["generated_tokens"]) for run in runs])
    row("generated tokens/s", [count(run["generated_tokens_per_s"]) for run in runs])
    row("KV capacity (tokens)", [count(run["kv_capacity_tokens"]) for run in runs])
    row("KV bytes/token", [count(run["kv_bytes_per_token"]) for run in runs])
    row("peak KV usage", [pct(run["peak_kv_usage"]) for run in runs])
    console.print(table)
    for name, run in zip(names, runs):
        if not run["has_stats"]:
            err_console.print(f"[yellow]note:[/] {name} has no stats.json: speed and KV cache figures are missing")
        if run["records_not_in_all_runs"]:
            err_console.print(f"[yellow]note:[/] {name}: {run['records_not_in_all_runs']} problem(s) not in every run, not compared")

    differing = result["differing"]
    if not differing:
        console.print("No problem has a different verdict between these runs.")
        return
    console.print(f"{len(differing)} problem(s) with different verdicts:")
    listed = Table()
    listed.add_column("id")
    listed.add_column("task")
    for name in names:
        listed.add_column(name, justify="right")
    for item in differing[:MAX_LISTED]:
        listed.add_row(str(item["id"]), str(item["task"] or "-"), *[_verdict_text(v) for v in item["verdicts"]])
    console.print(listed)
    if len(differing) > MAX_LISTED:
        console.print(f"... and {len(differing) - MAX_LISTED} more (all of them with --json)")


def _verdict_text(verdict: dict[str, int] | None) -> str:
    if verdict is None:
        return "not scored"
    if verdict["completions"] == 1:
        return "[green]correct[/]" if verdict["correct"] else "[red]wrong[/]"
    return f"{verdict['correct']}/{verdict['completions']}"
