"""Targets: build the generated sources for a board's port, launch the result, open its transport.

Every target ends in a pyserial URL: the host program listens on a loopback TCP port (socket://), QEMU serves
its UART on one, a real board is a serial device. ``Session`` owns the process: it is stopped (and killed if it
will not stop) on success, failure, timeout or Ctrl-C, so nothing is left behind.

Targets by board: ``host`` (the system C compiler, a process); Cortex-M boards with an ``emulator`` (QEMU:
``QemuTarget`` builds with arm-none-eabi-gcc and runs the image with -icount shift=0, semihosting and its UART
on a loopback TCP port); real Cortex-M boards (``BoardTarget``: the same Makefile, plus a PlatformIO project
that ``poetc flash`` uploads; the harness then talks to the board's serial port).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import serial

from ..boards import Board
from ..emit import codegen
from ..errors import PoetcError, TargetError
from ..fmt import nbytes
from ..resources import firmware_dir
from .link import Link

_OVERFLOW = re.compile(r"region [`'](\w+)' overflowed by (\d+) bytes")


def run_make(
    build_dir: Path,
    args: list[str] | None = None,
    say: Callable[[str], None] | None = None,
    board: Board | None = None,
) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        raise PoetcError("'make' is not installed (Debian: apt-get install make)")
    cmd = ["make", "-C", str(build_dir), "--no-print-directory", *(args or [])]
    # make and its compilers in their own process group: stopped together if poetc is (Ctrl-C, SIGTERM), so no
    # compiler writes into a build's temporary directory after it was removed
    p = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = p.communicate()
    except BaseException:
        stop_process(p, grace_s=0.5)
        raise
    proc = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    if proc.returncode != 0:
        if board is not None:
            overflow = overflow_message(proc.stdout + proc.stderr, board)
            if overflow:
                raise PoetcError(overflow)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
        first_err = next((ln for ln in tail if "error" in ln.lower()), tail[-1] if tail else "make failed")
        raise PoetcError(
            f"build failed in {build_dir}: {first_err.strip()}"
            + ("\n" + "\n".join(tail) if os.environ.get("POETC_VERBOSE") else "")
        )
    return proc


def overflow_message(output: str, board: Board) -> str | None:
    """One line from ld's "region `RAM' overflowed by N bytes" (and FLASH): what overflowed, by how much, and the
    smallest size that would fit."""
    found: dict[str, int] = {}
    for region, n in _OVERFLOW.findall(output):
        found[region] = max(found.get(region, 0), int(n))
    if not found:
        return None
    sizes = {"RAM": board.ram_bytes, "FLASH": board.flash_bytes}
    parts = []
    for region, n in found.items():
        have = sizes.get(region)
        if have is None:
            parts.append(f"region {region} overflowed by {n} bytes")
        else:
            parts.append(
                f"{region} overflowed by {n} bytes: the image needs {have + n} bytes of {region}, board "
                f"{board.name} has {have}; the smallest {region} budget that fits this build is {have + n} bytes"
            )
    return f"the image does not fit board {board.name} at link time: " + "; ".join(parts)


class _Link(Link):
    """A Link that calls a silent, still-running target hung, rather than reporting a protocol error."""

    def _dead(self, msg: str) -> TargetError:
        why = self.on_dead() if self.on_dead else None
        if why:
            return TargetError(f"target: {why}")
        if msg.startswith("timed out"):
            return TargetError(f"target timed out (hung?): no reply within {self.timeout_s:g} s")
        return TargetError(f"target: {msg}")


class Session:
    """A launched target: its process (if any) and a Link on its transport."""

    def __init__(
        self,
        proc: subprocess.Popen | None,
        url: str,
        cleanup: Callable[[], None] | None = None,
        timeout_s: float = 60.0,
        baudrate: int | None = None,
    ) -> None:
        self.proc = proc
        self.url = url
        self._cleanup = cleanup
        kw: dict[str, Any] = {"baudrate": baudrate} if baudrate else {}
        # reads return within 20 ms: the link notices a silent target quickly (link.QUIET_MIN_S)
        self.ser = serial.serial_for_url(url, timeout=0.02, write_timeout=timeout_s, **kw)
        self.link = _Link(self.ser, timeout_s=timeout_s, on_dead=self.why_dead)

    def _exit_code(self) -> int | None:
        """The process's exit code; a process whose transport just closed gets a moment to finish exiting."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            return None

    def _stderr_text(self) -> str:
        if self.proc is None or not self.proc.stderr:
            return ""
        try:
            return self.proc.stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def why_dead(self) -> str | None:
        code = self._exit_code()
        if code is None:
            return None
        err = self._stderr_text()
        if code < 0:
            return f"the target process died from signal {signal.Signals(-code).name}" + (
                f": {err}" if err else ""
            )
        return f"the target process exited with code {code}" + (f": {err.splitlines()[-1]}" if err else "")

    def close(self, graceful: bool = True) -> None:
        try:
            if graceful and self.proc is not None and self.proc.poll() is None:
                try:
                    self.link.exit(0)
                except (TargetError, OSError, ValueError):
                    pass
        finally:
            try:
                self.ser.close()
            except Exception:
                pass
            if self.proc is not None:  # after EXIT the target stops by itself; otherwise stop it now
                stop_process(self.proc, grace_s=2.0 if graceful else 0.3)
            if self._cleanup:
                self._cleanup()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(graceful=exc_type is None)


def stop_process(proc: subprocess.Popen, grace_s: float = 2.0) -> None:
    """Stop a child and everything in its process group; never leaves an orphan or a zombie."""
    if proc.poll() is None:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace_s)
                break
            except subprocess.TimeoutExpired:
                continue
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream:
            stream.close()


class Target:
    """Base: how to build and launch the generated project of one port."""

    makefile_template = ""

    def __init__(self, board: Board) -> None:
        self.board = board

    def binary(self, build_dir: Path) -> Path:
        raise NotImplementedError

    def template_vars(self, storage_bytes: int) -> dict[str, Any]:
        """Extra values for the Makefile template."""
        return {}

    def write_port_files(self, d: Path, header: str, storage_bytes: int) -> None:
        """Port-specific files of the build directory beyond port/ (shared sources, linker inputs, PlatformIO)."""

    def build(self, build_dir: Path, say: Callable[[str], None] | None = None, san: bool = False) -> Path:
        run_make(build_dir, ["SAN=asan"] if san else [], say)
        return self.binary(build_dir)

    def launch(self, build_dir: Path, timeout_s: float = 60.0, pager: str = "file") -> Session:
        raise NotImplementedError

    def seconds(self, ticks: int, tick_hz: int) -> float:
        """Seconds on the board for a tick count the target reported (at its tick_hz)."""
        return ticks / tick_hz


class HostTarget(Target):
    makefile_template = "Makefile.host.j2"

    def binary(self, build_dir: Path) -> Path:
        return build_dir / "build" / "poet_host"

    def exec_prefix(self) -> list[str]:
        """What runs the binary (nothing: it is native; an emulator for a foreign architecture)."""
        return []

    def launch(
        self,
        build_dir: Path,
        timeout_s: float = 60.0,
        pager: str = "file",
        binary: Path | None = None,
        extra_args: list[str] | None = None,
    ) -> Session:
        exe = binary or self.binary(build_dir)
        if not exe.exists():
            raise PoetcError(f"{build_dir}: no host binary at {exe}; run poetc build again")
        tmp = tempfile.mkdtemp(prefix="poetc-pager-")
        args = [*self.exec_prefix(), str(exe), "--listen", "0"]
        args += ["--pager", os.path.join(tmp, "pager.bin")] if pager == "file" else ["--pager-ram"]
        args += extra_args or []
        cleanup = lambda: shutil.rmtree(tmp, ignore_errors=True)  # noqa: E731
        try:
            proc = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
            )
        except OSError as e:  # a damaged binary: exec format error, permission denied
            cleanup()
            raise PoetcError(
                f"{build_dir}: cannot run {exe}: {e.strerror or e}; run poetc build again"
            ) from None
        try:
            port = _read_port(proc, timeout_s=10.0)
            return Session(proc, f"socket://127.0.0.1:{port}", cleanup, timeout_s)
        except BaseException:
            stop_process(proc, grace_s=0.5)
            cleanup()
            raise


def _read_port(proc: subprocess.Popen, timeout_s: float) -> int:
    """The host program prints 'poet-host: listening on 127.0.0.1:PORT' once its socket is ready."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    os.set_blocking(proc.stdout.fileno(), False)
    buf = b""
    while time.monotonic() < deadline:
        chunk = proc.stdout.read()
        if chunk:
            buf += chunk
            m = re.search(rb"listening on 127\.0\.0\.1:(\d+)", buf)
            if m:
                return int(m.group(1))
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            if (
                "image is corrupted" in err
            ):  # the build directory's program is damaged: bad input, not a target fault
                raise PoetcError(
                    f"the build's image is damaged ({err.splitlines()[-1]}); run poetc build again"
                )
            raise TargetError(f"target: the host program exited with code {proc.returncode}: {err}")
        time.sleep(0.01)
    raise TargetError("target: the host program did not start listening within 10 s")


# ---- Cortex-M ----------------------------------------------------------------------------------------------
CORE_FLAGS: dict[str, tuple[str, ...]] = {
    "cortex-m4f": ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
    "cortex-m0": ("-mcpu=cortex-m0", "-mthumb", "-mfloat-abi=soft"),
    "cortex-m0plus": ("-mcpu=cortex-m0plus", "-mthumb", "-mfloat-abi=soft"),
}
FLASH_PAGE_BYTES = 4096  # nRF52840 NVMC page


UsbId = tuple[int, int | None]  # (vendor, product); None: any product of that vendor


@dataclass(frozen=True)
class PioEnv:
    """The PlatformIO environment of a real board (the same sources as the Makefile, bare metal)."""

    platform: str
    board: str
    serial_usb: tuple[UsbId, ...]  # USB ids of the serial port the firmware talks on
    attached: str  # what must be plugged in for that port, for messages
    pagers: tuple[str, ...] = ("sd",)  # selectable pager backends; the first is the default
    upload_usb: tuple[UsbId, ...] = ()  # USB ids of the port pio uploads through, if not the serial port's
    upload_attached: str = ""


# Versions known in PlatformIO's registry; the toolchain is Arm's GCC 12.3.1 (CI builds the same sources with
# Debian's 12.2.1 through the Makefile). Pinned so that a build next year uses the compiler these sources were
# written for; raise them together with a build on the board.
PIO_PLATFORM_VERSIONS = {"nordicnrf52": "10.11.0", "atmelsam": "8.3.0"}
PIO_TOOLCHAIN = "platformio/toolchain-gccarmnoneeabi@1.120301.0"

# USB-serial adapters for boards whose firmware talks on a UART pin pair (docs/boards.md)
USB_SERIAL_ADAPTERS: tuple[UsbId, ...] = (
    (0x0403, 0x6001),  # FTDI FT232R
    (0x0403, 0x6015),  # FTDI FT231X
    (0x10C4, 0xEA60),  # Silicon Labs CP210x
    (0x1A86, 0x7523),  # WCH CH340
)

PLATFORMIO: dict[str, PioEnv] = {
    "nrf52840": PioEnv(
        "nordicnrf52",
        "nrf52840_dk",
        ((0x1366, None),),  # SEGGER J-Link OB: the VCOM is the UART, the same USB port flashes
        "an nRF52840-DK (its J-Link USB port)",
        ("sd", "flash"),
    ),
    "mkr1000": PioEnv(
        "atmelsam",
        "mkr1000USB",
        USB_SERIAL_ADAPTERS,  # the firmware talks on SERCOM5 (pins 13/14), not the native USB
        "a USB-serial adapter (FTDI, CP210x or CH340) on the MKR1000's pins 13 (RX) and 14 (TX)",
        upload_usb=((0x2341, None), (0x2A03, None)),  # the SAMD21's native USB (bossac, SAM-BA bootloader)
        upload_attached="an Arduino MKR1000 (its native USB port; double-tap reset for the bootloader)",
    ),
}


def find_usb_port(ids: tuple[UsbId, ...]) -> str | None:
    """The first serial port whose USB vendor (and product, where given) matches, in the order of ``ids``."""
    from serial.tools import list_ports

    ports = list(list_ports.comports())
    for vid, pid in ids:
        for p in ports:
            if p.vid == vid and (pid is None or p.pid == pid):
                return p.device
    return None


def _usb_text(ids: tuple[UsbId, ...]) -> str:
    return ", ".join(f"{v:04x}" + (f":{p:04x}" if p is not None else "") for v, p in ids) or "?"


SERIAL_BAUD = 115200  # the real boards' UART rate (firmware/<port>/port.c)


@dataclass(frozen=True)
class ImageSize:
    """Flash and RAM use of a linked image, read from its sections."""

    flash: int  # code, constants, initial values of .data
    ram: int  # stack reserve + .data + .bss
    stack: int
    flash_total: int
    ram_total: int

    def line(self) -> str:
        return (
            f"image: flash {nbytes(self.flash)} of {nbytes(self.flash_total)} "
            f"({100 * self.flash / max(1, self.flash_total):.1f}%), RAM {nbytes(self.ram)} of "
            f"{nbytes(self.ram_total)} ({100 * self.ram / max(1, self.ram_total):.1f}%, "
            f"stack reserve {nbytes(self.stack)})"
        )


def image_size(elf: Path, board: Board) -> ImageSize:
    size = shutil.which("arm-none-eabi-size")
    if size is None:
        raise PoetcError("arm-none-eabi-size is missing (Debian: apt-get install binutils-arm-none-eabi)")
    out = subprocess.run([size, "-A", "-d", str(elf)], capture_output=True, text=True, check=True).stdout
    sec: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].startswith(".") and parts[1].isdigit():
            sec[parts[0]] = int(parts[1])
    flash = sec.get(".text", 0) + sec.get(".ARM.exidx", 0) + sec.get(".data", 0)
    ram = sec.get(".stack", 0) + sec.get(".data", 0) + sec.get(".bss", 0)
    return ImageSize(flash, ram, sec.get(".stack", 0), board.flash_bytes, board.ram_bytes)


class ArmTarget(Target):
    """A Cortex-M board: the generated Makefile cross-compiles with arm-none-eabi-gcc, offline."""

    makefile_template = "Makefile.arm.j2"

    def __init__(self, board: Board) -> None:
        super().__init__(board)
        if board.core not in CORE_FLAGS:
            raise PoetcError(
                f"board {board.name}: unknown Cortex-M core {board.core!r} ({', '.join(CORE_FLAGS)})"
            )
        self.pio = PLATFORMIO.get(board.port)

    def binary(self, build_dir: Path) -> Path:
        return build_dir / "build" / "poet.elf"

    @property
    def cpu_flags(self) -> tuple[str, ...]:
        return CORE_FLAGS[self.board.core]

    def defines(self) -> list[str]:
        out = [f"POET_PAGER_BYTES={min(self.board.storage_bytes, 0xFFFFFFFF)}u"]
        if self.board.emulated:
            out.append("POET_PORT_SEMIHOST=1")  # cortexm/semihost.c provides the pager, exit and diagnostics
        return out

    def template_vars(self, storage_bytes: int) -> dict[str, Any]:
        pagers = self.pio.pagers if self.pio and len(self.pio.pagers) > 1 else ()
        return {"cpu_flags": " ".join(self.cpu_flags), "defines": self.defines(), "pagers": pagers}

    def flash_pager_bytes(self, storage_bytes: int) -> int:
        """Flash reserved at the end of the image for the NVMC pager: the storage, in pages, plus a spare page."""
        if not self.pio or "flash" not in self.pio.pagers:
            return 0
        page = self.board.flash_erase_page_bytes or FLASH_PAGE_BYTES
        pages = -(-storage_bytes // page)
        return (pages + 1) * page

    def write_port_files(self, d: Path, header: str, storage_bytes: int) -> None:
        shutil.copytree(firmware_dir() / "cortexm", d / "cortexm")
        (d / "memory.ld").write_text(
            codegen.render_template(
                "memory.ld.j2",
                header=header,
                board=self.board,
                flash_pager_bytes=self.flash_pager_bytes(storage_bytes),
            )
        )
        if self.pio is not None:
            (d / "platformio.ini").write_text(
                codegen.render_template(
                    "platformio.ini.j2",
                    header=header,
                    board=self.board,
                    pio=self.pio,
                    platform_version=PIO_PLATFORM_VERSIONS[self.pio.platform],
                    toolchain=PIO_TOOLCHAIN,
                    cpu_flags=self.cpu_flags,
                    defines=[f"POET_FRAME_MAX={self.board.frame_max_bytes}", *self.defines()],
                    baud=SERIAL_BAUD,
                )
            )
            (d / "pio_link.py").write_text(
                codegen.render_template("pio_link.py.j2", header=header, cpu_flags=self.cpu_flags)
            )
        elif self.board.emulated:
            write_local_platformio(d, self.board, header, self.cpu_flags, self.defines())

    def build(self, build_dir: Path, say: Callable[[str], None] | None = None, san: bool = False) -> Path:
        if san:
            raise PoetcError("sanitizer builds are for the host port only")
        for tool in ("arm-none-eabi-gcc", "make"):
            if shutil.which(tool) is None:
                raise PoetcError(
                    f"{tool} is not installed: Cortex-M builds need Debian's gcc-arm-none-eabi, "
                    "libnewlib-arm-none-eabi and make (scripts/setup.sh installs them)"
                )
        proc = run_make(build_dir, [], None, board=self.board)
        elf = self.binary(build_dir)
        if say:
            for line in proc.stdout.splitlines():
                if ("Memory region" in line or line.strip().startswith(("FLASH:", "RAM:"))) and "%" in line:
                    say(line.rstrip())
            say(image_size(elf, self.board).line())
        return elf


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_QEMU_WAITING = re.compile(r"waiting for connection on: disconnected:tcp:127\.0\.0\.1:(\d+)")


class QemuSession(Session):
    """A session with QEMU: its log (stdout + stderr, including the firmware's semihosting text) is a file."""

    def __init__(
        self, proc: subprocess.Popen, url: str, log: Path, cleanup: Callable[[], None], timeout_s: float
    ):
        self.log = log
        super().__init__(proc, url, cleanup, timeout_s)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def why_dead(self) -> str | None:
        code = self._exit_code()
        if code is None:
            return None
        text = self.log_text()
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "waiting for connection" not in ln]
        fault = next((ln for ln in lines if "HardFault" in ln), None)
        if code == FAULT_EXIT or fault:
            return "the firmware took a HardFault" + (f" ({fault.removeprefix('poet: ')})" if fault else "")
        if code == BAD_MODEL_EXIT:
            detail = next((ln for ln in lines if "inconsistent" in ln or "corrupted" in ln), "")
            return "the firmware rejected the model tables" + (
                f" ({detail.removeprefix('poet: ')})" if detail else ""
            )
        if "Lockup" in text:
            return "the core locked up (a fault while handling a fault: a stack overflow?)"
        if code < 0:
            return f"QEMU died from signal {signal.Signals(-code).name}" + (f": {lines[-1]}" if lines else "")
        return f"QEMU exited with code {code}" + (f": {lines[-1]}" if lines else "")


FAULT_EXIT = 70  # POET_EXIT_FAULT, firmware/cortexm/cm.h
BAD_MODEL_EXIT = 4  # POET_EXIT_BAD_MODEL


class QemuTarget(ArmTarget):
    """An emulated Cortex-M board: QEMU runs the image with -icount shift=0 (ticks are instructions),
    semihosting (the pager file lives in a temporary working directory) and its UART on a loopback port."""

    PAGER_FILE = "poet-pager.bin"

    def seconds(self, ticks: int, tick_hz: int) -> float:
        # ticks are instructions; the board's cycles per instruction and clock turn them into its seconds
        return ticks * self.board.cycles_per_instruction / self.board.clock_hz

    def command(self, elf: Path, port: int) -> list[str]:
        qemu = shutil.which("qemu-system-arm")
        if qemu is None:
            raise PoetcError(
                "qemu-system-arm is not installed (Debian: apt-get install qemu-system-arm; scripts/setup.sh does it)"
            )
        cmd = [
            qemu,
            "-M",
            self.board.emulator,
            "-nographic",
            "-monitor",
            "none",
            "-icount",
            "shift=0",
            "-semihosting-config",
            "enable=on,target=native",
            "-serial",
            f"tcp:127.0.0.1:{port},server=on,wait=on,nodelay=on",  # nodelay: no 40 ms Nagle stalls
            "-kernel",
            str(elf),
        ]
        setpriv = shutil.which("setpriv")
        return [setpriv, "--pdeathsig", "TERM", *cmd] if setpriv else cmd  # never outlive poetc

    def launch(
        self, build_dir: Path, timeout_s: float = 60.0, pager: str = "file", binary: Path | None = None
    ) -> Session:
        elf = (binary or self.binary(build_dir)).resolve()
        if not elf.exists():
            raise PoetcError(f"{build_dir}: no firmware image at {elf}; run poetc build again")
        tmp = Path(tempfile.mkdtemp(prefix="poetc-qemu-"))
        cleanup = lambda: shutil.rmtree(tmp, ignore_errors=True)  # noqa: E731
        try:
            for _attempt in range(5):
                port = _free_port()
                log = tmp / "qemu.log"
                with open(log, "wb") as out:
                    proc = subprocess.Popen(
                        self.command(elf, port),
                        cwd=tmp,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                try:
                    if _wait_listening(proc, log, port, timeout_s=10.0):
                        return QemuSession(proc, f"socket://127.0.0.1:{port}", log, cleanup, timeout_s)
                except BaseException:
                    stop_process(proc, grace_s=0.5)
                    raise
                stop_process(proc, grace_s=0.5)
                text = log.read_text(errors="replace")
                if "in use" not in text:  # anything but a lost race for the port is fatal
                    raise TargetError(f"target: QEMU did not start: {text.strip().splitlines()[-1:] or '?'}")
            raise TargetError("target: QEMU could not bind a free loopback port (5 attempts)")
        except BaseException:
            cleanup()
            raise


def _wait_listening(proc: subprocess.Popen, log: Path, port: int, timeout_s: float) -> bool:
    """True once QEMU says it waits for our connection on ``port`` (QEMU 7 and 8 print "QEMU waiting for
    connection on: disconnected:tcp:127.0.0.1:PORT"), or once something of QEMU's accepts a connection there when
    a QEMU prints no such line; False if it exited (e.g. the port was taken)."""
    deadline = time.monotonic() + timeout_s
    quiet_until = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        m = _QEMU_WAITING.search(log.read_text(errors="replace"))
        if m and int(m.group(1)) == port:
            return True
        if proc.poll() is not None:
            return False
        if time.monotonic() > quiet_until and _listening(port):
            return True
        time.sleep(0.01)
    raise TargetError(f"target: QEMU did not open its serial port within {timeout_s:g} s")


def _listening(port: int) -> bool:
    """Whether the port is bound by a listener (checked by binding it ourselves, without connecting)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


class BoardTarget(ArmTarget):
    """A real Cortex-M board, flashed with PlatformIO (``poetc flash``) and reached on its serial port."""

    def __init__(self, board: Board, port: str | None = None) -> None:
        super().__init__(board)
        self.port = port  # --port: the serial device the firmware talks on (default: found by USB id)

    def find_serial(self, port: str | None = None) -> str:
        """The serial device of the firmware's link: ``port``, --port, POETC_SERIAL, else by USB id."""
        port = port or self.port or os.environ.get("POETC_SERIAL")
        if port:
            return port
        ids = self.pio.serial_usb if self.pio else ()
        found = find_usb_port(ids)
        if found:
            return found
        raise PoetcError(
            f"no {self.board.name} found: no serial port with USB id {_usb_text(ids)} (connect "
            f"{self.pio.attached if self.pio else 'it'}, or name the device with --port or POETC_SERIAL)"
        )

    def find_upload_port(self, port: str | None = None) -> str:
        """The device pio uploads through: the serial port, or the board's own USB port where they differ."""
        if not self.pio or not self.pio.upload_usb:
            return self.find_serial(port)
        if port:
            return port
        found = find_usb_port(self.pio.upload_usb)
        if found:
            return found
        raise PoetcError(
            f"no {self.board.name} found to flash: no serial port with USB id {_usb_text(self.pio.upload_usb)} "
            f"(connect {self.pio.upload_attached}, or name the device with --port)"
        )

    def launch(
        self, build_dir: Path, timeout_s: float = 60.0, pager: str = "file", port: str | None = None
    ) -> Session:
        dev = self.find_serial(port)
        return Session(None, dev, None, timeout_s, baudrate=SERIAL_BAUD)


# ---- 64-bit Linux boards (Raspberry Pi 4, Jetson TX2) ---------------------------------------------------------
LINUX_CPUS: dict[str, str] = {
    "cortex-a72": "cortex-a72",
    "cortex-a57": "cortex-a57",
}  # board.core -> -mcpu / -cpu
LINUX_CC = "aarch64-linux-gnu-gcc"


class LinuxTarget(HostTarget):
    """A 64-bit Arm Linux board: the host port, cross-compiled statically with Debian's aarch64-linux-gnu-gcc.
    It runs natively on an aarch64 machine and under ``qemu-aarch64`` (user mode) elsewhere: QEMU's user-mode
    networking is the host's, so the binary listens on a loopback port and the harness connects as it does to
    the host program. Ticks are CLOCK_MONOTONIC nanoseconds: under qemu-aarch64 they time the emulation on this
    machine, not the board (``emulated``)."""

    makefile_template = "Makefile.linux.j2"

    def __init__(self, board: Board) -> None:
        super().__init__(board)
        if board.core not in LINUX_CPUS:
            raise PoetcError(
                f"board {board.name}: unknown 64-bit core {board.core!r} ({', '.join(LINUX_CPUS)})"
            )
        self.cpu = LINUX_CPUS[board.core]

    def binary(self, build_dir: Path) -> Path:
        return build_dir / "build" / "poet_linux"

    @property
    def native(self) -> bool:
        return platform.machine().lower() in ("aarch64", "arm64")

    @property
    def emulated(self) -> bool:
        return not self.native

    def template_vars(self, storage_bytes: int) -> dict[str, Any]:
        return {
            "cc": "gcc" if self.native and not shutil.which(LINUX_CC) else LINUX_CC,
            "cpu_flags": f"-mcpu={self.cpu}",
        }

    def build(self, build_dir: Path, say: Callable[[str], None] | None = None, san: bool = False) -> Path:
        if san:
            raise PoetcError("sanitizer builds are for the host port only")
        if not self.native and shutil.which(LINUX_CC) is None:
            raise PoetcError(
                f"{LINUX_CC} is not installed: 64-bit Arm Linux builds need Debian's gcc-aarch64-linux-gnu "
                "(scripts/setup.sh installs it)"
            )
        run_make(build_dir, [], say)
        exe = self.binary(build_dir)
        if say:
            say(f"image: {exe.name}, {nbytes(exe.stat().st_size)} (static, aarch64, -mcpu={self.cpu})")
        return exe

    def exec_prefix(self) -> list[str]:
        if self.native:
            return []
        qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
        if qemu is None:
            raise PoetcError(
                "qemu-aarch64 is not installed: on this machine the aarch64 build runs under QEMU user mode "
                "(Debian: apt-get install qemu-user; scripts/setup.sh does it)"
            )
        return [qemu, "-cpu", self.cpu]


# ---- PlatformIO for the QEMU boards: a local platform, offline -------------------------------------------------
PIO_TOOLS = (
    "gcc",
    "g++",
    "as",
    "ld",
    "ar",
    "nm",
    "objcopy",
    "objdump",
    "size",
    "gcc-ar",
    "gcc-nm",
    "gcc-ranlib",
)
# the tool-scons version when PlatformIO cannot say which it wants: PlatformIO 6.2's (SCons 4.11.1)
SCONS_PACKAGE_VERSION = "4.41101.0"


def _scons_package_version() -> str:
    """The tool-scons version this PlatformIO requires ("~4.41101.0" -> "4.41101.0")."""
    try:
        from platformio.dependencies import get_core_dependencies  # type: ignore[import-not-found]

        req = str(get_core_dependencies()["tool-scons"])
    except Exception:  # PlatformIO absent or changed: the ini still validates
        return SCONS_PACKAGE_VERSION
    m = re.search(r"\d+\.\d+\.\d+", req)
    return m.group(0) if m else SCONS_PACKAGE_VERSION


def write_local_platformio(
    d: Path, board: Board, header: str, cpu_flags: tuple[str, ...], defines: list[str]
) -> None:
    """A PlatformIO project for an emulated board that builds and uploads with no registry: ``pio/platform`` (poetc's
    local platform and a board manifest from the board file), ``pio/toolchain`` (Debian's arm-none-eabi tools,
    linked, as PlatformIO's toolchain package) and ``pio/core/packages/tool-scons`` (SCons from pip). Paths in
    platformio.ini are relative, so the build directory may move."""
    src = firmware_dir() / "platformio"
    pio = d / "pio"
    shutil.copytree(src / "platform", pio / "platform")
    pio_board = "poetc_" + board.name.replace("-", "_")
    manifest = {
        "name": f"poetc {board.name}: {board.description}",
        "vendor": "QEMU",
        "url": "https://www.qemu.org/docs/master/system/target-arm.html",
        "frameworks": [],
        "build": {"cpu": board.core.removesuffix("f"), "mcu": board.emulator, "f_cpu": f"{board.clock_hz}L"},
        "upload": {
            "maximum_ram_size": board.ram_bytes,
            "maximum_size": board.flash_bytes,
            "protocol": "qemu",
            "protocols": ["qemu"],
        },
    }
    (pio / "platform" / "boards").mkdir(exist_ok=True)
    (pio / "platform" / "boards" / f"{pio_board}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    gcc = shutil.which("arm-none-eabi-gcc")
    bindir = Path(gcc).resolve().parent if gcc else Path("/usr/bin")
    (pio / "toolchain" / "bin").mkdir(parents=True)
    for tool in PIO_TOOLS:
        (pio / "toolchain" / "bin" / f"arm-none-eabi-{tool}").symlink_to(bindir / f"arm-none-eabi-{tool}")
    (pio / "toolchain" / "package.json").write_text(
        json.dumps(
            {
                "name": "toolchain-gccarmnoneeabi",
                "version": "1.0.0",
                "description": f"Debian's arm-none-eabi toolchain in {bindir}, linked",
                "system": "*",
            }
        )
        + "\n"
    )
    scons = pio / "core" / "packages" / "tool-scons"
    scons.mkdir(parents=True)
    shutil.copy2(src / "tool-scons" / "scons.py", scons / "scons.py")
    version = _scons_package_version()
    (scons / "package.json").write_text(
        json.dumps({"name": "tool-scons", "version": version, "description": "SCons from pip"}) + "\n"
    )
    # PlatformIO finds core packages by owner: the metadata a registry install would have written
    spec = {"owner": "platformio", "id": None, "name": "tool-scons", "requirements": None, "uri": None}
    (scons / ".piopm").write_text(
        json.dumps({"type": "tool", "name": "tool-scons", "version": version, "spec": spec}) + "\n"
    )
    (d / "platformio.ini").write_text(
        codegen.render_template(
            "platformio-qemu.ini.j2",
            header=header,
            board=board,
            pio_board=pio_board,
            cpu_flags=cpu_flags,
            defines=[f"POET_FRAME_MAX={board.frame_max_bytes}", *defines],
            python=sys.executable,
        )
    )
    (d / "pio_link.py").write_text(
        codegen.render_template("pio_link.py.j2", header=header, cpu_flags=cpu_flags)
    )


PIO_MISSING = (
    "PlatformIO is not installed (a dependency of poetc: re-run scripts/setup.sh, or "
    f"{Path(sys.executable).parent / 'pip'} install platformio scons)"
)


def pio_executable() -> str | None:
    """PlatformIO's ``pio``: on PATH, else beside this Python (``.venv/bin/poetc flash`` with the virtual
    environment not activated)."""
    for name in ("pio", "platformio"):
        found = shutil.which(name)
        if found:
            return found
    beside = Path(sys.executable).parent / "pio"
    return str(beside) if os.access(beside, os.X_OK) else None


def platformio_core_dir() -> Path:
    return Path(os.environ.get("PLATFORMIO_CORE_DIR") or Path.home() / ".platformio")


def flash(board: Board, build_dir: Path, port: str | None = None, env: str | None = None) -> list[str]:
    """Check everything ``pio run -t upload`` needs, then return its command line (the caller runs it).
    Every missing piece is one clear PoetcError, never a 60 s wait on PlatformIO's registry."""
    if board.emulated:
        if port is not None or (env is not None and env != board.name):
            raise PoetcError(
                f"board {board.name} is emulated: its upload boots the image in QEMU, so --port and --env "
                "(a real board's serial port and PlatformIO environment) do not apply"
            )
        return _qemu_upload_command(board, build_dir)
    tgt = for_board(board)
    if not isinstance(tgt, BoardTarget) or tgt.pio is None:
        raise PoetcError(
            f"board {board.name}: no PlatformIO project (boards with one: {', '.join(PLATFORMIO)})"
        )
    if not (build_dir / "platformio.ini").is_file():
        raise PoetcError(f"{build_dir}: no platformio.ini; rebuild with poetc build ... --board {board.name}")
    pio = pio_executable()
    if pio is None:
        raise PoetcError(f"{PIO_MISSING}; it builds and flashes real boards")
    dev = tgt.find_upload_port(port)
    platform_dir = platformio_core_dir() / "platforms" / tgt.pio.platform
    if not platform_dir.is_dir():
        raise PoetcError(
            f"PlatformIO's {tgt.pio.platform} platform is not installed (looked in {platform_dir.parent}); "
            f"install it once with network access: pio pkg install -g -p {tgt.pio.platform}"
        )
    name = env or board.name
    return [pio, "run", "-d", str(build_dir), "-e", name, "-t", "upload", "--upload-port", dev]


def _qemu_upload_command(board: Board, build_dir: Path) -> list[str]:
    """``pio run -t upload`` on poetc's local platform: build with PlatformIO, boot in QEMU, install."""
    if not (build_dir / "platformio.ini").is_file() or not (build_dir / "pio" / "platform").is_dir():
        raise PoetcError(
            f"{build_dir}: no local PlatformIO project (platformio.ini, pio/); rebuild with poetc build ... "
            f"--board {board.name}"
        )
    pio = pio_executable()
    if pio is None:
        raise PoetcError(f"{PIO_MISSING}; it builds and uploads the QEMU boards' images")
    import importlib.util

    if importlib.util.find_spec("SCons") is None:
        raise PoetcError(
            "SCons is not installed (pip install scons): PlatformIO's build needs it, and its registry copy "
            "is out of reach offline"
        )
    for tool in ("arm-none-eabi-gcc", "qemu-system-arm"):
        if shutil.which(tool) is None:
            raise PoetcError(f"{tool} is not installed (scripts/setup.sh installs it)")
    return [pio, "run", "-d", str(build_dir), "-e", board.name, "-t", "upload"]


# PlatformIO settings for poetc flash: no telemetry, no upgrade check (both would reach for the network)
PIO_ENV = {
    "PLATFORMIO_SETTING_ENABLE_TELEMETRY": "No",
    "PLATFORMIO_SETTING_CHECK_PLATFORMIO_INTERVAL": "36500",
}


def for_board(board: Board, port: str | None = None) -> Target:
    """The target of a board; ``port`` (--port) names a real board's serial device."""
    if port is not None and (board.emulated or not board.core.startswith("cortex-m") or board.port == "host"):
        raise PoetcError(
            f"--port {port}: board {board.name} is not a real microcontroller board (its link is local); "
            "--port names a real board's serial device"
        )
    if board.core in LINUX_CPUS:
        return LinuxTarget(board)
    if board.port == "host":
        return HostTarget(board)
    if board.core.startswith("cortex-m"):
        return QemuTarget(board) if board.emulated else BoardTarget(board, port)
    raise PoetcError(f"board {board.name}: port {board.port!r} has no launcher in this version")
