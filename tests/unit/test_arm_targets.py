"""Cortex-M targets without running anything: which target a board gets, QEMU's command line, the linker's
overflow message, board seconds and energy from counted ticks, the emulated boards' constants, and the
generated Makefile / memory.ld / platformio.ini."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from poetc import boards
from poetc.device import harness, target
from poetc.emit import codegen
from poetc.errors import PoetcError
from poetc.resources import firmware_dir

COST_FIELDS = (
    "flop_per_s",
    "flop_per_j",
    "page_in_latency_s",
    "page_in_bytes_per_s",
    "page_out_latency_s",
    "page_out_bytes_per_s",
    "memory_power_w",
    "active_power_w",
)


def test_every_board_gets_its_target():
    kinds = {b.name: type(target.for_board(b)) for b in boards.all_boards()}
    assert kinds["host"] is target.HostTarget
    assert kinds["qemu-m4"] is target.QemuTarget and kinds["qemu-m0"] is target.QemuTarget
    assert kinds["nrf52840"] is target.BoardTarget and kinds["mkr1000"] is target.BoardTarget
    for b in boards.all_boards():
        assert (firmware_dir() / b.port).is_dir(), b.port
        if b.core.startswith("cortex-m"):
            assert (firmware_dir() / b.port / "link.ld").is_file() and (
                firmware_dir() / b.port / "port.c"
            ).is_file()


@pytest.mark.parametrize("emulated, real", [("qemu-m4", "nrf52840"), ("qemu-m0", "mkr1000")])
def test_emulated_boards_use_the_real_boards_cost_constants(emulated, real):
    e, r = boards.load(emulated), boards.load(real)
    assert e.emulated and not r.emulated
    for f in COST_FIELDS:
        assert getattr(e, f) == getattr(r, f), f
    assert e.cycles_per_instruction > 1.0 and "cycles_per_instruction" in e.sources
    # the link buffers, the port's buffers and the stack leave room for a model
    fixed = 2 * e.frame_max_bytes + 8 + e.port_ram_bytes + e.stack_bytes
    assert fixed < e.ram_bytes // 3
    assert e.emulator in {"mps2-an386", "microbit"}


def test_qemu_m4_has_the_nrf52840_memory_and_qemu_m0_16k():
    m4, nrf = boards.load("qemu-m4"), boards.load("nrf52840")
    assert (m4.ram_bytes, m4.flash_bytes, m4.clock_hz, m4.core) == (
        nrf.ram_bytes,
        nrf.flash_bytes,
        nrf.clock_hz,
        nrf.core,
    )
    m0 = boards.load("qemu-m0")
    assert m0.ram_bytes == 16 * 1024 and m0.core == "cortex-m0" and m0.frame_max_bytes == 256


def test_qemu_command_line():
    t = target.QemuTarget(boards.load("qemu-m4"))
    if target.shutil.which("qemu-system-arm") is None:
        pytest.skip("qemu-system-arm is not installed")
    cmd = t.command(Path("/x/poet.elf"), 4321)
    i = cmd.index("-M")
    assert cmd[i + 1] == "mps2-an386"
    assert cmd[cmd.index("-icount") + 1] == "shift=0"
    assert cmd[cmd.index("-semihosting-config") + 1] == "enable=on,target=native"
    assert re.fullmatch(
        r"tcp:127\.0\.0\.1:4321,server=on,wait=on(,nodelay=on)?", cmd[cmd.index("-serial") + 1]
    )
    assert cmd[-2:] == ["-kernel", "/x/poet.elf"]


def test_board_seconds_from_instructions_and_cycles():
    m4 = boards.load("qemu-m4")
    q = target.QemuTarget(m4)
    assert q.seconds(1_000_000, 1_000_000_000) == pytest.approx(1e6 * m4.cycles_per_instruction / 64e6)
    real = target.BoardTarget(boards.load("nrf52840"))
    assert real.seconds(64_000_000, 64_000_000) == pytest.approx(1.0)


def test_step_energy_follows_the_cost_model():
    b = boards.load("qemu-m4")
    q = target.QemuTarget(b)
    e = harness.step_energy(b, q, 2_000_000, 1_000_000_000, (8196, 8196, 1, 1))
    s = 2e6 * b.cycles_per_instruction / b.clock_hz
    assert e.compute_s == pytest.approx(s) and e.compute_j == pytest.approx(s * b.active_power_w)
    page_s = (
        b.page_in_latency_s
        + 8196 / b.page_in_bytes_per_s
        + b.page_out_latency_s
        + 8196 / b.page_out_bytes_per_s
    )
    assert e.paging_j == pytest.approx(page_s * b.memory_power_w)
    assert e.total_j == pytest.approx(e.compute_j + e.paging_j)
    # POET's tables: active power equals flop_per_s / flop_per_j, so the fallback agrees
    assert harness.active_power_w(dataclasses.replace(b, active_power_w=0.0)) == pytest.approx(
        b.active_power_w, rel=1e-3
    )


def test_linker_overflow_becomes_one_line_with_the_budget_that_fits():
    b = boards.load("qemu-m0")
    out = (
        "arm-none-eabi/bin/ld: build/poet.elf section `.bss' will not fit in region `RAM'\n"
        "arm-none-eabi/bin/ld: region `RAM' overflowed by 1234 bytes\ncollect2: error: ld returned 1 exit status\n"
    )
    msg = target.overflow_message(out, b)
    assert msg is not None and "\n" not in msg
    assert "RAM overflowed by 1234 bytes" in msg and f"fits this build is {16384 + 1234} bytes" in msg
    both = out + "ld: region `FLASH' overflowed by 10 bytes\n"
    assert f"FLASH budget that fits this build is {262144 + 10}" in target.overflow_message(both, b)
    assert target.overflow_message("ld: undefined reference to `x'", b) is None


def test_generated_makefile_memory_and_platformio_files(tmp_path):
    b = boards.load("nrf52840")
    t = target.BoardTarget(b)
    mk = codegen.render_template(
        "Makefile.arm.j2", header="h", frame_max=1024, board=b, **t.template_vars(100)
    )
    for want in ("arm-none-eabi-", "-O2", "-std=gnu99", "-ffp-contract=fast", "--gc-sections", "--print-memory-usage",
                 "-Wall -Wextra -Werror", "-mfloat-abi=hard", "-DPOET_FRAME_MAX=1024", "PAGER ?= sd"):  # fmt: skip
        assert want in mk, want
    t.write_port_files(tmp_path, "h", storage_bytes=10_000)
    mem = (tmp_path / "memory.ld").read_text()
    assert "POET_RAM_BYTES = 262144;" in mem and "POET_STACK_BYTES = 8192;" in mem
    assert "POET_FLASH_PAGER_BYTES = 16384;" in mem  # 3 pages for 10,000 bytes + the spare
    ini = (tmp_path / "platformio.ini").read_text()
    assert "platform = nordicnrf52" in ini and "board = nrf52840_dk" in ini and "[env:nrf52840_flash]" in ini
    assert (tmp_path / "cortexm" / "startup.c").is_file()
    q = target.QemuTarget(boards.load("qemu-m0"))
    assert (
        "-mcpu=cortex-m0" in q.template_vars(0)["cpu_flags"]
        and "POET_PORT_SEMIHOST=1" in q.template_vars(0)["defines"]
    )
    (tmp_path / "q").mkdir()
    q.write_port_files(tmp_path / "q", "h", 0)
    # QEMU boards get the local PlatformIO platform, addressed by relative paths
    qini = (tmp_path / "q" / "platformio.ini").read_text()
    assert "platform = symlink://pio/platform" in qini and "core_dir = pio/core" in qini
    assert "board = poetc_qemu_m0" in qini and "-mcpu=cortex-m0" in qini
    board_json = json.loads(
        (tmp_path / "q" / "pio" / "platform" / "boards" / "poetc_qemu_m0.json").read_text()
    )
    assert board_json["upload"]["maximum_ram_size"] == 16 * 1024
    piopm = json.loads((tmp_path / "q" / "pio" / "core" / "packages" / "tool-scons" / ".piopm").read_text())
    assert piopm["spec"]["owner"] == "platformio" and piopm["name"] == "tool-scons"


# ---- finding a real board's ports by USB id -------------------------------------------------------------------
class _Port:
    def __init__(self, device: str, vid: int | None, pid: int | None) -> None:
        self.device, self.vid, self.pid = device, vid, pid


def _plugged(monkeypatch, *ports: _Port) -> None:
    from serial.tools import list_ports

    monkeypatch.setattr(list_ports, "comports", lambda: list(ports))
    monkeypatch.delenv("POETC_SERIAL", raising=False)


def test_mkr1000_talks_through_a_usb_serial_adapter_and_flashes_through_its_own_usb(monkeypatch):
    tgt = target.for_board(boards.load("mkr1000"))
    native = _Port("/dev/ttyACM0", 0x2341, 0x804E)  # the MKR1000's native USB: not the link
    _plugged(monkeypatch, native, _Port("/dev/ttyS0", None, None), _Port("/dev/ttyUSB0", 0x1A86, 0x7523))
    assert tgt.find_serial() == "/dev/ttyUSB0" and tgt.find_upload_port() == "/dev/ttyACM0"
    _plugged(monkeypatch, native)
    with pytest.raises(PoetcError, match=r"USB-serial adapter .* pins 13 \(RX\) and 14 \(TX\)"):
        tgt.find_serial()
    assert target.for_board(boards.load("mkr1000"), port="/dev/ttyX").find_serial() == "/dev/ttyX"
    monkeypatch.setenv("POETC_SERIAL", "/dev/ttyY")
    assert tgt.find_serial() == "/dev/ttyY"


def test_nrf52840_is_one_jlink_port_and_port_is_for_real_boards_only(monkeypatch):
    tgt = target.for_board(boards.load("nrf52840"))
    _plugged(monkeypatch, _Port("/dev/ttyUSB0", 0x0403, 0x6001), _Port("/dev/ttyACM3", 0x1366, 0x1015))
    assert tgt.find_serial() == tgt.find_upload_port() == "/dev/ttyACM3"
    for name in ("qemu-m4", "host", "rpi4"):
        with pytest.raises(PoetcError, match="--port names a real board's serial device"):
            target.for_board(boards.load(name), port="/dev/ttyACM0")
