"""Runner pieces that need no engine: the signal flag, and reuse of a saved shadow check on resume."""

from __future__ import annotations

import os
import signal

import pytest

from kvarn_cli.runner import StopFlag


def test_first_signal_only_sets_the_flag_second_interrupts(capfd):
    stop = StopFlag()
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == signal.SIGTERM and stop.name == "SIGTERM"
        out, err = capfd.readouterr()
        assert out == "" and err == ""  # no printing (nor lazy imports) inside the handler
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is not stop._handle


def test_resume_reuses_the_saved_shadow_check(tmp_path):
    """A resumed run does not redo the shadow check (the model path here does not even exist)."""
    from pathlib import Path

    from kvarn_cli.jobs import JobRecord
    from kvarn_cli.run_dir import write_json_atomic
    from kvarn_cli.runner import RunRequest, Sampling, _shadow_check

    saved = {"preset": "k2v2", "kl_mean": 0.1, "record_ids": ["a"]}
    write_json_atomic(tmp_path / "shadow_check.json", saved)
    req = RunRequest(input=Path("jobs.jsonl"), out=tmp_path, model=str(tmp_path / "no-model"), preset="k2v2",
                     sampling=Sampling(), shadow_check=1)
    records = [JobRecord(id="a", line=1, data={"id": "a", "prompt": "x"})]
    assert _shadow_check(req, records) == saved
