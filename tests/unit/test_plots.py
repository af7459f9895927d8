"""Every figure reads at a glance: rendered on realistic data (zoo models on boards, a real sweep, a real training
run), no two texts overlap (tick labels, titles, axis labels, annotations, legend entries) and none is cut off by
the figure's edge; axes carry engineering units; titles name model, board, batch and budget; in the energy sweep
every strategy's line shows (hide it and the picture changes) and one hidden under another says so."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from poetc import boards, frontend, pipeline
from poetc.report import plots
from poetc.report.plots import EnergyBar, Subject
from poetc.schedule import strategies
from poetc.schedule.sweep import SweepResult


# ---- the check ---------------------------------------------------------------------------------------------------
def drawn_texts(fig: Figure) -> list[tuple[str, Bbox]]:
    """Every non-empty text the figure draws, with its box in display pixels."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    texts = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if not axis.get_visible():
                continue
            for tick in axis._update_ticks():  # the ticks Axis.draw draws (those in view)
                texts += [lab for lab in (tick.label1, tick.label2) if lab.get_visible()]
            texts += [axis.label, axis.get_offset_text()]
        texts += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        if ax.get_legend() is not None:
            texts += [*ax.get_legend().get_texts(), ax.get_legend().get_title()]
    texts += fig.texts
    return [(t.get_text(), t.get_window_extent(r)) for t in texts if t.get_visible() and t.get_text().strip()]


def overlaps(fig: Figure) -> list[str]:
    """Pairs of texts whose boxes intersect, and texts that leave the figure."""
    boxes = drawn_texts(fig)
    frame = fig.bbox
    bad = [
        f"{a!r} overlaps {b!r}"
        for (a, ba), (b, bb) in itertools.combinations(boxes, 2)
        if ba.x0 < bb.x1 and bb.x0 < ba.x1 and ba.y0 < bb.y1 and bb.y0 < ba.y1
    ]
    bad += [
        f"{a!r} is cut off by the figure's edge"
        for a, ba in boxes
        if ba.x0 < frame.x0 - 1 or ba.y0 < frame.y0 - 1 or ba.x1 > frame.x1 + 1 or ba.y1 > frame.y1 + 1
    ]
    return bad


def test_the_check_sees_overlapping_labels():
    fig = Figure(figsize=(3, 2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xticks([0.0, 0.01], ["0.000000000", "0.010000000"])
    ax.set_yticks([0, 1])
    ax.text(0, 1, "a long annotation at the top", fontsize=8)
    ax.text(0.001, 1, "another one", fontsize=8)
    bad = overlaps(fig)
    assert any("'0.000000000' overlaps '0.010000000'" in b for b in bad), bad
    assert any("'a long annotation at the top' overlaps 'another one'" in b for b in bad), bad
    assert any("cut off" in b for b in bad), bad


# ---- realistic data ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deep_mlp():
    """The demo's schedule: digits-deep-mlp on the emulated Cortex-M4 at 200 KiB, 1.2x time: recomputes and pages."""
    board = boards.load("qemu-m4")
    model = frontend.load("digits-deep-mlp")
    pl = pipeline.plan(model, board, 200 * 1024, "1.2x")
    sol = strategies.run("poet", pl.problem, strategies.SolveOptions(time_limit_s=60))
    assert sol.ok and sol.replay.recomputes and sol.replay.page_outs
    batch = model.graph.tensor(model.input).shape[0]
    return pl.problem, sol, Subject("digits-deep-mlp", "qemu-m4", batch, 200 * 1024)


@pytest.fixture(scope="module")
def resnet8():
    """144 nodes (too many names for the grid's height) at a budget 20 000 times the arena it uses."""
    pl = pipeline.plan(frontend.load("resnet8"), boards.load("rpi4"))
    sol = strategies.run("store-all", pl.problem, strategies.SolveOptions())
    assert sol.ok and pl.problem.T > 100
    return pl.problem, sol, Subject("resnet8", "rpi4", 4, pl.fixed.budget)


# poetc sweep mlp --board nrf52840 --batch 8 --points 5 --time-limit 20 (sweep.json)
SWEEP_BUDGETS = [230432, 232272, 234112, 235952, 237792]
SWEEP_MJ = {
    "poet": [4.021, 3.900, 3.566, 3.566, 3.530],
    "store-all": [None, None, None, None, 3.530],
    "remat-only": [4.117, 3.900, 3.566, 3.566, 3.530],
    "paging-only": [4.825, 4.704, 4.164, 4.070, 3.530],
    "chen-sqrt": [None, 4.172, 4.172, 4.136, 4.305],
    "greedy": [4.057, 3.900, 3.566, 3.566, 3.530],
}


def sweep_result(first: int = 0) -> SweepResult:
    """The real sweep, from budget index ``first`` on (from 1 on, remat-only and greedy are POET's line)."""
    budgets = SWEEP_BUDGETS[first:]
    rows = [
        {"strategy": s, "ram_budget_bytes": b, "feasible": e is not None, "energy_j": (e or 0.0) * 1e-3}
        for s, es in SWEEP_MJ.items()
        for b, e in zip(budgets, es[first:], strict=True)
    ]
    return SweepResult(budgets, list(SWEEP_MJ), rows, 0.0035298965517241384, (budgets[0], "lower bound"))


SWEEP_SUBJECT = Subject("mlp", "nrf52840", 8)

# poetc train on the host: digits-mlp, batch 16, 12 steps (train.json), FLOP model cycles from poetc.json
NODES = ["Gemm_2", "Relu_3", "Gemm_4", "loss", "loss:softmax_xent_bwd:dlogits", "Gemm_4:linear_dx:dx",
         "Gemm_4:linear_dw:dw+sgd", "Gemm_4:bias_grad:db+sgd", "Relu_3:relu_bwd:dx", "Gemm_2:linear_dw:dw+sgd",
         "Gemm_2:bias_grad:db+sgd"]  # fmt: skip
MEASURED_CYCLES = np.array([7665, 2264, 1953, 1573, 2265, 1432, 1874, 310, 2275, 5651, 551], dtype=float)
FLOPS = np.array([66048, 512, 10400, 640, 640, 10240, 10880, 180, 512, 69632, 576], dtype=float)
LOSS = [2.2797, 2.3361, 2.3023, 2.2771, 2.2273, 2.2578, 2.2420, 2.2666, 2.3043, 2.1867, 2.1791, 2.1587]
EVALS = [(1, 0.1393), (4, 0.1922), (8, 0.1699), (12, 0.3008)]
HOST = Subject("digits-mlp", "host", 16, 64 * 1024**2)


def _figures(deep_mlp, resnet8) -> dict[str, Figure]:
    p, sol, subj = deep_mlp
    rp, rsol, rsubj = resnet8
    r = sol.replay
    return {
        "grid": plots.schedule_grid_figure(p, sol, subj),
        "grid-144-nodes": plots.schedule_grid_figure(rp, rsol, rsubj),
        "ram": plots.ram_timeline_figure(p, sol, subj),
        "ram-budget-off-scale": plots.ram_timeline_figure(rp, rsol, rsubj),
        "sweep": plots.energy_vs_budget_figure(sweep_result(), SWEEP_SUBJECT),
        "sweep-coinciding": plots.energy_vs_budget_figure(sweep_result(1), SWEEP_SUBJECT),
        "energy-host": plots.energy_breakdown_figure(
            [
                EnergyBar("predicted", 880.449e-6, 0.0, 0.0, 880.449e-6),
                EnergyBar("counted", 1.79606e-3, 0.0, 0.0, 1.79606e-3),
            ],
            HOST,
        ),
        "energy-paging-metered": plots.energy_breakdown_figure(
            [
                EnergyBar("predicted", r.compute_j, r.page_in_j, r.page_out_j, r.energy_j),
                EnergyBar(
                    "counted (emulated)", r.compute_j * 1.3, r.page_in_j, r.page_out_j, r.energy_j * 1.28
                ),
                EnergyBar("metered (PPK2)", None, None, None, r.energy_j * 1.6),
            ],
            subj,
        ),
        "nodes": plots.node_figure(FLOPS / 2e9 * 1e9, MEASURED_CYCLES, NODES, "cycles", HOST),
        "loss": plots.loss_figure(LOSS, EVALS, 0.2, HOST),
    }


@pytest.fixture(scope="module")
def figures(deep_mlp, resnet8) -> dict[str, Figure]:
    return _figures(deep_mlp, resnet8)


# ---- the tests -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["grid", "grid-144-nodes", "ram", "ram-budget-off-scale", "sweep", "sweep-coinciding", "energy-host",
     "energy-paging-metered", "nodes", "loss"],
)  # fmt: skip
def test_no_text_overlaps_another_or_leaves_the_figure(figures, name):
    assert overlaps(figures[name]) == []


def test_titles_name_model_board_batch_and_budget(figures):
    deep = "digits-deep-mlp on qemu-m4, batch 64, RAM budget 200.0 KiB"
    r8 = "resnet8 on rpi4, batch 4, RAM budget 4.0 GiB"
    sweep = "mlp on nrf52840, batch 8"
    host = "digits-mlp on host, batch 16, RAM budget 64.0 MiB"
    want = {"grid": deep, "grid-144-nodes": r8, "ram": deep, "ram-budget-off-scale": r8, "sweep": sweep,
            "sweep-coinciding": sweep, "energy-host": host, "energy-paging-metered": deep, "nodes": host,
            "loss": host}  # fmt: skip
    assert set(want) == set(figures)
    for name, fig in figures.items():
        what, subject = fig.axes[0].get_title().split("\n")
        assert subject == want[name] and what, name
    assert "225.0 KiB to 232.2 KiB" in figures["sweep"].axes[0].get_title()


def test_axes_in_engineering_units(figures):
    def labels(name):
        ax = figures[name].axes[0]
        return ax.get_xlabel(), ax.get_ylabel()

    assert labels("energy-host")[0] == "energy per training step (mJ)"
    assert labels("sweep") == ("RAM budget (KiB)", "energy per training step (mJ)")
    assert labels("ram")[1] == "arena in use (KiB)"
    assert labels("ram-budget-off-scale")[1] == "arena in use (MiB)"  # not GiB: the 4 GiB budget is a note
    ram = figures["ram-budget-off-scale"].axes[0]
    assert any("off the scale" in t.get_text() for t in ram.texts)
    # energy ticks read 0.0, 0.4, ... 2.0 (mJ), not 0.0000, 0.0025 (J)
    fig = figures["energy-host"]
    fig.canvas.draw()
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert all(len(t) <= 3 for t in ticks) and 1 <= max(float(t) for t in ticks) < 10, ticks


def test_grid_names_every_node_it_has_room_for(figures):
    small = figures["grid"].axes[0].get_yticklabels()
    assert len(small) == 23  # digits-deep-mlp: every node named
    big = figures["grid-144-nodes"].axes[0].get_yticklabels()
    assert 20 <= len(big) < 144  # thinned, evenly


def test_node_figure_names_the_worst_nodes_it_can_place(figures):
    names = [t.get_text() for t in figures["nodes"].axes[0].texts]
    assert 3 <= len(names) <= 5 and "Gemm_2:linear_dw:dw+sgd" in names


def _axes_pixels(fig: Figure) -> np.ndarray:
    fig.canvas.draw()
    ax = fig.axes[0].get_window_extent()
    img = np.asarray(fig.canvas.buffer_rgba())
    h = img.shape[0]
    return img[int(h - ax.y1) : int(h - ax.y0), int(ax.x0) : int(ax.x1)].copy()


@pytest.mark.parametrize("first", [0, 1])
def test_every_strategy_line_shows_and_a_hidden_one_says_so(first):
    fig = plots.energy_vs_budget_figure(sweep_result(first), SWEEP_SUBJECT)
    ax = fig.axes[0]
    before = _axes_pixels(fig)
    lines = {ln.get_label().split(" (")[0]: ln for ln in ax.get_lines() if len(ln.get_xdata())}
    for name in ("poet", "remat-only", "paging-only", "chen-sqrt", "greedy", "store-all"):
        ln = lines[name]
        ln.set_visible(False)
        changed = (_axes_pixels(fig) != before).any(axis=-1).sum()
        ln.set_visible(True)
        assert changed > 20, f"{name}: hiding its line changes {changed} pixels"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    if first == 0:
        assert not any("same as" in t for t in legend)
    else:  # from 226.8 KiB on, remat-only and greedy are POET's line exactly
        assert "remat-only (same as poet)" in legend and "greedy (same as poet)" in legend
        assert "paging-only" in legend


def test_report_png_is_a_png(figures):
    assert plots.png(figures["loss"])[:8] == b"\x89PNG\r\n\x1a\n"
