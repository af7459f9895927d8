"""Progress of long steps on the terminal: a live bar with elapsed time and ETA (rich) when stdout is a
terminal; a plain line every so often when it is not (logs, CI, pipes), so that no control characters reach
them; nothing at all when quiet (``--json``).

It knows nothing of what progresses: callers give a total, how far they are and a line of text. Two kinds of
task: ``clock=True`` advances with the wall clock towards ``total`` seconds (a solve under a time limit: the
ETA is an upper bound, a solve may finish early), otherwise the caller counts (``update(done=...)``: steps,
solves).

    with Display().task("scheduling", total=60, unit="s", clock=True) as t:
        t.update(info="best 5.03 mJ, bound 4.8 mJ, gap 4.6%")
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any


class Display:
    """Where tasks are shown. ``live`` (default: stdout is a terminal) picks the rich bar over plain lines."""

    def __init__(self, quiet: bool = False, live: bool | None = None, every_s: float = 10.0) -> None:
        self.quiet = quiet
        self.live = (not quiet) and (_isatty() if live is None else live)
        self.every_s = every_s

    def task(
        self, what: str, total: float | None, unit: str = "", clock: bool = False, plain: bool = True
    ) -> Task:
        """A task to use as a context manager. ``plain=False``: no plain lines (the caller prints its own)."""
        return Task(self, what, total, unit, clock, plain)


def _isatty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


class Task:
    def __init__(
        self, display: Display, what: str, total: float | None, unit: str, clock: bool, plain: bool
    ) -> None:
        self.d, self.what, self.total, self.unit, self.clock = display, what, total, unit, clock
        self.show_plain = plain and not display.quiet and not display.live
        self.done = 0.0
        self.info = ""
        self.t0 = time.perf_counter()
        self._last_line = self.t0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None  # rich.progress.Progress while live
        self._id: Any = None
        self._out: Any = None  # the bar's own handle on the terminal

    # ---- context --------------------------------------------------------------------------------------------
    def __enter__(self) -> Task:
        self.t0 = self._last_line = time.perf_counter()
        if self.d.live:
            self._start_bar()
        if self.clock and (self.d.live or self.show_plain):
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self._out is not None:
            self._out.close()
            self._out = None

    # ---- the caller's side ------------------------------------------------------------------------------------
    def update(self, done: float | None = None, total: float | None = None, info: str | None = None) -> None:
        with self._lock:
            if done is not None:
                self.done = float(done)
            if total is not None:
                self.total = float(total)
            if info is not None:
                self.info = info
        self._render()
        if not self.clock:
            self._maybe_line()

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.t0

    # ---- rendering ----------------------------------------------------------------------------------------------
    def _tick(self) -> None:
        period = 0.25 if self.d.live else 1.0
        while not self._stop.wait(period):
            with self._lock:
                self.done = self.elapsed_s
            self._render()
            self._maybe_line()

    def _maybe_line(self) -> None:
        if not self.show_plain:
            return
        now = time.perf_counter()
        if now - self._last_line < self.d.every_s:
            return
        self._last_line = now
        print(f"  {self.line()}", flush=True)

    def line(self) -> str:
        """The plain line: what, how far, elapsed, ETA, info."""
        with self._lock:
            done, total, info = self.done, self.total, self.info
        unit = f" {self.unit}" if self.unit else ""
        if self.clock:
            head = f"{self.what}: {done:.0f}{unit}" + (f" of {total:g}{unit}" if total else "")
        else:
            head = f"{self.what}: {done:g}" + (f"/{total:g}" if total else "") + unit
            eta = _eta(done, total, self.elapsed_s)
            if eta is not None:
                head += f", about {eta:.0f} s left"
        return head + (f"; {info}" if info else "")

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.table import Column

        def fixed(width: int) -> Column:
            return Column(no_wrap=True, min_width=width)

        # on a narrow terminal rich drops or cuts columns: the info comes last and is cut first
        self._bar = Progress(
            TextColumn("{task.description}", table_column=fixed(len(self.what))),
            BarColumn(bar_width=12, table_column=fixed(12)),
            TimeElapsedColumn(table_column=fixed(7)),
            TextColumn("ETA", table_column=fixed(3)),
            TimeRemainingColumn(table_column=fixed(7)),
            TextColumn(
                "{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)
            ),
            console=Console(file=self._terminal()),
            transient=True,
        )
        self._bar.start()
        self._id = self._bar.add_task(self.what, total=self.total, info="")

    def _terminal(self) -> Any:
        """A second handle on stdout's terminal for the bar (and the prints it redirects): a solver run that
        silences C-level writes to file descriptor 1 (``milp._quiet_stdout``) must not silence the bar."""
        try:
            self._out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
            return self._out
        except (AttributeError, OSError, ValueError):
            return sys.stdout

    def _render(self) -> None:
        bar = self._bar
        if bar is None:
            return
        with self._lock:
            done, total, info = self.done, self.total, self.info
        if total is not None and self.clock:
            done = min(done, total)
        if not self.clock and total and not info:
            info = f"{done:g}/{total:g} {self.unit}".rstrip()
        bar.update(self._id, completed=done, total=total, info=info)


def _eta(done: float, total: float | None, elapsed: float) -> float | None:
    if not total or done <= 0 or done >= total:
        return None
    return elapsed * (total - done) / done
