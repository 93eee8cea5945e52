"""Greedy generation twice over the same chat prompts in one vLLM engine with a KVarN preset:
the second pass hits the prefix cache on every full first block, so its prefill reads the
first block from the cache (its 16-bit sink copy while resident) instead of computing it.
Prints both passes' first tokens and exits 1 if any request's two passes differ in their
first --tokens tokens (greedy, so they should not: a prefix hit changes where keys are read
from, not their values while the sink copy is resident). Run on the GPU machine, where the
CPU tests cannot reach the CUDA paths.

usage: python tests/prefix_hit_smoke.py MODEL GSM8K_JSONL [PRESET] [--tokens N] [--no-async] [--eager]
           [--warmups N] [--trace FILE]

--trace writes one JSON line per metadata build (the batch as the KVarN builder saw it and
whether its plan fit the fixed decode arrays) and per forward of the first attention layer
(whether a CUDA graph was being captured), so a run with decode graphs and one without can
be compared step by step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("preset", nargs="?", default="k2v2-g64")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=12)
    ap.add_argument("--no-async", action="store_true", help="turn vLLM's asynchronous scheduling off")
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs at all (enforce_eager)")
    ap.add_argument("--warmups", type=int, default=None, help="vLLM's cudagraph_num_of_warmups (eager runs before each capture)")
    ap.add_argument("--trace", default=None, help="JSON lines of every build and first-layer forward")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    from kvarn_cli import kvcache

    kwargs = kvcache.engine_kwargs(args.preset) if args.preset != "fp16" else {}
    if args.no_async:
        kwargs["async_scheduling"] = False
    if args.warmups is not None:
        kwargs["compilation_config"] = {"cudagraph_num_of_warmups": args.warmups}
    if args.trace:
        _install_trace(args.trace)
    llm = LLM(model=args.model, dtype="bfloat16", seed=0, max_model_len=1024, kv_cache_memory_bytes=256 << 20,
              max_num_seqs=16, enforce_eager=args.eager, **kwargs)
    tok = llm.get_tokenizer()
    with open(args.data, encoding="utf-8") as fh:
        rows = [json.loads(line) for _, line in zip(range(args.prompts), fh)]
    prompts = [tok.apply_chat_template([{"role": "user", "content": r["question"]}], add_generation_prompt=True,
                                       tokenize=True) for r in rows]
    prompts = [p["input_ids"] if hasattr(p, "keys") else p for p in prompts]
    params = SamplingParams(max_tokens=args.tokens, temperature=0.0)
    passes = []
    for _ in range(2):
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        passes.append([list(o.outputs[0].token_ids) for o in outs])
    bad = 0
    for i, (a, b) in enumerate(zip(*passes)):
        same = a == b
        bad += not same
        print(f"prompt {i} ({len(prompts[i])} tokens): {'same' if same else 'DIFFERENT'}  pass0 {a}  pass1 {b}")
    print(f"{args.preset}: {len(prompts) - bad} of {len(prompts)} prompts generate the same tokens with a prefix hit")
    return 1 if bad else 0


def _install_trace(path: str) -> None:
    """Wrap the KVarN builder and the first layer's forward to log what each step saw."""
    import numpy as np
    import torch

    from kvarn_cli import vllm_compat
    from kvarn_cli.kvcache import backend

    sink = open(path, "w", encoding="utf-8")  # noqa: SIM115 (open for the process's life)
    counter = {"n": 0}
    first_impl: list[object] = []

    def log(**row: object) -> None:
        counter["n"] += 1
        sink.write(json.dumps({"i": counter["n"], **row}) + "\n")
        sink.flush()

    build, capture, forward = (backend.KVarNMetadataBuilder.build, backend.KVarNMetadataBuilder.build_for_cudagraph_capture,
                               backend.KVarNAttentionImpl.forward)

    def traced_build(self, common_prefix_len, common_attn_metadata, fast_build=False):  # type: ignore[no-untyped-def]
        cam = common_attn_metadata
        md = build(self, common_prefix_len, cam, fast_build)
        seq = (cam.seq_lens_cpu_upper_bound if cam.seq_lens_cpu_upper_bound is not None else cam.seq_lens).cpu().numpy()
        table = vllm_compat.host_block_table(cam.block_table_tensor)
        plan = md.plan  # host tensors when it fit the fixed arrays; never read back from the GPU (no sync)
        on_host = plan.slot_id is None or plan.slot_id.device.type == "cpu"
        log(kind="build", builder=id(self), pool=id(self.pool), num_reqs=int(cam.num_reqs),
            qsl=cam.query_start_loc_cpu.numpy().tolist(), seq=seq.tolist(),
            host_table=np.asarray(table)[: cam.num_reqs, :3].tolist(),
            fixed=plan.fixed is not None, tokens=plan.num_tokens, groups=len(plan.groups),
            slot_id=plan.slot_id.tolist() if on_host and plan.slot_id is not None else None,
            slot_offset=plan.slot_offset.tolist() if on_host and plan.slot_offset is not None else None,
            fill_slot=plan.fill_slot.tolist() if on_host else None, spills=int(plan.spill_slot.numel()),
            restores=int(plan.restore_slot.numel()), capturing=torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())
        return md

    def traced_capture(self, common_attn_metadata):  # type: ignore[no-untyped-def]
        cam = common_attn_metadata
        log(kind="capture_build", builder=id(self), num_reqs=int(cam.num_reqs), tokens=int(cam.num_actual_tokens),
            capturing=torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())
        return capture(self, cam)

    def traced_forward(self, layer, query, key, value, kv_cache, attn_metadata, output=None, *a, **kw):  # type: ignore[no-untyped-def]
        if not first_impl:
            first_impl.append(self)
        if self is first_impl[0]:
            plan = getattr(attn_metadata, "plan", None)
            log(kind="forward", capturing=torch.cuda.is_available() and torch.cuda.is_current_stream_capturing(), tokens=int(query.shape[0]),
                metadata=attn_metadata is not None, fixed=None if plan is None else plan.fixed is not None,
                new_codec=self.codec is None, new_slots=self.slot_k is None)
        return forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *a, **kw)

    backend.KVarNMetadataBuilder.build = traced_build  # type: ignore[method-assign]
    backend.KVarNMetadataBuilder.build_for_cudagraph_capture = traced_capture  # type: ignore[method-assign]
    backend.KVarNAttentionImpl.forward = traced_forward  # type: ignore[method-assign]


if __name__ == "__main__":
    sys.exit(main())
