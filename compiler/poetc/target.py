"""Targets: build the generated sources for a board's port, launch the result, open its transport.

Every target ends in a pyserial URL: the host program listens on a loopback TCP port (socket://), QEMU serves
its UART on one, a real board is a serial device. ``Session`` owns the process: it is stopped (and killed if it
will not stop) on success, failure, timeout or Ctrl-C, so nothing is left behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import serial

from .boards import Board
from .errors import PoetcError, TargetError
from .link import Link


def run_make(
    build_dir: Path, args: list[str] | None = None, say: Callable[[str], None] | None = None
) -> None:
    if shutil.which("make") is None:
        raise PoetcError("'make' is not installed (Debian: apt-get install make)")
    cmd = ["make", "-C", str(build_dir), "--no-print-directory", *(args or [])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
        first_err = next((ln for ln in tail if "error" in ln.lower()), tail[-1] if tail else "make failed")
        raise PoetcError(
            f"build failed in {build_dir}: {first_err.strip()}"
            + ("\n" + "\n".join(tail) if os.environ.get("POETC_VERBOSE") else "")
        )
    if say:
        for line in proc.stdout.splitlines():
            if line.startswith(("Memory region", "  ", "FLASH", "RAM")) and "%" in line:
                say(line.strip())


class Session:
    """A launched target: its process (if any) and a Link on its transport."""

    def __init__(
        self,
        proc: subprocess.Popen | None,
        url: str,
        cleanup: Callable[[], None] | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.proc = proc
        self.url = url
        self._cleanup = cleanup
        self.ser = serial.serial_for_url(url, timeout=0.2, write_timeout=timeout_s)
        self.link = Link(self.ser, timeout_s=timeout_s, on_dead=self.why_dead)

    def why_dead(self) -> str | None:
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is None:
            return None
        err = ""
        if self.proc.stderr:
            try:
                err = self.proc.stderr.read().decode(errors="replace").strip()
            except (OSError, ValueError):
                err = ""
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
            if self.proc is not None:
                stop_process(self.proc)
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

    def build(self, build_dir: Path, say: Callable[[str], None] | None = None, san: bool = False) -> Path:
        run_make(build_dir, ["SAN=asan"] if san else [], say)
        return self.binary(build_dir)

    def launch(self, build_dir: Path, timeout_s: float = 60.0, pager: str = "file") -> Session:
        raise NotImplementedError


class HostTarget(Target):
    makefile_template = "Makefile.host.j2"

    def binary(self, build_dir: Path) -> Path:
        return build_dir / "build" / "poet_host"

    def launch(
        self, build_dir: Path, timeout_s: float = 60.0, pager: str = "file", binary: Path | None = None
    ) -> Session:
        exe = binary or self.binary(build_dir)
        if not exe.exists():
            raise PoetcError(f"{build_dir}: no host binary at {exe}; run poetc build again")
        tmp = tempfile.mkdtemp(prefix="poetc-pager-")
        args = [str(exe), "--listen", "0"]
        args += ["--pager", os.path.join(tmp, "pager.bin")] if pager == "file" else ["--pager-ram"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        cleanup = lambda: shutil.rmtree(tmp, ignore_errors=True)  # noqa: E731
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
            raise TargetError(f"target: the host program exited with code {proc.returncode}: {err}")
        time.sleep(0.01)
    raise TargetError("target: the host program did not start listening within 10 s")


def for_board(board: Board) -> Target:
    if board.port == "host":
        return HostTarget(board)
    raise PoetcError(f"board {board.name}: port {board.port!r} has no launcher in this version")
