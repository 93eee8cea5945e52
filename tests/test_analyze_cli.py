"""`kvarn analyze` through the real CLI entry point: outputs on a short text, and bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = Path(os.environ.get("KVARN_TEST_MODEL", REPO / "models" / "smollm2-135m"))
DATA = Path(os.environ.get("KVARN_DATA", REPO.parent / "shared" / "data"))
needs_model = pytest.mark.skipif(
    not (MODEL / "config.json").is_file(),
    reason=f"SmolLM2 test model not found at {MODEL} (set KVARN_TEST_MODEL or run `make test-model`)",
)


def kvarn(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}  # 2 shared cores: see test_analyze_model
    return subprocess.run(
        [sys.executable, "-m", "kvarn_cli", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=600
    )


@pytest.fixture(scope="module")
def short_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three MATH500 worked solutions: a few hundred tokens of real text."""
    rows = [json.loads(line) for line in (DATA / "math500.jsonl").read_text(encoding="utf-8").splitlines()[:3]]
    path = tmp_path_factory.mktemp("text") / "math.txt"
    path.write_text("\n\n".join(r["problem"] + "\n" + r["solution"] for r in rows), encoding="utf-8")
    return path


@pytest.mark.model
@needs_model
@pytest.mark.skipif(not (DATA / "math500.jsonl").is_file(), reason=f"MATH500 not found in {DATA} (set KVARN_DATA)")
def test_cli_writes_json_and_plots(short_text: Path, tmp_path: Path) -> None:
    out = tmp_path / "an"
    proc = kvarn("analyze", "--model", str(MODEL), "--text", str(short_text), "--methods", "fp16,k2v2",
                 "--out", str(out), "--max-tokens", "230", "--block", "64", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "k2v2" in proc.stdout and "accumulated" in proc.stdout  # the rich table
    analysis = json.loads((out / "analysis.json").read_text(encoding="utf-8"))
    meta = analysis["metadata"]
    assert meta["model"] == str(MODEL) and meta["block"] == 64 and meta["total_tokens"] == 230
    assert meta["bin_size"] == 64 and meta["first_scored_position"] == 128
    assert meta["command"].startswith("kvarn analyze --model")
    assert list(analysis["methods"]) == ["fp16", "k2v2"]
    for method in ("fp16", "k2v2"):
        for mode in ("static", "accumulated"):
            s = analysis["methods"][method][mode]
            for key in ("kl_mean", "kl_p99", "kl_max", "top1_agreement"):
                assert isinstance(s[key], float)
            assert len(s["attn_mae_by_position"]) == len(analysis["position_bins"]) == 4
    assert analysis["methods"]["fp16"]["accumulated"]["kl_max"] == 0.0
    assert analysis["methods"]["k2v2"]["accumulated"]["kl_mean"] > 0.0
    for name in ("error_vs_position.png", "kl_by_method.png", "kl_vs_position.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--text", "/nonexistent/t.txt"], "/nonexistent/t.txt: no such file"),
        (["--text", "{text}", "--methods", "k2v2,k3v3"], "unknown method(s) k3v3"),
        (["--text", "{text}", "--methods", " , "], "--methods is empty"),
        (["--text", "{text}", "--jobs", "{text}"], "exactly one of --text FILE or --jobs"),
        ([], "exactly one of --text FILE or --jobs"),
        (["--text", "{text}", "--block", "100"], "--block 100 is not supported"),
    ],
)
def test_bad_inputs_exit_2_before_loading_the_model(
    tmp_path: Path, args: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process (a subprocess each would cost seconds of imports)."""
    text = tmp_path / "t.txt"
    text.write_text("hello", encoding="utf-8")
    argv = ["analyze", "--model", "/nonexistent/model", "--out", str(tmp_path / "o"),
            *[a.replace("{text}", str(text)) for a in args]]
    code, stderr = run_main(argv, monkeypatch, capsys)
    assert code == 2, stderr
    assert message in stderr
    assert not (tmp_path / "o").exists()


def run_main(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """kvarn_cli.cli.main in-process: (exit code, stderr with rich's line wrapping undone)."""
    from kvarn_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["kvarn", *argv])
    with pytest.raises(SystemExit) as info:
        main()
    return int(info.value.code or 0), " ".join(capsys.readouterr().err.split())


@pytest.mark.model
@needs_model
def test_too_short_text_and_missing_model_are_input_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "t.txt"
    text.write_text("a short text, far below two blocks", encoding="utf-8")
    code, stderr = run_main(["analyze", "--model", str(MODEL), "--text", str(text), "--out", str(tmp_path / "o"),
                             "--block", "64"], monkeypatch, capsys)
    assert code == 2, stderr
    assert "needs more than 2 x --block = 128" in stderr
    code, stderr = run_main(["analyze", "--model", str(tmp_path / "no-model"), "--text", str(text),
                             "--out", str(tmp_path / "o")], monkeypatch, capsys)
    assert code == 2, stderr
    assert "cannot load model" in stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_an_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "t.txt"
    text.write_text("hello", encoding="utf-8")
    code, stderr = run_main(["analyze", "--model", "/nonexistent/model", "--text", str(text),
                             "--out", str(tmp_path / "o"), "--device", "cuda"], monkeypatch, capsys)
    assert code == 2 and "torch sees no CUDA device" in stderr
