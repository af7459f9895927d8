"""Readable tables and numbers for the terminal."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Sequence


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    align: str | None = None,
    width: int | None = None,
) -> str:
    """A plain-text table; ``align`` has one char per column: l or r (default: r for numbers). A table wider
    than ``width`` (default: the terminal's, at least 100) wraps its widest left-aligned cells onto more lines
    rather than cutting them."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in r] for r in rows]
    if align is None:
        align = "".join(
            "r" if rows and isinstance(rows[0][i], int | float) else "l" for i in range(len(headers))
        )
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if width is None:
        width = max(100, shutil.get_terminal_size((120, 24)).columns)
    _fit(cells, widths, align, width)
    lines = []
    for k, r in enumerate(cells):
        wrapped = [
            (textwrap.wrap(c, w, break_on_hyphens=False) or [""]) if len(c) > w else [c]
            for c, w in zip(r, widths, strict=True)
        ]
        for j in range(max(len(x) for x in wrapped)):
            parts = [
                (x[j] if j < len(x) else "").rjust(w) if a == "r" else (x[j] if j < len(x) else "").ljust(w)
                for x, w, a in zip(wrapped, widths, align, strict=True)
            ]
            lines.append("  ".join(parts).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fit(cells: list[list[str]], widths: list[int], align: str, width: int, floor: int = 32) -> None:
    """Narrow the widest left-aligned columns (not below ``floor``, nor below their header) until the table
    fits ``width``."""
    while sum(widths) + 2 * (len(widths) - 1) > width:
        over = sum(widths) + 2 * (len(widths) - 1) - width
        wrappable = [i for i, a in enumerate(align) if a == "l" and widths[i] > max(floor, len(cells[0][i]))]
        if not wrappable:
            return
        i = max(wrappable, key=lambda i: widths[i])
        widths[i] = max(floor, len(cells[0][i]), widths[i] - over)


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def nbytes(n: float) -> str:
    for unit, div in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def joules(j: float) -> str:
    if abs(j) < 1e-15:  # rounding noise of sums that are zero
        j = 0.0
    for unit, mul in (("J", 1.0), ("mJ", 1e3), ("uJ", 1e6), ("nJ", 1e9)):
        if abs(j) * mul >= 1 or unit == "nJ":
            return f"{j * mul:.3f} {unit}"
    return f"{j} J"


def seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"
