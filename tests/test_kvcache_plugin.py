"""The vLLM plug-in leaves vLLM alone unless kvarn asked for a quantized cache."""

from __future__ import annotations

import pytest

from kvarn_cli import kvcache

vllm = pytest.importorskip("vllm")


def _cpu_attn_path() -> str:
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    return AttentionBackendEnum.CPU_ATTN.get_path()


def test_plugin_is_inert_without_kvarn_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvarn_cli.kvcache import plugin

    kvcache.deactivate()
    monkeypatch.delenv(kvcache.ENV_QUANTIZER, raising=False)
    plugin.register()
    assert _cpu_attn_path() == "vllm.v1.attention.backends.cpu_attn.CPUAttentionBackend"


def test_plugin_and_presets_switch_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvarn_cli.kvcache import plugin

    monkeypatch.setenv(kvcache.ENV_QUANTIZER, "k2v2")
    monkeypatch.setenv(kvcache.ENV_BLOCK_SIZE, "128")
    plugin.register()  # what a vLLM worker process does at start-up
    assert _cpu_attn_path() == kvcache.BACKEND_CLASS
    assert kvcache.engine_kwargs("fp16") == {}
    assert _cpu_attn_path() != kvcache.BACKEND_CLASS
    assert kvcache.engine_kwargs("k4v4") == {"block_size": 128}
    assert _cpu_attn_path() == kvcache.BACKEND_CLASS
    import os

    assert os.environ[kvcache.ENV_QUANTIZER] == "k4v4"
    kvcache.deactivate()
    assert kvcache.ENV_QUANTIZER not in os.environ
    assert _cpu_attn_path() != kvcache.BACKEND_CLASS


def test_backend_api_check_names_missing_symbols(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvarn_cli import vllm_compat
    from kvarn_cli.errors import EngineError

    assert vllm_compat.check_backend_api() == vllm.__version__
    monkeypatch.setattr(vllm_compat, "BACKEND_SYMBOLS", vllm_compat.BACKEND_SYMBOLS + (("vllm.v1.attention.backend", "NoSuchThing"),))
    with pytest.raises(EngineError, match="NoSuchThing"):
        vllm_compat.check_backend_api()


def test_backend_api_check_falls_back_to_the_legacy_page_spec_internals(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a vLLM without `customize_spec` (0.26) the check demands the internals the page-spec
    hook uses instead, and names the first one missing."""
    from kvarn_cli import vllm_compat
    from kvarn_cli.errors import EngineError

    # this vLLM (0.32) has the hook, so the legacy set is not consulted even if it is absent here
    assert vllm_compat.has_page_spec_hook()
    monkeypatch.setattr(vllm_compat, "LEGACY_PAGE_SPEC_SYMBOLS", (("vllm.v1.kv_cache_interface", "NoSuchSpec"),))
    assert vllm_compat.check_backend_api() == vllm.__version__
    # a vLLM without the hook: the legacy set decides
    monkeypatch.setattr(vllm_compat, "PAGE_SPEC_HOOK_SYMBOLS", (("vllm.v1.attention.backend", "AttentionBackend.no_hook"),))
    assert not vllm_compat.has_page_spec_hook()
    with pytest.raises(EngineError, match="NoSuchSpec"):
        vllm_compat.check_backend_api()
    monkeypatch.setattr(vllm_compat, "LEGACY_PAGE_SPEC_SYMBOLS", (("vllm.v1.kv_cache_interface", "AttentionSpec"),))
    assert vllm_compat.check_backend_api() == vllm.__version__


def test_page_spec_hook_rewrites_only_layers_whose_backend_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 0.26 hook wraps Attention.get_kv_cache_spec; exercised here on this vLLM's Attention
    class with the hook forced on, and undone afterwards."""
    from vllm.model_executor.layers.attention.attention import Attention

    from kvarn_cli import vllm_compat

    api = vllm_compat.backend_api()
    monkeypatch.setattr(api, "has_page_spec_hook", False)
    monkeypatch.setattr(Attention, "get_kv_cache_spec", lambda self, cfg: ("spec", cfg))
    vllm_compat.install_page_spec_hook()
    wrapped = Attention.get_kv_cache_spec
    vllm_compat.install_page_spec_hook()  # idempotent: no second wrapper
    assert Attention.get_kv_cache_spec is wrapped

    class Plain:
        attn_backend = object()

    class Asking:
        class attn_backend:  # noqa: N801 - stands for a backend class
            @staticmethod
            def kvarn_page_spec(spec: object) -> object:
                return ("kvarn", spec)

    assert wrapped(Plain(), "cfg") == ("spec", "cfg")
    assert wrapped(Asking(), "cfg") == ("kvarn", ("spec", "cfg"))


def test_host_block_table_mirror_is_found_by_device_storage() -> None:
    """The metadata builder reads vLLM's host copy of the block table instead of `.cpu()` on
    the device one (a sync that would serialize planning with the GPU)."""
    import types

    import numpy as np
    import torch

    from kvarn_cli import vllm_compat

    class BlockTable:  # the shape of vLLM's BlockTable: .block_table is a CpuGpuBuffer
        def __init__(self, device_tensor: torch.Tensor, host: np.ndarray) -> None:
            self.block_table = types.SimpleNamespace(gpu=device_tensor, np=host)

    device = torch.arange(12, dtype=torch.int32).view(4, 3)
    host = device.numpy().copy()
    owner = BlockTable(device, host)
    assert vllm_compat._find_host_mirror(device) is host
    assert vllm_compat._find_host_mirror(torch.zeros(4, 3)) is None
    # a CPU table is read directly (vLLM on CPU)
    assert np.array_equal(vllm_compat.host_block_table(device[:2]), host[:2])
    del owner
