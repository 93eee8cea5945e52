"""`kvarn merge`: combine the shard directories of one sharded run into one run directory.

Shards are only merged when they provably belong together (same input file hash, model,
preset, sampling and shard count; each index exactly once) and are complete (every input line
of each shard is in its outputs or its skipped list): a merged run never hides a gap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from kvarn_cli.errors import InputError
from kvarn_cli.jobs import read_jobs, shard_entries
from kvarn_cli.run_dir import RESUME_KEYS, OutputLog, read_json, write_json_atomic

_SAME_KEYS = tuple(k for k in RESUME_KEYS if k != "shard")


def _load_shard(path: Path) -> dict[str, Any]:
    if not (path / "run.json").is_file():
        raise InputError("not a kvarn run directory (no run.json)", path=str(path))
    run = read_json(path / "run.json")
    if not run.get("shard"):
        raise InputError("this run was not sharded (no --shard); nothing to merge", path=str(path))
    skipped_path = path / "skipped.jsonl"
    skipped = [orjson.loads(l) for l in skipped_path.read_bytes().splitlines() if l.strip()] if skipped_path.exists() else []
    stats = read_json(path / "stats.json") if (path / "stats.json").exists() else None
    return {"dir": path, "run": run, "outputs": OutputLog(path / "outputs.jsonl").repair_and_read(),
            "skipped": skipped, "stats": stats}


def merge_runs(shard_dirs: list[Path], out: Path, input_path: Path | None = None) -> dict[str, Any]:
    """Check and merge; returns a summary. Raises InputError naming the first problem found."""
    if out.exists() and any(out.iterdir()):
        raise InputError("merge output directory exists and is not empty", path=str(out))
    shards = [_load_shard(d) for d in shard_dirs]
    first = shards[0]["run"]
    for s in shards[1:]:
        for key in _SAME_KEYS:
            if s["run"].get(key) != first.get(key):
                raise InputError(f"shard does not belong with {shards[0]['dir']}: {key!r} differs", path=str(s["dir"]))
    count = first["shard"][1]
    by_index: dict[int, dict[str, Any]] = {}
    for s in shards:
        index, n = s["run"]["shard"]
        if n != count:
            raise InputError(f"shard is {index}/{n}, others are out of {count}", path=str(s["dir"]))
        if index in by_index:
            raise InputError(f"shard {index}/{count} given twice (also {by_index[index]['dir']})", path=str(s["dir"]))
        by_index[index] = s
    missing = sorted(set(range(count)) - set(by_index))
    if missing:
        raise InputError(f"shards missing: {', '.join(f'{i}/{count}' for i in missing)}")

    input_path = input_path or Path(first["input"])
    jobs = read_jobs(input_path)
    if jobs.sha256 != first["input_sha256"]:
        raise InputError("input file changed since the shards ran (sha256 differs); pass the original with --input", path=str(input_path))

    merged: dict[str, dict[str, Any]] = {}
    skipped: list[dict[str, Any]] = []
    for index in range(count):
        s = by_index[index]
        records, problems = shard_entries(jobs, index, count)
        done = {o["id"] for o in s["outputs"]}
        skipped_lines = {k["line"] for k in s["skipped"]}
        gaps = [r for r in records if r.id not in done and r.line not in skipped_lines]
        if gaps or any(p.line not in skipped_lines for p in problems):
            n_gap = len(gaps) + sum(p.line not in skipped_lines for p in problems)
            raise InputError(f"shard {index}/{count} is incomplete: {n_gap} input lines neither finished nor skipped; resume it first", path=str(s["dir"]))
        expected = {r.id for r in records}
        for o in s["outputs"]:
            if o["id"] not in expected or o["id"] in merged:
                raise InputError(f"record {o['id']!r} does not belong to shard {index}/{count} or appears twice", path=str(s["dir"]))
            merged[o["id"]] = o
        skipped += s["skipped"]

    out.mkdir(parents=True, exist_ok=True)
    order = [r.id for r in jobs.records if r.id in merged]
    tmp = out / "outputs.jsonl.tmp"
    tmp.write_bytes(b"".join(orjson.dumps(merged[i]) + b"\n" for i in order))
    tmp.replace(out / "outputs.jsonl")
    if skipped:
        (out / "skipped.jsonl").write_bytes(b"".join(orjson.dumps(k) + b"\n" for k in sorted(skipped, key=lambda k: k["line"])))
    write_json_atomic(out / "run.json", {**first, "shard": None, "merged_from": [str(by_index[i]["dir"]) for i in range(count)]})
    stats = _merge_stats([by_index[i]["stats"] for i in range(count)])
    if stats is not None:
        write_json_atomic(out / "stats.json", stats)
    return {"shards": count, "records": len(order), "skipped": len(skipped)}


def _merge_stats(all_stats: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Totals over shards. Shards run side by side, so wall time is the slowest shard's and the
    rate is the sum of the shards' rates (aggregate throughput of the job array)."""
    stats = [s for s in all_stats if s is not None]
    if not stats:
        return None
    tps = [s["throughput"] for s in stats]
    return {
        "status": "merged",
        "engine": stats[0]["engine"],
        "kv_cache": stats[0]["kv_cache"],
        "throughput": {
            "requests": sum(t["requests"] for t in tps),
            "prompt_tokens": sum(t["prompt_tokens"] for t in tps),
            "generated_tokens": sum(t["generated_tokens"] for t in tps),
            "wall_s": max(t["wall_s"] for t in tps),
            "generated_tokens_per_s": round(sum(t["generated_tokens_per_s"] for t in tps), 3),
        },
        "peak_kv_usage": max(s["peak_kv_usage"] for s in stats),
        "num_preemptions": sum(s.get("num_preemptions", 0) for s in stats),
        "skipped": sum(s.get("skipped", 0) for s in stats),
        "shards": len(all_stats),
        "shards_with_stats": len(stats),
    }
