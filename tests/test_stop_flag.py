"""The SIGINT/SIGTERM handler only records the signal: it may interrupt any code, even an import."""

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
