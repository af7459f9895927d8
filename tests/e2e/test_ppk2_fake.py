"""The PPK2 path without the hardware: ppk2-api talks to a fake Power Profiler Kit II on a pty (tests/fake_ppk2.py)
that replays a recording with step markers; ``poetc train --meter ppk2:PTY`` meters every step of a host build
with it, writes the energies to train.json, and the report shows them."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import poetc
from tests.fake_ppk2 import FakePpk2, recording

from poetc.device import meter
from poetc.emit import builddir

if importlib.util.find_spec("ppk2_api") is None:
    if os.environ.get("CI"):
        raise RuntimeError("ppk2-api is not installed in CI (scripts/setup.sh --dev installs it)")
    pytest.skip(
        "ppk2-api is not installed (pip install ppk2-api; scripts/setup.sh --dev)", allow_module_level=True
    )

REGULATOR_SET, SET_POWER_MODE, DEVICE_RUNNING_SET, GET_META_DATA = 0x0D, 0x11, 0x0C, 0x19
AVERAGE_START, AVERAGE_STOP = 0x06, 0x07


@pytest.fixture
def fake():
    made: list[FakePpk2] = []

    def make(*a, **kw) -> FakePpk2:
        f = FakePpk2(*a, **kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def test_ppk2_api_reads_the_fake_and_the_meter_frames_each_marked_step(fake):
    cur, logic, energy_1v = recording([3e-3, 5e-3, 4e-3], [5e-3, 7.5e-3, 6e-3], idle_a=0.4e-3)
    dev = fake(cur, logic)
    m = meter.Ppk2Meter(dev.path, mv=3000, boot_s=0.0)
    m.open()
    m.start()
    deadline = time.monotonic() + 5
    while dev.sent < len(dev.stream) and time.monotonic() < deadline:
        time.sleep(0.01)
    trace = m.stop()
    m.close()
    # what ppk2-api sent, in order: calibration, source meter, 3000 mV, power on, start, stop
    ops = dev.ops()
    assert ops[:4] == [GET_META_DATA, SET_POWER_MODE, REGULATOR_SET, DEVICE_RUNNING_SET]
    assert ops[-2:] == [AVERAGE_START, AVERAGE_STOP]
    assert dict(dev.commands)[SET_POWER_MODE] == b"\x02" and dict(dev.commands)[DEVICE_RUNNING_SET] == b"\x01"
    assert dict(dev.commands)[REGULATOR_SET] == bytes([3 + (3000 - 800 + 32) // 256, (3000 - 800 + 32) % 256])
    assert len(trace.current_a) == len(cur) and trace.voltage_v == 3.0
    runs = [meter.RunMark(0, 0.0, 0.0)] * 3
    res = meter.attribute(trace, runs)
    assert res.how == "marker"
    assert res.train_j == pytest.approx([3.0 * e for e in energy_1v], rel=1e-9)
    assert res.idle_a == pytest.approx(0.4e-3, rel=0.01)


@pytest.fixture(scope="module")
def host_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ppk") / "b"
    poetc("build", "digits-mlp", "--board", "host", "--out", str(out), "--batch", "8")
    return out


def test_train_meters_every_step_through_the_fake(fake, host_build):
    steps = 3
    cur, logic, energy_1v = recording([2e-3, 3e-3, 2.5e-3], [6e-3, 6.5e-3, 7e-3])
    dev = fake(cur, logic)
    r = poetc(
        "train", str(host_build), "--steps", str(steps), "--eval-every", "0",
        "--meter", f"ppk2:{dev.path},mv=3300",
    )  # fmt: skip
    assert f"metering with the PPK2 on {dev.path}" in r.stdout
    assert "metered:" in r.stdout and "step marker on logic input D0: 3 RUNs framed" in r.stdout, r.stdout
    rec = json.loads(builddir.open_build(host_build).train_record_path().read_text())
    m = rec["metered"]
    assert m["how"] == "marker" and m["voltage_v"] == 3.3
    got = [j for prog, j, _s, _a in m["runs"] if prog == 0]
    assert got == pytest.approx([3.3 * e for e in energy_1v], rel=1e-9)
    assert len(rec["loss"]) == steps and rec["counted_energy_per_step"]["compute_j"] > 0
    # the report shows the metered energy beside the prediction
    poetc("report", str(host_build))
    page = (host_build / "report.html").read_text()
    assert 'data-row="metered"' in page
    assert f"{float(np.mean(got))!r}" in page


def test_train_with_an_absent_meter_is_one_line(host_build):
    r = poetc("train", str(host_build), "--steps", "1", "--meter", "ppk2:/dev/no-such-ppk2", check=False)
    assert r.returncode != 0
    assert "cannot open the PPK2" in r.stderr and len(r.stderr.strip().splitlines()) == 1
