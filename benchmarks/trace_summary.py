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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", type=Path)
    ap.add_argument("--steps", type=int, default=40, help="engine steps the trace covers (for per-step figures)")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    events = json.loads(args.trace.read_text())["traceEvents"]
    host: dict[str, list[float]] = defaultdict(list)
    gpu: dict[object, list[tuple[float, float]]] = defaultdict(list)
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        cat = e.get("cat", "")
        if cat in ("cuda_runtime", "cuda_driver"):
            host[e["name"]].append(float(e["dur"]))
        elif cat in ("kernel", "gpu_memcpy", "gpu_memset"):
            gpu[e.get("tid")].append((float(e["ts"]), float(e["ts"]) + float(e["dur"])))
    n = max(1, args.steps)
    print(f"host CUDA API calls, by total time ({args.steps} steps):")
    for name, durs in sorted(host.items(), key=lambda kv: -sum(kv[1]))[: args.top]:
        print(f"  {name:40s} {len(durs):7d} calls  {sum(durs) / 1e3:9.2f} ms total  {sum(durs) / 1e3 / n:7.3f} ms/step"
              f"  max {max(durs) / 1e3:8.3f} ms")
    every = [iv for ivs in gpu.values() for iv in ivs]
    if every:
        span = max(b for _, b in every) - min(a for a, _ in every)
        busy = union_length(every)
        print(f"GPU: busy {busy / 1e3:.2f} ms of a {span / 1e3:.2f} ms span ({busy / max(span, 1e-9):.0%}); "
              f"{busy / 1e3 / n:.3f} ms/step busy, {span / 1e3 / n:.3f} ms/step span")
        for tid, ivs in sorted(gpu.items(), key=lambda kv: -len(kv[1])):
            print(f"  stream {tid}: {len(ivs)} kernels/copies, busy {union_length(ivs) / 1e3:.2f} ms")


if __name__ == "__main__":
    main()
