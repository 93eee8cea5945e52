"""Where the steps that admit a request go, against plain decode steps, for one preset.

Why: on an 8-shot GSM8K job (docs/BENCHMARKS.md runs 146-147) k2v2's steps that admit a
request (a ~70-token prefill continuing after the cached examples, beside 63 decodes) took
40-130 ms against a 3-5 ms median step, and nothing said where the time went. This runs
e2e_gpu.py's job (same options, same prompts, same warm-up) in one process with vLLM's engine
core in-process, in three passes on fresh prompts:

1. timed, nothing profiled: every step's wall time, sorted into admission steps (a request's
   first output appears: its prefill ran; with vLLM's async scheduling the step's own model
   run may be the next batch's) and the rest; their medians, their share of the pass's wall
   time and what their tail beyond the median costs; the garbage collector's time; the
   slowest steps;
2. torch.profiler around up to --steps predicted admission steps (the step after one where a
   request finished while others waited) and as many decode steps: per step, GPU kernel time
   and the ops with the most self CUDA and self CPU time;
3. cProfile around every step, each on its own: of the --steps slowest, kvarn's and vLLM's
   Python functions by own and cumulative time (what a slow step does that others do not).

Steps of pass 2 are sorted by what they turned out to be, not by the prediction. With
--phases-only, passes 2 and 3 give way to one pass with kvarn's phases timed by wall-clock
wrappers (PhaseClock: metadata build and its parts, layer forward, update_cache, attend,
continued chunks, fresh chunks, eagerly run decodes), as means over the slow steps (over 2x
the median) and the others: real host time, which cProfile inflates unevenly. With --decode-cprofile, pass 2 runs
cProfile (not torch.profiler) around sampled decode and admission steps and pass 3 is skipped,
or is the phase pass with --phases-only too: any preset, so that fp8's and kvarn's host work per
step, on either vLLM model runner (`:v1`, `:v2`), can be read side by side.

Run (GPU machine):
    python benchmarks/profile_admission.py --model /tmp/models/smollm2-135m \\
        --data .gpuwork/gsm8k_test.jsonl --preset k2v2 --few-shot 8 --max-prompt-tokens 1536 \\
        --kv-budget-mib 1024 --num-prompts 128 --max-tokens 512 --length-spread 0.5 --max-num-seqs 64
"""

from __future__ import annotations

import cProfile
import gc
import heapq
import io
import os
import pstats
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e_gpu  # noqa: E402  (benchmarks/ is not a package)

#: the first steps admit the whole first wave at once: not the admissions of interest
FIRST_WAVE_STEPS = 3


class Job:
    """One pass's requests, stepped one engine step at a time, with what each step was."""

    def __init__(self, llm: Any, prompts: list[list[int]], params: list[Any], tag: str, max_num_seqs: int) -> None:
        self.engine = llm.llm_engine
        self.seen: set[str] = set()
        self.finished = 0
        self.max_num_seqs = max_num_seqs
        self.total = len(prompts)
        self.steps = 0
        self.last_finished = 0
        self.last_rows = 0  # requests with an output in the last step: its batch, decode steps
        for i, p in enumerate(prompts):
            self.engine.add_request(f"{tag}{i}", {"prompt_token_ids": p}, params[i])

    def busy(self) -> bool:
        return bool(self.engine.has_unfinished_requests())

    def admission_expected(self) -> bool:
        """A request finished in the last step while others wait: the next step admits one."""
        waiting = self.total - len(self.seen)
        return self.steps >= FIRST_WAVE_STEPS and self.last_finished > 0 and waiting > 0

    def step(self) -> tuple[float, int]:
        """(wall seconds, requests whose first output came in this step)."""
        t0 = time.perf_counter()
        outs = self.engine.step()
        wall = time.perf_counter() - t0
        new = sum(1 for o in outs if o.request_id not in self.seen)
        self.seen.update(o.request_id for o in outs)
        self.last_rows = len(outs)
        self.last_finished = sum(1 for o in outs if o.finished)
        self.finished += self.last_finished
        self.steps += 1
        return wall, new

    def kind(self, new: int) -> str | None:
        """'admit' or 'decode' for the step just run; None for the first wave's steps."""
        if self.steps <= FIRST_WAVE_STEPS:
            return None
        return "admit" if new else "decode"


class GcClock:
    """Time the garbage collector runs, per generation, while installed (gc.callbacks)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.by_gen: dict[int, list[float]] = defaultdict(list)
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            dt = time.perf_counter() - self._t0
            self.total += dt
            self.by_gen[info["generation"]].append(dt)

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


class PhaseClock:
    """Host time inside kvarn's per-step work, by phase, without a profiler: wall-clock
    wrappers around the functions below (about a microsecond each), summed per engine step.
    kvarn presets only; the phases nest (the build holds flush_last, host_table, and plan and
    load or plan_decodes and load_decodes; a layer holds update_cache and attend, attend holds
    the rest), and "step" is the whole engine step."""

    PHASES = (
        ("build", "kvarn_cli.kvcache.backend", "KVarNMetadataBuilder.build"),
        # parts of the build: the flush of the slots the last graph step filled, the host copy
        # of the block table, the plan, the load of a decode step into the graph buffers
        ("flush_last", "kvarn_cli.kvcache.backend", "KVarNMetadataBuilder._flush_last_decode"),
        ("host_table", "kvarn_cli.vllm_compat", "host_block_table"),
        ("plan", "kvarn_cli.kvcache.staging", "StagingPool.plan"),
        ("load", "kvarn_cli.kvcache.graph", "DecodeBuffers.load"),
        # decode-only steps planned straight into the graph buffers instead of plan + load
        ("plan_decodes", "kvarn_cli.kvcache.staging", "StagingPool.plan_decodes"),
        ("load_decodes", "kvarn_cli.kvcache.graph", "DecodeBuffers.load_decodes"),
        ("layer", "kvarn_cli.kvcache.backend", "KVarNAttentionImpl.forward"),
        ("update_cache", "kvarn_cli.kvcache.backend", "update_cache"),
        ("attend", "kvarn_cli.kvcache.backend", "attend"),
        ("continued", "kvarn_cli.kvcache.compute", "_attend_continued_batched"),
        ("fresh", "kvarn_cli.kvcache.compute", "_attend_fresh_batched"),
        ("decode_eager", "kvarn_cli.kvcache.compute", "_decode_group_triton"),
    )

    def __init__(self) -> None:
        self.now: dict[str, float] = defaultdict(float)

    def install(self) -> None:
        import importlib

        for name, module_name, attr in self.PHASES:
            owner: Any = importlib.import_module(module_name)
            *path, leaf = attr.split(".")
            for part in path:
                owner = getattr(owner, part)
            if not hasattr(owner, leaf):  # an older tree, timed against this one
                print(f"phase {name}: {module_name}.{attr} is not in this tree, not clocked", flush=True)
                continue
            setattr(owner, leaf, self._wrap(name, getattr(owner, leaf)))

    def _wrap(self, name: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.now[name] += time.perf_counter() - t0

        return timed

    def take(self) -> dict[str, float]:
        out, self.now = dict(self.now), defaultdict(float)
        return out


def phase_pass(job: Job, clock: PhaseClock) -> dict[str, Any]:
    """Every step's phase times; the mean per phase over steps over 2x the median step and
    over the others (ms), and how many of each."""
    rows: list[tuple[float, dict[str, float]]] = []
    clock.take()
    while job.busy():
        wall, new = job.step()
        phases = clock.take()
        if job.kind(new):
            rows.append((wall, phases))
    med = statistics.median(w for w, _ in rows)
    out: dict[str, Any] = {"median_step_ms": round(1e3 * med, 2)}
    for label, pick in (("slow", lambda w: w > 2 * med), ("other", lambda w: w <= 2 * med)):
        chosen = [(w, ph) for w, ph in rows if pick(w)]
        if not chosen:
            continue
        names = sorted({k for _, ph in chosen for k in ph})
        mean = {k: round(1e3 * sum(ph.get(k, 0.0) for _, ph in chosen) / len(chosen), 2) for k in names}
        mean["step"] = round(1e3 * sum(w for w, _ in chosen) / len(chosen), 2)
        out[label] = {"steps": len(chosen), "mean_ms": mean}
    return out


def ab_direct(llm: Any, prompts: list[list[int]], params: list[Any], seqs: int, rounds: int) -> None:
    """Timed passes of one engine over the same prompts, in ABBA order: decode-only steps
    planned straight into the graph buffers (KVarNMetadataBuilder.direct_decodes) and through
    plan() + DecodeBuffers.load. One engine, so host speed, which moves between engines of a
    lease by more than this difference (runs 170-172), falls on both ways alike."""
    from kvarn_cli.kvcache.backend import KVarNMetadataBuilder

    walls: dict[bool, list[float]] = {True: [], False: []}
    medians: dict[bool, list[float]] = {True: [], False: []}
    for k, direct in enumerate([True, False, False, True] * rounds):
        KVarNMetadataBuilder.direct_decodes = direct
        r = timed_pass(Job(llm, prompts, params, f"ab{k}_", seqs))
        walls[direct].append(r["wall_s"])
        medians[direct].append(r["decode"]["median_ms"])
        print(f"ab pass {k}, direct {direct}: wall {r['wall_s']} s, {r['steps']} steps, decode median "
              f"{r['decode']['median_ms']} ms, mean {r['decode']['mean_ms']} ms", flush=True)
    KVarNMetadataBuilder.direct_decodes = True
    on, off = statistics.median(walls[True]), statistics.median(walls[False])
    print(f"ab summary: wall median direct {on} s, plan + load {off} s, ratio {on / off:.3f}; decode-step median "
          f"direct {statistics.median(medians[True])} ms, plan + load {statistics.median(medians[False])} ms", flush=True)


def timed_pass(job: Job) -> dict[str, Any]:
    times: dict[str, list[float]] = defaultdict(list)
    new_per_admit: list[int] = []
    slow: list[tuple[float, int, str, float]] = []  # (wall, step, kind, gc seconds inside it)
    decode_rows: list[tuple[int, float]] = []  # (rows, wall) of decode steps
    t0 = time.perf_counter()
    with GcClock() as clock:
        while job.busy():
            gc_before = clock.total
            wall, new = job.step()
            kind = job.kind(new)
            if kind:
                times[kind].append(wall)
                slow.append((wall, job.steps - 1, kind, clock.total - gc_before))
            if kind == "admit":
                new_per_admit.append(new)
            elif kind == "decode":
                decode_rows.append((job.last_rows, wall))
    total = time.perf_counter() - t0
    out: dict[str, Any] = {"wall_s": round(total, 2), "steps": job.steps}
    for kind, ts in times.items():
        med = statistics.median(ts)
        out[kind] = {"steps": len(ts), "median_ms": round(1e3 * med, 2), "mean_ms": round(1e3 * statistics.mean(ts), 2),
                     "p90_ms": round(1e3 * sorted(ts)[9 * len(ts) // 10], 2), "max_ms": round(1e3 * max(ts), 1),
                     "share_of_wall": round(sum(ts) / total, 3),
                     # the time these steps take beyond their median: what their tail costs the pass
                     "excess_over_median_share": round(sum(t - med for t in ts if t > med) / total, 3),
                     "steps_over_2x_median": sum(t > 2 * med for t in ts),
                     "time_over_2x_median_share": round(sum(t for t in ts if t > 2 * med) / total, 3)}
    if "decode" in out:
        out["decode"]["by_rows"] = e2e_gpu.step_cost_by_rows(decode_rows)
    out["new_requests_per_admission"] = {n: new_per_admit.count(n) for n in sorted(set(new_per_admit))}
    out["gc"] = {"s": round(clock.total, 3), "collections": {g: len(v) for g, v in sorted(clock.by_gen.items())},
                 "max_ms": round(1e3 * max((max(v) for v in clock.by_gen.values()), default=0.0), 1)}
    out["slowest_steps"] = [[i, kind, round(1e3 * w, 1), round(1e3 * g, 1)] for w, i, kind, g in sorted(slow)[::-1][:12]]
    return out


def profiled_pass(job: Job, limit: int, wrap: Any) -> dict[str, list[Any]]:
    """Up to `limit` steps of each kind run under `wrap(step) -> result`; results by kind."""
    got: dict[str, list[Any]] = {"admit": [], "decode": []}
    while job.busy():
        predicted = job.admission_expected()
        sample_decode = job.steps >= FIRST_WAVE_STEPS and job.steps % 7 == 0 and len(got["decode"]) < limit
        if (predicted and len(got["admit"]) < limit) or sample_decode:
            result, new = wrap(job)
            kind = job.kind(new)
            if kind and len(got[kind]) < limit:
                got[kind].append(result)
        else:
            job.step()
    return got


def slowest_steps(job: Job, keep: int) -> list[tuple[float, int, cProfile.Profile, str]]:
    """Every step under its own cProfile; the `keep` slowest (wall, step, profile, kind)."""
    heap: list[tuple[float, int, cProfile.Profile, str]] = []
    while job.busy():
        prof = cProfile.Profile()
        prof.enable()
        wall, new = job.step()
        prof.disable()
        kind = job.kind(new)
        if kind:
            item = (wall, job.steps - 1, prof, kind)
            (heapq.heappush if len(heap) < keep else heapq.heappushpop)(heap, item)
    return heap


def torch_profile(job: Job) -> tuple[dict[str, Any], int]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        wall, new = job.step()
    rows = {}
    for e in prof.key_averages():
        rows[e.key] = (e.count, e.self_cpu_time_total, getattr(e, "self_device_time_total", 0))
    return {"wall": wall, "rows": rows}, new


def cprofile(job: Job) -> tuple[tuple[cProfile.Profile, float], int]:
    prof = cProfile.Profile()
    prof.enable()
    wall, new = job.step()
    prof.disable()
    return (prof, wall), new


def report_torch(kind: str, results: list[dict[str, Any]], top: int) -> None:
    if not results:
        print(f"torch.profiler, {kind}: no steps")
        return
    n = len(results)
    calls: dict[str, float] = defaultdict(float)
    cpu: dict[str, float] = defaultdict(float)
    gpu: dict[str, float] = defaultdict(float)
    for r in results:
        for key, (count, c, g) in r["rows"].items():
            calls[key] += count / n
            cpu[key] += c / n
            gpu[key] += g / n
    walls = sorted(r["wall"] for r in results)
    print(f"\ntorch.profiler, {kind}: {n} steps, wall median {1e3 * walls[n // 2]:.1f} ms (profiler overhead "
          f"included), GPU kernel time {sum(gpu.values()) / 1e3:.2f} ms/step, {sum(calls.values()):.0f} ops/step")
    for title, table in (("self CUDA", gpu), ("self CPU", cpu)):
        print(f"  by {title} time, per step:  ms  calls  name")
        for key in sorted(table, key=table.get, reverse=True)[:top]:  # type: ignore[arg-type]
            print(f"    {table[key] / 1e3:8.3f} {calls[key]:6.1f}  {key[:90]}")


def report_cprofile(kind: str, results: list[tuple[cProfile.Profile, float]], top: int) -> None:
    if not results:
        print(f"cProfile, {kind}: no steps")
        return
    stats = pstats.Stats(results[0][0])
    for prof, _ in results[1:]:
        stats.add(prof)
    walls = sorted(w for _, w in results)
    print(f"\ncProfile, {kind}: {len(results)} steps (totals over all of them), wall median {1e3 * walls[len(walls) // 2]:.1f} ms")
    for key in ("cumulative", "tottime"):
        buf = io.StringIO()
        stats.stream = buf  # type: ignore[attr-defined]
        stats.sort_stats(key).print_stats(top)
        text = buf.getvalue()
        print(text[text.find("   ncalls"):][:9000])


def main() -> None:
    ap = e2e_gpu.build_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="k2v2", help="one e2e_gpu.py preset label (k2v2, fp8, k2v2:torch-prefill, ...)")
    ap.add_argument("--steps", type=int, default=12, help="steps of each kind under each profiler")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--phases-only", action="store_true",
                    help="after the timed pass, one pass with kvarn's phases timed (PhaseClock), no profilers")
    ap.add_argument("--decode-cprofile", action="store_true",
                    help="after the timed pass, cProfile totals over --steps sampled decode steps (and as many "
                         "admission steps), no torch.profiler; any preset, for side-by-side host profiles. "
                         "With --phases-only as well, the phase pass follows (kvarn presets)")
    ap.add_argument("--ab-direct", type=int, default=0, metavar="ROUNDS",
                    help="after the timed pass, ROUNDS x 4 timed passes in ABBA order with decode-only steps planned "
                         "straight into the graph buffers and through plan() + load (kvarn presets, decode graphs)")
    args = ap.parse_args()
    preset, env_extra, extra = e2e_gpu.preset_setup(args.preset)
    if extra:
        args = ap.parse_args(sys.argv[1:] + extra)
    os.environ.update(env_extra)
    os.environ.setdefault("KVARN_DECODE_GRAPHS", "1")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the profilers see the engine core's work
    if preset in ("bf16", "fp8") and args.max_num_seqs > 0:  # the same concurrency as the kvarn preset
        args.baseline_max_num_seqs = args.max_num_seqs

    from vllm import SamplingParams

    llm, kwargs, start_s = e2e_gpu.start_engine(preset, args)
    n = args.num_prompts
    prompts = e2e_gpu.chat_prompts(llm, args, 3 * n + args.warmup_prompts)
    params = [SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True)
              for m in e2e_gpu.request_lengths(n, args.max_tokens, args.length_spread)]
    e2e_gpu.warm_up(llm, prompts[3 * n:], args)
    seqs = int(kwargs["max_num_seqs"])
    print(f"preset {args.preset}, max_num_seqs {seqs}, engine start {start_s:.0f} s, "
          f"mean prompt {sum(map(len, prompts[:n])) / n:.0f} tokens", flush=True)

    timed = timed_pass(Job(llm, prompts[:n], params, "t", seqs))
    print(f"timed pass: {timed}", flush=True)
    if args.ab_direct:
        ab_direct(llm, prompts[:n], params, seqs, args.ab_direct)
    if args.decode_cprofile:
        got = profiled_pass(Job(llm, prompts[n:2 * n], params, "d", seqs), args.steps, cprofile)
        for kind in ("decode", "admit"):
            report_cprofile(kind, got[kind], args.top)
        if not args.phases_only or preset in ("bf16", "fp8"):
            return
    if args.phases_only:
        if preset in ("bf16", "fp8"):
            raise SystemExit("--phases-only times kvarn's phases: give a kvarn preset")
        clock = PhaseClock()
        clock.install()
        print(f"phase pass: {phase_pass(Job(llm, prompts[2 * n:3 * n], params, 'p', seqs), clock)}", flush=True)
        return
    got = profiled_pass(Job(llm, prompts[n:2 * n], params, "g", seqs), args.steps, torch_profile)
    for kind in ("admit", "decode"):
        report_torch(kind, got[kind], args.top)
    slowest = slowest_steps(Job(llm, prompts[2 * n:3 * n], params, "c", seqs), args.steps)
    report_cprofile("the slowest steps", [(prof, wall) for wall, _, prof, _ in slowest], args.top)
    print("  those steps (index, kind, ms):", [(i, kind, round(1e3 * w, 1)) for w, i, _, kind in sorted(slowest)[::-1]])

if __name__ == "__main__":
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    main()
