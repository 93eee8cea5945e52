"""The analysis hooks work on Llama- and Qwen-style models, not only on SmolLM2.

Tiny randomly initialised models (no download): enough to check that the cache and attention
hooks find every layer and that the fp16 method reproduces the reference exactly.
"""

from __future__ import annotations

import pytest
import torch

from kvarn_cli.analyze import capture, modes
from kvarn_cli.errors import InputError
from kvarn_cli.kernels import make_quantizer

BLOCK = 64


def _tiny(kind: str) -> torch.nn.Module:
    import transformers

    common = dict(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=1024)
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[kind]
    torch.manual_seed(0)
    return model_cls(config_cls(**common)).eval()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_pseudo_decode_on_architecture(kind: str) -> None:
    model = _tiny(kind)
    ids = torch.randint(0, 128, (3 * BLOCK + 5,), generator=torch.Generator().manual_seed(1))
    quantizers = {m: make_quantizer(m, head_dim=64, block_size=BLOCK) for m in ("fp16", "k2v2")}
    result = modes.pseudo_decode(model, ids, quantizers, block=BLOCK)
    assert set(result) == {(m, mode) for m in quantizers for mode in modes.MODES}
    for mode in modes.MODES:
        fp16, k2v2 = result[("fp16", mode)], result[("k2v2", mode)]
        assert fp16.attn_mae.shape == (2, ids.numel())
        assert torch.all(fp16.attn_mae == 0) and torch.all(fp16.kl == 0)
        assert torch.all(k2v2.attn_mae[:, 2 * BLOCK :].mean(0) > 0)


def test_model_without_attention_projection_is_rejected() -> None:
    class NoAttn(torch.nn.Module):
        def get_decoder(self) -> torch.nn.Module:
            return self

        layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])

    with pytest.raises(InputError, match="unsupported architecture NoAttn"):
        capture.decoder_layers(NoAttn())
