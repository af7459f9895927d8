"""Real Cortex-M boards without the boards: nRF52840-DK and MKR1000 images build offline with the Debian
toolchain and fit; their PlatformIO projects validate (``pio project config``, offline, under a second); and
``poetc flash`` says clearly, in one line and never after a 60 s wait on PlatformIO's registry, what is missing."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from tests.conftest import poetc, python_alone

from poetc import boards
from poetc.device import target
from poetc.emit import builddir

needs_arm = pytest.mark.skipif(
    not (shutil.which("arm-none-eabi-gcc") and shutil.which("make")),
    reason="needs arm-none-eabi-gcc and make (scripts/setup.sh installs them)",
)


@pytest.fixture(scope="module", params=["nrf52840", "mkr1000"])
def board_build(request, tmp_path_factory) -> tuple[str, Path, str]:
    if not (shutil.which("arm-none-eabi-gcc") and shutil.which("make")):
        pytest.skip("needs arm-none-eabi-gcc and make")
    out = tmp_path_factory.mktemp("boards") / request.param
    r = poetc("build", "digits-mlp", "--board", request.param, "--out", str(out), "--batch", "8")
    return request.param, out, r.stdout


@needs_arm
def test_board_images_build_offline_and_fit(board_build):
    name, out, stdout = board_build
    board = boards.load(name)
    elf = out / "build" / "poet.elf"
    assert elf.is_file() and (out / "build" / "poet.hex").is_file() and (out / "build" / "poet.bin").is_file()
    # the build printed the ELF's flash and RAM use
    m = re.search(r"image: flash ([\d.]+ \w+) of .*RAM ([\d.]+ \w+) of", stdout)
    assert m, stdout
    size = target.image_size(elf, board)
    assert 0 < size.flash < board.flash_bytes and 0 < size.ram <= board.ram_bytes
    assert size.ram <= builddir.open_build(out).doc["memory"]["total"]
    # the vector table sits where the board boots it: 0 on the nRF52840, after the 8 KB bootloader on the MKR1000
    nm = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    vec = int(next(ln.split()[0] for ln in nm.splitlines() if ln.endswith(" cm_vectors")), 16)
    assert vec == (0x2000 if name == "mkr1000" else 0)
    if name == "nrf52840":  # its SD pager moves data blocks by SPIM EasyDMA while kernels run
        syms = {ln.split()[-1] for ln in nm.splitlines()}
        assert {"sd_async_start", "sd_async_poll", "spim_dma_start", "spim_dma_done", "sd_async_irq"} <= syms
        # SPIM2's END interrupt (IRQ 35) chains the blocks: its vector, right after the 16 core ones, is the handler
        addr = {ln.split()[-1]: int(ln.split()[0], 16) for ln in nm.splitlines() if len(ln.split()) == 3}
        assert addr["nrf52840_irq_vectors"] == vec + 16 * 4
        image = (out / "build" / "poet.bin").read_bytes()
        assert int.from_bytes(image[(16 + 35) * 4 : (16 + 36) * 4], "little") == addr["spim2_irq"] | 1


@needs_arm
def test_nrf52840_flash_pager_variant_builds(board_build, tmp_path):
    name, out, _ = board_build
    if name != "nrf52840":
        pytest.skip("the NVMC pager is the nRF52840's")
    work = tmp_path / "flashpager"
    shutil.copytree(out, work)
    shutil.rmtree(work / "build")
    r = subprocess.run(["make", "-C", str(work), "PAGER=flash"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    nm = subprocess.run(
        ["arm-none-eabi-nm", str(work / "build" / "poet.elf")], capture_output=True, text=True
    ).stdout
    syms = {ln.split()[-1]: int(ln.split()[0], 16) for ln in nm.splitlines() if len(ln.split()) == 3}
    assert "fp_write" in syms and "sd_pager_write" not in syms
    assert syms["__poet_pager_end"] == 1 << 20 and syms["__poet_pager_start"] % 4096 == 0
    bad = subprocess.run(["make", "-C", str(work), "PAGER=tape"], capture_output=True, text=True)
    assert bad.returncode != 0 and "PAGER must be one of" in bad.stderr


@pytest.mark.skipif(shutil.which("pio") is None, reason="needs PlatformIO (pip install platformio)")
def test_platformio_project_validates_offline(board_build):
    name, out, _ = board_build
    env = target.PLATFORMIO[name]
    r = subprocess.run(
        ["pio", "project", "config", "-d", str(out), "--json-output"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    sections = dict(json.loads(r.stdout))
    opts = dict(sections[f"env:{name}"])
    version = target.PIO_PLATFORM_VERSIONS[env.platform]
    assert opts["platform"] == f"{env.platform}@{version}" and opts["board"] == env.board
    assert opts["platform_packages"] == [
        target.PIO_TOOLCHAIN
    ]  # pinned: GCC 12, as these sources were built with
    assert (out / opts["board_build.ldscript"]).is_file()
    assert opts["extra_scripts"] == ["pre:pio_link.py"] and (out / "pio_link.py").is_file()
    flags = " ".join(opts["build_flags"])
    assert "-O2" in flags and "-ffp-contract=fast" in flags and "-Wall" in flags
    assert "-Werror" not in flags  # a user's newer compiler may warn; CI builds the _ci environment
    ci = dict(sections[f"env:{name}_ci"])
    assert ci["extends"] == [f"env:{name}"] and " ".join(ci["build_flags"]).endswith("-Werror")
    assert "-mfloat-abi=hard" in flags if name == "nrf52840" else "-mfloat-abi=soft" in flags
    assert "-Os" in opts["build_unflags"]
    assert dict(sections["platformio"])["build_dir"].endswith("build/pio")  # inside the build directory
    # every file the source filter names exists, and the pre-script is valid Python
    for part in re.findall(r"\+<([^>]+)>", " ".join(opts["build_src_filter"])):
        assert (out / part).exists(), part
    compile(Path(out / "pio_link.py").read_text(), "pio_link.py", "exec")
    if name == "nrf52840":
        assert "-DPOET_PAGER_FLASH=1" in " ".join(dict(sections["env:nrf52840_flash"])["build_flags"])


# ---- poetc flash: every missing piece is one clear line, exit 2 -----------------------------------------------
@pytest.fixture(scope="module")
def nrf_sources(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flash") / "nrf"
    poetc("build", "digits-mlp", "--board", "nrf52840", "--out", str(out), "--batch", "8", "--no-compile")
    return out


def _fake_pio(d: Path) -> Path:
    """A 'pio' that records its arguments (PlatformIO itself would try its registry for a missing platform)."""
    d.mkdir(parents=True, exist_ok=True)
    exe = d / "pio"
    exe.write_text(f'#!/bin/sh\necho "$@" > {d / "args.txt"}\nexit 0\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def _flash(build: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    import sys

    return subprocess.run(
        [sys.executable, "-m", "poetc.cli", "flash", str(build), *extra],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **env},
    )


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("poetc: error: "), err
    return err


def test_flash_without_platformio(nrf_sources, tmp_path):
    python, env = python_alone(tmp_path)  # no pio on PATH, none beside the Python
    r = subprocess.run(
        [python, "-m", "poetc.cli", "flash", str(nrf_sources)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    err = _one_line_error(r)
    assert "PlatformIO is not installed" in err and "install platformio" in err


def test_flash_without_a_board_attached(nrf_sources, tmp_path):
    fake = _fake_pio(tmp_path / "bin")
    env = {"PATH": f"{fake.parent}:{os.environ['PATH']}", "POETC_SERIAL": ""}
    err = _one_line_error(_flash(nrf_sources, env))
    assert "no nrf52840 found" in err and "--port" in err
    assert not (fake.parent / "args.txt").exists()


def test_flash_without_the_platformio_platform(nrf_sources, tmp_path):
    fake = _fake_pio(tmp_path / "bin")
    env = {"PATH": f"{fake.parent}:{os.environ['PATH']}", "PLATFORMIO_CORE_DIR": str(tmp_path / "core")}
    err = _one_line_error(_flash(nrf_sources, env, "--port", "/dev/null"))
    assert "nordicnrf52" in err and "pio pkg install -g -p nordicnrf52" in err
    assert not (fake.parent / "args.txt").exists()


def test_flash_runs_pio_upload_when_everything_is_there(nrf_sources, tmp_path):
    fake = _fake_pio(tmp_path / "bin")
    core = tmp_path / "core"
    (core / "platforms" / "nordicnrf52").mkdir(parents=True)
    env = {"PATH": f"{fake.parent}:{os.environ['PATH']}", "PLATFORMIO_CORE_DIR": str(core)}
    r = _flash(nrf_sources, env, "--port", "/dev/ttyFAKE0", "--env", "nrf52840_flash")
    assert r.returncode == 0, r.stderr
    args = (fake.parent / "args.txt").read_text().split()
    assert args == [
        "run",
        "-d",
        str(nrf_sources),
        "-e",
        "nrf52840_flash",
        "-t",
        "upload",
        "--upload-port",
        "/dev/ttyFAKE0",
    ]
