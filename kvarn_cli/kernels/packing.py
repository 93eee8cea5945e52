"""Bit packing of 2- and 4-bit codes into bytes (little-endian within a byte).

Element j of a flat code vector lives in byte j // (8 // bits), at bit offset
(j % (8 // bits)) * bits. So for 2-bit codes byte 0 holds elements 0..3 with element 0 in
the two lowest bits. A tile's K codes are packed token-major ([G, D] row-major: token t's
codes are one run of D * bits / 8 bytes) and its V codes channel-major ([D, G]: channel d's
codes are one run of G * bits / 8 bytes); see kernels.layout.
"""

from __future__ import annotations

import torch

PACKABLE_BITS = (2, 4, 8)


def _check_bits(bits: int) -> int:
    if bits not in PACKABLE_BITS:
        raise ValueError(f"bits must be one of {PACKABLE_BITS}, got {bits!r}")
    return 8 // bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes [..., n] (each < 2**bits, n a multiple of 8 // bits) into [..., n*bits/8]."""
    per_byte = _check_bits(bits)
    if codes.dtype != torch.uint8:
        raise ValueError(f"codes must be torch.uint8, got {codes.dtype}")
    n = codes.shape[-1]
    if n % per_byte:
        raise ValueError(f"last dimension {n} is not a multiple of {per_byte}")
    grouped = codes.reshape(*codes.shape[:-1], n // per_byte, per_byte)
    packed = grouped[..., 0].clone()
    for j in range(1, per_byte):
        packed |= grouped[..., j] << (j * bits)
    return packed


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of pack_codes: uint8 [..., m] -> uint8 codes [..., m * 8 / bits]."""
    per_byte = _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed codes must be torch.uint8, got {packed.dtype}")
    mask = (1 << bits) - 1
    parts = [(packed >> (j * bits)) & mask for j in range(per_byte)]
    return torch.stack(parts, dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * per_byte)
