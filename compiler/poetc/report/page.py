"""``poetc report DIR``: one self-contained HTML page about a build and what it did on its target.

Sections: the model and memory; the schedule's figures (schedule.json) with the schedule grid and the RAM
timeline (plots.py); energy per training step split into compute, page-in and page-out, as predicted (the
schedule's cost model), as counted on the target (train.json: ticks x active power, paging counts x the board's
constants) and as metered (--meter); per node, the FLOP model's cycles and energy beside the measured ones (the
last training step's node ticks, or a profile) with the error; the loss curve. Figures are PNG, embedded as
base64 data URIs, so the page is one file.

The plots need the program, which ``poetc build`` records in ``program.json`` (``record_build``); the report
re-plans the problem from model.onnx and board.toml (and the build's profile.json, if it was built with one),
replays the program with the simulator and checks its figures against schedule.json before drawing anything.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, frontend, pipeline
from ..boards import Board
from ..device.harness import TRAIN_RECORD, active_power_w
from ..emit import builddir
from ..errors import PoetcError
from ..fmt import joules, nbytes, seconds
from ..schedule import simulate
from ..schedule.problem import Problem
from ..schedule.program import Program, from_program
from ..schedule.strategies import Solution

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
    """The build's scheduling problem again: same model, batch, board, RAM budget, deadline and cost source."""
    from ..device import profile as profile_mod

    model = frontend.load(b.dir / "model.onnx", batch=b.batch)
    sched = b.doc["schedule"]
    deadline = sched.get("deadline_s")
    kw: dict[str, Any] = {}
    if (b.dir / PROFILE_COPY).is_file():
        prof = profile_mod.load(b.dir / PROFILE_COPY)
        kw = {"profile": prof.node_seconds(), "profile_source": str(b.dir / PROFILE_COPY)}
    pl = pipeline.plan(
        model, board, int(b.doc["memory"]["budget"]), f"{deadline!r}s" if deadline else None, None, **kw
    )
    return pl.problem


# ---- figures ---------------------------------------------------------------------------------------------------
def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _png_file(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _energy_figure(rows: list[tuple[str, list[float | None]]]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    colors = ("#2171b5", "#31a354", "#fd8d3c")
    names = ("compute", "page-in", "page-out")
    for k, (_label, vals) in enumerate(rows):
        left = 0.0
        if vals[1] is None:  # metered: the total only
            ax.barh(k, vals[0] or 0.0, color="#756bb1", label="metered total" if k == len(rows) - 1 else None)
            continue
        for v, c, n in zip(vals, colors, names, strict=True):
            ax.barh(k, v or 0.0, left=left, color=c, label=n if k == 0 else None)
            left += v or 0.0
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("J per training step")
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def _node_figure(pred: np.ndarray, meas: np.ndarray, names: list[str], unit: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    ok = (pred > 0) & (meas > 0)
    ax.scatter(meas[ok], pred[ok], s=18, color="#2171b5", zorder=3)
    if ok.any():
        lo = min(pred[ok].min(), meas[ok].min()) / 2
        hi = max(pred[ok].max(), meas[ok].max()) * 2
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls=":", label="prediction = measurement")
        ax.set_xscale("log")
        ax.set_yscale("log")
        worst = np.argsort(-np.abs(np.log(pred[ok] / meas[ok])))[:5]
        idx = np.flatnonzero(ok)
        for w in worst:
            i = idx[w]
            ax.annotate(
                names[i][:24], (meas[i], pred[i]), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
        ax.legend(fontsize=8)
    ax.set_xlabel(f"measured {unit} per node")
    ax.set_ylabel(f"FLOP model {unit} per node")
    ax.set_title("per node: FLOP model versus measurement")
    return _png(fig)


def _loss_figure(train: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    loss = train["loss"]
    ax.plot(range(1, len(loss) + 1), loss, color="#2171b5", lw=1.2, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if train.get("evals"):
        ax2 = ax.twinx()
        s, acc = zip(*train["evals"], strict=True)
        ax2.plot(s, acc, color="#31a354", marker="o", ms=3, lw=1, label="accuracy")
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(0, 1)
    ax.set_title(f"training on {train['board']}: {train['steps']} steps, lr {train['lr']:g}")
    return _png(fig)


# ---- HTML ------------------------------------------------------------------------------------------------------
def _e(x: object) -> str:
    return html.escape(str(x))


def _fmt(key: str, v: Any) -> str:
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


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], tid: str = "", raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (cells already HTML)."""
    h = "".join(f"<th>{_e(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table{f' id={tid!r}' if tid else ''}><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _img(fid: str, b64: str, alt: str, caption: str) -> str:
    return (
        f'<figure><img id="{fid}" alt="{_e(alt)}" src="data:image/png;base64,{b64}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 1.5em auto; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.8em; }
td, th { border: 1px solid #ddd; padding: 2px 8px; } th { background: #f3f3f3; text-align: left; }
td { text-align: right; } td:first-child { text-align: left; }
#node-table td:nth-child(2), #node-table td:nth-child(3) { text-align: left; }
figure { margin: 0.8em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.8em; color: #555; } .note { color: #8a4b00; } .meta { color: #666; font-size: 0.85em; }
"""

# the page counts its own figures once loaded: body data-figures / data-rendered (read by the tests)
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.setAttribute("data-figures", imgs.length);
  document.body.setAttribute("data-rendered",
    imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length);
});
"""


def write(b: builddir.BuildInfo, out: Path, profile_path: str | None = None) -> tuple[Path, list[str]]:
    """Write the report of build ``b`` to ``out``; returns the path and notes about what is missing."""
    import tempfile

    from ..device import profile as profile_mod
    from . import plots

    notes: list[str] = []
    board = b.board()
    sched = _read_json(b.dir / "schedule.json")
    train = _read_json(b.dir / TRAIN_RECORD) if (b.dir / TRAIN_RECORD).is_file() else None
    if train is None:
        notes.append(f"no {TRAIN_RECORD}: run poetc train {b.dir} for measured figures and the loss curve")
    elif train.get("hash") != b.doc["hash"]:
        notes.append(f"{TRAIN_RECORD} is from another build of this directory; ignored")
        train = None
    prof = None
    if profile_path:
        prof = profile_mod.load(profile_path)
    built_with = (b.dir / PROFILE_COPY).is_file()
    progs = _read_json(b.dir / PROGRAMS) if (b.dir / PROGRAMS).is_file() else None
    if progs is None:
        notes.append(f"no {PROGRAMS} (built by an older poetc?): rebuild for the schedule plots")

    nodes = b.doc["nodes"]
    T = len(nodes)
    p = sol = None
    runs = np.ones(T, dtype=np.int64)
    consistent = None
    if progs is not None:
        p = replan(b, board)
        train_prog = Program.from_json(progs["programs"][0])
        runs = np.maximum(train_prog.runs(T), 1)
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

    # ---- the page
    parts: list[str] = []
    title = f"{b.doc['model']['source']} on {board.name}"
    parts.append(f"<h1>poetc report: {_e(title)}</h1>")
    parts.append(
        f'<p class="meta">build {_e(b.doc["hash"])} in {_e(b.dir)}; written by poetc {_e(__version__)} on '
        f"{datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}; command: "
        f"<code>{_e(b.doc.get('command', ''))}</code></p>"
    )
    for n in notes:
        parts.append(f'<p class="note">note: {_e(n)}</p>')
    n_params = sum(int(np.prod(t["shape"])) for t in b.doc["tensors"] if t["name"] in set(b.doc["params"]))
    model_rows = [
        ["model", b.doc["model"]["source"]],
        ["sha256", b.doc["model"]["sha256"][:16]],
        ["input", f"{b.doc['input_shape']} (batch {b.batch})"],
        ["classes", str(b.classes)],
        ["parameters", f"{n_params:,} ({len(b.doc['params'])} tensors)"],
        ["training graph", f"{T} nodes ({sum(1 for n in nodes if n['phase'] == 'forward')} forward)"],
        ["board", f"{board.name}: {board.description}"],
        ["cost model", "measured profile (profile.json)" if built_with else "FLOP model (board constants)"],
    ]
    parts.append('<section id="model"><h2>Model and memory</h2>')
    parts.append(_table(["", ""], model_rows, "model-summary"))
    parts.append(
        _table(["memory", "bytes"], [[k, f"{int(v):,}"] for k, v in b.doc["memory"].items()], "memory")
    )
    parts.append("</section>")

    rows = []
    for key, label in SCHEDULE_KEYS:
        v = sched.get(key)
        rows.append(
            f'<tr data-key="{key}" data-value="{_e(repr(v) if not isinstance(v, str) else v)}">'
            f"<td>{_e(label)}</td><td>{_e(_fmt(key, v))}</td></tr>"
        )
    attr = "" if consistent is None else f' data-consistent="{"yes" if consistent else "no"}"'
    parts.append('<section id="schedule"><h2>Schedule</h2>')
    parts.append(
        f'<table id="schedule-figures"{attr}><thead><tr><th>schedule.json</th><th></th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    if p is not None and sol is not None:
        with tempfile.TemporaryDirectory() as td:
            g = plots.schedule_grid(p, sol, Path(td) / "grid.png")
            r = plots.ram_timeline(p, sol, Path(td) / "ram.png")
            parts.append(
                _img(
                    "fig-schedule",
                    _png_file(g),
                    "schedule grid",
                    "stage x node: compute, recompute, paging, residency",
                )
            )
            parts.append(
                _img("fig-ram", _png_file(r), "RAM timeline", "arena bytes in use after every instruction")
            )
    parts.append("</section>")

    # energy breakdown
    e_rows: list[tuple[str, list[float | None]]] = []
    if p is not None and sol is not None and sol.replay is not None:
        rp = sol.replay
        e_rows.append(("predicted (schedule's cost model)", [rp.compute_j, rp.page_in_j, rp.page_out_j]))
    if train is not None:
        e = train.get(
            "counted_energy_per_step", train.get("energy_per_step")
        )  # None: ticks time an emulation
        if e is not None:
            e_rows.append(("counted on the target", [e["compute_j"], e["page_in_j"], e["page_out_j"]]))
        else:
            notes.append(f"{TRAIN_RECORD}: {train['timing']['how']}; no counted energy")
        if train.get("metered"):
            m = train["metered"]
            skip = set(train.get("captured_steps", []))
            tj = [r[1] for r in m["runs"] if r[0] == 0]
            tj = [j for s, j in zip(range(1, len(tj) + 1), tj, strict=True) if s not in skip] or tj
            if tj:
                e_rows.append((f"metered ({m['how']})", [float(np.mean(tj)), None, None]))
    parts.append('<section id="energy"><h2>Energy per training step</h2>')
    if e_rows:
        cells = []
        for label, vals in e_rows:
            total = sum(v for v in vals if v is not None)
            cells.append(
                f'<tr data-row="{_e(label.split()[0])}"><td>{_e(label)}</td>'
                + "".join(
                    f'<td data-value="{"" if v is None else repr(float(v))}">{"-" if v is None else _e(joules(v))}</td>'
                    for v in vals
                )
                + f'<td data-value="{total!r}">{_e(joules(total))}</td></tr>'
            )
        parts.append(
            '<table id="energy-breakdown"><thead><tr><th></th><th>compute</th><th>page-in</th><th>page-out</th>'
            f"<th>total</th></tr></thead><tbody>{''.join(cells)}</tbody></table>"
        )
        parts.append(
            _img(
                "fig-energy",
                _energy_figure(e_rows),
                "energy breakdown",
                "J per step: compute, page-in, page-out",
            )
        )
        parts.append(
            f"<p>Counted: ticks converted to board seconds ({_e(train['tick_unit'] if train else '')}) x "
            f"{power * 1e3:.4g} mW active power; paging: the RUN's page-in/out counts and bytes x the board's latency, "
            f"throughput and {board.memory_power_w:g} W.</p>"
        )
    parts.append("</section>")

    parts.append('<section id="nodes"><h2>Predicted versus measured, per node</h2>')
    if meas_s is not None:
        clock = board.clock_hz
        sched_s = p.compute_s if (p is not None and built_with) else None
        head = ["#", "node", "op", "FLOPs", "runs", "measured cycles", "FLOP model cycles", "error"]
        if sched_s is not None:
            head += ["profile cycles", "error"]
        head += ["measured energy", "FLOP model energy", "error"]

        def err(pred: float, meas: float) -> str:
            return "-" if meas <= 0 else f"{100 * (pred - meas) / meas:+.1f}%"

        trows = []
        for i, n in enumerate(nodes):
            m = float(meas_s[i])
            row = [str(i), n["name"][:32], n["op"], f"{int(flops[i]):,}", str(int(runs[i]))]
            row += [f"{m * clock:,.0f}", f"{pred_s[i] * clock:,.0f}", err(float(pred_s[i]), m)]
            if sched_s is not None:
                row += [f"{float(sched_s[i]) * clock:,.0f}", err(float(sched_s[i]), m)]
            row += [joules(m * power), joules(float(pred_j[i])), err(float(pred_j[i]), m * power)]
            trows.append(row)
        tot_p = float((pred_s * runs).sum())
        tot_m = float((meas_s * runs).sum())
        parts.append(
            f"<p>Measured: {_e(source)}. Cycles are board cycles (board seconds x {clock / 1e6:g} MHz); energy is "
            f"time x {power * 1e3:.4g} mW. Error = (prediction - measurement) / measurement. One step, every node "
            f"as often as it runs: FLOP model {_e(seconds(tot_p))}, measured {_e(seconds(tot_m))} "
            f'(<span id="step-ratio">{tot_p / tot_m if tot_m else float("nan"):.3g}</span>x).</p>'
        )
        parts.append(_table(head, trows, "node-table"))
        parts.append(
            _img(
                "fig-nodes",
                _node_figure(pred_s * clock, meas_s * clock, [n["name"] for n in nodes], "cycles"),
                "per-node prediction versus measurement",
                "each dot a node; on the dotted line the FLOP model is exact",
            )
        )
    else:
        parts.append('<p class="note">no measurement: run poetc train (or pass --profile FILE)</p>')
    parts.append("</section>")

    parts.append('<section id="loss"><h2>Loss</h2>')
    if train is not None and train.get("loss"):
        parts.append(
            _img("fig-loss", _loss_figure(train), "loss curve", "training loss per step (and accuracy)")
        )
    else:
        parts.append('<p class="note">no training run recorded</p>')
    parts.append("</section>")

    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>poetc report: {_e(title)}</title>'
        f'<style>{STYLE}</style></head>\n<body data-build-hash="{_e(b.doc["hash"])}">\n'
        + "\n".join(parts)
        + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
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
