"""Profile-driven schedules on the emulated Cortex-M boards: ``poetc profile`` counts every node's instructions
in QEMU, ``poetc build --profile`` schedules with them, and the build trains and verifies; its predicted energy
per step then matches what the target counted (the FLOP model is off by several times on the same steps)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from tests.conftest import poetc
from tests.e2e.test_qemu import mlp_onnx

from poetc.device import profile

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("qemu-system-arm", "arm-none-eabi-gcc", "make")),
        reason="needs qemu-system-arm, arm-none-eabi-gcc and make (scripts/setup.sh installs them)",
    ),
]


def _energies(stdout: str) -> tuple[float, float]:
    """(counted, predicted) total energy per step from poetc train's energy table, in J."""
    unit = {"J": 1.0, "mJ": 1e-3, "uJ": 1e-6, "nJ": 1e-9}
    vals = {}
    for row in ("counted", "predicted"):
        m = re.search(rf"^{row}\s+\S+ \w+\s+\S+ \w+\s+([\d.]+) (\w+)", stdout, re.M)
        assert m, stdout
        vals[row] = float(m.group(1)) * unit[m.group(2)]
    return vals["counted"], vals["predicted"]


def _profile_build_train(tmp: Path, model: str, board: str, batch: str, *build_args: str) -> tuple[dict, str]:
    prof = tmp / "p"
    r = poetc("profile", model, "--board", board, "--batch", batch, "--out", str(prof))
    assert "instructions" in r.stdout and "model/meas." in r.stdout and "pager:" in r.stdout, r.stdout
    doc = json.loads((prof / "profile.json").read_text())
    out = tmp / "b"
    poetc(
        "build",
        model,
        "--board",
        board,
        "--batch",
        batch,
        "--profile",
        str(prof),
        "--out",
        str(out),
        *build_args,
    )
    r = poetc("train", str(out), "--steps", "6", "--lr", "0.1", "--eval-every", "0")
    assert "a measured profile, profile.json" in r.stdout
    assert "PASS" in poetc("verify", str(out)).stdout
    return doc, r.stdout


def test_profile_driven_schedule_on_qemu_m4(tmp_path):
    """The digits MLP at 40 KB on qemu-m4: the profile-driven schedule predicts the counted energy."""
    doc, out = _profile_build_train(tmp_path, "digits-mlp", "qemu-m4", "32", "--ram", "40K")
    prof = profile.Profile.from_json(doc)
    assert prof.tick_unit == "instructions" and prof.pager is not None and prof.pager.emulated
    assert all(n.ticks > 0 for n in prof.nodes)
    assert prof.step_ratio > 2  # the FLOP model (POET's m4 row) overestimates this MLP's time several times
    counted, predicted = _energies(out)
    assert predicted == pytest.approx(counted, rel=0.05)


def test_profile_driven_schedule_on_qemu_m0_that_pages(tmp_path):
    """A deep MLP on qemu-m0 under a RAM budget below its store-all peak: POET, scheduling with the measured
    times, pages (a page costs far less than recomputing a soft-float layer); it trains and verifies, as
    predicted."""
    model = str(mlp_onnx(tmp_path / "deep.onnx", (64, 12, 12, 12, 12, 12, 10), gain=2.45))
    r = poetc("solve", model, "--board", "qemu-m0", "--batch", "13", "--strategy", "store-all", "--json")
    sa = json.loads(r.stdout[r.stdout.index("{") :])
    ram = min(sa["ram_budget_bytes"], sa["peak_ram_bytes"]) - sa["arena_bytes"] // 3
    _doc, out = _profile_build_train(tmp_path, model, "qemu-m0", "13", "--ram", str(ram), "--time-limit", "8")
    m = re.search(r"paging per step: (\d+) page-ins", out)
    assert m and int(m.group(1)) > 0, out
    counted, predicted = _energies(out)
    assert predicted == pytest.approx(counted, rel=0.05)
