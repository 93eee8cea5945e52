"""The record codec the paged cache uses: kvarn_cli.kernels quantizers, built once per shape.

Everything in kvarn_cli.kvcache that needs a quantizer gets it from `quantizer_for`, so the
layout the backend allocates and the codec that fills it can never disagree.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

#: Replaces kvarn_cli.kernels.make_quantizer when set (tests of the cache plumbing install a
#: small codec here; see `use_factory`).
_factory: Callable[..., Any] | None = None


def use_factory(factory: Callable[..., Any] | None) -> None:
    """Build quantizers with `factory(name, head_dim=, block_size=)` (None: the real ones)."""
    global _factory
    _factory = factory
    quantizer_for.cache_clear()


@functools.lru_cache(maxsize=None)
def quantizer_for(name: str, head_dim: int, block_size: int) -> Any:
    if _factory is not None:
        return _factory(name, head_dim=head_dim, block_size=block_size)
    from kvarn_cli.kernels import make_quantizer

    return make_quantizer(name, head_dim=head_dim, block_size=block_size)
