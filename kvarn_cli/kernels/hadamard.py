"""The orthonormal Sylvester Hadamard rotation KVarN applies along head_dim (after RoPE).

Rotating keys and values by the same orthonormal H spreads outlier channels over all
channels, which makes per-channel/per-token min-max quantization far less lossy; attention
is unchanged if the query is rotated the same way and the output rotated back.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


def _check_power_of_two(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size must be a positive power of two, got {n!r}")


@lru_cache(maxsize=None)
def _sylvester_cpu(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    block = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.kron(block, h)
    return (h / math.sqrt(n)).to(torch.float32)


def hadamard_matrix(n: int) -> torch.Tensor:
    """Return a fresh float32 [n, n] orthonormal Sylvester matrix H = hadamard(n) / sqrt(n).

    H is symmetric and its own inverse (H @ H = I), so rotating back is `x @ H.T == x @ H`.
    """
    _check_power_of_two(n)
    return _sylvester_cpu(n).clone()


@lru_cache(maxsize=None)
def rotation_on(n: int, device: torch.device) -> torch.Tensor:
    """The same matrix as `hadamard_matrix`, cached per device for the hot path (read-only)."""
    _check_power_of_two(n)
    return _sylvester_cpu(n).to(device)
