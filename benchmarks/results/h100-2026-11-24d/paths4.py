"""Session 13, run 106: inside run 105's engine (SmolLM2 k2v2, eager, float32, in this
process), every decode_attention call is repeated on the two-launch path and the two outputs
compared: the largest max |diff| / max |out| over all calls and the arguments of that call.

    python paths4.py MODEL DATA_DIR OUT.json
"""

from __future__ import annotations

import json
import os
import sys

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

import torch  # noqa: E402

from kvarn_cli.kernels import cuda_decode, triton_decode  # noqa: E402

original = triton_decode.decode_attention
fusable = cuda_decode._fusable
worst: dict[str, object] = {"rel": -1.0}
calls = [0]


def both(quantizer, query, records, block_table, num_blocks, *args, out=None, **kw):  # type: ignore[no-untyped-def]
    got = original(quantizer, query, records, block_table, num_blocks, *args, out=out, **kw)
    cuda_decode._fusable = lambda q, o: False
    try:
        ref = original(quantizer, query, records, block_table, num_blocks, *args, **kw)
    finally:
        cuda_decode._fusable = fusable
    calls[0] += 1
    rel = float((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30))
    if rel > float(worst["rel"]):  # type: ignore[arg-type]
        worst.update(rel=rel, call=calls[0], query=[list(query.shape), list(query.stride()), str(query.dtype)],
                     out=None if out is None else [list(out.shape), list(out.stride())],
                     table=list(block_table.shape), nblk=num_blocks.tolist(),
                     side=[a.tolist() for a in args[2:4]] if len(args) >= 4 and args[2] is not None else None,
                     splits=kw.get("num_splits"), fused=cuda_decode._fusable(query, out if out is not None else got))
    return got


triton_decode.decode_attention = both
sys.argv = [sys.argv[0], sys.argv[1], sys.argv[2], sys.argv[3], "250"]
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../../tests"))
import triton_engine_smoke  # noqa: E402

triton_engine_smoke.main()
print(json.dumps({"calls": calls[0], **worst}))
