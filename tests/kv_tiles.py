"""Synthetic K/V tiles with realistic structure for the kernel tests.

Real post-RoPE keys have a few large-offset/outlier channels (|K| up to 10-20) and some
near-silent ones, and tokens of very different norms; values are small (~0.01-1).
"""

from __future__ import annotations

import torch


def key_like(n: int, g: int, d: int, seed: int, magnitude: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    chan_scale = torch.exp(torch.randn(d, generator=gen) * 1.0)  # spread of channel sizes
    chan_scale[torch.randperm(d, generator=gen)[: d // 16]] *= 8.0  # outlier channels
    chan_scale[torch.randperm(d, generator=gen)[: d // 16]] *= 0.01  # near-silent channels
    chan_mean = torch.randn(d, generator=gen) * 2.0
    tok_scale = torch.exp(torch.randn(n, g, 1, generator=gen) * 0.5)
    k = (torch.randn(n, g, d, generator=gen) * chan_scale + chan_mean) * tok_scale
    return (k * magnitude).to(torch.float32)


def value_like(n: int, g: int, d: int, seed: int, magnitude: float = 0.1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 7919)
    chan_scale = torch.exp(torch.randn(d, generator=gen) * 0.7)
    tok_scale = torch.exp(torch.randn(n, g, 1, generator=gen) * 0.7)
    return (torch.randn(n, g, d, generator=gen) * chan_scale * tok_scale * magnitude).to(torch.float32)
