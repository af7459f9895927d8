"""``poetc report DIR``: one self-contained HTML page about a build and what it did on its target.

At the top, the headline: model, board, batch and RAM budget; the RAM it fits in, the energy per step (predicted,
counted, metered), the accuracy before and after training. Then the model and memory; the schedule's figures
(schedule.json) with the schedule grid and the RAM timeline; energy per training step split into compute,
page-in and page-out, as predicted (the schedule's cost model), counted (train.json: ticks x active power, paging
counts x the board's constants; "emulated" when QEMU ran it) and metered (a power meter, --meter); per node, the
FLOP model's cycles and energy beside the measured ones (the last training step's node ticks, or a profile) with
the error; the loss curve. Figures are PNG (plots.py), embedded as base64 data URIs, so the page is one file.

Python computes every figure and formats every value here (``units``); the page is laid out by the Jinja
template ``templates/report.html.j2`` (autoescaped, StrictUndefined), which holds layout only.

The plots need the program, which ``poetc build`` records in ``program.json`` (``record_build``); the report
re-plans the problem from model.onnx and board.toml (and the build's profile.json, if it was built with one),
replays the program with the simulator and checks its figures against schedule.json before drawing anything.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from .. import __version__, frontend, pipeline
from ..boards import Board
from ..device import target as target_mod
from ..device.harness import TRAIN_RECORD, active_power_w
from ..emit import builddir
from ..errors import PoetcError
from ..fmt import joules, nbytes, seconds
from ..resources import templates_dir
from ..schedule import simulate
from ..schedule.problem import Problem
from ..schedule.program import Program, from_program
from ..schedule.strategies import Solution
from . import plots
from .plots import EnergyBar, Subject
from .units import count, energy_or_dash, model_name, percent, share, watts

PROGRAMS = "program.json"
PROFILE_COPY = "profile.json"
# schedule.json keys shown in the schedule table (and checked against a replay of program.json)
SCHEDULE_KEYS = (
    ("strategy", "strategy"),
    ("status", "solver status"),
    ("energy_j", "energy per step"),
    ("compute_energy_j", "compute energy"),
    ("paging_energy_j", "paging energy"),
    ("extra_energy_j", "energy above the floor"),
    ("floor_energy_j", "floor (every node once)"),
    ("time_s", "time per step"),
    ("peak_ram_bytes", "peak RAM"),
    ("arena_bytes", "arena"),
    ("ram_budget_bytes", "RAM budget"),
    ("recomputes", "recomputations"),
    ("page_outs", "page-outs"),
    ("page_ins", "page-ins"),
)
REPLAYED = (
    "energy_j",
    "compute_energy_j",
    "paging_energy_j",
    "time_s",
    "recomputes",
    "page_outs",
    "page_ins",
)


# ---- build records -------------------------------------------------------------------------------------------
def _prog_json(prog: Program, offsets: Sequence[int]) -> dict[str, Any]:
    return {
        "name": prog.name,
        "required": list(prog.required),
        "keep": list(prog.keep),
        "ram_homes": sorted(prog.ram_homes),
        "queue": prog.queue,
        "instrs": [[i.op.name, i.node, i.stage, int(o)] for i, o in zip(prog.instrs, offsets, strict=True)],
    }


def record_build(c: pipeline.Compiled, out: Path, profile_path: str | None = None) -> None:
    """Write program.json (the train and inference programs with arena offsets) into a build directory, and a
    copy of the profile it was scheduled with."""
    b = builddir.open_build(Path(out))
    doc = {
        "hash": c.hash_hex,
        "strategy": c.strategy,
        "cost_source": c.cost.source,
        "ir_node": list(c.problem.ir_node),  # program node -> training-graph node (-1: a parameter load)
        "programs": [_prog_json(p, mp.offsets) for p, mp in zip(c.programs, c.plans, strict=True)],
    }
    b.add_file(PROGRAMS).write_text(json.dumps(doc) + "\n")
    if profile_path:
        shutil.copyfile(profile_path, b.add_file(PROFILE_COPY))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PoetcError(f"{path}: unreadable: {e}") from None


def replan(b: builddir.BuildInfo, board: Board) -> Problem:
    """The build's scheduling problem again: same model, batch, board, RAM budget, deadline, cost source and
    training options (trainable parameters, BatchNorm mode, optimizer)."""
    from ..device import profile as profile_mod

    model = frontend.load(b.dir / "model.onnx", batch=b.batch)
    sched = b.doc["schedule"]
    deadline = sched.get("deadline_s")
    kw: dict[str, Any] = {}
    if (b.dir / PROFILE_COPY).is_file():
        prof = profile_mod.load(b.dir / PROFILE_COPY)
        kw = {"profile": prof.node_seconds(), "profile_source": str(b.dir / PROFILE_COPY)}
    pl = pipeline.plan(
        model,
        board,
        int(b.doc["memory"]["budget"]),
        f"{deadline!r}s" if deadline else None,
        None,
        params=b.doc.get("param_homes", "ram"),
        training=b.training(),
        overlap=bool(sched.get("overlap", False)),
        **kw,
    )
    return pl.problem


# ---- the training run (train.json) ---------------------------------------------------------------------------
# The words for the three ways the report knows a step's energy, used for every label and row id
PREDICTED = "predicted"  # the schedule's cost model
COUNTED = "counted"  # instructions or ticks x cycles x power, as QEMU or the host runs give
METERED = "metered"  # a power meter (PPK2)
EMULATED = "emulated"  # said of a counted run on an emulator: not the board's own time


@dataclass(frozen=True)
class RunFigures:
    """What a training run measured, by name, whatever train.json calls it."""

    counted: EnergyBar | None  # per step: compute, page-in, page-out
    metered_j: float | None  # per training step, mean over the metered steps
    metered_how: str  # "marker" | "host clock"
    emulated: bool
    step_s: float | None  # board seconds per step (steps that only trained)
    evals: list[tuple[int, float]]  # (step, held-out accuracy)


def run_figures(train: dict[str, Any], board: Board) -> RunFigures:
    """Read train.json: the one place that knows its field names (a rename there is a line here)."""
    e = train.get("counted_energy_per_step", train.get("energy_per_step"))  # None: an emulation's time
    m = train.get("metered")
    metered_j = None
    if m:
        skip = set(train.get("captured_steps", []))
        tj = [r[1] for r in m["runs"] if r[0] == 0]  # program 0 is the training step
        tj = [j for s, j in enumerate(tj, start=1) if s not in skip] or tj
        metered_j = float(np.mean(tj)) if tj else None
    counted = None
    if e:
        parts = (float(e["compute_j"]), float(e["page_in_j"]), float(e["page_out_j"]))
        counted = EnergyBar(COUNTED, *parts, sum(parts))
    secs = [
        s
        for k, s in enumerate(train.get("step_seconds", []), 1)
        if k not in set(train.get("captured_steps", []))
    ]
    return RunFigures(
        counted=counted,
        metered_j=metered_j,
        metered_how=m["how"] if m else "",
        emulated=_emulated(train, board),
        step_s=float(np.mean(secs)) if secs else None,
        evals=[(int(s), float(a)) for s, a in train.get("evals", [])],
    )


def _emulated(train: dict[str, Any], board: Board) -> bool:
    """QEMU system emulation counts instructions; qemu-aarch64 user mode times the emulation (LinuxTarget on a
    machine that is not aarch64: this one, where the report is written, is the best guess of where it ran)."""
    if "emulated" in train:
        return bool(train["emulated"])
    if train.get("tick_unit") == "instructions" or board.emulated:
        return True
    tgt = target_mod.for_board(board)
    return isinstance(tgt, target_mod.LinuxTarget) and tgt.emulated


# ---- values for the page ---------------------------------------------------------------------------------------
def cell_text(key: str, v: Any) -> str:
    """A schedule.json value for people, by the unit its key names (``_j``, ``_s``, ``_bytes``)."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if key.endswith("_j"):
        return joules(float(v))
    if key.endswith("_s"):
        return seconds(float(v))
    if key.endswith("_bytes"):
        return f"{nbytes(int(v))} ({int(v):,} B)"
    return f"{v:,}" if isinstance(v, int) else f"{v:.4g}"


def data_value(v: Any) -> str:
    """A value exactly, for the page's data-value attributes (what the tests read back): repr of a number."""
    if v is None:
        return ""
    return v if isinstance(v, str) else repr(v)


def error_text(pred: float, meas: float) -> str:
    return "-" if meas <= 0 else f"{100 * (pred - meas) / meas:+.1f}%"


@dataclass(frozen=True)
class PageFigure:
    id: str
    png_b64: str
    alt: str
    caption: str


def _figure(fid: str, fig: Any, alt: str, caption: str) -> PageFigure:
    return PageFigure(fid, base64.b64encode(plots.png(fig)).decode(), alt, caption)


@dataclass(frozen=True)
class Tile:
    """One figure of the headline: a big value, what it is, and smaller lines below."""

    id: str
    label: str
    value: str
    lines: list[str]
    data: dict[str, str]  # data-* attributes: exact values for the tests


def headline(
    sched: dict[str, Any], predicted: EnergyBar | None, run: RunFigures | None, lr: float | None
) -> list[Tile]:
    peak, budget = int(sched["peak_ram_bytes"]), int(sched["ram_budget_bytes"])
    tiles = [
        Tile("hl-ram", "fits in", nbytes(peak), [f"of {nbytes(budget)} RAM budget ({share(peak, budget)})"],
             {"peak": str(peak), "budget": str(budget)}),
    ]  # fmt: skip
    energy: list[tuple[str, float]] = []
    if predicted is not None:
        energy.append((PREDICTED, predicted.total_j))
    if run is not None and run.counted is not None:
        energy.append((f"{COUNTED} ({EMULATED})" if run.emulated else COUNTED, run.counted.total_j))
    if run is not None and run.metered_j is not None:
        energy.append((METERED, run.metered_j))
    if energy:
        tiles.append(
            Tile(
                "hl-energy",
                "energy per training step",
                joules(energy[0][1]),
                [f"{word}" if k == 0 else f"{joules(j)} {word}" for k, (word, j) in enumerate(energy)],
                {w.split()[0]: repr(j) for w, j in energy},
            )
        )
    if run is not None and run.evals:
        (s0, a0), (s1, a1) = run.evals[0], run.evals[-1]
        tiles.append(
            Tile(
                "hl-accuracy",
                "held-out accuracy",
                f"{percent(a0)} \u2192 {percent(a1)}",
                [
                    ("before training" if s0 == 0 else f"after step {s0}")
                    + f" \u2192 after step {s1}"
                    + (f", learning rate {lr:g}" if lr else "")
                ],
                {"first": repr(a0), "last": repr(a1)},
            )
        )
    else:
        tiles.append(Tile("hl-accuracy", "held-out accuracy", "-", ["no training run: poetc train DIR"], {}))
    moves = [count(int(sched.get(k) or 0), w) for k, w in
             (("recomputes", "recomputation"), ("page_outs", "page-out"), ("page_ins", "page-in"))]  # fmt: skip
    time_line = f"{seconds(float(sched['time_s']))} per step predicted"
    if run is not None and run.step_s is not None:
        time_line += f", {seconds(run.step_s)} {COUNTED}" + (f" ({EMULATED})" if run.emulated else "")
    tiles.append(
        Tile("hl-schedule", "schedule", f"{sched['strategy']} ({sched['status']})", [", ".join(moves), time_line],
             {"strategy": str(sched["strategy"])})
    )  # fmt: skip
    return tiles


@dataclass(frozen=True)
class EnergyRow:
    id: str  # predicted | counted | metered
    label: str
    how: str
    cells: list[tuple[str, str]]  # (text, exact value) for compute, page-in, page-out, total


def _energy_row(rid: str, bar: EnergyBar, how: str) -> EnergyRow:
    vals = (bar.compute_j, bar.page_in_j, bar.page_out_j, bar.total_j)
    return EnergyRow(rid, bar.label, how, [(energy_or_dash(v), data_value(v)) for v in vals])


# ---- the page ----------------------------------------------------------------------------------------------------
@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(**ctx: Any) -> str:
    return _env().get_template("report.html.j2").render(**ctx)


def write(
    b: builddir.BuildInfo, out: Path, profile_path: str | None = None, run: int | None = None
) -> tuple[Path, list[str]]:
    """Write the report of build ``b`` to ``out`` with training run ``run`` (default: the latest); returns the
    path and notes about what is missing."""

    from ..device import profile as profile_mod

    notes: list[str] = []
    board = b.board()
    sched = _read_json(b.dir / "schedule.json")
    record = b.train_record_path(run)
    train = _read_json(record) if record is not None and record.is_file() else None
    if train is None:
        notes.append(f"no {TRAIN_RECORD}: run poetc train {b.dir} for measured figures and the loss curve")
    elif train.get("hash") != b.doc["hash"]:
        notes.append(f"{TRAIN_RECORD} is from another build of this directory; ignored")
        train = None
    run = run_figures(train, board) if train is not None else None
    prof = None
    if profile_path:
        prof = profile_mod.load(profile_path)
    built_with = (b.dir / PROFILE_COPY).is_file()
    progs = _read_json(b.dir / PROGRAMS) if (b.dir / PROGRAMS).is_file() else None
    if progs is None:
        notes.append(f"no {PROGRAMS} (built by an older poetc?): rebuild for the schedule plots")
    subject = Subject(
        model_name(b.doc["model"]["source"]), board.name, b.batch, int(b.doc["memory"]["budget"])
    )

    nodes = b.doc["nodes"]
    T = len(nodes)
    p = sol = None
    runs = np.ones(T, dtype=np.int64)
    consistent = None
    if progs is not None:
        p = replan(b, board)
        train_prog = Program.from_json(progs["programs"][0])
        runs = np.maximum(train_prog.runs(T, tuple(progs.get("ir_node", ()))), 1)
        rp = simulate.replay(p, train_prog)
        figs = {
            "energy_j": rp.energy_j,
            "compute_energy_j": rp.compute_j,
            "paging_energy_j": rp.paging_j,
            "time_s": rp.time_s,
            "recomputes": rp.recomputes,
            "page_outs": rp.page_outs,
            "page_ins": rp.page_ins,
        }
        bad = [
            k
            for k in REPLAYED
            if sched.get(k) is not None
            and not math.isclose(float(figs[k]), float(sched[k]), rel_tol=1e-9, abs_tol=1e-15)
        ]
        consistent = not bad
        if bad:
            notes.append(f"schedule.json disagrees with a replay of {PROGRAMS} on {', '.join(bad)}")
        sol = Solution(
            sched["strategy"],
            sched["status"],
            train_prog,
            from_program(p, train_prog, sched["strategy"]),
            rp,
            0.0,
        )

    # ---- per node: FLOP model versus measurement
    flops = np.array([n["flops"] for n in nodes], dtype=np.float64)
    pred_s = flops / board.flop_per_s
    pred_j = flops / board.flop_per_j
    meas_s = None
    source = ""
    if prof is not None:
        if prof.board != board.name:
            notes.append(
                f"--profile {profile_path} was measured on {prof.board}, this build is for {board.name}"
            )
        by_name = {n.name: n.seconds for n in prof.nodes}
        if all(n["name"] in by_name for n in nodes):
            meas_s = np.array([by_name[n["name"]] for n in nodes])
            source = f"profile {profile_path} ({prof.timing}, median of {prof.steps} steps)"
        else:
            notes.append(f"--profile {profile_path} does not time every node of this build; ignored")
    if meas_s is None and train is not None and train.get("node_seconds"):
        meas_s = np.array(train["node_seconds"], dtype=np.float64) / runs
        source = f"the last training step of {TRAIN_RECORD} (TICKS; {train['tick_unit']}, per execution)"
    if meas_s is None and built_with:
        bp = profile_mod.load(b.dir / PROFILE_COPY)
        meas_s = np.array([n.seconds for n in bp.nodes])
        source = f"the profile this build was scheduled with ({bp.timing})"
    power = active_power_w(board)

    # ---- figures and tables
    figures: dict[str, PageFigure] = {}
    if p is not None and sol is not None:
        figures["schedule"] = _figure(
            "fig-schedule", plots.schedule_grid_figure(p, sol, subject), "schedule grid",
            "stage x node: compute, recompute, paging, residency",
        )  # fmt: skip
        figures["ram"] = _figure(
            "fig-ram", plots.ram_timeline_figure(p, sol, subject), "RAM timeline",
            "arena bytes in use after every instruction",
        )  # fmt: skip

    cost_model = (
        "measured profile, profile.json"
        if built_with
        else "instructions per FLOP calibrated in QEMU, board file"
        if board.instructions_per_flop
        else "FLOP model, board constants"
    )
    predicted = None
    bars: list[tuple[EnergyBar, str]] = []
    if sol is not None and sol.replay is not None:
        rp = sol.replay
        predicted = EnergyBar(PREDICTED, rp.compute_j, rp.page_in_j, rp.page_out_j, rp.energy_j)
        bars.append((predicted, f"the schedule's cost model ({cost_model})"))
    if run is not None and run.counted is not None:
        tick = train["tick_unit"] if train else ""
        label = f"{COUNTED} ({EMULATED})" if run.emulated else COUNTED
        bars.append(
            (
                EnergyBar(label, run.counted.compute_j, run.counted.page_in_j, run.counted.page_out_j,
                          run.counted.total_j),
                f"{tick} converted to board seconds x {watts(power)} active power; paging counts x the board's "
                f"latency, throughput and {watts(board.memory_power_w)}",
            )
        )  # fmt: skip
    if run is not None and run.metered_j is not None:
        bars.append(
            (EnergyBar(METERED, None, None, None, run.metered_j), f"power meter, steps framed by {run.metered_how}")
        )  # fmt: skip
    energy_rows = [_energy_row(bar.label.split()[0], bar, how) for bar, how in bars]
    if bars:
        figures["energy"] = _figure(
            "fig-energy", plots.energy_breakdown_figure([bar for bar, _ in bars], subject), "energy breakdown",
            "energy per training step: compute, page-in, page-out (a meter sees the total only)",
        )  # fmt: skip

    node_table = None
    if meas_s is not None:
        clock = board.clock_hz
        sched_s = p.compute_s if (p is not None and built_with) else None
        head = ["#", "node", "op", "FLOPs", "runs", "measured cycles", "FLOP model cycles", "error"]
        if sched_s is not None:
            head += ["profile cycles", "error"]
        head += ["measured energy", "FLOP model energy", "error"]
        trows = []
        for i, n in enumerate(nodes):
            m = float(meas_s[i])
            row = [str(i), n["name"][:32], n["op"], f"{int(flops[i]):,}", str(int(runs[i]))]
            row += [f"{m * clock:,.0f}", f"{pred_s[i] * clock:,.0f}", error_text(float(pred_s[i]), m)]
            if sched_s is not None:
                row += [f"{float(sched_s[i]) * clock:,.0f}", error_text(float(sched_s[i]), m)]
            row += [joules(m * power), joules(float(pred_j[i])), error_text(float(pred_j[i]), m * power)]
            trows.append(row)
        tot_p = float((pred_s * runs).sum())
        tot_m = float((meas_s * runs).sum())
        node_table = {
            "source": source,
            "clock": f"{clock / 1e6:g} MHz",
            "power": watts(power),
            "flop_model_step": seconds(tot_p),
            "measured_step": seconds(tot_m),
            "ratio": f"{tot_p / tot_m if tot_m else float('nan'):.3g}",
            "head": head,
            "rows": trows,
        }
        figures["nodes"] = _figure(
            "fig-nodes",
            plots.node_figure(pred_s * clock, meas_s * clock, [n["name"] for n in nodes], "cycles", subject),
            "per-node prediction versus measurement",
            "each dot a node, the worst predicted named; on the dotted line the FLOP model is exact",
        )
    if train is not None and train.get("loss"):
        figures["loss"] = _figure(
            "fig-loss", plots.loss_figure(train["loss"], run.evals if run else [], train["lr"], subject),
            "loss curve", "training loss per step and held-out accuracy",
        )  # fmt: skip

    n_params = sum(int(np.prod(t["shape"])) for t in b.doc["tensors"] if t["name"] in set(b.doc["params"]))
    model_rows = [
        ["model", b.doc["model"]["source"]],
        ["sha256", b.doc["model"]["sha256"][:16]],
        ["input", f"{b.doc['input_shape']} (batch {b.batch})"],
        ["classes", str(b.classes)],
        ["parameters", f"{n_params:,} ({len(b.doc['params'])} tensors)"],
        ["training graph", f"{T} nodes ({sum(1 for n in nodes if n['phase'] == 'forward')} forward)"],
        ["board", f"{board.name}: {board.description}"],
        ["cost model", cost_model],
    ]
    page = render(
        title=f"{subject.model} on {board.name}",
        subject=subject.details(),
        build_hash=b.doc["hash"],
        build_dir=str(b.dir),
        version=__version__,
        written=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        command=b.doc.get("command", ""),
        notes=notes,
        headline=headline(sched, predicted, run, train["lr"] if train else None),
        model_rows=model_rows,
        memory_rows=[[k, f"{int(v):,}", nbytes(int(v))] for k, v in b.doc["memory"].items()],
        schedule_rows=[
            {"key": k, "label": label, "text": cell_text(k, sched.get(k)), "value": data_value(sched.get(k))}
            for k, label in SCHEDULE_KEYS
        ],
        consistent=None if consistent is None else ("yes" if consistent else "no"),
        energy_rows=energy_rows,
        node_table=node_table,
        figures=figures,
    )
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(page)
        tmp.replace(out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PoetcError(f"{out}: cannot write: {e.strerror}") from None
    if out.parent.resolve() == b.dir.resolve():
        b.add_file(out.name)
    return out, notes
