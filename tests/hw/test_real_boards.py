"""On a real board (skipped unless one is attached and named): flash it with PlatformIO, train a few steps over
its serial port, and check the first step against the host reference.

    POETC_HW_BOARD=nrf52840 POETC_SERIAL=/dev/ttyACM0 python -m pytest -m hw tests/hw
"""

from __future__ import annotations

import os

import pytest
from tests.conftest import poetc

BOARD = os.environ.get("POETC_HW_BOARD")

pytestmark = [
    pytest.mark.hw,
    pytest.mark.skipif(
        not BOARD or not os.environ.get("POETC_SERIAL"),
        reason="no board attached (set POETC_HW_BOARD=nrf52840|mkr1000 and POETC_SERIAL=/dev/...)",
    ),
]


def test_flash_train_and_verify_on_the_board(tmp_path):
    out = tmp_path / "hw"
    poetc("build", "digits-mlp", "--board", str(BOARD), "--out", str(out), "--batch", "8")
    poetc("flash", str(out), "--port", os.environ["POETC_SERIAL"], timeout=600)
    r = poetc("train", str(out), "--steps", "20", "--lr", "0.1", "--eval-every", "0", "--profile-nodes")
    assert "ticks per step" in r.stdout
    assert "PASS" in poetc("verify", str(out)).stdout
