"""Comparing runs: accuracy, tokens, speed and KV cache side by side, and differing verdicts.

Each run's verdicts come from its scores.json; a run without one, or whose outputs.jsonl is newer
than its scores.json (a resumed run), is scored first. Speed and KV cache figures come from
stats.json as `kvarn run` measured them; where a run has no stats.json they are shown as missing,
except generated tokens, which outputs.jsonl also records per completion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from kvarn_cli.errors import InputError
from kvarn_cli.scoring.run_files import OUTPUTS, RUN, SCORES, STATS, read_json_file, read_outputs, require_run_dir
from kvarn_cli.scoring.score_run import ScoreOptions, score_run


def load_scores(run_dir: Path, options: ScoreOptions, score_hooks: dict[str, Callable[..., Any]] | None = None) -> tuple[dict[str, Any], bool]:
    """The run's scores and whether they were computed now (missing or stale scores.json)."""
    outputs = require_run_dir(run_dir)
    path = run_dir / SCORES
    scores = read_json_file(path)
    if scores is not None and path.stat().st_mtime >= outputs.stat().st_mtime:
        if not isinstance(scores.get("summary"), dict) or not isinstance(scores.get("records"), list):
            raise InputError("not a scores file written by `kvarn score` (no summary/records)", str(path))
        return scores, False
    return score_run(run_dir, options, **(score_hooks or {})), True


def _generated_tokens_from_outputs(run_dir: Path) -> int | None:
    total = 0
    for record in read_outputs(run_dir).records:
        counts = record.get("num_completion_tokens")
        if not isinstance(counts, list) or not all(isinstance(n, int) for n in counts):
            return None
        total += sum(counts)
    return total


def _get(data: dict[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def run_summary(run_dir: Path, scores: dict[str, Any]) -> dict[str, Any]:
    """One run's row of the comparison."""
    stats = read_json_file(run_dir / STATS)
    run = read_json_file(run_dir / RUN)
    generated = _get(stats, "throughput", "generated_tokens")
    generated_source = "stats.json"
    if generated is None:
        generated = _generated_tokens_from_outputs(run_dir)
        generated_source = OUTPUTS if generated is not None else None
    overall = scores["summary"]["overall"]
    return {
        "run_dir": str(run_dir),
        "model": _get(run, "model") or _get(stats, "engine", "model"),
        "preset": _get(run, "preset") or _get(stats, "kv_cache", "preset"),
        "records": overall["records"],
        "scored": overall["scored"],
        "pass@1": overall["pass@1"],
        "maj@k": overall["maj@k"],
        "k": overall["k"],
        "by_task": {task: group["pass@1"] for task, group in scores["summary"]["by_task"].items()},
        "generated_tokens": generated,
        "generated_tokens_source": generated_source,
        "generated_tokens_per_s": _get(stats, "throughput", "generated_tokens_per_s"),
        "wall_s": _get(stats, "throughput", "wall_s"),
        "kv_capacity_tokens": _get(stats, "kv_cache", "capacity_tokens"),
        "kv_bytes_per_token": _get(stats, "kv_cache", "bytes_per_token"),
        "kv_cache_memory_bytes": _get(stats, "kv_cache", "kv_cache_memory_bytes"),
        "peak_kv_usage": _get(stats, "peak_kv_usage"),
        "has_stats": stats is not None,
    }


def differing_verdicts(all_scores: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    """Problems present in every run whose verdict differs between runs, and, per run, how many
    of its problems are missing from at least one other run.

    A verdict is the list of per-completion results; two runs differ on a problem when their
    fractions of correct completions differ, or when one scored it and the other did not."""
    per_run = [{entry["id"]: entry for entry in scores["records"]} for scores in all_scores]
    common = set(per_run[0]).intersection(*per_run[1:]) if per_run else set()
    differing: list[dict[str, Any]] = []
    for record_id in [entry["id"] for entry in all_scores[0]["records"]]:
        if record_id not in common:
            continue
        entries = [run[record_id] for run in per_run]
        verdicts = [
            None if not e.get("scored") else (sum(e["correct"]), len(e["correct"])) for e in entries
        ]
        fractions = {None if v is None else v[0] / v[1] for v in verdicts}
        if len(fractions) > 1:
            differing.append(
                {
                    "id": record_id,
                    "task": entries[0].get("task"),
                    "verdicts": [None if v is None else {"correct": v[0], "completions": v[1]} for v in verdicts],
                }
            )
    unmatched = [len(set(run) - common) for run in per_run]
    return differing, unmatched


def compare_runs(run_dirs: list[Path], options: ScoreOptions, score_hooks: dict[str, Callable[..., Any]] | None = None) -> dict[str, Any]:
    """The whole comparison, as `kvarn compare --json` prints it."""
    if len(run_dirs) < 2:
        raise InputError("compare needs at least two run directories")
    for run_dir in run_dirs:
        require_run_dir(run_dir)
    all_scores = []
    rescored = []
    for run_dir in run_dirs:
        scores, fresh = load_scores(run_dir, options, score_hooks)
        all_scores.append(scores)
        if fresh:
            rescored.append(str(run_dir))
    differing, unmatched = differing_verdicts(all_scores)
    runs = [run_summary(run_dir, scores) for run_dir, scores in zip(run_dirs, all_scores)]
    for run, missing in zip(runs, unmatched):
        run["records_not_in_all_runs"] = missing
    return {"runs": runs, "differing": differing, "scored_now": rescored}
