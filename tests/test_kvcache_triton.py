"""The Triton path of kvarn_cli.kvcache.compute (flush_tiles + decode_attention) on the
simulated block manager, against the PyTorch path.

Without CUDA the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set in conftest),
so shapes are the smallest the real KVarN quantizers take: G = 64, D = 64. Two checks:
- every step, the Triton engine's output matches the PyTorch attention computed on the very
  same cache state (`shadow_err`): this isolates the decode kernel and the block table /
  side slots / fill-step tiles the backend feeds it;
- a Triton engine and a PyTorch engine run the same schedule side by side and their outputs
  agree within what quantization leaves (the Triton flush is not bit-exact: VarN near-ties).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

sys.path.insert(0, os.path.dirname(__file__))

from kvcache_sim import GridQuantizer, Request, Shape, SimEngine  # noqa: E402

from kvarn_cli.kernels import make_quantizer  # noqa: E402
from kvarn_cli.kvcache.compute import ENV_FORCE_TRITON, Codec  # noqa: E402

SHAPE = Shape(block_size=64, kv_heads=2, q_heads=4, head_dim=64)
#: the decode kernel against PyTorch SDPA on the same records: test_triton_kernels bounds it
#: at 1e-2 relative (measured < 1e-3 under the interpreter)
SHADOW_TOL = 1e-2


def tokens(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, 1000, n).tolist()


def engine(preset: str, triton: bool, num_slots: int = 8) -> SimEngine:
    qz = make_quantizer(preset, head_dim=SHAPE.head_dim, block_size=SHAPE.block_size)
    return SimEngine(SHAPE, num_blocks=24, num_slots=num_slots, quantizer=qz, triton=triton, reference=False)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def schedule(a: Request, b: Request, c: Request) -> list[list[tuple[Request, int]]]:
    """Chunked prefills, a decode next to prefills, decodes filling blocks (first and later
    ones, so the fill-step tile path runs with and without a sink), a prefix hit."""
    steps: list[list[tuple[Request, int]]] = [[(a, 40)], [(a, 23), (b, 30)]]  # a: 63 tokens
    steps.append([(a, 1), (b, 40)])  # a's decode fills block 0 (becomes the sink); b: 70
    steps += [[(a, 1), (b, 1)] for _ in range(3)]
    steps.append([(a, 1), (b, 50), (c, 70)])  # c shares a's first block (prefix hit)
    steps += [[(a, 1), (b, 1), (c, 1)] for _ in range(2)]
    return steps


def test_codec_picks_the_kernels_by_device_env_and_quantizer(monkeypatch: pytest.MonkeyPatch) -> None:
    qz = make_quantizer("k2v2", head_dim=64, block_size=64)
    cpu = torch.device("cpu")
    monkeypatch.delenv(ENV_FORCE_TRITON, raising=False)
    assert not Codec(qz, cpu).triton  # PyTorch stays the default on CPU
    monkeypatch.setenv(ENV_FORCE_TRITON, "1")
    assert Codec(qz, cpu).triton
    # codecs the kernels do not handle keep the PyTorch path, even when forced
    assert not Codec(make_quantizer("fp16", head_dim=64, block_size=64), cpu).triton
    assert not Codec(GridQuantizer(8, 4), cpu).triton
    with pytest.raises(ValueError):
        Codec(GridQuantizer(8, 4), cpu, triton=True)


@pytest.mark.parametrize("preset", ["k2v2", "k4v4"])
def test_triton_path_matches_the_pytorch_path_on_a_mixed_schedule(preset: str) -> None:
    eng_t = engine(preset, triton=True)
    eng_p = engine(preset, triton=False)
    reqs_t = [Request(0, tokens(1, 90)), Request(1, tokens(2, 90)), Request(2, tokens(1, 64) + tokens(3, 30))]
    reqs_p = [Request(r.rid, list(r.tokens)) for r in reqs_t]
    worst = 0.0
    for step in schedule(*reqs_t):
        index = {id(r): i for i, r in enumerate(reqs_t)}
        plan = eng_t.step(step)
        eng_p.step([(reqs_p[index[id(r)]], n) for r, n in step])
        assert plan is not None
        worst = max(worst, rel(eng_t.last_out, eng_p.last_out))
    assert reqs_t[2].blocks[0] == reqs_t[0].blocks[0]  # the prefix hit happened
    assert [r.blocks for r in reqs_t] == [r.blocks for r in reqs_p]
    assert eng_t.shadow_err < SHADOW_TOL, eng_t.shadow_err
    # different records (VarN near-ties) move outputs by a fraction of the quantization error
    assert worst < (0.05 if preset == "k2v2" else 0.01), worst
