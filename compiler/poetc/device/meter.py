"""Metered energy: a power meter samples the board's current while it trains, and each RUN is cut out of the
trace by a step marker.

The meter is a Nordic Power Profiler Kit II, driven through the ``ppk2-api`` package: it supplies the board at a
set voltage (source meter; or measures in series, ampere meter) and streams 100,000 samples per second, each
with the current and the state of its eight logic inputs. The real ports (firmware/nrf52840, firmware/mkr1000)
raise a marker GPIO from the first tick reading of a RUN until its reply is sent; wired to the PPK2's logic input
D0 it frames every RUN in the trace, and energy = supply voltage x sum(current x 10 us) over the frame. When the
marker shows a different number of RUNs than the harness sent (not wired, glitches), each RUN is cut out by the
host's clock instead (request sent .. reply received, shifted by the trace's start): coarser, by the USB latency,
and said so in the result.

``--meter ppk2:PORT[,mv=3300][,mode=source|ampere][,bit=0]`` on ``poetc train``.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PoetcError

SAMPLE_HZ = 100_000  # the PPK2 streams at a fixed 100 kS/s


@dataclass(frozen=True)
class Trace:
    current_a: np.ndarray  # [N] amperes
    logic: np.ndarray  # [N] uint8: logic inputs D0..D7
    voltage_v: float
    sample_hz: float
    t0: float  # host monotonic time of sample 0 (when sampling was started)

    @property
    def seconds(self) -> float:
        return len(self.current_a) / self.sample_hz

    def energy_j(self, start: int, end: int) -> float:
        return float(self.current_a[start:end].sum()) * self.voltage_v / self.sample_hz


@dataclass(frozen=True)
class RunMark:
    """One RUN as the harness saw it: which program, and the host's clock around it."""

    program: int  # 0 train, 1 infer
    t_send: float
    t_reply: float


@dataclass(frozen=True)
class MeteredRun:
    program: int
    joules: float
    seconds: float  # duration of the frame in the trace
    mean_a: float


@dataclass(frozen=True)
class Metered:
    """The RUNs of a training session as metered: how they were framed, the train steps' energies."""

    runs: tuple[MeteredRun, ...]
    how: str  # "marker" | "host clock"
    note: str
    voltage_v: float
    idle_a: float  # mean current outside the frames
    trace_s: float

    @property
    def train_j(self) -> list[float]:
        return [r.joules for r in self.runs if r.program == 0]

    def to_json(self) -> dict[str, Any]:
        return {
            "how": self.how,
            "note": self.note,
            "voltage_v": self.voltage_v,
            "idle_a": self.idle_a,
            "trace_s": self.trace_s,
            "runs": [[r.program, r.joules, r.seconds, r.mean_a] for r in self.runs],
        }


def pulses(logic: np.ndarray, bit: int = 0, min_samples: int = 2) -> list[tuple[int, int]]:
    """[start, end) sample ranges where logic input ``bit`` is high, shorter glitches dropped."""
    hi = ((np.asarray(logic, dtype=np.uint8) >> bit) & 1).astype(np.int8)
    if hi.size == 0:
        return []
    edges = np.diff(np.concatenate([[0], hi, [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True) if e - s >= min_samples]


def attribute(trace: Trace, runs: list[RunMark], bit: int = 0) -> Metered:
    """Energy of every RUN: framed by the marker when it shows exactly one pulse per RUN, else by the host's
    clock (see the module doc)."""
    frames = pulses(trace.logic, bit)
    n = len(trace.current_a)
    if frames and len(frames) == len(runs):
        how, note = "marker", f"step marker on logic input D{bit}: {len(frames)} RUNs framed"
    else:
        how = "host clock"
        note = (
            f"the marker on D{bit} shows {len(frames)} pulses for {len(runs)} RUNs; RUNs cut out by the host's "
            "clock (request .. reply), accurate to the USB latency"
        )
        frames = []
        for r in runs:
            a = round((r.t_send - trace.t0) * trace.sample_hz)
            b = round((r.t_reply - trace.t0) * trace.sample_hz)
            a, b = max(0, min(a, n)), max(0, min(b, n))
            frames.append((a, max(a, b)))
    out = []
    inside = np.zeros(n, dtype=bool)
    for r, (a, b) in zip(runs, frames, strict=True):
        inside[a:b] = True
        cur = trace.current_a[a:b]
        out.append(
            MeteredRun(
                r.program,
                trace.energy_j(a, b),
                (b - a) / trace.sample_hz,
                float(cur.mean()) if b > a else 0.0,
            )
        )
    idle = float(trace.current_a[~inside].mean()) if (~inside).any() else 0.0
    return Metered(tuple(out), how, note, trace.voltage_v, idle, trace.seconds)


# ---- the PPK2 ------------------------------------------------------------------------------------------------
@dataclass
class Ppk2Meter:
    """A PPK2 on a serial port, through ppk2-api's PPK2_API (commands, calibration, sample decoding); a thread
    drains its stream while the harness trains."""

    port: str
    mv: int = 3300
    mode: str = "source"  # source: the PPK2 powers the board at mv; ampere: in series with the board's supply
    bit: int = 0  # logic input wired to the firmware's step marker
    boot_s: float = 0.5  # after powering the board, before the harness connects
    api_factory: Callable[[str], Any] | None = None
    _api: Any = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _samples: list[float] = field(default_factory=list, init=False, repr=False)
    _bits: list[int] = field(default_factory=list, init=False, repr=False)
    _t0: float = field(default=0.0, init=False, repr=False)
    _error: BaseException | None = field(default=None, init=False, repr=False)

    @property
    def name(self) -> str:
        return f"PPK2 on {self.port} ({self.mode} meter, {self.mv} mV, marker on D{self.bit})"

    def open(self) -> None:
        """Connect, read the calibration, set the mode and voltage; as a source meter, power the board."""
        factory = self.api_factory
        if factory is None:
            try:
                from ppk2_api.ppk2_api import PPK2_API
            except ImportError:
                raise PoetcError(
                    "--meter ppk2: the ppk2-api package is not installed (a dependency of poetc: re-run "
                    f"scripts/setup.sh, or {Path(sys.executable).parent / 'pip'} install ppk2-api)"
                ) from None
            factory = lambda port: PPK2_API(port, timeout=1, write_timeout=1)  # noqa: E731
        try:
            api = factory(self.port)
        except Exception as e:  # serial.SerialException and OSError: the port is not there
            raise PoetcError(f"--meter ppk2:{self.port}: cannot open the PPK2 ({e})") from None
        self._api = api
        if not api.get_modifiers():
            self.close()
            raise PoetcError(f"--meter ppk2:{self.port}: no calibration data from the device (is it a PPK2?)")
        if self.mode == "source":
            api.use_source_meter()
            api.set_source_voltage(self.mv)
            api.toggle_DUT_power("ON")
            time.sleep(self.boot_s)
        else:
            api.use_ampere_meter()
            api.set_source_voltage(self.mv)  # the supply the board runs at (the calibration uses it)

    def start(self) -> None:
        self._samples.clear()
        self._bits.clear()
        self._stop.clear()
        self._api.start_measuring()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._drain, name="ppk2-reader", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        try:
            while not self._stop.is_set():
                self._take()
                time.sleep(0.002)
        except BaseException as e:  # reported by stop()
            self._error = e

    def _take(self) -> None:
        buf = self._api.get_data()
        if buf:
            s, b = self._api.get_samples(buf)
            self._samples.extend(s)
            self._bits.extend(b)

    def stop(self, drain_s: float = 0.1) -> Trace:
        """Stop sampling and return the trace (what arrived until the stream went quiet)."""
        time.sleep(drain_s)  # samples of the last RUN still in flight over USB
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._api.stop_measuring()
        time.sleep(drain_s)
        self._take()
        if self._error is not None:
            raise PoetcError(f"--meter ppk2:{self.port}: reading the PPK2 failed ({self._error})")
        n = min(len(self._samples), len(self._bits))
        cur = np.asarray(self._samples[:n], dtype=np.float64) * 1e-6  # ppk2-api gives microamperes
        return Trace(cur, np.asarray(self._bits[:n], dtype=np.uint8), self.mv / 1000.0, SAMPLE_HZ, self._t0)

    def close(self) -> None:
        api, self._api = self._api, None
        if api is not None and getattr(api, "ser", None) is not None:
            try:
                api.ser.close()
            except Exception:
                pass


def parse(spec: str) -> Ppk2Meter:
    """``ppk2:PORT[,mv=3300][,mode=source|ampere][,bit=0]``."""
    kind, _, rest = spec.partition(":")
    if kind != "ppk2" or not rest:
        raise PoetcError(f"--meter {spec!r}: expected ppk2:PORT[,mv=3300][,mode=source|ampere][,bit=0]")
    port, *opts = rest.split(",")
    m = Ppk2Meter(port)
    for o in opts:
        k, _, v = o.partition("=")
        try:
            if k == "mv":
                m.mv = int(v)
                if not 800 <= m.mv <= 5000:
                    raise ValueError
            elif k == "mode" and v in ("source", "ampere"):
                m.mode = v
            elif k == "bit":
                m.bit = int(v)
                if not 0 <= m.bit <= 7:
                    raise ValueError
            else:
                raise ValueError
        except ValueError:
            raise PoetcError(
                f"--meter {spec!r}: bad option {o!r} (mv=800..5000, mode=source|ampere, bit=0..7)"
            ) from None
    return m
