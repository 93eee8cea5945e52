"""`kvarn run`: validate, build the engine, generate, and write every record as it finishes.

Safety rules this module keeps:
- Input is validated in full before the (slow) engine starts.
- A record is written to outputs.jsonl whole, once, when it finishes; nothing else is ever
  appended there, so a kill loses at most the records still in flight, which a resume redoes.
- SIGINT/SIGTERM stop between engine steps and exit with exit_codes.INTERRUPTED.
"""

from __future__ import annotations

import hashlib
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kvarn_cli import __version__, exit_codes
from kvarn_cli.console import err_console
from kvarn_cli.errors import EngineError, InputError
from kvarn_cli.jobs import JobRecord, read_jobs, shard_entries
from kvarn_cli.run_dir import (
    FORMAT_VERSION,
    OutputLog,
    append_line,
    attempt_record,
    check_resumable,
    read_json,
    write_json_atomic,
)


@dataclass(frozen=True)
class Sampling:
    n: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 4096
    seed: int = 0


@dataclass(frozen=True)
class RunRequest:
    input: Path
    out: Path
    model: str
    preset: str
    sampling: Sampling
    max_model_len: int | None = None
    kv_cache_memory_bytes: int | None = None
    max_num_seqs: int | None = None
    shard: tuple[int, int] | None = None
    on_error: str = "fail"  # or "skip"
    enforce_eager: bool | None = None
    shadow_check: int = 0  # records to analyze with transformers before the run (0 = off)


def request_seed(base_seed: int, record_id: str) -> int:
    """Per-record seed: the same record samples the same text whatever batch it lands in."""
    digest = hashlib.sha256(f"{base_seed}\0{record_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class StopFlag:
    """First SIGINT/SIGTERM asks for a clean stop between steps; a second one stops at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        # Only set the flag: the handler can interrupt the main thread anywhere, even inside an
        # import or a print, and re-entering those from here fails. The loop reports the signal.
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""


class Progress:
    """A rich progress bar on a terminal, periodic plain log lines otherwise (cron, Slurm logs)."""

    def __init__(self, total: int, done: int) -> None:
        self.total, self.done = total, done
        self.tokens = 0
        self.started = time.monotonic()
        self.last_log = 0.0
        self.bar = None
        if err_console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = RichProgress(
                TextColumn("[bold]generating"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=err_console, transient=False,
            )
            self.task = self.bar.add_task("run", total=total, completed=done, rate="")
            self.bar.start()

    def update(self, new_tokens: int, finished: int, kv_usage: float) -> None:
        self.tokens += new_tokens
        self.done += finished
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = f"{self.tokens / elapsed:,.0f} tok/s  kv {kv_usage:.0%}"
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, rate=rate)
        elif finished and (time.monotonic() - self.last_log > 30 or self.done == self.total):
            self.last_log = time.monotonic()
            err_console.print(f"kvarn: {self.done}/{self.total} records, {rate}", highlight=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _settings(req: RunRequest, input_sha256: str) -> dict[str, Any]:
    return {
        "kvarn_format": FORMAT_VERSION,
        "kvarn_version": __version__,
        "input": str(req.input),
        "input_sha256": input_sha256,
        "model": req.model,
        "preset": req.preset,
        "sampling": asdict(req.sampling),
        "max_model_len": req.max_model_len,
        "kv_cache_memory_bytes": req.kv_cache_memory_bytes,
        "max_num_seqs": req.max_num_seqs,
        "shard": list(req.shard) if req.shard else None,
        "on_error": req.on_error,
    }


def _write_skipped(out: Path, skipped: list[dict[str, Any]]) -> None:
    path = out / "skipped.jsonl"
    if not skipped:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    import orjson

    tmp.write_bytes(b"".join(orjson.dumps(s) + b"\n" for s in skipped))
    tmp.replace(path)


def execute(req: RunRequest) -> int:
    """Run the job; returns the process exit code."""
    jobs = read_jobs(req.input)
    records, problems = shard_entries(jobs, *(req.shard or (0, 1)))
    if problems and req.on_error == "fail":
        p = problems[0]
        more = f" (and {len(problems) - 1} more; --on-error skip runs the rest)" if len(problems) > 1 else " (--on-error skip runs the rest)"
        raise InputError(p.reason + more, path=str(req.input), line=p.line)

    settings = _settings(req, jobs.sha256)
    resuming = check_resumable(req.out, settings)
    req.out.mkdir(parents=True, exist_ok=True)
    log = OutputLog(req.out / "outputs.jsonl")
    done_ids = {r.get("id") for r in log.repair_and_read()}
    unknown = done_ids - {r.id for r in records}
    if unknown:
        raise InputError(f"outputs.jsonl holds {len(unknown)} ids not in this input/shard (e.g. {sorted(unknown)[0]!r})", path=str(req.out))
    if not resuming:
        write_json_atomic(req.out / "run.json", settings)
    todo = [r for r in records if r.id not in done_ids]
    skipped = [{"line": p.line, "id": p.record_id, "reason": p.reason} for p in problems]
    if resuming:
        err_console.print(f"resuming {req.out}: {len(done_ids)} of {len(records)} records already done, {len(todo)} to go")

    shadow = _shadow_check(req, records) if req.shadow_check > 0 else None

    started = time.time()
    stop = StopFlag()
    stop.install()
    status, exit_code = "failed", exit_codes.INTERNAL_ERROR
    counters: dict[str, Any] = {"records_finished": 0, "prompt_tokens": 0, "generated_tokens": 0}
    engine = None
    try:
        from kvarn_cli.engine import Engine, EngineSettings

        engine = Engine(EngineSettings(
            model=req.model, preset=req.preset, max_model_len=req.max_model_len,
            kv_cache_memory_bytes=req.kv_cache_memory_bytes, seed=req.sampling.seed,
            max_num_seqs=req.max_num_seqs, enforce_eager=req.enforce_eager,
        ))
        runnable, too_long = _tokenize(engine, todo)
        if too_long and req.on_error == "fail":
            rec, reason = too_long[0]
            raise InputError(reason + " (--on-error skip runs the rest)", path=str(req.input), line=rec.line)
        skipped += [{"line": rec.line, "id": rec.id, "reason": reason} for rec, reason in too_long]
        _write_skipped(req.out, skipped)
        log.open()
        interrupted = _generate(engine, req, runnable, log, stop, counters, already_done=len(done_ids))
        if interrupted:
            status, exit_code = "interrupted", exit_codes.INTERRUPTED
        else:
            status = "completed"
            exit_code = exit_codes.RECORDS_FAILED if skipped else exit_codes.OK
    except KeyboardInterrupt:
        status, exit_code = "interrupted", exit_codes.INTERRUPTED
    except InputError:
        status = "bad-input"
        raise
    finally:
        stop.restore()
        log.close()
        wall = time.time() - started
        append_line(req.out / "attempts.jsonl", attempt_record(status, started, wall_s=round(wall, 3), skipped=len(skipped), **counters))
        if engine is not None:
            _write_stats(req, engine, counters, skipped, status, shadow)
    if status == "interrupted":
        err_console.print(f"[yellow]interrupted: {counters['records_finished']} records saved this attempt; run the same command again to resume[/]")
    return exit_code


def _tokenize(engine: Any, todo: list[JobRecord]) -> tuple[list[tuple[JobRecord, list[int]]], list[tuple[JobRecord, str]]]:
    max_len = engine.shape["max_model_len"]
    runnable, too_long = [], []
    for rec in todo:
        ids = engine.encode_chat(rec.messages())
        if len(ids) >= max_len:
            too_long.append((rec, f"prompt is {len(ids)} tokens; --max-model-len {max_len} leaves no room to generate"))
        else:
            runnable.append((rec, ids))
    return runnable, too_long


def _generate(engine: Any, req: RunRequest, runnable: list[tuple[JobRecord, list[int]]], log: OutputLog,
              stop: StopFlag, counters: dict[str, Any], already_done: int) -> bool:
    """Generate every runnable record; returns True if stopped by a signal."""
    from vllm import SamplingParams

    from kvarn_cli.engine import Completion
    from kvarn_cli.vllm_compat import delta_output_kind

    s = req.sampling
    pending: dict[str, tuple[JobRecord, Completion]] = {}
    for rec, ids in runnable:
        params = SamplingParams(
            n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
            seed=request_seed(s.seed, rec.id), output_kind=delta_output_kind(),
        )
        engine.add(rec.id, ids, params)
        pending[rec.id] = (rec, Completion(n=s.n, num_prompt_tokens=len(ids)))

    progress = Progress(total=already_done + len(runnable), done=already_done)
    t0 = time.monotonic()
    last_sample, peak, preempt = 0.0, 0.0, 0.0
    try:
        while engine.has_unfinished():
            if stop.signal is not None:
                err_console.print(f"[yellow]received {stop.name}: saving finished records and exiting[/]")
                engine.abort(list(pending))
                return True
            try:
                outputs = engine.step()
            except Exception as exc:
                if stop.signal is not None:  # the engine's worker got the signal too
                    return True
                raise EngineError(f"the engine failed during generation: {exc}") from exc
            new_tokens, finished = 0, 0
            for out in outputs:
                entry = pending.get(out.request_id)
                if entry is None:
                    continue
                rec, comp = entry
                for co in out.outputs:
                    comp.texts[co.index].append(co.text)
                    comp.num_tokens[co.index] += len(co.token_ids)
                    new_tokens += len(co.token_ids)
                    if co.finish_reason is not None:
                        comp.finish_reasons[co.index] = co.finish_reason
                if out.finished:
                    log.append({
                        **rec.data,
                        "completions": ["".join(t) for t in comp.texts],
                        "finish_reasons": comp.finish_reasons,
                        "num_prompt_tokens": comp.num_prompt_tokens,
                        "num_completion_tokens": comp.num_tokens,
                    })
                    del pending[out.request_id]
                    finished += 1
                    counters["records_finished"] += 1
                    counters["prompt_tokens"] += comp.num_prompt_tokens
            counters["generated_tokens"] += new_tokens
            now = time.monotonic()
            if now - last_sample > 0.25 or not engine.has_unfinished():
                gauges = engine.gauges()
                peak = max(peak, gauges["kv_cache_usage"])
                preempt = gauges["num_preemptions"]
                last_sample = now
            progress.update(new_tokens, finished, peak)
    finally:
        progress.close()
        counters["gen_wall_s"] = round(time.monotonic() - t0, 3)
        counters["peak_kv_usage"] = peak
        counters["num_preemptions"] = int(preempt)
    return False


def _shadow_check(req: RunRequest, records: list[JobRecord]) -> dict[str, Any] | None:
    """Measure the preset's expected fidelity on a few records before the engine is built.

    Runs first, and frees its transformers model before vLLM starts, so the two never share
    GPU memory. Each sampled prompt is extended greedily by the 16-bit model to about four
    blocks, because only positions past the first two blocks ever read quantized history.
    """
    import gc
    import random

    from kvarn_cli import kvcache

    if req.preset == "fp16":
        err_console.print("shadow check skipped: the fp16 preset stores the cache unquantized")
        return None
    if not records:
        return None
    saved = req.out / "shadow_check.json"
    if saved.exists():  # a resumed run: same model and preset (run.json), so the measure stands
        previous = read_json(saved)
        if len(previous.get("record_ids", [])) == min(req.shadow_check, len(records)):
            return previous
    import torch
    from transformers import AutoTokenizer

    from kvarn_cli.analyze import shadow_check

    chosen = random.Random(req.sampling.seed).sample(records, min(req.shadow_check, len(records)))
    tokenizer = AutoTokenizer.from_pretrained(req.model)
    texts = [tokenizer.apply_chat_template(r.messages(), tokenize=False, add_generation_prompt=True) for r in chosen]
    block = kvcache.get_preset(req.preset).block_size or 128
    with err_console.status(f"shadow check: {req.preset} vs 16-bit on {len(texts)} records ..."):
        result = shadow_check(req.model, texts, req.preset, block=block, continue_tokens=4 * block)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    result["record_ids"] = [r.id for r in chosen]
    write_json_atomic(req.out / "shadow_check.json", result)
    return result


def _write_stats(req: RunRequest, engine: Any, counters: dict[str, Any], skipped: list[dict[str, Any]], status: str,
                 shadow: dict[str, Any] | None = None) -> None:
    wall = counters.get("gen_wall_s", 0.0)
    stats = {
        "status": status,
        "engine": engine.describe_engine(),
        "kv_cache": engine.describe_kv_cache(),
        "throughput": {
            "requests": counters["records_finished"],
            "prompt_tokens": counters["prompt_tokens"],
            "generated_tokens": counters["generated_tokens"],
            "wall_s": wall,
            "generated_tokens_per_s": round(counters["generated_tokens"] / wall, 3) if wall > 0 else 0.0,
        },
        "peak_kv_usage": counters.get("peak_kv_usage", 0.0),
        "num_preemptions": counters.get("num_preemptions", 0),
        "skipped": len(skipped),
    }
    if shadow is not None:
        stats["shadow_check"] = {k: shadow.get(k) for k in ("preset", "kl_mean", "kl_p99", "top1_agreement", "scored_positions", "texts")}
    write_json_atomic(req.out / "stats.json", stats)
    from kvarn_cli.report import print_run_summary

    print_run_summary(stats)
