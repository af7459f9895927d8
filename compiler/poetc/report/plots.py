"""PNG plots (matplotlib, no display needed): the schedule grid, RAM over the program, energy versus RAM budget
(``poetc solve --plot``, ``poetc sweep``) and the report's energy breakdown, per-node and loss figures.

Every ``*_figure`` function returns a laid-out Figure (``save``/``png`` write it) and is made to read at a glance:
- the title names what is plotted and, on its second line, the ``Subject``: model, board, batch, RAM budget;
- axes are in one engineering unit each (mJ, KiB, ...), the unit the report's tables use (``units``);
- no two labels overlap: node names are thinned until they fit, annotations are placed where they collide with
  nothing or left out (tests/unit/test_plots.py renders every figure and compares the text boxes);
- lines that coincide stay visible: strategies are drawn with distinct markers, larger and hollow underneath,
  and a strategy identical to one drawn above it says so in the legend ("same as poet").
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter, LogLocator, MaxNLocator, NullFormatter, PercentFormatter

from ..fmt import joules, nbytes
from ..schedule.problem import Problem
from ..schedule.program import Op
from .units import byte_unit, count, energy_unit, model_name

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.text import Text

    from ..graph.ir import Model
    from ..schedule.strategies import Solution
    from ..schedule.sweep import SweepResult

TITLE_SIZE = 10
LEGEND_SIZE = 8


@dataclass(frozen=True)
class Subject:
    """What a figure is about, for its title."""

    model: str  # as people call it (units.model_name)
    board: str
    batch: int
    ram_budget_bytes: int | None = None  # None: the figure spans budgets (a sweep)

    @classmethod
    def of(cls, model: Model, board: str, ram_budget_bytes: int | None = None) -> Subject:
        batch = int(model.graph.tensor(model.input).shape[0])
        return cls(model_name(model.source), board, batch, ram_budget_bytes)

    def details(self) -> str:
        s = f"batch {self.batch}"
        if self.ram_budget_bytes is not None:
            s += f", RAM budget {nbytes(self.ram_budget_bytes)}"
        return s

    def line(self) -> str:
        return f"{self.model} on {self.board}, {self.details()}"


def _title(ax: Axes, what: str, subject: Subject) -> None:
    ax.set_title(f"{what}\n{subject.line()}", fontsize=TITLE_SIZE)


def _new(w: float, h: float) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(w, h))  # not pyplot: no global state, nothing to close
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save(fig: Figure, path: Path, dpi: int = 110) -> Path:
    fig.savefig(path, dpi=dpi)
    return path


def png(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _legend_outside(ax: Axes, **kw) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=LEGEND_SIZE, borderaxespad=0.0, **kw)


def _boxes_collide(a, b, pad: float = 1.0) -> bool:
    return a.x0 < b.x1 + pad and b.x0 < a.x1 + pad and a.y0 < b.y1 + pad and b.y0 < a.y1 + pad


def _crowded(fig: Figure, labels: Sequence[Text]) -> bool:
    """Whether any two of ``labels`` (in axis order) touch once drawn."""
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in labels if t.get_visible() and t.get_text()]
    return any(_boxes_collide(a, b) for a, b in itertools.pairwise(boxes))


def _fit_tick_labels(fig: Figure, axis: Axis, names: Sequence[str]) -> int:
    """Label every k-th position of ``axis`` with ``names``, the smallest k at which no two labels touch once
    the figure is laid out; returns k."""
    n = len(names)
    fig.tight_layout()
    ax_px = axis.axes.get_window_extent().height
    font_px = axis.get_ticklabels()[0].get_fontsize() * fig.dpi / 72 if axis.get_ticklabels() else 8.0
    step = max(1, math.ceil(n * 1.25 * font_px / max(ax_px, 1.0)))
    while True:
        pos = list(range(0, n, step))
        axis.set_ticks(pos, [names[i] for i in pos])
        fig.tight_layout()
        if step >= n or not _crowded(fig, axis.get_ticklabels()):
            return step
        step += 1


# ---- schedule grid -------------------------------------------------------------------------------------------
# grid states, lowest priority first
STATES = [
    ("empty", "#ffffff"),
    ("on storage", "#c6dbef"),
    ("resident in RAM", "#bdbdbd"),
    ("compute", "#2171b5"),
    ("page-out", "#fd8d3c"),
    ("page-in", "#31a354"),
    ("recompute", "#de2d26"),
]


def grid_codes(p: Problem, sol: Solution) -> np.ndarray:
    s = sol.schedule
    T = p.T
    g = np.zeros((T, T), dtype=int)
    layers = [s.S_SD, s.S_RAM, np.eye(T, dtype=bool) & s.R, s.M_out, s.M_in, s.R & ~np.eye(T, dtype=bool)]
    for code, mask in enumerate(layers, start=1):
        g[mask] = code
    return g


def _counts(sol: Solution) -> str:
    rp = sol.replay
    if rp is None:
        return sol.status
    parts = (
        count(rp.recomputes, "recomputation"),
        count(rp.page_outs, "page-out"),
        count(rp.page_ins, "page-in"),
    )
    return f"{sol.status}; {', '.join(parts)}"


def schedule_grid_figure(p: Problem, sol: Solution, subject: Subject) -> Figure:
    g = grid_codes(p, sol)
    T = p.T
    size = min(14.0, 4.5 + T / 12)
    fig, ax = _new(size + 3.0, size)
    ax.imshow(
        g.T,
        cmap=ListedColormap([c for _, c in STATES]),
        vmin=0,
        vmax=len(STATES) - 1,
        interpolation="nearest",
        aspect="auto",
        origin="upper",
    )
    ax.set_xlabel("stage t")
    ax.set_ylabel("node i")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
    ax.tick_params(axis="y", labelsize=6 if T > 40 else 8)
    _title(ax, f"{sol.strategy} schedule ({_counts(sol)})", subject)
    _legend_outside(ax, handles=[Patch(color=c, label=n) for n, c in STATES[1:]])
    _fit_tick_labels(fig, ax.yaxis, [n[:28] for n in p.names])
    return fig


def schedule_grid(p: Problem, sol: Solution, path: Path, subject: Subject) -> Path:
    return save(schedule_grid_figure(p, sol, subject), path)


# ---- RAM timeline --------------------------------------------------------------------------------------------
def ram_trace(p: Problem, sol: Solution) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Arena bytes in use after every instruction, and the instructions worth marking."""
    used = 0
    trace = []
    marks = []
    for pc, ins in enumerate(sol.program.instrs):
        size = int(p.mem[ins.node])
        if ins.op in (Op.RUN, Op.RECOMPUTE, Op.PAGE_IN):
            used += size
        elif ins.op == Op.FREE:
            used -= size
        if ins.op in (Op.RECOMPUTE, Op.PAGE_IN, Op.PAGE_OUT):
            marks.append((pc, ins.op.name))
        trace.append(used)
    return np.array(trace), marks


# a budget this many times the peak is drawn as a note, not a line that flattens the trace
OFF_SCALE = 4.0


def ram_timeline_figure(p: Problem, sol: Solution, subject: Subject) -> Figure:
    trace, marks = ram_trace(p, sol)
    peak = int(trace.max()) if len(trace) else 0
    off_scale = p.budget > OFF_SCALE * max(peak, 1)
    unit, div = byte_unit(max(peak, 1) if off_scale else max(peak, p.budget))
    fig, ax = _new(10, 4)
    ax.step(range(len(trace)), trace / div, where="post", color="#2171b5", label="arena in use")
    if off_scale:
        ax.set_ylim(0, max(peak, 1) * 1.3 / div)
        ax.text(
            0.99,
            0.97,
            f"arena budget {nbytes(p.budget)}: off the scale",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=LEGEND_SIZE,
            color="#de2d26",
        )
    else:
        ax.axhline(p.budget / div, color="#de2d26", ls="--", label="arena budget")
        ax.set_ylim(0, p.budget * 1.08 / div)
    colors = {"RECOMPUTE": "#de2d26", "PAGE_IN": "#31a354", "PAGE_OUT": "#fd8d3c"}
    for name, color in colors.items():
        xs = [pc for pc, n in marks if n == name]
        if xs:
            ax.scatter(xs, trace[xs] / div, s=14, color=color, zorder=3, label=name.lower().replace("_", "-"))
    ax.set_xlabel("instruction")
    ax.set_ylabel(f"arena in use ({unit})")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.grid(alpha=0.3)
    _title(
        ax, f"RAM over the {sol.strategy} program: arena peak {nbytes(peak)} of {nbytes(p.budget)}", subject
    )
    _legend_outside(ax)
    fig.tight_layout()
    return fig


def ram_timeline(p: Problem, sol: Solution, path: Path, subject: Subject) -> Path:
    return save(ram_timeline_figure(p, sol, subject), path)


# ---- energy versus RAM budget --------------------------------------------------------------------------------
# bottom to top: larger hollow markers underneath, so that a strategy hidden by another still rings its points
MARKERS = ("s", "D", "^", "v", "h", "p", "<", ">")  # "o" is POET's
LINESTYLES = ("--", "-.", ":", (0, (5, 1, 1, 1)), (0, (3, 1)), (0, (1, 1)))
COLORS = ("#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _series(res: SweepResult, name: str) -> list[tuple[int, float]]:
    return sorted(
        (int(r["ram_budget_bytes"]), float(r["energy_j"]))
        for r in res.rows
        if r["strategy"] == name and r["feasible"]
    )


def _same(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    return len(a) == len(b) and all(
        x == u and math.isclose(y, v, rel_tol=1e-9) for (x, y), (u, v) in zip(a, b, strict=True)
    )


def sweep_drawing_order(res: SweepResult) -> list[str]:
    """Strategies bottom to top: the baselines in their order, POET last (on top)."""
    names = [n for n in res.strategies if n != "poet"]
    return names + (["poet"] if "poet" in res.strategies else [])


def energy_vs_budget_figure(res: SweepResult, subject: Subject) -> Figure:
    order = sweep_drawing_order(res)
    series = {n: _series(res, n) for n in order}
    energies = [e for s in series.values() for _, e in s] + [res.floor_j]
    eunit, emul = energy_unit(max(energies))
    bunit, bdiv = byte_unit(max(res.budgets))
    fig, ax = _new(9.5, 5)
    k = 0
    for z, name in enumerate(order):
        pts = series[name]
        # the same points as a strategy drawn later (above it, POET topmost): say so, as this one is hidden
        twin = next((m for m in reversed(order[z + 1 :]) if series[m] and _same(pts, series[m])), None)
        label = name + (f" (same as {twin})" if twin else "") + ("" if pts else " (infeasible)")
        if not pts:
            ax.plot([], [], label=label, color="#999999")
            continue
        xs = np.array([x for x, _ in pts]) / bdiv
        ys = np.array([y for _, y in pts]) * emul
        if name == "poet":
            ax.plot(xs, ys, color="#1f4e9c", lw=2.0, marker="o", ms=5, zorder=len(order) + 2, label=label)
        else:
            size = max(7.0, 16.0 - 2.0 * k)
            ax.plot(
                xs, ys, color=COLORS[k % len(COLORS)], lw=1.3, ls=LINESTYLES[k % len(LINESTYLES)],
                marker=MARKERS[k % len(MARKERS)], ms=size, mfc="none", mew=1.4, zorder=z + 2, label=label,
            )  # fmt: skip
            k += 1
    ax.axhline(res.floor_j * emul, color="black", ls=":", lw=1, zorder=1, label="floor (every node once)")
    ax.set_xlabel(f"RAM budget ({bunit})")
    ax.set_ylabel(f"energy per training step ({eunit})")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=8))
    lo, hi = min(res.budgets), max(res.budgets)
    span = f"{nbytes(lo)} to {nbytes(hi)}" if nbytes(lo) != nbytes(hi) else nbytes(lo)
    _title(ax, f"energy per training step versus RAM budget ({span})", subject)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    fig.tight_layout()
    return fig


def energy_vs_budget(res: SweepResult, path: Path, subject: Subject) -> Path:
    return save(energy_vs_budget_figure(res, subject), path)


# ---- the report's figures ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnergyBar:
    """One way of knowing a step's energy; a power meter knows the total only (the parts are None)."""

    label: str
    compute_j: float | None
    page_in_j: float | None
    page_out_j: float | None
    total_j: float


PARTS = (("compute", "#2171b5"), ("page-in", "#31a354"), ("page-out", "#fd8d3c"))


def energy_breakdown_figure(bars: Sequence[EnergyBar], subject: Subject) -> Figure:
    unit, mul = energy_unit(max(b.total_j for b in bars))
    fig, ax = _new(8, 1.6 + 0.55 * len(bars))
    labelled: set[str] = set()
    for k, b in enumerate(bars):
        if b.compute_j is None:
            lab = "metered total"
            ax.barh(k, b.total_j * mul, color="#756bb1", label=None if lab in labelled else lab)
            labelled.add(lab)
        else:
            left = 0.0
            for v, (lab, color) in zip((b.compute_j, b.page_in_j, b.page_out_j), PARTS, strict=True):
                w = (v or 0.0) * mul
                ax.barh(k, w, left=left, color=color, label=None if lab in labelled else lab)
                labelled.add(lab)
                left += w
        ax.text(b.total_j * mul, k, f" {joules(b.total_j)}", va="center", ha="left", fontsize=LEGEND_SIZE)
    ax.set_yticks(range(len(bars)), [b.label for b in bars])
    ax.invert_yaxis()
    ax.set_xlim(0, max(b.total_j for b in bars) * mul * 1.25)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.set_xlabel(f"energy per training step ({unit})")
    _title(ax, "energy per training step: compute, page-in, page-out", subject)
    _legend_outside(ax)
    fig.tight_layout()
    return fig


def _log_axis(axis: Axis, lo: float, hi: float) -> None:
    """Log ticks in engineering notation (1k, 10k); 1-2-5 steps when the range is under three decades."""
    subs = (1.0, 2.0, 5.0) if math.log10(hi / lo) < 3 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(EngFormatter(sep=""))
    axis.set_minor_formatter(NullFormatter())


# where an annotation may go, relative to its point (offset in points, alignment)
_SPOTS = (
    (4, 4, "left", "bottom"),
    (4, -4, "left", "top"),
    (-4, 4, "right", "bottom"),
    (-4, -4, "right", "top"),
)


def _annotate_clear(fig: Figure, ax: Axes, items: Sequence[tuple[str, float, float]]) -> list[str]:
    """Annotate points in order of importance, each where its text touches no other text, the legend or the
    axes' edge; a point with no such place is left out. Returns the names written."""
    r = fig.canvas.get_renderer()
    frame = ax.get_window_extent(r)
    taken = [t.get_window_extent(r) for t in (ax.get_legend().get_texts() if ax.get_legend() else [])]
    if ax.get_legend():
        taken.append(ax.get_legend().get_window_extent(r))
    written = []
    for name, x, y in items:
        for dx, dy, ha, va in _SPOTS:
            t = ax.annotate(
                name, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=6
            )
            bb = t.get_window_extent(r)
            inside = frame.x0 <= bb.x0 and bb.x1 <= frame.x1 and frame.y0 <= bb.y0 and bb.y1 <= frame.y1
            if inside and not any(_boxes_collide(bb, o) for o in taken):
                taken.append(bb)
                written.append(name)
                break
            t.remove()
    return written


def node_figure(
    pred: np.ndarray, meas: np.ndarray, names: Sequence[str], unit: str, subject: Subject, worst: int = 5
) -> Figure:
    """Each node's FLOP-model prediction against its measurement (log-log), the ``worst`` named."""
    fig, ax = _new(7, 5.5)
    ok = (pred > 0) & (meas > 0)
    ax.set_xlabel(f"measured {unit} per node")
    ax.set_ylabel(f"FLOP model {unit} per node")
    _title(ax, "per node: FLOP model versus measurement", subject)
    if not ok.any():
        fig.tight_layout()
        return fig
    ax.scatter(meas[ok], pred[ok], s=18, color="#2171b5", zorder=3)
    lo = min(pred[ok].min(), meas[ok].min()) / 2
    hi = max(pred[ok].max(), meas[ok].max()) * 2
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls=":", label="prediction = measurement")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    _log_axis(ax.xaxis, lo, hi)
    _log_axis(ax.yaxis, lo, hi)
    ax.legend(fontsize=LEGEND_SIZE, loc="upper left")
    fig.tight_layout()
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(-np.abs(np.log(pred[ok] / meas[ok])))][:worst]
    _annotate_clear(fig, ax, [(names[i][:32], float(meas[i]), float(pred[i])) for i in order])
    return fig


def loss_figure(
    loss: Sequence[float], evals: Sequence[tuple[int, float]], lr: float, subject: Subject
) -> Figure:
    fig, ax = _new(8, 3.6)
    ax.plot(range(1, len(loss) + 1), loss, color="#2171b5", lw=1.2, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
    handles = ax.get_lines()
    if evals:
        ax2 = ax.twinx()
        s, acc = zip(*evals, strict=True)
        handles += ax2.plot(s, acc, color="#31a354", marker="o", ms=3, lw=1, label="held-out accuracy")
        ax2.set_ylabel("held-out accuracy")
        ax2.set_ylim(0, 1)
        ax2.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.legend(handles=handles, fontsize=LEGEND_SIZE, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    _title(ax, f"training: {len(loss)} steps, learning rate {lr:g}", subject)
    fig.tight_layout()
    return fig
