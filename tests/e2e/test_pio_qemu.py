"""PlatformIO for the QEMU boards, offline: poetc's local platform (Debian's toolchain as a local package, SCons
from pip as PlatformIO's tool-scons) lets ``pio run`` build the same sources as the Makefile, and ``pio run -t
upload`` (what ``poetc flash`` runs) boot the image in QEMU, check its build hash and install it as the image
``poetc train`` and ``verify`` run. Nothing here touches PlatformIO's registry: a registry wait would show as a
60 s stall and an HTTPClientError, which the subprocess timeouts and return codes catch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import poetc, python_alone

from poetc.device import target

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(
        not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc") and shutil.which("pio")),
        reason="needs qemu-system-arm, arm-none-eabi-gcc and PlatformIO (scripts/setup.sh installs them)",
    ),
]

BUILDS = {
    "qemu-m4": ["--batch", "8"],
    "qemu-m0": ["--batch", "8", "--input-u8", "0.0625"],  # 16 KB: the schedule recomputes
}
PIO_ENV = (
    target.PIO_ENV
)  # no telemetry and no upgrade check from a fresh core dir: both would reach the network


def _pio(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["pio", *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **PIO_ENV}
    )


@pytest.mark.parametrize("board", list(BUILDS))
def test_pio_run_builds_offline_and_upload_boots_the_image_in_qemu(tmp_path, board):
    out = tmp_path / board
    poetc("build", "digits-mlp", "--board", board, "--out", str(out), "--no-compile", *BUILDS[board])
    installed = out / "build" / "poet.elf"
    assert not installed.exists()

    r = _pio("project", "config", "-d", str(out), "--json-output", timeout=30)
    assert r.returncode == 0, r.stderr
    opts = dict(dict(json.loads(r.stdout))[f"env:{board}"])
    assert opts["platform"] == "symlink://pio/platform"
    assert opts["board"] == "poetc_" + board.replace("-", "_")
    ci = dict(dict(json.loads(r.stdout))[f"env:{board}_ci"])  # CI's build: the same with warnings as errors
    assert "-Werror" not in " ".join(opts["build_flags"]) and " ".join(ci["build_flags"]).endswith("-Werror")

    r = _pio("run", "-d", str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "HTTPClientError" not in r.stdout + r.stderr
    built = out / "build" / "pio" / board / "poet.elf"
    assert built.is_file() and "RAM:" in r.stdout and "Flash:" in r.stdout

    r = poetc("flash", str(out))  # pio run -t upload
    doc = json.loads((out / "poetc.json").read_text())
    assert f"answered as build {doc['hash']}" in r.stdout, r.stdout
    assert installed.read_bytes() == built.read_bytes()

    r = poetc("verify", str(out))
    assert "PASS" in r.stdout, r.stdout
    r = poetc("train", str(out), "--steps", "3", "--lr", "0.1", "--eval-every", "0")
    assert "loss" in r.stdout


def test_upload_refuses_the_image_of_another_build(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out, batch in ((a, "8"), (b, "16")):
        poetc(
            "build",
            "digits-mlp",
            "--board",
            "qemu-m4",
            "--out",
            str(out),
            "--batch",
            batch,
            "--strategy",
            "store-all",
        )
    before = (b / "build" / "poet.elf").read_bytes()
    r = subprocess.run(
        [sys.executable, "-m", "poetc.device.pio_upload", str(b), str(a / "build" / "poet.elf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "answers as build" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (b / "build" / "poet.elf").read_bytes() == before  # nothing installed


def test_flash_of_a_qemu_board_without_platformio(tmp_path):
    out = tmp_path / "q"
    poetc("build", "digits-mlp", "--board", "qemu-m4", "--out", str(out), "--no-compile")
    python, env = python_alone(tmp_path)  # no pio on PATH, none beside the Python
    r = subprocess.run(
        [python, "-m", "poetc.cli", "flash", str(out)], capture_output=True, text=True, timeout=30, env=env
    )
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1, err
    assert "PlatformIO is not installed" in err
    r = subprocess.run(
        [sys.executable, "-m", "poetc.cli", "flash", str(out), "--port", "/dev/ttyACM0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "--port and --env" in err, err


def test_the_project_survives_a_move(tmp_path):
    """platformio.ini's paths are relative: a moved build directory still builds."""
    out = tmp_path / "first"
    poetc("build", "digits-mlp", "--board", "qemu-m4", "--out", str(out), "--no-compile", "--batch", "8")
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    r = _pio("run", "-d", str(moved))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert Path(moved / "build" / "pio" / "qemu-m4" / "poet.elf").is_file()
