"""KVarN quantizer library: pure PyTorch (CPU or GPU), no vLLM imports.

    qz = make_quantizer("k2v2", head_dim=64, block_size=128)
    rec = qz.quantize(k, v)          # one tile [G, D] of one KV head -> uint8 [record_bytes]
    k_hat, v_hat = qz.dequantize(rec)

See kernels.quantizers for the methods and kernels.layout for the record format.
"""

from kvarn_cli.kernels.hadamard import hadamard_matrix
from kvarn_cli.kernels.layout import Field, RecordLayout
from kvarn_cli.kernels.quantizers import (
    BLOCK_SIZES,
    HEAD_DIMS,
    QUANTIZER_NAMES,
    SCALE_DTYPES,
    Quantizer,
    make_quantizer,
)

__all__ = [
    "BLOCK_SIZES",
    "HEAD_DIMS",
    "QUANTIZER_NAMES",
    "SCALE_DTYPES",
    "Field",
    "Quantizer",
    "RecordLayout",
    "hadamard_matrix",
    "make_quantizer",
]
