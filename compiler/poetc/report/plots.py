"""PNG plots (matplotlib, no display needed): the schedule grid, RAM over the program, energy vs budget."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from ..schedule.problem import Problem
from ..schedule.program import Op

if TYPE_CHECKING:
    from ..schedule.strategies import Solution
    from ..schedule.sweep import SweepResult

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


def schedule_grid(p: Problem, sol: Solution, path: Path) -> Path:
    g = grid_codes(p, sol)
    T = p.T
    size = min(14.0, 4 + T / 12)
    fig, ax = plt.subplots(figsize=(size + 2.5, size))
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
    if T <= 60:
        ax.set_yticks(range(T), [n[:28] for n in p.names], fontsize=6)
    ax.set_title(f"{sol.strategy} schedule ({sol.status})")
    ax.legend(
        handles=[Patch(color=c, label=n) for n, c in STATES[1:]],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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


def ram_timeline(p: Problem, sol: Solution, path: Path) -> Path:
    trace, marks = ram_trace(p, sol)
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.step(range(len(trace)), trace / 1024, where="post", color="#2171b5", label="arena in use")
    ax.axhline(p.budget / 1024, color="#de2d26", ls="--", label="arena budget")
    colors = {"RECOMPUTE": "#de2d26", "PAGE_IN": "#31a354", "PAGE_OUT": "#fd8d3c"}
    for name, color in colors.items():
        xs = [pc for pc, n in marks if n == name]
        if xs:
            ax.scatter(
                xs, trace[xs] / 1024, s=12, color=color, zorder=3, label=name.lower().replace("_", "-")
            )
    ax.set_xlabel("instruction")
    ax.set_ylabel("KiB")
    ax.set_title(f"RAM over the {sol.strategy} program")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def energy_vs_budget(res: SweepResult, path: Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in res.strategies:
        pts = sorted(
            (r["ram_budget_bytes"], r["energy_j"])
            for r in res.rows
            if r["strategy"] == name and r["feasible"]
        )
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(np.array(xs) / 1024, ys, marker="o", lw=2.5 if name == "poet" else 1.2, label=name)
    ax.axhline(res.floor_j, color="black", ls=":", label="floor (compute once)")
    ax.set_xlabel("RAM budget (KiB)")
    ax.set_ylabel("energy per training step (J)")
    ax.set_title(title or "energy versus RAM budget")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
