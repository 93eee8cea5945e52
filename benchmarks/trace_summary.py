"""Where a profiled engine step waits: summarize a torch.profiler Chrome trace.

    python benchmarks/trace_summary.py trace.json [--steps 40]

Why: the KVarN decode step on the H100 takes 2x bf16's wall time with about the same GPU
kernel time (docs/BENCHMARKS.md, runs 33-34), so the step waits somewhere. This prints the
host's CUDA runtime/driver calls by total time (a blocking cudaEventSynchronize or
cudaStreamSynchronize, or a slow cudaGraphLaunch, stands out) and how busy the GPU was:
the union of kernel and copy intervals against the span they cover, per stream and overall.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict
from pathlib import Path


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def summarize(events: list[dict], steps: int, top: int = 15) -> dict:
    """The host's CUDA API calls by total time (name: calls, total ms, ms per step, max ms), its
    named regions (record_function) by total time, and the GPU's busy time against the span
    its kernels and copies cover, overall and per stream."""
    host: dict[str, list[float]] = defaultdict(list)
    marks: dict[str, list[float]] = defaultdict(list)
    gpu: dict[object, list[tuple[float, float]]] = defaultdict(list)
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        cat = e.get("cat", "")
        if cat in ("cuda_runtime", "cuda_driver"):
            host[e["name"]].append(float(e["dur"]))
        elif cat == "user_annotation":  # vLLM's and torch's named host regions (record_function)
            marks[e["name"]].append(float(e["dur"]))
        elif cat in ("kernel", "gpu_memcpy", "gpu_memset"):
            gpu[e.get("tid")].append((float(e["ts"]), float(e["ts"]) + float(e["dur"])))
    n = max(1, steps)

    def by_total(calls: dict[str, list[float]]) -> dict[str, dict[str, float]]:
        ranked = sorted(calls.items(), key=lambda kv: -sum(kv[1]))[:top]
        return {name: {"calls": len(d), "total_ms": round(sum(d) / 1e3, 3), "ms_per_step": round(sum(d) / 1e3 / n, 4),
                       "max_ms": round(max(d) / 1e3, 3)} for name, d in ranked}

    out: dict = {"steps": steps, "host_calls": by_total(host), "host_regions": by_total(marks)}
    every = [iv for ivs in gpu.values() for iv in ivs]
    if every:
        span = max(b for _, b in every) - min(a for a, _ in every)
        busy = union_length(every)
        out["gpu"] = {"busy_ms": round(busy / 1e3, 3), "span_ms": round(span / 1e3, 3),
                      "busy_share": round(busy / max(span, 1e-9), 3), "busy_ms_per_step": round(busy / 1e3 / n, 4),
                      "span_ms_per_step": round(span / 1e3 / n, 4),
                      "streams": {str(tid): {"intervals": len(ivs), "busy_ms": round(union_length(ivs) / 1e3, 3)}
                                  for tid, ivs in sorted(gpu.items(), key=lambda kv: -len(kv[1]))}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", type=Path)
    ap.add_argument("--steps", type=int, default=40, help="engine steps the trace covers (for per-step figures)")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    opener = gzip.open if args.trace.suffix == ".gz" else open
    with opener(args.trace, "rt") as f:
        got = summarize(json.load(f)["traceEvents"], args.steps, args.top)
    print(f"host CUDA API calls, by total time ({args.steps} steps):")
    for name, c in got["host_calls"].items():
        print(f"  {name:40s} {c['calls']:7d} calls  {c['total_ms']:9.2f} ms total  {c['ms_per_step']:7.3f} ms/step"
              f"  max {c['max_ms']:8.3f} ms")
    print("host regions (record_function), by total time:")
    for name, c in got["host_regions"].items():
        print(f"  {name[:60]:60s} {c['calls']:7d} calls  {c['total_ms']:9.2f} ms total  {c['ms_per_step']:7.3f} ms/step")
    g = got.get("gpu")
    if g:
        print(f"GPU: busy {g['busy_ms']:.2f} ms of a {g['span_ms']:.2f} ms span ({g['busy_share']:.0%}); "
              f"{g['busy_ms_per_step']:.3f} ms/step busy, {g['span_ms_per_step']:.3f} ms/step span")
        for tid, st in g["streams"].items():
            print(f"  stream {tid}: {st['intervals']} kernels/copies, busy {st['busy_ms']:.2f} ms")


if __name__ == "__main__":
    main()
