"""A noisy serial line for tests: the host program speaks the protocol on one pty, the harness opens another, and a
thread between them corrupts, drops and duplicates bytes at a given rate in both directions (``NoisyLine``).
``NoisyHostTarget`` is the host board's target launched behind such a line, so ``harness.train`` runs on it."""

from __future__ import annotations

import os
import select
import subprocess
import threading
import tty
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from poetc.device import target


@dataclass
class Faults:
    corrupted: int = 0
    dropped: int = 0
    duplicated: int = 0
    bytes: int = 0

    @property
    def total(self) -> int:
        return self.corrupted + self.dropped + self.duplicated


@dataclass
class NoisyLine:
    """Two ptys joined by a thread; each byte passing is, with probability ``rate``, corrupted (XOR a random
    non-zero byte), dropped or duplicated (one third each)."""

    rate: float
    seed: int = 0
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.dev_master, self.dev_slave = os.openpty()  # the target's end
        self.host_master, self.host_slave = os.openpty()  # the harness's end
        for fd in (self.dev_slave, self.host_slave):
            tty.setraw(fd)
        for fd in (self.dev_master, self.host_master):
            os.set_blocking(fd, False)
        self.host_path = os.ttyname(self.host_slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _noise(self, data: bytes) -> bytes:
        buf = np.frombuffer(data, np.uint8)
        self.faults.bytes += len(buf)
        hit = np.flatnonzero(self.rng.random(len(buf)) < self.rate)
        if not len(hit):
            return data
        out = bytearray()
        prev = 0
        for i in hit:
            out += data[prev:i]
            prev = i + 1
            kind = self.rng.integers(3)
            if kind == 0:
                out.append(data[i] ^ int(self.rng.integers(1, 256)))
                self.faults.corrupted += 1
            elif kind == 1:
                self.faults.dropped += 1
            else:
                out += bytes([data[i], data[i]])
                self.faults.duplicated += 1
        out += data[prev:]
        return bytes(out)

    def _pump(self) -> None:
        pending = {self.dev_master: bytearray(), self.host_master: bytearray()}  # to write to that fd
        other = {self.dev_master: self.host_master, self.host_master: self.dev_master}
        while not self._stop.is_set():
            want_w = [fd for fd, buf in pending.items() if buf]
            r, w, _ = select.select([self.dev_master, self.host_master], want_w, [], 0.05)
            for fd in r:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # the other side closed
                    data = b""
                if data:
                    pending[other[fd]] += self._noise(data)
            for fd in w:
                try:
                    n = os.write(fd, bytes(pending[fd][:4096]))
                except (BlockingIOError, OSError):
                    continue
                del pending[fd][:n]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for fd in (self.dev_master, self.dev_slave, self.host_master, self.host_slave):
            try:
                os.close(fd)
            except OSError:
                pass


class NoisyHostTarget(target.HostTarget):
    """The host board's program on ``--stdio`` behind a ``NoisyLine`` (a new line per launch, rate from
    ``rate``); ``lines`` keeps them for their fault counts."""

    def __init__(self, board, rate: float, seed: int = 0) -> None:
        super().__init__(board)
        self.rate, self.seed = rate, seed
        self.lines: list[NoisyLine] = []

    def launch(self, build_dir: Path, timeout_s: float = 60.0, pager: str = "file", **kw) -> target.Session:
        line = NoisyLine(self.rate, self.seed + len(self.lines))
        self.lines.append(line)
        proc = subprocess.Popen(
            [str(self.binary(build_dir)), "--stdio", "--pager-ram"],
            stdin=line.dev_slave,
            stdout=line.dev_slave,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        return target.Session(proc, line.host_path, line.close, timeout_s)
