"""`kvarn analyze`: what a quantized KV cache costs in accuracy, measured with transformers.

Reproduces the paper's pseudo-decode error-accumulation measurement (see modes.py) for any
method of kvarn_cli.kernels, against the 16-bit cache on the same tokens.
"""

from kvarn_cli.analyze.core import analyze_token_texts, shadow_check

__all__ = ["analyze_token_texts", "shadow_check"]
