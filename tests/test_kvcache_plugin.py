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
