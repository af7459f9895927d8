"""The README's demo configuration on the emulated Cortex-M4: a budget that forces both recomputation and
paging, first-step gradients against the host reference, and the loss falling over 50 steps."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from tests.conftest import poetc

from poetc import cli

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(
        not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
        reason="needs qemu-system-arm and arm-none-eabi-gcc (scripts/setup.sh installs them)",
    ),
]


def test_demo_schedule_recomputes_and_pages_and_trains(tmp_path):
    out = tmp_path / "demo"
    poetc("build", cli.DEMO_MODEL, "--board", "qemu-m4", "--out", str(out), *cli.DEMO_QEMU_ARGS)
    sj = json.loads((out / "schedule.json").read_text())
    assert sj["recomputes"] > 0 and sj["page_outs"] > 0 and sj["page_ins"] > 0, sj
    man = json.loads((out / "poetc.json").read_text())
    assert man["memory"]["total"] <= 200 * 1024
    r = poetc("verify", str(out))
    assert "PASS" in r.stdout
    worst = float(re.search(r"worst relative gradient error ([\d.e+-]+)", r.stdout).group(1))
    assert worst <= 1e-4
    r = poetc("train", str(out), "--steps", "50", "--lr", "0.4", "--eval-every", "25")
    first, last = (float(v) for v in re.search(r"^loss ([\d.]+) -> ([\d.]+)", r.stdout, re.M).groups())
    assert last < 0.9 * first, r.stdout
    m = re.search(r"paging per step: (\d+) page-ins .*?, (\d+) page-outs", r.stdout)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) > 0, r.stdout


def _solve(strategy: str) -> dict:
    args = ["solve", cli.DEMO_MODEL, "--board", "qemu-m4", *cli.DEMO_QEMU_ARGS, "--strategy", strategy]
    r = poetc(*args, "--time-limit", "120", "--json", check=False)
    doc = json.loads(r.stdout)
    assert r.returncode == (0 if doc["feasible"] else 1), r.stderr
    return doc


def test_the_demo_budget_forces_both_recomputation_and_paging():
    """The best schedule without activation paging and the best one without recomputation (both proven optimal,
    both free to move parameters to storage) cost more energy than POET's: so POET's schedule, at this budget
    and deadline, must page and recompute."""
    remat = _solve("remat-only")
    assert remat["status"] == "optimal" or (not remat["feasible"] and "proved" in remat["message"]), remat
    paging = _solve("paging-only")
    assert paging["status"] == "optimal", paging
    poet = _solve("poet")
    assert poet["feasible"] and poet["energy_j"] < paging["energy_j"] * (1 - 1e-6), (poet, paging)
    if remat["feasible"]:
        assert poet["energy_j"] < remat["energy_j"] * (1 - 1e-6), (poet, remat)
