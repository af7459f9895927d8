"""The Linux-class boards (POET's Raspberry Pi 4 and Jetson TX2): the generated C and the unchanged host port,
cross-compiled statically with Debian's aarch64-linux-gnu-gcc, run under qemu-aarch64 (user mode) with the same
harness: training, the dump contract, verification against the reference, and paging to a file."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import poetc
from tests.e2e.test_qemu import mlp_onnx

from poetc.emit import builddir

NATIVE = platform.machine().lower() in ("aarch64", "arm64")
TOOLS = ("make",) if NATIVE else ("aarch64-linux-gnu-gcc", "qemu-aarch64", "make")
_missing = [t for t in TOOLS if shutil.which(t) is None]
if _missing and not os.environ.get("CI"):  # in CI, scripts/setup.sh must have installed them: fail instead
    pytest.skip(
        f"needs {', '.join(_missing)} (Debian: gcc-aarch64-linux-gnu, qemu-user; scripts/setup.sh installs them)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.slow

EM_AARCH64 = 183


@pytest.fixture(scope="module")
def rpi4(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("a64") / "rpi4"
    r = poetc("build", "digits-mlp", "--board", "rpi4", "--batch", "16", "--out", str(out))
    assert "static, aarch64, -mcpu=cortex-a72" in r.stdout
    return out


def test_the_binary_is_a_static_aarch64_executable(rpi4):
    exe = rpi4 / "build" / "poet_linux"
    head = exe.read_bytes()[:64]
    assert head[:4] == b"\x7fELF" and head[4] == 2  # 64-bit
    assert struct.unpack_from("<H", head, 18)[0] == EM_AARCH64
    assert b"poet-host: listening on" in exe.read_bytes()  # the host port, unchanged
    assert "-static" in (rpi4 / "Makefile").read_text()


def test_rpi4_trains_dumps_and_verifies_under_qemu_aarch64(rpi4, tmp_path):
    dump = tmp_path / "run.npz"
    r = poetc("train", str(rpi4), "--steps", "40", "--lr", "0.2", "--eval-every", "20", "--dump", str(dump))
    m = re.search(r"loss ([\d.]+) -> ([\d.]+)", r.stdout)
    assert m and float(m.group(2)) < 0.9 * float(m.group(1)), r.stdout
    d = np.load(dump)
    params = [k[len("param/") :] for k in d.files if k.startswith("param/")]
    assert params and d["loss"].shape == (40,) and d["x"].shape == (16, 1, 8, 8)
    for k in params:
        assert d[f"grad/{k}"].shape == d[f"param/{k}"].shape == d[f"final/{k}"].shape
    # off the board, the ticks time qemu-aarch64 on this machine: said so, and no energy is made from them
    rec = json.loads(builddir.open_build(rpi4).train_record_path().read_text())  # the latest run
    if NATIVE:
        assert not rec["emulated"] and rec["counted_energy_per_step"] is not None
    else:
        assert (
            rec["emulated"]
            and rec["timing"]["label"] == "emulated"
            and rec["counted_energy_per_step"] is None
        )
        assert re.search(r"^emulated\s+-\s+\S+ \w?J\s+-", r.stdout, re.M), r.stdout
        assert "ms per step of emulation on this machine" in r.stdout
        assert not re.search(r"^counted\s", r.stdout, re.M), r.stdout
    assert rec["predicted_energy_per_step"]["total_j"] > 0
    v = poetc("verify", str(rpi4))
    assert "PASS" in v.stdout, v.stdout


def test_jetson_tx2_pages_to_a_file_and_verifies(tmp_path):
    """A deep narrow MLP under a RAM budget a third of its arena below the store-all peak: the schedule pages,
    through the host port's pager file, and the step still matches the reference."""
    model = str(mlp_onnx(tmp_path / "deep.onnx", (64, 12, 12, 12, 12, 12, 10), gain=2.45))
    args = ("--board", "jetson-tx2", "--batch", "13")
    r = poetc("solve", model, *args, "--strategy", "store-all", "--json")
    sa = json.loads(r.stdout[r.stdout.index("{") :])
    ram = sa["peak_ram_bytes"] - sa["arena_bytes"] // 3
    out = tmp_path / "tx2"
    poetc("build", model, *args, "--ram", str(ram), "--strategy", "paging-only", "--out", str(out))
    assert "-mcpu=cortex-a57" in (out / "Makefile").read_text()
    r = poetc("train", str(out), "--steps", "5", "--eval-every", "0")
    m = re.search(r"paging per step: (\d+) page-ins \(([^)]+)\), (\d+) page-outs", r.stdout)
    assert m and int(m.group(1)) > 0 and int(m.group(3)) > 0, r.stdout
    assert "PASS" in poetc("verify", str(out)).stdout
