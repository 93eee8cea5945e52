"""Where `kvarn analyze` touches transformers: the KV cache tensors and each layer's attention output.

Kept in one small module because transformers changes these internals between releases
(5.x stores a cache as `cache.layers[i].keys/values`); everything else in the analysis only
sees plain tensors. Every K/V that leaves or enters here is `[num_kv_heads, tokens, head_dim]`
post-RoPE, exactly what an attention layer writes into the cache.
"""

from __future__ import annotations

from typing import Any

import torch

from kvarn_cli.errors import EngineError, InputError


def new_cache() -> Any:
    """A fresh full-attention cache (one plain growing tensor per layer).

    Built without the model config on purpose: a config-aware cache gives sliding-window layers
    a trimmed buffer, which would shift the block positions we overwrite. A full cache is still
    masked correctly for sliding-window layers, only bigger.
    """
    from transformers import DynamicCache

    return DynamicCache()


def _check_cache(cache: Any, num_layers: int) -> None:
    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) < num_layers or not hasattr(layers[0], "keys"):
        raise EngineError(
            "this transformers version has no `DynamicCache.layers[i].keys/values`; "
            "kvarn analyze needs transformers >= 4.56"
        )


def read_block(cache: Any, num_layers: int, start: int, end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """K/V of tokens [start, end) in every layer, as cloned `[heads, tokens, head_dim]` tensors."""
    _check_cache(cache, num_layers)
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    for layer in cache.layers[:num_layers]:
        out.append((layer.keys[0, :, start:end].clone(), layer.values[0, :, start:end].clone()))
    return out


def write_block(
    cache: Any, start: int, end: int, kv: list[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    """Overwrite tokens [start, end) of every layer in place, as the engine's flush does."""
    _check_cache(cache, len(kv))
    for layer, (k, v) in zip(cache.layers, kv):
        layer.keys[0, :, start:end] = k.to(layer.keys.dtype)
        layer.values[0, :, start:end] = v.to(layer.values.dtype)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder blocks of a Llama/Qwen/Mistral-style causal LM, in order."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise InputError(
            f"unsupported architecture {type(model).__name__}: kvarn analyze needs a decoder with "
            "`.layers[i].self_attn.o_proj` (Llama, Qwen, Mistral style)"
        )
    for i, layer in enumerate(layers):
        if not hasattr(getattr(layer, "self_attn", None), "o_proj"):
            raise InputError(
                f"unsupported architecture {type(model).__name__}: layer {i} has no self_attn.o_proj"
            )
    return list(layers)


class AttentionRecorder:
    """Records each layer's attention output: the input of `o_proj`, i.e. softmax(QK^T)V with
    the heads concatenated, before the output projection.

    That is the tensor a quantized cache perturbs directly; `o_proj` only mixes it.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.layers = decoder_layers(model)
        self._outputs: list[torch.Tensor | None] = [None] * len(self.layers)
        self._handles = [
            layer.self_attn.o_proj.register_forward_pre_hook(self._hook_for(i))
            for i, layer in enumerate(self.layers)
        ]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def _hook_for(self, index: int):  # noqa: ANN202 - a torch hook
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            self._outputs[index] = args[0][0].detach().float()

        return hook

    def take(self) -> torch.Tensor:
        """The outputs of the forward just run, `[layers, tokens, heads*head_dim]` float32."""
        if any(o is None for o in self._outputs):
            raise EngineError("the attention hook did not fire in every layer")
        stacked = torch.stack([o for o in self._outputs if o is not None])
        self._outputs = [None] * len(self.layers)
        return stacked

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
