"""With a real board and a real Power Profiler Kit II (skipped unless both are attached and named): the PPK2
powers the board as a source meter, its logic input D0 is wired to the board's step marker (nRF52840-DK: P1.10;
MKR1000: D5), and every training step's energy is metered; then the board is profiled on its own cycles.

    POETC_HW_BOARD=nrf52840 POETC_SERIAL=/dev/ttyACM0 POETC_PPK2=/dev/ttyACM1 python -m pytest -m hw tests/hw
"""

from __future__ import annotations

import json
import os

import pytest
from tests.conftest import poetc

from poetc.emit import builddir

BOARD = os.environ.get("POETC_HW_BOARD")
PPK2 = os.environ.get("POETC_PPK2")

pytestmark = [
    pytest.mark.hw,
    pytest.mark.skipif(
        not BOARD or not os.environ.get("POETC_SERIAL") or not PPK2,
        reason="no board and PPK2 attached (set POETC_HW_BOARD, POETC_SERIAL and POETC_PPK2=/dev/...)",
    ),
]


def test_metered_steps_on_the_board(tmp_path):
    out = tmp_path / "hw"
    poetc("build", "digits-mlp", "--board", str(BOARD), "--out", str(out), "--batch", "8")
    poetc("flash", str(out), "--port", os.environ["POETC_SERIAL"], timeout=600)
    r = poetc("train", str(out), "--steps", "10", "--eval-every", "0", "--meter", f"ppk2:{PPK2},mv=3300")
    assert "metered:" in r.stdout
    m = json.loads(builddir.open_build(out).train_record_path().read_text())["metered"]
    assert m["how"] == "marker", m["note"]  # the marker is wired: one pulse per RUN
    assert all(j > 0 for prog, j, _s, _a in m["runs"] if prog == 0)


def test_profile_on_the_board(tmp_path):
    prof = tmp_path / "p"
    r = poetc("profile", "digits-mlp", "--board", str(BOARD), "--batch", "8", "--out", str(prof),
              "--port", os.environ["POETC_SERIAL"], timeout=900)  # fmt: skip
    assert "cycles" in r.stdout
    doc = json.loads((prof / "profile.json").read_text())
    assert doc["tick_unit"] == "cycles" and doc["pager"] is not None
