"""The byte layout of one packed record (one tile of G tokens x D channels of one KV head).

A record is what the paged cache stores per (block, layer, KV head): a flat run of
`record_bytes` bytes, little-endian, with the fields below at fixed offsets. Kernels that
read records (the paged cache, later Triton kernels) need only this description.

Affine schemes ("kvarn", "rtn" = kivi/hadamard baselines) decode as

    K_rot[t, d] = (k_codes[t, d] * k_scale[d] * k_scale_mult + k_zero[d] * k_zero_mult)
                  * k_token_scale[t] * k_token_scale_mult
    V_rot[t, d] = (v_codes[t, d] * v_scale[t] * v_scale_mult + v_zero[t] * v_zero_mult)
                  * v_channel_scale[d] * v_channel_scale_mult

(all fields widened to float32 first; the *_mult fields are float32 powers of two, one per
tile, that keep the fp8/fp16 vectors inside their dtype's range: see kernels.rtn)
(the token/channel scale factors exist only when `varn` is true, else they are 1), and
K = K_rot @ H.T when `rotated` (H = the Hadamard matrix; H.T == H). K codes are token-major
([G, D] row-major), V codes channel-major ([D, G] row-major: each channel's G tokens in a
run), both bit-packed along their rows as in kernels.packing. (V was token-major before
2026-11-23; channel-major lets the decode kernel feed the unpacked V codes to the tensor
cores without a transpose through shared memory: docs/BENCHMARKS.md run 53.) Float schemes ("fp8", "fp16")
store K then V as [G, D] values of that dtype; "fp8" also stores one float32 multiplier
per K and V tile (K = k_codes * k_mult).

Field order: codes first, then fp16 zero points, then the scale vectors, then the float32
multipliers, then zero padding. Every offset is a multiple of 4 and the code/zero/scale
offsets are multiples of 64 for all supported (D, G). `record_bytes` is rounded up to a
multiple of G so one vLLM block of G tokens holds exactly one record per head and layer
(`token_bytes = record_bytes // G` bytes per token and head); the padding is counted in
`bits_per_element`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES: dict[str, torch.dtype] = {
    "uint8": torch.uint8,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float16": torch.float16,
    "float32": torch.float32,
}
ITEMSIZE: dict[str, int] = {"uint8": 1, "float8_e4m3fn": 1, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class Field:
    """One field of a record: `count` elements of `dtype` starting at byte `offset`."""

    name: str
    offset: int
    count: int
    dtype: str

    @property
    def nbytes(self) -> int:
        return self.count * ITEMSIZE[self.dtype]

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class RecordLayout:
    """Where each field of a record lives; see the module docstring for the decode formula."""

    scheme: str  # "kvarn", "rtn", "fp8" or "fp16"
    head_dim: int
    block_size: int
    k_bits: int  # bits per K code (8 for fp8, 16 for fp16)
    v_bits: int
    rotated: bool  # K/V stored in the Hadamard-rotated domain
    varn: bool  # token (K) and channel (V) scale vectors are present
    scale_dtype: str | None  # "fp8"/"fp16" for the affine schemes, None otherwise
    fields: tuple[Field, ...]
    record_bytes: int

    @property
    def token_bytes(self) -> int:
        """Bytes per (token, KV head): record_bytes / block_size."""
        return self.record_bytes // self.block_size

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"record layout has no field {name!r}; it has {', '.join(self.names)}")

    def __contains__(self, name: object) -> bool:
        return any(f.name == name for f in self.fields)


def build_layout(
    scheme: str,
    head_dim: int,
    block_size: int,
    k_bits: int,
    v_bits: int,
    rotated: bool,
    varn: bool,
    scale_dtype: str | None,
    specs: list[tuple[str, int, str]],
) -> RecordLayout:
    """Lay out `specs` (name, count, dtype) back to back and pad to a multiple of block_size."""
    fields: list[Field] = []
    offset = 0
    for name, count, dtype in specs:
        size = ITEMSIZE[dtype]
        offset = -(-offset // size) * size
        fields.append(Field(name, offset, count, dtype))
        offset += count * size
    record_bytes = -(-offset // block_size) * block_size
    return RecordLayout(
        scheme=scheme,
        head_dim=head_dim,
        block_size=block_size,
        k_bits=k_bits,
        v_bits=v_bits,
        rotated=rotated,
        varn=varn,
        scale_dtype=scale_dtype,
        fields=tuple(fields),
        record_bytes=record_bytes,
    )
