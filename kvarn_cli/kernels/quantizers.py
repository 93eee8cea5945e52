"""The quantizers behind `make_quantizer`: KVarN presets and the baselines they are judged by.

Every quantizer turns one tile (G tokens x D channels of one KV head, post-RoPE) of K and V
into one record of `record_bytes` bytes (layout in kernels.layout) and back. The batched
forms take [N, G, D] and are vectorized over tiles (the paged cache calls them on every
block flush); the single-tile forms are the batched ones with N = 1.

All arithmetic is float32 on the input's device; inputs may be fp16/bf16/fp32/fp64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvarn_cli.kernels.hadamard import hadamard_matrix, rotation_on
from kvarn_cli.kernels.layout import RecordLayout, build_layout
from kvarn_cli.kernels.packing import pack_codes, unpack_codes
from kvarn_cli.kernels.rtn import FP16_MAX, STORAGE_DTYPES, pow2_multiplier, round_nearest, rtn_rows
from kvarn_cli.kernels.varn import varn_scales

HEAD_DIMS = (64, 128, 256)
BLOCK_SIZES = (64, 128)
SCALE_DTYPES = ("fp8", "fp16")
FP8_MAX = 448.0
INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_STORAGE_NAMES = {"fp8": "float8_e4m3fn", "fp16": "float16"}


@dataclass(frozen=True)
class _Spec:
    scheme: str  # "kvarn", "rtn", "fp8", "fp16"
    k_bits: int
    v_bits: int
    rotate: bool
    varn: bool


_SPECS: dict[str, _Spec] = {
    "k2v2": _Spec("kvarn", 2, 2, rotate=True, varn=True),
    "k4v2": _Spec("kvarn", 4, 2, rotate=True, varn=True),
    "k4v4": _Spec("kvarn", 4, 4, rotate=True, varn=True),
    "kivi2": _Spec("rtn", 2, 2, rotate=False, varn=False),
    "kivi4": _Spec("rtn", 4, 4, rotate=False, varn=False),
    "hadamard2": _Spec("rtn", 2, 2, rotate=True, varn=False),
    "fp8": _Spec("fp8", 8, 8, rotate=False, varn=False),
    "fp16": _Spec("fp16", 16, 16, rotate=False, varn=False),
}

#: Every name `make_quantizer` accepts.
QUANTIZER_NAMES: tuple[str, ...] = tuple(_SPECS)


class Quantizer:
    """Common interface; subclasses implement `_encode` and `_decode` on [N, G, D] tiles."""

    def __init__(self, name: str, head_dim: int, block_size: int, layout: RecordLayout) -> None:
        self.name = name
        self.head_dim = head_dim
        self.block_size = block_size
        self.layout = layout
        self.rotation: torch.Tensor | None = None

    @property
    def record_bytes(self) -> int:
        return self.layout.record_bytes

    @property
    def bits_per_element(self) -> float:
        """8 * record_bytes / (2 * G * D): scales, zero points and padding included."""
        return 8 * self.record_bytes / (2 * self.block_size * self.head_dim)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, head_dim={self.head_dim}, "
            f"block_size={self.block_size}, record_bytes={self.record_bytes})"
        )

    # -- public API -------------------------------------------------------------------------

    def quantize(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One tile k, v [G, D] -> 1-D uint8 record of record_bytes."""
        self._check_tiles(k, v, batched=False)
        return self.quantize_batch(k[None], v[None])[0]

    def dequantize(self, rec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """1-D uint8 record -> (k_hat, v_hat) float32 [G, D] in the original domain."""
        self._check_records(rec, batched=False)
        k_hat, v_hat = self.dequantize_batch(rec[None])
        return k_hat[0], v_hat[0]

    def quantize_batch(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Tiles k, v [N, G, D] -> uint8 records [N, record_bytes] on the input's device."""
        self._check_tiles(k, v, batched=True)
        if k.shape[0] == 0:
            return torch.zeros(0, self.record_bytes, dtype=torch.uint8, device=k.device)
        parts = self._encode(k.detach().to(torch.float32), v.detach().to(torch.float32))
        return self._assemble(parts, k.shape[0], k.device)

    def dequantize_batch(
        self, recs: torch.Tensor, rotated: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Records [N, record_bytes] -> (k_hat, v_hat) float32 [N, G, D].

        rotated=True leaves K and V in the Hadamard-rotated domain (attention then rotates
        q once and its output back once); for methods without rotation it changes nothing.
        """
        self._check_records(recs, batched=True)
        if recs.shape[0] == 0:
            empty = torch.zeros(0, self.block_size, self.head_dim, dtype=torch.float32, device=recs.device)
            return empty, empty.clone()
        k_rot, v_rot = self._decode(self.read_fields(recs))
        if self.rotation is None or rotated:
            return k_rot, v_rot
        h = rotation_on(self.head_dim, recs.device)
        return k_rot @ h.T, v_rot @ h.T

    def read_fields(self, recs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Records [N, record_bytes] -> {field name: [N, count] tensor of the field's dtype}."""
        self._check_records(recs, batched=True)
        n = recs.shape[0]
        out: dict[str, torch.Tensor] = {}
        for f in self.layout.fields:
            raw = recs[:, f.offset : f.offset + f.nbytes].contiguous()
            out[f.name] = raw.view(f.torch_dtype).reshape(n, f.count)
        return out

    # -- helpers ------------------------------------------------------------------------------

    def _encode(self, k: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _decode(self, fields: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _assemble(self, parts: dict[str, torch.Tensor], n: int, device: torch.device) -> torch.Tensor:
        recs = torch.zeros(n, self.record_bytes, dtype=torch.uint8, device=device)
        for f in self.layout.fields:
            value = parts[f.name].to(f.torch_dtype).reshape(n, f.count).contiguous()
            recs[:, f.offset : f.offset + f.nbytes] = value.view(torch.uint8).reshape(n, f.nbytes)
        return recs

    def _check_tiles(self, k: object, v: object, batched: bool) -> None:
        tile = (self.block_size, self.head_dim)
        form = "[N, G, D]" if batched else "[G, D]"
        for label, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{label} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype not in INPUT_DTYPES:
                raise ValueError(
                    f"{label} must be a floating tensor (float16/bfloat16/float32/float64), got {t.dtype}"
                )
            ok = t.dim() == 3 and tuple(t.shape[1:]) == tile if batched else tuple(t.shape) == tile
            if not ok:
                raise ValueError(
                    f"{label} must have shape {form} with G={self.block_size}, D={self.head_dim}, "
                    f"got {tuple(t.shape)}"
                )
        assert isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)
        if k.shape != v.shape:
            raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
        if k.device != v.device:
            raise ValueError(f"k and v are on different devices: {k.device} vs {v.device}")

    def _check_records(self, recs: object, batched: bool) -> None:
        if not isinstance(recs, torch.Tensor):
            raise ValueError(f"records must be a torch.Tensor, got {type(recs).__name__}")
        if recs.dtype != torch.uint8:
            raise ValueError(f"records must be torch.uint8, got {recs.dtype}")
        if batched:
            ok = recs.dim() == 2 and recs.shape[1] == self.record_bytes
            form = f"[N, {self.record_bytes}]"
        else:
            ok = recs.dim() == 1 and recs.shape[0] == self.record_bytes
            form = f"[{self.record_bytes}]"
        if not ok:
            raise ValueError(f"{self.name} records must have shape {form}, got {tuple(recs.shape)}")


class AffineQuantizer(Quantizer):
    """Min-max RTN with K per channel and V per token over the tile, optionally after the
    Hadamard rotation and VarN. KVarN = rotation + VarN; KIVI = neither; QuaRot-style
    "hadamard" = rotation only.

    With VarN, K's token scales c[t] and V's channel scales c[d] are stored (rounded to the
    scale dtype) and the tile is divided by the *stored* c before the per-row RTN, so the
    rounding of c costs no accuracy. VarN's row scales Sr cancel in the folded form:
    a = RTN step of (X/c/Sr) * Sr = RTN step of (X/c), z = min(X/c/Sr) * Sr = min(X/c).
    """

    def __init__(
        self, name: str, spec: _Spec, head_dim: int, block_size: int, scale_dtype: str
    ) -> None:
        self.spec = spec
        self.scale_dtype = scale_dtype
        self.storage = STORAGE_DTYPES[scale_dtype]
        sdt = _STORAGE_NAMES[scale_dtype]
        d, g = head_dim, block_size
        specs: list[tuple[str, int, str]] = [
            ("k_codes", g * d * spec.k_bits // 8, "uint8"),
            ("v_codes", g * d * spec.v_bits // 8, "uint8"),
            ("k_zero", d, "float16"),
            ("v_zero", g, "float16"),
            ("k_scale", d, sdt),
        ]
        if spec.varn:
            specs.append(("k_token_scale", g, sdt))
        specs.append(("v_scale", g, sdt))
        if spec.varn:
            specs.append(("v_channel_scale", d, sdt))
        specs.append(("k_scale_mult", 1, "float32"))
        specs.append(("k_zero_mult", 1, "float32"))
        if spec.varn:
            specs.append(("k_token_scale_mult", 1, "float32"))
        specs.append(("v_scale_mult", 1, "float32"))
        specs.append(("v_zero_mult", 1, "float32"))
        if spec.varn:
            specs.append(("v_channel_scale_mult", 1, "float32"))
        layout = build_layout(
            spec.scheme, d, g, spec.k_bits, spec.v_bits, spec.rotate, spec.varn, scale_dtype, specs
        )
        super().__init__(name, head_dim, block_size, layout)
        self.rotation = hadamard_matrix(head_dim) if spec.rotate else None

    def _encode_side(
        self, x: torch.Tensor, bits: int, prefix: str, col_name: str
    ) -> dict[str, torch.Tensor]:
        """Quantize tiles x [N, R, C] per row; returns the record parts of one side (K or V)."""
        parts: dict[str, torch.Tensor] = {}
        if self.spec.varn:
            col_scale, _row_scale = varn_scales(x)
            col_scale = col_scale[:, 0, :]
            col_mult = pow2_multiplier(col_scale)
            col_stored = round_nearest(col_scale / col_mult[:, None], self.storage)
            divisor = col_stored.to(torch.float32) * col_mult[:, None]
            x = x / divisor[:, None, :]
            parts[f"{prefix}_{col_name}"] = col_stored
            parts[f"{prefix}_{col_name}_mult"] = col_mult
        codes, step, step_mult, zero, zero_mult = rtn_rows(x, bits, self.storage)
        parts[f"{prefix}_scale"] = step
        parts[f"{prefix}_scale_mult"] = step_mult
        parts[f"{prefix}_zero"] = zero
        parts[f"{prefix}_zero_mult"] = zero_mult
        parts[f"{prefix}_codes"] = codes
        return parts

    def _encode(self, k: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.rotation is not None:
            h = rotation_on(self.head_dim, k.device)
            k = k @ h
            v = v @ h
        n = k.shape[0]
        # K rows are channels (per-channel RTN over the tile's tokens), V rows are tokens.
        k_parts = self._encode_side(k.transpose(1, 2), self.spec.k_bits, "k", "token_scale")
        v_parts = self._encode_side(v, self.spec.v_bits, "v", "channel_scale")
        tile = self.block_size * self.head_dim
        # K codes are stored token-major ([G, D]), V codes channel-major ([D, G]): the layout
        # each decode dot wants its code operand in (kernels.layout)
        k_parts["k_codes"] = pack_codes(k_parts["k_codes"].transpose(1, 2).reshape(n, tile), self.spec.k_bits)
        v_parts["v_codes"] = pack_codes(v_parts["v_codes"].transpose(1, 2).reshape(n, tile), self.spec.v_bits)
        return {**k_parts, **v_parts}

    def _decode(self, fields: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        n = fields["k_codes"].shape[0]
        g, d = self.block_size, self.head_dim
        kq = unpack_codes(fields["k_codes"], self.spec.k_bits).reshape(n, g, d).to(torch.float32)
        vq = unpack_codes(fields["v_codes"], self.spec.v_bits).reshape(n, d, g).transpose(1, 2).to(torch.float32)
        k_step = fields["k_scale"].to(torch.float32) * fields["k_scale_mult"]
        v_step = fields["v_scale"].to(torch.float32) * fields["v_scale_mult"]
        k_zero = fields["k_zero"].to(torch.float32) * fields["k_zero_mult"]
        v_zero = fields["v_zero"].to(torch.float32) * fields["v_zero_mult"]
        k_rot = kq * k_step[:, None, :] + k_zero[:, None, :]
        v_rot = vq * v_step[:, :, None] + v_zero[:, :, None]
        if self.spec.varn:
            k_c = fields["k_token_scale"].to(torch.float32) * fields["k_token_scale_mult"]
            v_c = fields["v_channel_scale"].to(torch.float32) * fields["v_channel_scale_mult"]
            k_rot = k_rot * k_c[:, :, None]
            v_rot = v_rot * v_c[:, None, :]
        return k_rot, v_rot


class Fp8Quantizer(Quantizer):
    """e4m3 per element with one float32 scale per tile for K and one for V (amax / 448).

    The per-tile scale (ours) keeps small-magnitude tiles out of e4m3's subnormal range;
    vLLM's native fp8 cache uses one per-tensor scale (1.0 unless calibrated), so this
    baseline is at least as accurate as that one. Costs 8 bytes per record, padded to G.
    """

    def __init__(self, name: str, head_dim: int, block_size: int) -> None:
        n = head_dim * block_size
        specs = [
            ("k_codes", n, "float8_e4m3fn"),
            ("v_codes", n, "float8_e4m3fn"),
            ("k_mult", 1, "float32"),
            ("v_mult", 1, "float32"),
        ]
        layout = build_layout("fp8", head_dim, block_size, 8, 8, False, False, None, specs)
        super().__init__(name, head_dim, block_size, layout)

    @staticmethod
    def _encode_side(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amax = x.abs().amax(dim=(1, 2))
        mult = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        scaled = (x / mult[:, None, None]).clamp(-FP8_MAX, FP8_MAX)
        return scaled.to(torch.float8_e4m3fn), mult

    def _encode(self, k: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        k8, k_mult = self._encode_side(k)
        v8, v_mult = self._encode_side(v)
        return {"k_codes": k8, "v_codes": v8, "k_mult": k_mult, "v_mult": v_mult}

    def _decode(self, fields: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        n = fields["k_codes"].shape[0]
        g, d = self.block_size, self.head_dim
        k = fields["k_codes"].to(torch.float32).reshape(n, g, d) * fields["k_mult"][:, :, None]
        v = fields["v_codes"].to(torch.float32).reshape(n, g, d) * fields["v_mult"][:, :, None]
        return k, v


class Fp16Quantizer(Quantizer):
    """K and V stored as float16 (saturating at +-65504): the full-precision reference."""

    def __init__(self, name: str, head_dim: int, block_size: int) -> None:
        n = head_dim * block_size
        specs = [("k_codes", n, "float16"), ("v_codes", n, "float16")]
        layout = build_layout("fp16", head_dim, block_size, 16, 16, False, False, None, specs)
        super().__init__(name, head_dim, block_size, layout)

    def _encode(self, k: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "k_codes": k.clamp(-FP16_MAX, FP16_MAX).to(torch.float16),
            "v_codes": v.clamp(-FP16_MAX, FP16_MAX).to(torch.float16),
        }

    def _decode(self, fields: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        n = fields["k_codes"].shape[0]
        g, d = self.block_size, self.head_dim
        k = fields["k_codes"].to(torch.float32).reshape(n, g, d)
        v = fields["v_codes"].to(torch.float32).reshape(n, g, d)
        return k, v


def make_quantizer(
    name: str, head_dim: int = 128, block_size: int = 128, scale_dtype: str = "fp8"
) -> Quantizer:
    """Build the quantizer `name` (one of QUANTIZER_NAMES) for tiles of block_size x head_dim.

    scale_dtype ("fp8": e4m3 scales + fp16 zero points, the paper's 2.25-bit form; "fp16":
    all fp16) applies to the KVarN presets and the kivi/hadamard baselines; fp8/fp16
    quantizers accept and ignore it.
    """
    if not isinstance(name, str) or name not in _SPECS:
        raise ValueError(f"unknown quantizer {name!r}; expected one of: {', '.join(QUANTIZER_NAMES)}")
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {HEAD_DIMS}, got {head_dim!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size not in BLOCK_SIZES:
        raise ValueError(f"block_size must be one of {BLOCK_SIZES}, got {block_size!r}")
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype must be one of {SCALE_DTYPES}, got {scale_dtype!r}")
    spec = _SPECS[name]
    if spec.scheme == "fp8":
        return Fp8Quantizer(name, head_dim, block_size)
    if spec.scheme == "fp16":
        return Fp16Quantizer(name, head_dim, block_size)
    return AffineQuantizer(name, spec, head_dim, block_size, scale_dtype)
