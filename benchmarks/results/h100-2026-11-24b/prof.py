"""Where decode_attention's time goes at 32k: the three launches (query rotation, CUDA split
kernel, Triton reduce) from CUPTI through torch.profiler, at default_splits' count (session 11).

    python prof.py shape:method:batch ...
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from decode_attention import SHAPES, kvarn_case, record_pool  # noqa: E402

for case in sys.argv[1:]:
    shape, method, batch = case.split(":")
    kvh, qh, d = SHAPES[shape]
    pool = record_pool(method, kvh, d)
    kvarn_case(method, int(batch), kvh, qh, d, 32768, pool, eager_runs=3)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        kvarn_case(method, int(batch), kvh, qh, d, 32768, pool, eager_runs=20)
    times: dict[str, list[float]] = defaultdict(list)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            times[ev.name[:40]].append(ev.device_time)
    parts = [f"{name} {sum(t) / len(t):7.1f}us x{len(t)}" for name, t in sorted(times.items(), key=lambda kv: -sum(kv[1])) if len(t) >= 20]
    print(f"{shape} {method} B={batch}: " + " | ".join(parts), flush=True)
