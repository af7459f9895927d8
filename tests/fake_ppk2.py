"""A fake Nordic Power Profiler Kit II on a pty, for tests without the hardware.

It speaks the device side of what ppk2-api sends (learned from ppk2_api/ppk2_api.py): one-byte opcodes with
their argument bytes; GET_META_DATA (0x19) is answered with calibration text ending in "END"; AVERAGE_START
(0x06) streams 4-byte little-endian samples (bits 0-13 ADC code, 14-16 current range, 24-31 the logic inputs)
until AVERAGE_STOP (0x07). The samples are replayed from a recording given as current (A) and logic bits per
10 us sample. The calibration is chosen so that ppk2-api decodes a code back to the current without gains:
I = code * 4 * (1.8 / 163840) / R[range].
"""

from __future__ import annotations

import os
import threading
import tty

import numpy as np

R = {0: 1031.64, 1: 101.65, 2: 10.15, 3: 0.94, 4: 0.043}  # ppk2-api's default shunt resistors (ohm)
ADC_MULT = 1.8 / 163840
# opcode -> argument bytes (ppk2_api.PPK2_Command)
ARGS = {0x19: 0, 0x06: 0, 0x07: 0, 0x0D: 2, 0x11: 1, 0x0C: 1, 0x08: 1, 0x15: 0, 0x16: 0, 0x20: 0}


def metadata() -> bytes:
    lines = ["Calibrated: 0"]
    for key, vals in (
        ("R", R),
        ("GS", dict.fromkeys(R, 0)),
        ("GI", dict.fromkeys(R, 1)),
        ("O", dict.fromkeys(R, 0)),
        ("S", dict.fromkeys(R, 0)),
        ("I", dict.fromkeys(R, 0)),
        ("UG", dict.fromkeys(R, 1)),
    ):
        lines += [f"{key}{i}: {v}" for i, v in vals.items()]
    lines += ["HW: 9173", "IA: 56", "mode: 2", "END"]
    return ("\n".join(lines) + "\n").encode()


def encode(current_a: np.ndarray, logic: np.ndarray, rng: int = 2) -> bytes:
    """Samples as the PPK2 sends them: the ADC code of each current at range ``rng``, and the logic byte."""
    code = np.clip(np.round(np.asarray(current_a) * R[rng] / ADC_MULT / 4), 0, 0x3FFF).astype(np.uint32)
    words = code | (np.uint32(rng) << 14) | (np.asarray(logic, dtype=np.uint32) << 24)
    return words.astype("<u4").tobytes()


def decoded(current_a: np.ndarray, rng: int = 2) -> np.ndarray:
    """The current ppk2-api will report for ``current_a`` (after the ADC's quantisation)."""
    code = np.clip(np.round(np.asarray(current_a) * R[rng] / ADC_MULT / 4), 0, 0x3FFF)
    return code * 4 * ADC_MULT / R[rng]


class FakePpk2:
    """Serve a recording on a pty (``path``) until ``close()``. ``commands`` logs what the host sent."""

    def __init__(self, current_a: np.ndarray, logic: np.ndarray, rng: int = 2, chunk: int = 4096) -> None:
        self.stream = encode(current_a, logic, rng)
        self.chunk = chunk
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.commands: list[tuple[int, bytes]] = []
        self.streaming = threading.Event()
        self.closed = threading.Event()
        self.sent = 0
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._serve, daemon=True)
        self._writer = threading.Thread(target=self._stream, daemon=True)
        self._reader.start()
        self._writer.start()

    def _write(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data)
            while view and not self.closed.is_set():
                n = os.write(self.master, view)
                view = view[n:]

    def _serve(self) -> None:
        buf = b""
        while not self.closed.is_set():
            try:
                data = os.read(self.master, 256)
            except OSError:
                return
            if not data:
                return
            buf += data
            while buf:
                op = buf[0]
                n = ARGS.get(op, 0)
                if len(buf) < 1 + n:
                    break
                args, buf = buf[1 : 1 + n], buf[1 + n :]
                self.commands.append((op, args))
                if op == 0x19:
                    self._write(metadata())
                elif op == 0x06:
                    self.streaming.set()
                elif op == 0x07:
                    self.streaming.clear()

    def _stream(self) -> None:
        while not self.closed.is_set():
            if not self.streaming.wait(0.05):
                continue
            if self.sent >= len(self.stream):
                self.streaming.clear()
                continue
            part = self.stream[self.sent : self.sent + self.chunk]
            try:
                self._write(part)
            except OSError:
                return
            self.sent += len(part)

    def ops(self) -> list[int]:
        return [op for op, _ in self.commands]

    def close(self) -> None:
        self.closed.set()
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def recording(
    pulses_s: list[float],
    step_a: list[float],
    idle_a: float = 0.5e-3,
    gap_s: float = 2e-3,
    bit: int = 0,
    rate: int = 100_000,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """A synthetic trace: idle current, then one marked pulse per step at the given current, gaps between.
    Returns (current, logic, the energy ppk2-api's decoding implies per pulse at 1 V)."""
    cur, logic, energy = [], [], []
    gap = int(gap_s * rate)
    for dur, a in zip(pulses_s, step_a, strict=True):
        cur.append(np.full(gap, idle_a))
        logic.append(np.zeros(gap, np.uint8))
        n = int(dur * rate)
        cur.append(np.full(n, a))
        logic.append(np.full(n, 1 << bit, np.uint8))
        energy.append(float(decoded(np.full(n, a)).sum()) / rate)
    cur.append(np.full(gap, idle_a))
    logic.append(np.zeros(gap, np.uint8))
    return np.concatenate(cur), np.concatenate(logic), energy
