"""Compile a decode split kernel for sm_90 without a GPU and print its resources.

    PYTHONPATH=$PWD python benchmarks/aot_registers.py --variants hilo,tm --presets k2v2,k4v4 --head-dims 64,128
    PYTHONPATH=$PWD python benchmarks/aot_registers.py --stage [--stage-source old_triton_stage.py]

(--stage: the staging kernel instead, for 16-bit and float32 slots; --stage-source compiles
another version of kvarn_cli/kernels/triton_stage.py, e.g. `git show REV:<that path>`.)

Why: the split kernel is latency-bound on the H100 (benchmarks/GPU_NOTES.md) and its
registers per thread decide how many programs share an SM; this compiles the kernel as the
JIT would (16-divisible pointers/strides, triton's bundled ptxas, target sm_90) and reads
registers and spill stores/loads from the cubin, shared memory from the metadata, plus SASS instruction counts
(whole kernel, and the longest backward-branch loop: the per-block loop body), and `urbad`: wgmma
descriptor registers read before they are written, the ptxas miscompile behind run 12's faults
(anything but 0 faults or computes garbage on the GPU; see uniform_reads_before_write).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvarn_cli.kernels import make_quantizer  # noqa: E402
from kvarn_cli.kernels import triton_decode as td  # noqa: E402
from kvarn_cli.kernels.triton_common import kernel_layout  # noqa: E402

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
TYPES = {
    "q_ptr": "*bf16", "h_ptr": "*bf16", "rec_ptr": "*u8", "bt_ptr": "*i32", "nblk_ptr": "*i32",
    "ws_acc_ptr": "*fp32", "ws_ml_ptr": "*fp32", "qk_scale": "fp32",
}


def compile_variant(variant: str, preset: str, d: int, gqa: int, warps: int, stages: int):  # type: ignore[no-untyped-def]
    lay = kernel_layout(make_quantizer(preset, d, 128).layout)
    fn = td.split_kernel_for(variant)
    gp = max(16, triton.next_power_of_2(gqa))
    consts: dict[str, object] = dict(GQA=gqa, GP=gp, D=d, G=128, K_BITS=lay.k_bits, V_BITS=lay.v_bits,
                                     DT=tl.bfloat16, **lay.args())
    if "BP" in fn.arg_names:  # a balanced variant: rows of the batch it reads (32 here)
        consts["BP"] = 32
    consts.update({k: v for k, v in td.VARIANTS[variant].items() if k not in td.LAUNCH_KEYS})
    warps = int(td.VARIANTS[variant].get("num_warps", warps))  # type: ignore[call-overload]
    for param in fn.params:  # constexpr defaults the variant leaves alone
        if param.is_constexpr and param.name not in consts and param.default is not inspect.Parameter.empty:
            consts[param.name] = param.default
    maxnreg = td.VARIANTS[variant].get("maxnreg")
    return compile_sm90(fn, consts, TYPES, warps, stages, None if maxnreg is None else int(maxnreg))  # type: ignore[call-overload]


def compile_sm90(fn, consts: dict[str, object], types: dict[str, str], warps: int, stages: int,  # type: ignore[no-untyped-def]
                 maxnreg: int | None = None):
    """Compile `fn` for sm_90 as the JIT would: constexprs from `consts`, argument types from
    `types` (i32 for the rest), 16-divisible pointers and strides; `maxnreg` caps registers."""
    sig: dict[str, str] = {}
    div = []
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        else:
            sig[name] = types.get(name, "i32")
            if sig[name].startswith("*") or name.startswith("stride"):
                div.append(i)
    src = ASTSource(
        fn=fn, signature=sig,
        constexprs={(fn.arg_names.index(k),): v for k, v in consts.items() if k in fn.arg_names},
        attrs={(i,): [["tt.divisibility", 16]] for i in div},
    )
    options: dict[str, int] = dict(num_warps=warps, num_stages=stages)
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


STAGE_TYPES = {"key": "*bf16", "value": "*bf16", "tokens": "*i32", "slots": "*i32", "offsets": "*i32",
               "rot": "*fp32", "inv_sqrt_d": "fp32"}


def compile_stage(fn, d: int, exact: bool):  # type: ignore[no-untyped-def]
    """The staging kernel at head_dim d: 16-bit slots, or float32 slots (exact); constexprs
    the given version does not have are left out."""
    slot = "*fp32" if exact else "*bf16"
    types = dict(STAGE_TYPES, slot_k=slot, slot_v=slot, h_ptr=slot)
    want: dict[str, object] = dict(D=d, BT=16, BN=min(d, 32), EXACT=exact, DT=tl.bfloat16)
    consts = {k: v for k, v in want.items() if k in fn.arg_names}
    return compile_sm90(fn, consts, types, 4, 3)


def stage_report(source: Path | None, head_dims: list[int]) -> None:
    if source is None:
        from kvarn_cli.kernels import triton_stage as mod
    else:
        spec = importlib.util.spec_from_file_location("stage_version", source)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    print(f"triton {triton.__version__}, sm_90, staging kernel of {source or 'this tree'}")
    print(f"{'slots':8s} {'D':>4s} {'regs':>5s} {'stack':>6s} {'spillST':>7s} {'spillLD':>7s} {'sass':>6s}")
    for exact, slots in ((False, "16-bit"), (True, "float32")):
        for d in head_dims:
            r = resources(compile_stage(mod._stage_kernel, d, exact).asm["cubin"])
            print(f"{slots:8s} {d:4d} {r['regs']:5d} {r['stack']:6d} {r['spill_st']:7d} {r['spill_ld']:7d} {r['sass']:6d}",
                  flush=True)
        if "EXACT" not in mod._stage_kernel.arg_names:
            break  # a version with one form only


#: opcodes whose first operand is read, not written
_NO_DEST = ("HGMMA", "UISETP", "ISETP", "STS", "STG", "STL", "LDG", "LDS", "LDL", "BRA", "BAR")


def uniform_reads_before_write(lines: list[str]) -> int:
    """Reads of wgmma descriptor registers that come before any write to them, in address order.

    Why: ptxas 12.8 (triton 3.6's) sometimes leaves a wgmma shared-memory descriptor's
    uniform register pair uninitialized when two descriptor chains share a base address (the
    V dot's B operand reusing the K dot's buffer). The kernel then reads shared memory at a
    garbage address: an illegal address on the H100, or silently wrong results (run 52,
    compute-sanitizer: "Invalid __shared__ read of size 512 bytes"). This is what made tmw,
    tmwb and tmws fault in run 12. A clean kernel reports 0. Only the registers that wgmma
    reads as B descriptors (gdesc[URx] reads URx+2 and URx+3) count: in straight-line order a
    loop-carried value elsewhere would look read before written too.
    """
    descs = {int(r) + k for ln in lines for r in re.findall(r"gdesc\[UR(\d+)\]", ln) for k in (2, 3)}
    written: set[int] = set()
    bad = 0
    for ln in lines:
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(.*?);", ln)
        if not m:
            continue
        parts = re.sub(r"^@!?U?P\w+\s+", "", m.group(1).strip()).split(None, 1)
        if len(parts) < 2:
            continue
        op, args = parts
        operands = [a.strip() for a in args.split(",")]
        has_dest = not op.startswith(_NO_DEST)
        for i, a in enumerate(operands):
            for r in map(int, re.findall(r"\bUR(\d+)\b", a)):
                if i == 0 and has_dest and "desc[" not in a:
                    continue  # the destination
                need = [r + 2, r + 3] if "gdesc[" in a else [r, r + 1] if ("desc[" in a or ".64" in op) else [r]
                bad += sum(n not in written and n in descs for n in need)
        first = re.search(r"\bUR(\d+)\b", operands[0])
        if has_dest and first and "desc[" not in operands[0]:
            written.add(int(first.group(1)))
            if ".64" in op or ".WIDE" in op:
                written.add(int(first.group(1)) + 1)
    return bad


def resources(cubin: bytes) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        usage = subprocess.run([str(BIN / "cuobjdump"), "--dump-resource-usage", str(path)],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([str(BIN / "nvdisasm"), "-c", str(path)], capture_output=True, text=True, check=True).stdout
    out = {}
    for key, pat in (("regs", r"REG:(\d+)"), ("stack", r"STACK:(\d+)"), ("shared", r"SHARED:(\d+)")):
        m = re.search(pat, usage)
        out[key] = int(m.group(1)) if m else -1
    lines = [ln for ln in sass.splitlines() if re.search(r"/\*[0-9a-f]{4,}\*/", ln)]
    addr = [int(re.search(r"/\*([0-9a-f]{4,})\*/", ln).group(1), 16) for ln in lines]
    out["sass"] = len(lines)
    out["spill_st"] = sum("STL" in ln for ln in lines)
    out["spill_ld"] = sum("LDL" in ln for ln in lines)
    out["urbad"] = uniform_reads_before_write(lines)
    # the longest loop: a branch to an earlier address
    labels = {m.group(1): None for m in re.finditer(r"^(\.L_x_\d+):", sass, re.M)}
    label_addr: dict[str, int] = {}
    cur = None
    for ln in sass.splitlines():
        m = re.match(r"^(\.L_x_\d+):", ln)
        if m:
            cur = m.group(1)
            continue
        a = re.search(r"/\*([0-9a-f]{4,})\*/", ln)
        if a and cur is not None:
            label_addr[cur] = int(a.group(1), 16)
            cur = None
    best = (0, 0, 0)
    for i, ln in enumerate(lines):
        m = re.search(r"BRA.*?(\.L_x_\d+)", ln)
        if m and m.group(1) in label_addr and label_addr[m.group(1)] < addr[i]:
            start = addr.index(label_addr[m.group(1)])
            if i - start + 1 > best[0]:
                best = (i - start + 1, start, i)
    body = lines[best[1]: best[2] + 1]
    out["loop"] = best[0]
    for key, pat in (("loop_mma", r"HMMA|IMMA|HGMMA|IGMMA"), ("loop_ldg", r"LDG"), ("loop_lds", r"LDS|LDSM"),
                     ("loop_sts", r"STS"), ("loop_bar", r"BAR"), ("loop_shfl", r"SHFL"), ("loop_mufu", r"MUFU")):
        out[key] = sum(bool(re.search(pat, ln)) for ln in body)
    del labels
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="hilo")
    ap.add_argument("--presets", default="k2v2,k4v4")
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument("--gqa", type=int, default=0, help="query heads per KV head (0: 3 for D=64, 4 for D=128)")
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--stages", type=int, default=3)
    ap.add_argument("--dump", type=Path, default=None, help="directory for .sass/.ptx/.ttgir of each kernel")
    ap.add_argument("--stage", action="store_true", help="the staging kernel (triton_stage) instead of the split kernel")
    ap.add_argument("--stage-source", type=Path, default=None, help="with --stage: another version's triton_stage.py")
    args = ap.parse_args()
    if args.stage:
        stage_report(args.stage_source, [int(x) for x in args.head_dims.split(",")])
        return
    print(f"triton {triton.__version__}, sm_90, {args.warps} warps, {args.stages} stages")
    print(f"{'variant':8s} {'preset':6s} {'D':>4s} {'regs':>5s} {'stack':>6s} {'spillST':>7s} {'spillLD':>7s} {'shared':>7s} "
          f"{'sass':>6s} {'loop':>5s} {'mma':>4s} {'ldg':>4s} {'lds':>4s} {'sts':>4s} {'bar':>4s} {'shfl':>5s} {'mufu':>5s} {'urbad':>5s}")
    for variant in args.variants.split(","):
        for preset in args.presets.split(","):
            for d in (int(x) for x in args.head_dims.split(",")):
                gqa = args.gqa or (3 if d == 64 else 4)
                k = compile_variant(variant, preset, d, gqa, args.warps, args.stages)
                r = resources(k.asm["cubin"])
                r["shared"] = k.metadata.shared  # bytes of shared memory the launch asks for
                print(f"{variant:8s} {preset:6s} {d:4d} {r['regs']:5d} {r['stack']:6d} {r['spill_st']:7d} {r['spill_ld']:7d} "
                      f"{r['shared']:7d} {r['sass']:6d} {r['loop']:5d} {r['loop_mma']:4d} {r['loop_ldg']:4d} {r['loop_lds']:4d} "
                      f"{r['loop_sts']:4d} {r['loop_bar']:4d} {r['loop_shfl']:5d} {r['loop_mufu']:5d} {r['urbad']:5d}", flush=True)
                if args.dump:
                    args.dump.mkdir(parents=True, exist_ok=True)
                    stem = args.dump / f"{variant}_{preset}_{d}"
                    for ext in ("ptx", "ttgir"):
                        if ext in k.asm:
                            Path(f"{stem}.{ext}").write_text(k.asm[ext])
                    with tempfile.TemporaryDirectory() as tmp:
                        p = Path(tmp) / "k.cubin"
                        p.write_bytes(k.asm["cubin"])
                        sass = subprocess.run([str(BIN / "nvdisasm"), "-c", str(p)], capture_output=True, text=True).stdout
                    Path(f"{stem}.sass").write_text(sass)


if __name__ == "__main__":
    main()
