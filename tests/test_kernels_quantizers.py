"""The public quantizer API: shapes, layouts, determinism, batching, devices, bad arguments,
and the error bounds that follow from min-max RTN with the stored scales."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kv_tiles import key_like, value_like

from kvarn_cli.kernels import QUANTIZER_NAMES, make_quantizer
from kvarn_cli.kernels.quantizers import AffineQuantizer

SHAPES = [(64, 64), (64, 128), (128, 64), (128, 128), (256, 64), (256, 128)]
AFFINE = ["k2v2", "k4v2", "k4v4", "kivi2", "kivi4", "hadamard2"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def tiles(n: int, g: int, d: int, seed: int = 0, k_mag: float = 1.0, v_mag: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    return key_like(n, g, d, seed, k_mag), value_like(n, g, d, seed, v_mag)


def test_names() -> None:
    assert set(QUANTIZER_NAMES) == {"k2v2", "k4v2", "k4v4", "kivi2", "kivi4", "hadamard2", "fp8", "fp16"}


@pytest.mark.parametrize("name", QUANTIZER_NAMES)
@pytest.mark.parametrize("d,g", SHAPES)
@pytest.mark.parametrize("scale_dtype", ["fp8", "fp16"])
def test_layout_is_consistent(name: str, d: int, g: int, scale_dtype: str) -> None:
    qz = make_quantizer(name, head_dim=d, block_size=g, scale_dtype=scale_dtype)
    lay = qz.layout
    assert (qz.name, qz.head_dim, qz.block_size) == (name, d, g)
    assert lay.record_bytes == qz.record_bytes and qz.record_bytes % g == 0
    assert lay.token_bytes * g == qz.record_bytes
    assert qz.bits_per_element == 8 * qz.record_bytes / (2 * g * d)
    end = 0
    for f in sorted(lay.fields, key=lambda f: f.offset):
        assert f.offset >= end, "fields overlap"
        assert f.offset % 4 == 0
        if f.dtype != "float32":
            assert f.offset % 64 == 0
        end = f.offset + f.nbytes
    assert end <= qz.record_bytes < end + g  # padding only up to the next multiple of G
    k_bits = lay.field("k_codes").nbytes * 8 // (g * d)
    v_bits = lay.field("v_codes").nbytes * 8 // (g * d)
    assert (k_bits, v_bits) == (lay.k_bits, lay.v_bits)
    assert (qz.rotation is not None) == lay.rotated
    if name.startswith("k") and name[1].isdigit():
        assert lay.varn and lay.rotated and lay.scheme == "kvarn"
        assert lay.field("k_token_scale").count == g and lay.field("v_channel_scale").count == d
    else:
        assert not lay.varn and "k_token_scale" not in lay


def test_bits_per_element_of_the_paper_setting() -> None:
    qz = make_quantizer("k2v2", head_dim=128, block_size=128)
    # codes 2 bits + per 128-element group 2 fp8 scales and one fp16 zero = 2.25, plus 16 bytes
    # of power-of-two multipliers padded to one more byte per token: 2.28125
    assert qz.bits_per_element == pytest.approx(2.28125)
    assert qz.bits_per_element <= 2.35
    assert make_quantizer("k4v2", head_dim=128, block_size=128, scale_dtype="fp16").bits_per_element == pytest.approx(3.40625)
    assert make_quantizer("fp16", head_dim=64, block_size=128).bits_per_element == 16.0


@pytest.mark.parametrize("name", QUANTIZER_NAMES)
def test_round_trip_shapes_dtypes_and_determinism(name: str) -> None:
    qz = make_quantizer(name, head_dim=64, block_size=128)
    k, v = tiles(1, 128, 64, seed=3)
    rec = qz.quantize(k[0], v[0])
    assert rec.dtype == torch.uint8 and rec.shape == (qz.record_bytes,)
    assert torch.equal(rec, qz.quantize(k[0].clone(), v[0].clone()))
    k_hat, v_hat = qz.dequantize(rec)
    assert k_hat.dtype == torch.float32 and k_hat.shape == (128, 64) and v_hat.shape == (128, 64)
    rel_k = float((k_hat - k[0]).norm() / k[0].norm())
    rel_v = float((v_hat - v[0]).norm() / v[0].norm())
    limit = {"2": 0.7, "4": 0.15, "8": 0.05, "6": 1e-3}[name[-1]]  # loose sanity, bounds below
    assert rel_k < limit and rel_v < limit


@pytest.mark.parametrize("name", QUANTIZER_NAMES)
@pytest.mark.parametrize("d,g", [(64, 64), (128, 128)])
def test_batched_equals_single_tile(name: str, d: int, g: int) -> None:
    qz = make_quantizer(name, head_dim=d, block_size=g)
    k, v = tiles(6, g, d, seed=5)
    recs = qz.quantize_batch(k, v)
    assert recs.shape == (6, qz.record_bytes) and recs.dtype == torch.uint8
    singles = torch.stack([qz.quantize(k[i], v[i]) for i in range(6)])
    assert torch.equal(recs, singles)
    # order of tiles in the batch does not matter
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert torch.equal(qz.quantize_batch(k[perm], v[perm]), recs[perm])
    k_hat, v_hat = qz.dequantize_batch(recs)
    for i in range(6):
        k1, v1 = qz.dequantize(recs[i])
        assert torch.equal(k_hat[i], k1) and torch.equal(v_hat[i], v1)


@pytest.mark.parametrize("name", QUANTIZER_NAMES)
def test_empty_batch(name: str) -> None:
    qz = make_quantizer(name, head_dim=64, block_size=64)
    empty = torch.zeros(0, 64, 64)
    recs = qz.quantize_batch(empty, empty)
    assert recs.shape == (0, qz.record_bytes)
    k_hat, v_hat = qz.dequantize_batch(recs)
    assert k_hat.shape == (0, 64, 64) and v_hat.shape == (0, 64, 64)


@pytest.mark.parametrize("name", QUANTIZER_NAMES)
def test_rotated_output_is_the_rotated_domain(name: str) -> None:
    qz = make_quantizer(name, head_dim=64, block_size=64)
    k, v = tiles(2, 64, 64, seed=8)
    recs = qz.quantize_batch(k, v)
    k_hat, v_hat = qz.dequantize_batch(recs)
    k_rot, v_rot = qz.dequantize_batch(recs, rotated=True)
    if qz.rotation is None:
        assert torch.equal(k_hat, k_rot) and torch.equal(v_hat, v_rot)
    else:
        h = qz.rotation
        assert torch.allclose(k_rot @ h.T, k_hat, atol=1e-5) and torch.allclose(v_rot @ h.T, v_hat, atol=1e-5)
        # attention in the rotated domain equals attention in the original one
        q = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
        assert torch.allclose((q @ h) @ k_rot[0].T, q @ k_hat[0].T, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_input_dtypes(dtype: torch.dtype) -> None:
    qz = make_quantizer("k2v2", head_dim=64, block_size=64)
    k, v = tiles(2, 64, 64, seed=4)
    k, v = k.to(dtype), v.to(dtype)
    recs = qz.quantize_batch(k, v)
    assert torch.equal(recs, qz.quantize_batch(k.float(), v.float()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", QUANTIZER_NAMES)
def test_device_follows_input(device: str, name: str) -> None:
    qz = make_quantizer(name, head_dim=64, block_size=64)
    k, v = tiles(2, 64, 64, seed=6)
    recs = qz.quantize_batch(k.to(device), v.to(device))
    assert recs.device.type == device
    k_hat, v_hat = qz.dequantize_batch(recs)
    assert k_hat.device.type == device
    if device != "cpu":  # same bytes up to rare rounding ties; same values within rounding
        cpu = qz.quantize_batch(k, v)
        assert (recs.cpu() != cpu).float().mean() < 0.01
        assert torch.allclose(k_hat.cpu(), qz.dequantize_batch(cpu)[0], rtol=0.1, atol=0.1)


# -- error bounds ---------------------------------------------------------------------------


def _rtn_bound_holds(qz: AffineQuantizer, k: torch.Tensor, v: torch.Tensor) -> None:
    """With the stored step a, zero z and column scale c of each row: the grid
    [z, z + L*a] covers the row (up to the fp16 rounding e of z), hence every element is
    reconstructed within (a/2 + e) * c."""
    recs = qz.quantize_batch(k, v)
    fields = qz.read_fields(recs)
    k_rot_hat, v_rot_hat = qz.dequantize_batch(recs, rotated=True)
    h = qz.rotation.double() if qz.rotation is not None else torch.eye(qz.head_dim, dtype=torch.float64)
    k_rot, v_rot = k.double() @ h, v.double() @ h
    n, g, d = k.shape
    f = {name: t.double() for name, t in fields.items()}
    k_c = f["k_token_scale"] * f["k_token_scale_mult"] if qz.spec.varn else torch.ones(n, g, dtype=torch.float64)
    v_c = f["v_channel_scale"] * f["v_channel_scale_mult"] if qz.spec.varn else torch.ones(n, d, dtype=torch.float64)
    k_step, v_step = f["k_scale"] * f["k_scale_mult"], f["v_scale"] * f["v_scale_mult"]  # [N, D], [N, G]
    k_zero, v_zero = f["k_zero"] * f["k_zero_mult"], f["v_zero"] * f["v_zero_mult"]
    # fp16 rounding of a zero point: half a spacing, relative 2^-11, or absolute below normal
    k_zero_err = torch.maximum(k_zero.abs() * 2.0**-11, f["k_zero_mult"] * 2.0**-25)
    v_zero_err = torch.maximum(v_zero.abs() * 2.0**-11, f["v_zero_mult"] * 2.0**-25)
    # normalized tiles the RTN saw: K per channel over tokens, V per token over channels
    k_u = k_rot / k_c[:, :, None]  # [N, G, D], rows = channels (dim 1 is the row's extent)
    v_u = v_rot / v_c[:, None, :]  # [N, G, D], rows = tokens (dim 2)
    levels_k, levels_v = 2**qz.spec.k_bits - 1, 2**qz.spec.v_bits - 1
    eps = 1e-5
    k_tol = eps * k_u.abs().amax(dim=(1, 2), keepdim=True)[:, 0]
    v_tol = eps * v_u.abs().amax(dim=(1, 2), keepdim=True)[:, 0]
    assert torch.all(k_zero <= k_u.amin(dim=1) + k_zero_err + k_tol)
    assert torch.all(k_zero + levels_k * k_step >= k_u.amax(dim=1) - k_zero_err - k_tol)
    assert torch.all(v_zero <= v_u.amin(dim=2) + v_zero_err + v_tol)
    assert torch.all(v_zero + levels_v * v_step >= v_u.amax(dim=2) - v_zero_err - v_tol)
    k_bound = (k_step / 2 + k_zero_err + k_tol)[:, None, :] * k_c[:, :, None]
    v_bound = (v_step / 2 + v_zero_err + v_tol)[:, :, None] * v_c[:, None, :]
    assert torch.all((k_rot_hat.double() - k_rot).abs() <= k_bound * (1 + eps))
    assert torch.all((v_rot_hat.double() - v_rot).abs() <= v_bound * (1 + eps))


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(AFFINE),
    scale_dtype=st.sampled_from(["fp8", "fp16"]),
    shape=st.sampled_from([(64, 64), (64, 128), (128, 64)]),
    seed=st.integers(0, 10_000),
    k_mag=st.floats(1e-3, 1e3),
    v_mag=st.floats(1e-4, 1e2),
)
def test_rtn_error_bound_with_stored_scales(
    name: str, scale_dtype: str, shape: tuple[int, int], seed: int, k_mag: float, v_mag: float
) -> None:
    d, g = shape
    qz = make_quantizer(name, head_dim=d, block_size=g, scale_dtype=scale_dtype)
    assert isinstance(qz, AffineQuantizer)
    k, v = tiles(2, g, d, seed=seed, k_mag=k_mag, v_mag=v_mag)
    _rtn_bound_holds(qz, k, v)


@pytest.mark.parametrize("name", AFFINE)
def test_stored_steps_are_tight(name: str) -> None:
    """The largest stored step sits in [128, 256] on the fp8 grid, and rounding up costs at
    most one fp8 spacing (1/8 relative in the normal range)."""
    qz = make_quantizer(name, head_dim=64, block_size=128)
    k, v = tiles(3, 128, 64, seed=2, v_mag=0.01)
    fields = qz.read_fields(qz.quantize_batch(k, v))
    for side in ("k", "v"):
        stored = fields[f"{side}_scale"].float()
        top = stored.amax(dim=1)
        assert torch.all((top >= 128) & (top <= 256))
        mult = fields[f"{side}_scale_mult"][:, 0]
        assert torch.all(torch.log2(mult) == torch.round(torch.log2(mult)))


@pytest.mark.parametrize("name", ["k2v2", "kivi2", "k4v4"])
def test_relative_error_does_not_depend_on_overall_magnitude_through_storage(name: str) -> None:
    """With fp8 scales, tiles at 1e-3 or 1e3 times the size must not lose accuracy to
    underflow/overflow of the scales (VarN itself is scale dependent, so KVarN is compared
    between magnitudes where its clamps are inactive: K large enough, V scaled with it)."""
    qz = make_quantizer(name, head_dim=64, block_size=128)
    k, v = tiles(4, 128, 64, seed=12, k_mag=1.0, v_mag=1.0)
    errors = []
    for mag in ([1e3, 1.0] if name.startswith("k") and name[1].isdigit() else [1e-3, 1.0, 1e3]):
        k_hat, v_hat = qz.dequantize_batch(qz.quantize_batch(k * mag, v * mag))
        errors.append((float((k_hat - k * mag).norm() / (k * mag).norm()), float((v_hat - v * mag).norm() / (v * mag).norm())))
    for e in errors[1:]:
        assert e == pytest.approx(errors[0], rel=0.1)


def test_fp16_round_trips_fp16_values_exactly() -> None:
    qz = make_quantizer("fp16", head_dim=128, block_size=64)
    k, v = tiles(2, 64, 128, seed=1, k_mag=10.0)
    k, v = k.half().float(), v.half().float()
    k_hat, v_hat = qz.dequantize_batch(qz.quantize_batch(k, v))
    assert torch.equal(k_hat, k) and torch.equal(v_hat, v)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), mag=st.floats(1e-4, 1e4))
def test_fp8_error_is_e4m3_rounding_of_the_tile_scaled_values(seed: int, mag: float) -> None:
    qz = make_quantizer("fp8", head_dim=64, block_size=64)
    k, v = tiles(2, 64, 64, seed=seed, k_mag=mag, v_mag=mag)
    recs = qz.quantize_batch(k, v)
    k_hat, v_hat = qz.dequantize_batch(recs)
    for x, x_hat in ((k, k_hat), (v, v_hat)):
        mult = x.abs().amax(dim=(1, 2), keepdim=True) / 448.0
        # e4m3: half a spacing is <= 1/16 relative for normals, <= 2^-10 absolute below 2^-6
        bound = torch.maximum(x.abs() / 16, torch.full_like(x, 2.0**-10) * mult)
        assert torch.all((x_hat - x).abs() <= bound * (1 + 1e-5))


@pytest.mark.parametrize("name", AFFINE)
def test_constant_and_zero_tiles(name: str) -> None:
    qz = make_quantizer(name, head_dim=64, block_size=64)
    zero = torch.zeros(1, 64, 64)
    k_hat, v_hat = qz.dequantize_batch(qz.quantize_batch(zero, zero))
    assert torch.equal(k_hat, zero) and torch.equal(v_hat, zero)
    const = torch.full((1, 64, 64), 0.75)
    k_hat, v_hat = qz.dequantize_batch(qz.quantize_batch(const, const))
    if qz.rotation is None:  # every row is constant: step 0, the zero point holds the value
        assert torch.equal(k_hat, const) and torch.equal(v_hat, const)
    else:  # H maps a constant row onto channel 0 alone; then the ordinary bound applies
        _rtn_bound_holds(qz, const, const)


# -- bad arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "k3v3"}, "unknown quantizer"),
        ({"name": 2}, "unknown quantizer"),
        ({"name": "k2v2", "head_dim": 96}, "head_dim"),
        ({"name": "k2v2", "head_dim": 64.0}, "head_dim"),
        ({"name": "k2v2", "head_dim": True}, "head_dim"),
        ({"name": "k2v2", "block_size": 16}, "block_size"),
        ({"name": "k2v2", "block_size": "128"}, "block_size"),
        ({"name": "kivi2", "scale_dtype": "bf16"}, "scale_dtype"),
        ({"name": "fp8", "scale_dtype": "int8"}, "scale_dtype"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_quantizer(**kwargs)


@pytest.mark.parametrize("name", ["k2v2", "fp8", "fp16"])
def test_bad_tiles_and_records(name: str) -> None:
    qz = make_quantizer(name, head_dim=64, block_size=64)
    good = torch.zeros(64, 64)
    with pytest.raises(ValueError, match="shape"):
        qz.quantize(torch.zeros(64, 128), torch.zeros(64, 128))
    with pytest.raises(ValueError, match="shape"):
        qz.quantize(torch.zeros(1, 64, 64), torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match="shape"):
        qz.quantize_batch(good, good)
    with pytest.raises(ValueError, match="floating"):
        qz.quantize(good.int(), good.int())
    with pytest.raises(ValueError, match="torch.Tensor"):
        qz.quantize(good.numpy(), good)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shapes differ"):
        qz.quantize_batch(torch.zeros(2, 64, 64), torch.zeros(3, 64, 64))
    rec = qz.quantize(good, good)
    with pytest.raises(ValueError, match="uint8"):
        qz.dequantize(rec.to(torch.int8))
    with pytest.raises(ValueError, match="shape"):
        qz.dequantize(rec[:-1])
    with pytest.raises(ValueError, match="shape"):
        qz.dequantize_batch(rec)
    with pytest.raises(ValueError, match="shape"):
        qz.dequantize(rec[None])
    with pytest.raises(ValueError, match="records must be a torch.Tensor"):
        qz.dequantize(bytes(rec.tolist()))  # type: ignore[arg-type]


def test_fp8_and_fp16_accept_and_ignore_scale_dtype() -> None:
    k, v = tiles(1, 64, 64, seed=0)
    for name in ("fp8", "fp16"):
        a = make_quantizer(name, head_dim=64, block_size=64, scale_dtype="fp8")
        b = make_quantizer(name, head_dim=64, block_size=64, scale_dtype="fp16")
        assert a.layout == b.layout
        assert torch.equal(a.quantize_batch(k, v), b.quantize_batch(k, v))
        assert a.rotation is None and math.isfinite(a.bits_per_element)


@pytest.mark.parametrize("name", ["k2v2", "kivi4", "fp8", "fp16"])
def test_non_contiguous_inputs(name: str) -> None:
    """The cache may hand over strided views; results must not depend on memory layout."""
    qz = make_quantizer(name, head_dim=64, block_size=64)
    k, v = tiles(3, 64, 64, seed=13)
    k_strided = k.transpose(1, 2).contiguous().transpose(1, 2)
    v_strided = torch.stack([v, v], dim=-1)[..., 0]
    assert not k_strided.is_contiguous() and not v_strided.is_contiguous()
    assert torch.equal(qz.quantize_batch(k_strided, v_strided), qz.quantize_batch(k, v))
    recs = torch.cat([qz.quantize_batch(k, v)] * 2, dim=1)[:, : qz.record_bytes]
    assert not recs.is_contiguous()
    k_hat, _ = qz.dequantize_batch(recs)
    assert torch.equal(k_hat, qz.dequantize_batch(recs.contiguous())[0])
