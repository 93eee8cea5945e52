"""Compile the Triton flush kernel for sm_90 without a GPU and print its resource usage.

    PYTHONPATH=$PWD python benchmarks/aot_flush.py [--variant fast2-s|fast|fast2|fast-s|v1] [--method k2v2] [--dim 64] [--warps 8]

Registers, spills and shared memory decide how many flush programs fit on an SM; this shows
them on a machine without a GPU (triton's bundled cuobjdump reads the cubin), so a kernel
change can be checked before it is timed on the H100. The triton here may be newer than the
GPU machine's, so the numbers are a guide, not the GPU's exact figures.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kvarn_cli.kernels import make_quantizer
from kvarn_cli.kernels import triton_flush as tf
from kvarn_cli.kernels.triton_common import kernel_layout


def compile_flush(variant: str, method: str, dim: int, warps: int):  # type: ignore[no-untyped-def]
    lay = kernel_layout(make_quantizer(method, head_dim=dim, block_size=128).layout)
    fn = tf._flush_kernel
    consts = tf.kernel_constants(lay, variant, torch.bfloat16)
    sig: dict[str, str] = {}
    div = []
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = {"rec_ptr": "*u8", "block_ptr": "*i32", "scratch_ptr": "*fp32", "layer_ptr": "*i64",
                         "rot_ptr": {tl.float32: "*fp32", tl.bfloat16: "*bf16", tl.float16: "*fp16"}[consts["DOT_DTYPE"]]}.get(name, "*bf16")
            div.append(i)
        else:
            sig[name] = "i32"
            div.append(i)
    src = ASTSource(
        fn=fn,
        signature=sig,
        constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()},
        attrs={(i,): [["tt.divisibility", 16]] for i in div},
    )
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))


def loop_counts(ptx: str) -> list[tuple[int, int]]:
    """(bar.sync, shfl) inside each long loop body of the PTX (the VarN iterations of the K
    and V branches): the serial steps one iteration costs, a proxy for its latency."""
    lines = ptx.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\$L__BB\d+_\d+):", line.strip()))}
    counts = []
    for i, line in enumerate(lines):
        m = re.search(r"bra(?:\.uni)?\s+(\$L__BB\d+_\d+);", line)
        if m and m.group(1) in labels and i - labels[m.group(1)] > 500:
            body = lines[labels[m.group(1)] : i]
            counts.append((sum("bar.sync" in x for x in body), sum("shfl" in x for x in body)))
    return sorted(set(counts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default=tf.DEFAULT_VARIANT, choices=tf.VARIANTS)
    ap.add_argument("--method", default="k2v2")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--warps", type=int, help="default: the kernel's own choice for the variant")
    ap.add_argument("--keep", type=Path, help="write the cubin, ptx and ttgir here")
    args = ap.parse_args()
    if args.warps is None:
        args.warps = tf.default_warps(args.dim) if args.variant != "v1" else 8
    kernel = compile_flush(args.variant, args.method, args.dim, args.warps)
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(args.keep or tmp) / f"flush_{args.variant}_{args.method}_{args.dim}_w{args.warps}.cubin"
        cubin.parent.mkdir(parents=True, exist_ok=True)
        cubin.write_bytes(kernel.asm["cubin"])
        if args.keep:
            cubin.with_suffix(".ptx").write_text(kernel.asm["ptx"])
            cubin.with_suffix(".ttgir").write_text(kernel.asm["ttgir"])
        usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(cubin)], capture_output=True, text=True, check=True)
    lines = [line.strip() for line in usage.stdout.splitlines() if "REG" in line]
    loops = " ".join(f"{bars} bar.sync/{shfl} shfl" for bars, shfl in loop_counts(kernel.asm["ptx"]))
    print(f"flush {args.variant} {args.method} d={args.dim} warps={args.warps} triton {triton.__version__}: "
          f"{' '.join(lines)} (triton shared {kernel.metadata.shared}); per VarN iteration: {loops}")


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
    main()
