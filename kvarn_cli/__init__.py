"""kvarn: offline batch reasoning with a KVarN-quantized KV cache on an embedded vLLM engine."""

__version__ = "0.1.0"
