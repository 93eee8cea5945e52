"""vLLM `general_plugins` entry point: installs the KVarN attention backend in every vLLM
process, but only when kvarn asked for a quantized cache (kvarn_cli.kvcache.engine_kwargs
sets the environment variable); without it vLLM is left untouched.
"""

from __future__ import annotations

import os


def register() -> None:
    from kvarn_cli import kvcache

    if not os.environ.get(kvcache.ENV_QUANTIZER):
        return
    from kvarn_cli import vllm_compat

    vllm_compat.install_backend(kvcache.BACKEND_CLASS)
