"""Rich tables and a progress bar for `kvarn score` and `kvarn compare`."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.table import Table


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}%"


def count(value: int | float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def _k_columns(groups: list[dict[str, Any]]) -> list[str]:
    ks = {int(k) for group in groups for k in group.get("pass@k", {}) if k != "1"}
    return [str(k) for k in sorted(ks)]


def score_table(summary: dict[str, Any], title: str) -> Table:
    """Per task and overall: records, samples (completions), pass@1, pass@k, maj@k, not scored (with
    the reasons in the caption)."""
    rows = list(summary["by_task"].items()) + [("overall", summary["overall"])]
    ks = _k_columns([group for _task, group in rows])
    sample_counts = {group["k"] for _task, group in rows if group["maj@k"] is not None}
    show_maj = any(k > 1 for k in sample_counts)  # with one sample per problem, maj@1 = pass@1
    maj_header = f"maj@{sample_counts.pop()}" if len(sample_counts) == 1 else "maj@k"
    reasons = summary["overall"]["not_scored_reasons"]
    caption = "not scored: " + ", ".join(f"{reason} ({n})" for reason, n in reasons.items()) if reasons else None
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    table.add_column("task", no_wrap=True)
    table.add_column("records", justify="right")
    table.add_column("samples", justify="right")
    table.add_column("pass@1", justify="right")
    for k in ks:
        table.add_column(f"pass@{k}", justify="right")
    if show_maj:
        table.add_column(maj_header, justify="right")
    table.add_column("not scored", justify="right")
    last_task = list(summary["by_task"])[-1] if summary["by_task"] else None
    for name, group in rows:
        maj = group["maj@k"]
        maj_text = pct(maj) if maj_header != "maj@k" or maj is None else f"{pct(maj)} (k={group['k']})"
        table.add_row(
            "[bold]overall[/]" if name == "overall" else ("(no task)" if name == "none" else name),
            count(group["records"]),
            count(group["completions"]),
            pct(group["pass@1"]),
            *[pct(group["pass@k"].get(k)) for k in ks],
            *([maj_text] if show_maj else []),
            count(group["not_scored"]),
            end_section=name == last_task,
        )
    return table


def sandbox_note(layers: dict[str, Any] | None) -> str | None:
    """A warning line when HumanEval ran with fewer OS-level sandbox layers than possible."""
    if not layers:
        return None
    missing = [name for name in ("landlock_abi", "seccomp") if not layers.get(name)]
    if not missing:
        return None
    return (
        "note: HumanEval code ran without "
        + " and ".join("Landlock" if m == "landlock_abi" else "seccomp" for m in missing)
        + " on this kernel; the Python-level guard and resource limits were on."
    )


@contextmanager
def progress_bar(console: Console, label: str) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """(set_total, advance) callbacks driving a rich progress bar when the console is a
    terminal, and doing nothing otherwise (logs and cron mails stay clean)."""
    if not console.is_terminal:
        yield (lambda _n: None), (lambda _n: None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task_id = progress.add_task(label, total=None)
        yield (lambda n: progress.update(task_id, total=n)), (lambda n: progress.advance(task_id, n))


def run_label(run_dir: Path) -> str:
    return run_dir.name or str(run_dir)
