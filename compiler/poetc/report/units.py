"""Engineering units for figures and the report: one unit per axis or column, the one the tables use.

``poetc.fmt`` formats one value in the unit that suits it (``joules(0.0018)`` is ``1.800 mJ``); an axis needs
one unit for all its ticks, chosen here from its largest value with the same thresholds, so that an axis in
mJ sits beside a table in mJ.
"""

from __future__ import annotations

from pathlib import Path

from ..fmt import joules

# (unit, multiplier): value in the unit = joules x multiplier; same names and thresholds as fmt.joules
ENERGY_UNITS = (("J", 1.0), ("mJ", 1e3), ("uJ", 1e6), ("nJ", 1e9))
# (unit, divisor): value in the unit = bytes / divisor; same names and thresholds as fmt.nbytes
BYTE_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024), ("B", 1))


def energy_unit(largest_j: float) -> tuple[str, float]:
    """The unit in which ``largest_j`` reads at least 1 (nJ at the smallest), and its multiplier."""
    for unit, mul in ENERGY_UNITS:
        if abs(largest_j) * mul >= 1:
            return unit, mul
    return ENERGY_UNITS[-1]


def byte_unit(largest: float) -> tuple[str, float]:
    """The unit in which ``largest`` bytes reads at least 1 (B at the smallest), and its divisor."""
    for unit, div in BYTE_UNITS:
        if abs(largest) >= div:
            return unit, div
    return BYTE_UNITS[-1]


def model_name(source: str) -> str:
    """A model as people call it: ``zoo:digits-mlp`` -> ``digits-mlp``, ``/a/b/net.onnx`` -> ``net.onnx``."""
    if source.startswith("zoo:"):
        return source[4:]
    return Path(source).name or source


def share(part: float, whole: float) -> str:
    """``part`` as a percentage of ``whole``, two significant digits under 10%: ``52%``, ``5.3%``, ``0.16%``."""
    if whole <= 0:
        return "-"
    x = 100 * part / whole
    return f"{x:.0f}%" if x >= 10 else f"{x:.2g}%"


def count(n: int, noun: str) -> str:
    """``1 page-out``, ``2 page-outs``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def percent(x: float) -> str:
    """An accuracy (a fraction) as a percentage: 0.3014 -> ``30.1%``."""
    return f"{100 * x:.1f}%"


def energy_or_dash(j: float | None) -> str:
    return "-" if j is None else joules(j)


def watts(w: float) -> str:
    """``49.9 W``, ``12.5 mW``, ``150 uW``."""
    for unit, mul in (("W", 1.0), ("mW", 1e3), ("uW", 1e6)):
        if abs(w) * mul >= 1 or unit == "uW":
            return f"{w * mul:.3g} {unit}"
    return f"{w} W"
