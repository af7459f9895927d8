"""A CNN trained on the emulated Cortex-M4 under a RAM budget and deadline that force both recomputation and
paging: the zoo's digits-cnn (five 3x3 conv-ReLU layers, batch 8) in 106 KB with a deadline of 1.2x one
computation of every node, its parameters in RAM (``--params ram``: this is about activations; with the
parameters scheduled too, moving the classifier to storage is the cheaper way out). 108 KB before the
convolutions' weight gradients were fused into their updates: the step needs less RAM, and at 108 KB
recomputation alone now fits. The time model is the synchronous one (``--no-overlap``), under which the point was
found: with transfers hidden behind computation, paging alone meets the deadline more often.

The point is defined under POET's flat compute model (FLOPs / flop_per_s), as it was found: the test runs on a
copy of the qemu-m4 board file without its calibrated compute tables (``FLAT_BOARD``), since which schedule wins
depends on the cost model (under the calibrated one, convolutions cost more time per FLOP and the deadline rules
out recomputation at this point).

Checked below by solver runs:
- remat-only: the solver proves that no schedule without paging fits the budget and the deadline;
- paging-only: its proven optimum (the greedy's schedule, 4 page-outs) is beaten by POET's proven optimum, the
  mixed schedule that also recomputes (6.01 mJ extra against 9.85 mJ: 8 recomputations, 1 page-out), which the
  poet MILP proves in about 10 s since it carries the relaxed model's frontier rows and its bound process.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
from tests.conftest import poetc

MODEL = "digits-cnn"
POINT = ["--ram", "106K", "--deadline", "1.2x", "--params", "ram", "--no-overlap"]


def _flat_board() -> str:
    """qemu-m4.toml without [instructions_per_flop] / [instructions_per_run]: POET's FLOP model."""
    import atexit
    import tempfile
    from pathlib import Path

    from poetc import boards

    text = (boards.boards_dir() / "qemu-m4.toml").read_text()
    text = re.sub(r"\n\[instructions_per_(flop|run)\]\n(?:[^\[].*\n?)*", "\n", text)
    d = Path(tempfile.mkdtemp(prefix="poetc-flat-board-"))
    atexit.register(shutil.rmtree, d, True)
    (d / "qemu-m4.toml").write_text(text)
    return str(d / "qemu-m4.toml")


FLAT_BOARD = _flat_board()

needs_qemu = pytest.mark.skipif(
    not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
    reason="needs qemu-system-arm and arm-none-eabi-gcc (scripts/setup.sh installs them)",
)


def _solve(strategy: str, time_limit: int) -> dict:
    r = poetc(
        "solve", MODEL, "--board", FLAT_BOARD, *POINT, "--strategy", strategy,
        "--time-limit", str(time_limit), "--json", check=False,
    )  # fmt: skip
    doc = json.loads(r.stdout)
    assert r.returncode == (0 if doc["feasible"] else 1), r.stderr
    return doc


@pytest.mark.qemu
@needs_qemu
def test_digits_cnn_recomputes_pages_verifies_and_learns_on_qemu_m4(tmp_path):
    out = tmp_path / "cnn"
    poetc("build", MODEL, "--board", FLAT_BOARD, "--out", str(out), *POINT, "--time-limit", "30")
    sj = json.loads((out / "schedule.json").read_text())
    # paging is forced (no schedule without it fits: test below), and the optimum also recomputes
    assert sj["page_outs"] > 0 and sj["page_ins"] > 0 and sj["recomputes"] > 0, sj
    man = json.loads((out / "poetc.json").read_text())
    assert man["memory"]["total"] <= 106 * 1024, man["memory"]

    r = poetc("verify", str(out))
    assert "PASS" in r.stdout, r.stdout
    worst = float(re.search(r"worst relative gradient error ([\d.e+-]+)", r.stdout).group(1))
    assert worst <= 1e-4

    r = poetc("train", str(out), "--steps", "50", "--lr", "0.05", "--eval-every", "25", "--profile-nodes")
    first, last = (float(v) for v in re.search(r"^loss ([\d.]+) -> ([\d.]+)", r.stdout, re.M).groups())
    assert last < 0.75 * first, r.stdout
    m = re.search(r"paging per step: (\d+) page-ins .*?, (\d+) page-outs", r.stdout)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) > 0, r.stdout
    assert re.search(r"^counted\s+\S+ mJ\s+[1-9]", r.stdout, re.M), r.stdout  # non-zero paging energy

    # the firmware really computes a recomputed node again: its instructions per run match those of a node of
    # the same op and size that runs once (the five ReLUs have one shape, as do conv2..conv5)
    prof = re.findall(r"^\s*\d+\s+\S+\s+(\w+)\s+(\d+)\s+([\d,]+)\s", r.stdout, re.M)
    nodes = json.loads((out / "poetc.json").read_text())["nodes"]
    assert len(prof) == len(nodes), r.stdout
    assert sum(int(n) - 1 for _, n, _ in prof) == sj["recomputes"]
    once: dict[tuple[str, int], int] = {}
    for (op, n, ticks), nd in zip(prof, nodes, strict=True):
        if n == "1":
            once[(op, nd["flops"])] = int(ticks.replace(",", ""))
    compared = 0
    for (op, n, ticks), nd in zip(prof, nodes, strict=True):
        if int(n) > 1 and (op, nd["flops"]) in once:
            per_run = int(ticks.replace(",", "")) / int(n)
            assert per_run == pytest.approx(once[(op, nd["flops"])], rel=0.05), (op, n, ticks)
            compared += 1
    assert compared > 0, r.stdout


def test_the_cnn_budget_forces_both_recomputation_and_paging():
    remat = _solve("remat-only", 600)
    assert not remat["feasible"] and "proved" in remat["message"], remat
    paging = _solve("paging-only", 60)
    assert paging["status"] == "optimal", paging
    poet = _solve("poet", 60)  # proven in about 10 s
    assert poet["status"] == "optimal" and poet["energy_j"] < paging["energy_j"] * (1 - 1e-6), (poet, paging)
    assert poet["page_outs"] > 0 and poet["recomputes"] > 0, poet  # paging is forced, recomputing pays
