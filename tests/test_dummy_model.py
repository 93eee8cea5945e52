"""benchmarks/dummy_model.py: the model directory it writes is one kvarn reads at the asked
shape (the e2e benchmark sizes each preset's cache from it) with the tokenizer beside it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from dummy_model import write_model  # noqa: E402

from kvarn_cli.commands.plan import model_shape  # noqa: E402


def _like(tmp_path: Path, model_type: str = "llama") -> Path:
    like = tmp_path / f"like-{model_type}"
    like.mkdir()
    (like / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": model_type, "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128,
        "vocab_size": 1000, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16",
    }))
    (like / "tokenizer.json").write_text("{}")
    return like


def test_written_model_has_the_asked_attention_shape(tmp_path: Path) -> None:
    out = tmp_path / "big"
    write_model(out, _like(tmp_path), layers=36, hidden=2560, heads=32, kv_heads=8, head_dim=128, intermediate=9728)
    shape = model_shape(str(out), "bfloat16")
    assert (shape["num_layers"], shape["num_kv_heads"], shape["head_dim"]) == (36, 8, 128)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 1000 and config["num_attention_heads"] == 32  # the rest comes from `like`
    assert (out / "tokenizer.json").exists()
    assert not list(out.glob("*.safetensors"))  # no weights: vLLM's dummy loader makes them


def test_rejects_a_non_llama_config_and_uneven_heads(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="Llama"):
        write_model(tmp_path / "a", _like(tmp_path, "qwen2"), 2, 64, 4, 2, 16, 128)
    with pytest.raises(SystemExit, match="multiple"):
        write_model(tmp_path / "b", _like(tmp_path), 2, 64, 6, 4, 16, 128)
