"""The CUDA split kernel of decode attention (cuda_decode_split.cu), compiled with NVRTC.

Why CUDA next to the Triton kernels: the split kernel is where decode time goes, and Triton
does not let a kernel choose the register layouts of its tensor-core operands; its versions
move the unpacked codes through shared memory and issue 5-8k warp-instructions per 128-token
block, which holds them at 17-20% of the H100's bandwidth (benchmarks/GPU_NOTES.md). The CUDA
kernel builds each operand in the layout the MMA reads (see the .cu file's header), in 1.2k
(head_dim 64) to 1.8k (128) instructions per block for 2-bit codes, and writes the Triton split
kernels' partials (their GQA real rows), so triton_decode._reduce_kernel merges them. At
head_dim 64 it is the whole decode in one launch (fused): its splits also attend to the 16-bit
sink and tail slots, rotate the query themselves, and the last split of each row and KV head
merges the partials and writes the output. It is one
variant of triton_decode.decode_attention ("cuda"); the Triton variants
stay the path on CPU (interpreter), on GPUs before sm_89, and for shapes it does not take.

The source compiles at first use through torch.cuda._compile_kernel (NVRTC, which ships with
PyTorch's CUDA wheels; no CUDA toolkit needed), once per record layout and GQA.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
from pathlib import Path
from typing import Any

import torch
import triton
import triton.language as tl

from kvarn_cli.kernels.triton_common import KernelLayout, rotate_hilo

SOURCE = Path(__file__).with_name("cuda_decode_split.cu")
#: the record fields the kernel reads, in the dtypes it decodes them as
FIELD_DTYPES = {
    "k_codes": "uint8", "v_codes": "uint8", "k_zero": "float16", "v_zero": "float16",
    "k_scale": "float8_e4m3fn", "k_token_scale": "float8_e4m3fn", "v_scale": "float8_e4m3fn",
    "v_channel_scale": "float8_e4m3fn", "k_scale_mult": "float32",
}
MULTS = ("k_scale_mult", "k_zero_mult", "k_token_scale_mult", "v_scale_mult", "v_zero_mult", "v_channel_scale_mult")
MAX_GQA = 4  # eight MMA columns: the high and low parts of four query heads
#: tokens per block (KVarN tile) the kernel takes: whole 16-token MMA tiles whose V code rows
#: (channel-major) are whole 16-byte pieces at 2 bits
BLOCK_SIZES = (64, 128)
NVRTC_OPTIONS = ["-std=c++17"]
#: programs per SM the kernel's registers must allow (__launch_bounds__' second argument), by
#: head_dim: at 64 the one-launch form compiled to 134 registers under NVRTC, so 12 programs
#: per SM rather than 16, and took 12-22% longer (docs/BENCHMARKS.md run 100); bounded to 128
#: it took 6% less than the two launches. At 128 ptxas' own choice (232-245 registers) stays.
MIN_PROGRAMS = {64: 16}


def unsupported(lay: KernelLayout, gqa: int, device: torch.device) -> str | None:
    """Why the CUDA kernel cannot run this case (None: it can). Asked twice per decode launch
    and fixed for a layout, GQA and CUDA device, so CUDA answers are kept."""
    if device.type != "cuda":
        return "needs a CUDA device"
    key = (lay.key, gqa, device.index)
    if key not in _UNSUPPORTED:
        _UNSUPPORTED[key] = _why_unsupported(lay, gqa, device)
    return _UNSUPPORTED[key]


_UNSUPPORTED: dict[tuple[Any, ...], str | None] = {}


def _why_unsupported(lay: KernelLayout, gqa: int, device: torch.device) -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA device"
    if torch.version.cuda is None:
        return "needs CUDA (not ROCm)"
    if _capability(device.index if device.index is not None else torch.cuda.current_device()) < (8, 9):
        return "needs sm_89 or newer (fp8 conversion instructions)"
    if not hasattr(torch.cuda, "_compile_kernel"):
        return f"torch {torch.__version__} has no torch.cuda._compile_kernel (NVRTC)"
    if lay.block_size not in BLOCK_SIZES or lay.head_dim not in (64, 128):
        return f"takes blocks of 64 or 128 tokens and head_dim 64 or 128, got {lay.block_size} and {lay.head_dim}"
    if gqa > MAX_GQA:
        return f"takes up to {MAX_GQA} query heads per KV head, got {gqa}"
    if lay.record_bytes % 16:
        return f"record size {lay.record_bytes} is not a multiple of 16"
    return None


@functools.lru_cache(maxsize=None)
def _capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)


def _check_fields(layout: Any) -> None:
    for name, dtype in FIELD_DTYPES.items():
        if layout.field(name).dtype != dtype:
            raise ValueError(f"record field {name} is {layout.field(name).dtype}, the CUDA kernel reads {dtype}")
    base = layout.field(MULTS[0]).offset
    for k, name in enumerate(MULTS):
        if layout.field(name).offset != base + 4 * k:
            raise ValueError("the CUDA kernel reads the six float32 multipliers as one run")


#: SIDE_KIND of the kernel for each dtype of the 16-bit staging slots
SIDE_KINDS = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}


def side_kind(side: torch.Tensor) -> int:
    """The kernel's code for the slots' dtype."""
    if side.dtype not in SIDE_KINDS:
        raise ValueError(f"the cuda decode variant reads 16-bit slots of bf16, fp16 or float32, got {side.dtype}")
    return SIDE_KINDS[side.dtype]


def slots_in_split(lay: KernelLayout) -> bool:
    """Whether the split kernel attends to the 16-bit slots itself (head_dim 64) or leaves them
    to the reduce kernel (128). At head_dim 64 (SmolLM2 shape, 32k, 32-64 rows) this took the
    reduce launch from 11.4 to 5.2 us and the whole decode from 129 to 117-119 us at 64 rows
    (docs/BENCHMARKS.md runs 94-95); at 128 it made the block loop slower (see the .cu file)."""
    return lay.head_dim == 64


def fuses(lay: KernelLayout) -> bool:
    """Whether the split kernel is the whole decode (rotates the query, and its last split per
    row and KV head merges the partials and writes the output): where it attends to the slots,
    so that no other launch has anything left to read."""
    return slots_in_split(lay)


def source_for(lay: KernelLayout, gqa: int, gp: int, side: int = 0, query: int = 2, fused: bool = False,
               tickets: bool = False) -> str:
    """The kernel source with this layout's constants in front (`side`, `query`: SIDE_KINDS of
    the slots and of the query and output; `query` 2 (the rotated float32 query) unless fused;
    `tickets`, fused only: blocks dealt out as the splits ask, see `split`)."""
    consts = {"D": lay.head_dim, "KB": lay.k_bits, "VB": lay.v_bits, "GQA": gqa, "GP": gp,
              "G": lay.block_size, "REC": lay.record_bytes, "SIDE_KIND": side,
              "SLOTS": int(slots_in_split(lay)), "QKIND": query, "FUSED": int(fused), "TICKETS": int(tickets)}
    consts.update({name: value for name, value in lay.args().items()})
    head = "".join(f"constexpr int {name} = {int(value)};\n" for name, value in consts.items())
    if lay.head_dim in MIN_PROGRAMS:
        head += f"#define MIN_PROGRAMS {MIN_PROGRAMS[lay.head_dim]}\n"
    return head + _source_text()


@functools.lru_cache(maxsize=1)
def _source_text() -> str:
    return SOURCE.read_text()


def _key(lay: KernelLayout, gqa: int, gp: int, device_index: int, side: int = 0, query: int = 2,
         fused: bool = False, tickets: bool = False) -> tuple[Any, ...]:
    return (lay.key, gqa, gp, device_index, side, query, fused, tickets)


def kernel_for(lay: KernelLayout, layout: Any, gqa: int, gp: int, device_index: int, side: int = 0,
               query: int = 2, fused: bool = False, tickets: bool = False) -> Any:
    """The compiled kernel for this record layout, GQA, slot and query dtype and form: compiled
    and its fields checked once, then looked up by a small key (decode runs this per layer and
    eager step)."""
    key = _key(lay, gqa, gp, device_index, side, query, fused, tickets)
    kernel = _KERNELS.get(key)
    if kernel is None:
        _check_fields(layout)
        with torch.cuda.device(device_index):
            source = source_for(lay, gqa, gp, side, query, fused, tickets)
            kernel = torch.cuda._compile_kernel(source, "kvarn_split", nvcc_options=NVRTC_OPTIONS)
        _KERNELS[key] = kernel
    return kernel


_KERNELS: dict[tuple[Any, ...], Any] = {}
_RESIDENT: dict[tuple[Any, ...], int] = {}
#: programs per SM where the driver's occupancy calculator cannot be reached (the H100's
#: counts for k2v2, run 85: registers bound D = 128 to 8 and D = 64 to 16)
FALLBACK_RESIDENT = {64: 16, 128: 8}


def resident_per_sm(lay: KernelLayout, layout: Any, gqa: int, gp: int, device_index: int) -> int:
    """How many programs of this layout's kernel one SM holds at once: its registers and its
    two record buffers decide (6 to 16 on the H100, runs 85-87), so the split count is asked of the driver
    (cuOccupancyMaxActiveBlocksPerMultiprocessor) rather than kept in a table per layout."""
    key = _key(lay, gqa, gp, device_index)
    count = _RESIDENT.get(key)
    if count is None:
        kernel = kernel_for(lay, layout, gqa, gp, device_index)
        with torch.cuda.device(device_index):
            count = _occupancy(kernel, 2 * lay.record_bytes) or FALLBACK_RESIDENT.get(lay.head_dim, 8)
        _RESIDENT[key] = count
    return count


def _occupancy(kernel: Any, shared_mem: int) -> int | None:
    try:
        from torch.cuda import _utils

        library = getattr(_utils, "_get_gpu_runtime_library", None) or _utils._get_cuda_library
        lib = library()
        count = ctypes.c_int(0)
        status = lib.cuOccupancyMaxActiveBlocksPerMultiprocessor(
            ctypes.byref(count), kernel.func, ctypes.c_int(32), ctypes.c_size_t(shared_mem))
    except (AttributeError, OSError, ImportError):
        return None
    return count.value if status == 0 and count.value > 0 else None


@triton.jit
def _rotate_query_kernel(q_ptr, stride_qb, stride_qh, h_ptr, out_ptr, qk_scale,
                         GQA: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, DT: tl.constexpr):
    """out[b, kvh * GQA + g] = (q @ H) * qk_scale in float32 for the GQA heads of one group,
    to float32 accuracy (rotate_hilo): the CUDA kernel's query operand."""
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    g = tl.arange(0, GP)
    d = tl.arange(0, D)
    rows = (kvh * GQA + g[:, None]) * stride_qh + d[None, :]
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + rows, mask=g[:, None] < GQA, other=0.0).to(tl.float32)
    qr = rotate_hilo(q, h_ptr, D, 0, 1, D, DT) * qk_scale
    out_rows = (kvh * GQA + g[:, None]) * D + d[None, :]
    tl.store(out_ptr + b.to(tl.int64) * (tl.num_programs(1) * GQA * D) + out_rows, qr, mask=g[:, None] < GQA)


def rotated_query(query: torch.Tensor, h: torch.Tensor, kv_heads: int, qk_scale: float, dt: Any) -> torch.Tensor:
    """(query @ H) * qk_scale as a contiguous float32 [B, Hq, D], h the +-1 Sylvester matrix in
    dt (triton_common.signed_hadamard; qk_scale carries its 1/sqrt(D), as in the Triton split
    kernels)."""
    batch, q_heads, d = query.shape
    gqa = q_heads // kv_heads
    qr = torch.empty(batch, q_heads, d, dtype=torch.float32, device=query.device)
    _rotate_query_kernel[(batch, kv_heads)](query, query.stride(0), query.stride(1), h, qr, qk_scale,
                                            GQA=gqa, GP=max(16, triton.next_power_of_2(gqa)), D=d, DT=dt,
                                            num_warps=4)
    return qr


def slot_blocks(lay: KernelLayout, side: torch.Tensor) -> int:
    """What attending to one 16-bit slot costs a split program, in blocks of records: the bytes
    of its K and V against a record's (7 for k2v2 slots in bf16 at head_dim 64, 4 for k4v4).
    The split that takes a slot takes that many blocks fewer."""
    slot_bytes = 2 * lay.block_size * lay.head_dim * side.element_size()
    return max(1, round(slot_bytes / lay.record_bytes))


#: the fused kernel's counters (split_counters): at least this many per device
MIN_COUNTERS = 1 << 14
_COUNTERS: dict[int, torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []


def split_counters(device: torch.device, needed: int) -> torch.Tensor | None:
    """The fused kernel's int32 counters on this device, two per (row, KV head) (splits done,
    and tickets for blocks: `needed` = 2 x rows x KV heads), all 0 between launches (each
    launch's last splits set theirs back), or None where they would have to be
    allocated during CUDA graph capture (the caller then merges with the reduce launch). One
    buffer per device: fused launches on a device must not overlap in time, as decode runs
    layer after layer on one stream. A buffer outgrown stays alive: captured graphs hold its
    address."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    buf = _COUNTERS.get(index)
    if buf is None or buf.numel() < needed:
        if torch.cuda.is_current_stream_capturing():
            return None
        if buf is not None:
            _RETIRED.append(buf)
        buf = torch.zeros(max(needed, MIN_COUNTERS), dtype=torch.int32, device=device)
        _COUNTERS[index] = buf
    return buf


def _float_bits(x: float) -> int:
    """x as float32 bits in a C int: torch.cuda._compile_kernel passes Python floats as C doubles
    (torch 2.11) and ints as C ints, so the kernel takes its two scales as bits, whatever a
    torch version does with floats."""
    return struct.unpack("<i", struct.pack("<f", x))[0]


def _fusable(query: torch.Tensor, out: torch.Tensor | None) -> bool:
    """Whether the fused kernel can read this query and write this output: one of its dtypes,
    in pairs of elements (even strides, 8-byte aligned)."""
    if out is None or out.dtype != query.dtype or query.dtype not in SIDE_KINDS or out.shape != query.shape:
        return False
    return all(t.stride(2) == 1 and t.stride(0) % 2 == 0 and t.stride(1) % 2 == 0 and t.data_ptr() % 8 == 0
               for t in (query, out))


def split(
    lay: KernelLayout,
    layout: Any,
    query: torch.Tensor,
    h: torch.Tensor,
    records: torch.Tensor,
    block_table: torch.Tensor,
    num_blocks: torch.Tensor,
    side: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None,
    ws_acc: torch.Tensor,
    ws_ml: torch.Tensor,
    qk_scale: float,
    num_splits: int,
    gp: int,
    dt: Any,
    out: torch.Tensor | None = None,
    deterministic: bool = False,
) -> bool:
    """Launch the split kernel, grid (batch, kv_heads, num_splits), writing the partials that
    triton_decode._reduce_kernel merges. Where slots_in_split, the splits also attend to the
    16-bit slots (side = (side_k, side_v, side_slots, side_lens) as decode_attention takes
    them): slot i in split i % num_splits, which takes slot_blocks fewer blocks, so the reduce
    kernel reads no slot; otherwise pass side=None and the slots to the reduce kernel. Where
    the kernel fuses (`fuses`, and `out` of query's dtype and shape), it also rotates the query
    and writes `out` itself: returns True, and there is nothing for the reduce kernel to do.
    The fused form deals the blocks out as its splits ask for them (tickets): 3-24% less time
    than fixed ranges at 32k with 1-64 rows (SmolLM2 shape, docs/BENCHMARKS.md run 109), but which
    split takes which block, and so the float rounding of `out`, varies between identical
    calls; `deterministic` keeps the fixed ranges. The caller
    (triton_decode.decode_attention) has checked `unsupported` for this case."""
    batch, q_heads, d = query.shape
    kv_heads = records.shape[1]
    gqa = q_heads // kv_heads
    if records.data_ptr() % 16 or records.stride(0) % 16 or records.stride(1) % 16:
        raise ValueError("the cuda decode variant copies records in 16-byte pieces: they must be 16-byte aligned")
    if block_table.dtype != torch.int32 or num_blocks.dtype != torch.int32 or block_table.stride(1) != 1:
        raise ValueError("block_table and num_blocks must be int32 (block_table rows contiguous)")
    if side is None:
        kind = 0
        side_args: list[Any] = [records, records, 0, 0, 0, num_blocks, num_blocks, 0, 0, 0]  # never read
    else:
        side_k, side_v, slots, lens = side
        kind = side_kind(side_k)
        if side_v.dtype != side_k.dtype or side_k.stride() != side_v.stride() or side_k.stride(3) != 1:
            raise ValueError("side_k and side_v need one dtype, the same strides and a contiguous last dim")
        if side_k.stride(2) % 4 or side_k.data_ptr() % 16 or side_v.data_ptr() % 16:
            raise ValueError("the cuda decode variant reads slot rows in 4-element pieces: they must be aligned")
        if slots.dtype != torch.int32 or lens.dtype != torch.int32 or slots.stride() != lens.stride() or slots.stride(1) != 1:
            raise ValueError("side_slots and side_lens must be int32 with the same strides (rows contiguous)")
        side_args = [side_k, side_v, side_k.stride(0), side_k.stride(1), side_k.stride(2), slots, lens,
                     slots.stride(0), slots.shape[1], slot_blocks(lay, side_k)]
    counters = split_counters(query.device, 2 * batch * kv_heads) if fuses(lay) and _fusable(query, out) else None
    if counters is not None:
        assert out is not None
        q_args: list[Any] = [query, query.stride(0), query.stride(1), _float_bits(qk_scale)]
        out_args: list[Any] = [out, out.stride(0), out.stride(1), _float_bits(1.0 / d**0.5), counters]
        q_kind = SIDE_KINDS[query.dtype]
    else:
        qr = rotated_query(query, h, kv_heads, qk_scale, dt)
        q_args = [qr, qr.stride(0), qr.stride(1), 0]
        out_args = [ws_acc, 0, 0, 0, num_blocks]  # never read or written
        q_kind = 2
    fused = counters is not None
    kernel = kernel_for(lay, layout, gqa, gp, query.device.index or 0, kind, q_kind, fused, fused and not deterministic)
    launch(kernel, (batch, kv_heads, num_splits), (32, 1, 1), 2 * lay.record_bytes, query.device.index or 0,
           [*q_args, records, records.stride(0), records.stride(1),
            block_table, block_table.stride(0), num_blocks, *side_args, ws_acc, ws_ml, *out_args])
    return fused


#: "cells" launches through Launcher; "torch" through the compiled kernel's own __call__, as
#: kvarn did before (KVARN_CUDA_LAUNCH=torch; benchmarks/host_overhead.py times both in one
#: process, and e2e_gpu.py's ":torch-launch" presets run an engine with it).
LAUNCH_PATH = os.environ.get("KVARN_CUDA_LAUNCH", "cells")
if LAUNCH_PATH not in ("cells", "torch"):
    raise ValueError(f"KVARN_CUDA_LAUNCH={LAUNCH_PATH!r}: expected cells or torch")


def launch(kernel: Any, grid: tuple[int, int, int], block: tuple[int, int, int], shared_mem: int, device_index: int,
           args: list[Any]) -> None:
    """Launch a kernel from torch.cuda._compile_kernel with `args` (tensors as their device
    pointers, ints as C ints) on the device's current stream, through its Launcher (LAUNCH_PATH)."""
    if LAUNCH_PATH != "cells":
        kernel(grid=grid, block=block, args=args, shared_mem=shared_mem)
        return
    launcher = _LAUNCHERS.get(id(kernel))
    if launcher is None or launcher.kernel is not kernel or launcher.nargs != len(args):
        _LAUNCHERS[id(kernel)] = launcher = Launcher(kernel, len(args))
    launcher(grid, block, shared_mem, device_index, args)


def current_raw_stream(device_index: int) -> int:
    """The device's current CUDA stream as a handle: the call Triton's launcher makes, a
    fraction of torch.cuda.current_stream()'s host time (a Stream object per call)."""
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is not None:
        return int(raw(device_index))
    return int(torch.cuda.current_stream(device_index).cuda_stream)


class Launcher:
    """cuLaunchKernel for one compiled kernel with a fixed argument count, without the ctypes
    objects torch's __call__ makes per argument and call: the split kernel's launch took 63-147
    us of host time that way against 16-19 us here (docs/BENCHMARKS.md runs 177 and 182), and
    eager steps pay it in every layer.

    Every argument has its own 8-byte cell, and the kernel-parameter array points at the cells
    once and for all. A call writes the arguments' values into the cells (one slice
    assignment) and launches. The driver reads each parameter at its address with the size the
    kernel declares: a pointer all 8 bytes, an int the low 4 (little-endian; two's complement
    keeps -1 as -1). It copies them at the launch (and into the node at graph capture), so the
    cells may be rewritten by the next call."""

    def __init__(self, kernel: Any, nargs: int) -> None:
        from torch.cuda import _utils

        library = getattr(_utils, "_get_gpu_runtime_library", None) or _utils._get_cuda_library
        self.kernel = kernel
        self.nargs = nargs
        self._launch = library().cuLaunchKernel
        self._func = kernel.func
        self._cells = (ctypes.c_int64 * nargs)()
        base = ctypes.addressof(self._cells)
        self._params = (ctypes.c_void_p * nargs)(*[base + 8 * i for i in range(nargs)])

    def pack(self, args: list[Any]) -> None:
        """Write the arguments' values into the cells: tensors as device pointers, ints as
        they are (ctypes refuses a float or anything else with a TypeError)."""
        self._cells[:] = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]

    def __call__(self, grid: tuple[int, int, int], block: tuple[int, int, int], shared_mem: int, device_index: int,
                 args: list[Any]) -> None:
        self.pack(args)
        stream = current_raw_stream(device_index)
        status = self._launch(self._func, grid[0], grid[1], grid[2], block[0], block[1], block[2],
                              shared_mem, ctypes.c_void_p(stream), self._params, None)
        if status != 0:
            raise RuntimeError(f"cuLaunchKernel failed with CUresult {status}")


_LAUNCHERS: dict[int, Launcher] = {}
