"""Which compiled variant each launch of kvarn's Triton kernels would need.

Triton keys its compiled kernels on the launch's specialization: each constexpr's value and,
for the other arguments, their type plus whether an integer is 1 or divisible by 16 and
whether a pointer is 16-byte aligned (unless the kernel lists the argument in
do_not_specialize). A key seen for the first time in a job means a compile in the middle of
it, seconds on the H100. Under TRITON_INTERPRET nothing compiles, so this computes the keys
with Triton's own specialization function and records them per kernel.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

#: (kernel name) -> set of launch keys
Launches = dict[str, set[tuple]]


def _specialize(value: Any, specialize: bool) -> tuple:
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    return tuple(native_specialize_impl(BaseBackend, value, False, specialize, specialize))


def launch_key(kernel: Any, args: tuple, kwargs: dict) -> tuple:
    """The specialization of one launch of `kernel` (a @triton.jit function, compiled or
    interpreted), plus its launch options (num_warps, num_stages, ...)."""
    params = inspect.signature(kernel.fn).parameters
    options = getattr(kernel, "kwargs", None) or {}
    skip = set(getattr(kernel, "do_not_specialize", None) or options.get("do_not_specialize") or [])
    bound = dict(zip(params, args))
    bound.update({k: v for k, v in kwargs.items() if k in params})
    key: list[tuple] = []
    for name, param in params.items():
        if name not in bound:
            continue
        value = bound[name]
        if "constexpr" in str(param.annotation):
            key.append((name, "constexpr", str(value)))
        else:
            key.append((name, *_specialize(value, name not in skip)))
    # the grid is not part of it: a new grid size launches the same compiled kernel
    key.extend(sorted((k, str(v)) for k, v in kwargs.items() if k not in params and k not in ("grid", "warmup")))
    return tuple(key)


def kernels() -> dict[str, Any]:
    """kvarn's launched Triton kernels by name."""
    from kvarn_cli.kernels import triton_decode, triton_dequant, triton_flush, triton_pack, triton_stage

    found = {}
    for module in (triton_decode, triton_dequant, triton_flush, triton_pack, triton_stage):
        for name, obj in vars(module).items():
            if name.endswith("_kernel") or name.startswith("_split_kernel"):
                if hasattr(obj, "fn") and hasattr(obj, "run"):
                    found[name] = obj
    return found


@contextmanager
def recording() -> Iterator[Launches]:
    """Record the launch keys of kvarn's kernels inside the block (the launches still run)."""
    seen: Launches = {}
    patched = []
    for name, kernel in kernels().items():
        real = kernel.run

        def run(*args: Any, _real: Any = real, _kernel: Any = kernel, _name: str = name, **kw: Any) -> Any:
            seen.setdefault(_name, set()).add(launch_key(_kernel, args, kw))
            return _real(*args, **kw)

        kernel.run = run
        patched.append(kernel)
    try:
        yield seen
    finally:
        for kernel in patched:
            del kernel.run  # back to the class's method


def differing(keys: set[tuple]) -> dict[str, list[str]]:
    """The arguments whose specialization differs between `keys` (for assertion messages)."""
    rows = [dict((k[0], k[1:]) for k in key) for key in keys]
    names = set().union(*rows) if rows else set()
    return {n: sorted({str(r.get(n)) for r in rows}) for n in sorted(names) if len({str(r.get(n)) for r in rows}) > 1}


def aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0
