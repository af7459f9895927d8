"""The poetc command line. It only wires stages together; every stage lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__, boards, pipeline, progress
from .errors import PoetcError
from .fmt import joules, nbytes, seconds, table
from .graph.options import TrainingOptions, parse_optimizer
from .schedule import milp, strategies

if TYPE_CHECKING:
    from .data import Dataset
    from .emit.builddir import BuildInfo
    from .graph.ir import Model

# The frontend (onnx), the device harness and the build directory are imported when first used: together they
# take seconds to import, which ``poetc solve --graph`` and its time limit should not pay.


class _LazyModule:
    """A module of this package, imported at its first attribute access (then it is Python's cached one)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name, __package__), attr)


frontend = _LazyModule(".frontend")
data = _LazyModule(".data")
harness = _LazyModule(".device.harness")
target = _LazyModule(".device.target")
builddir = _LazyModule(".emit.builddir")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise PoetcError(f"{self.prog}: {message}")


_QUIET = False


def _say(msg: str) -> None:
    if not _QUIET:
        print(f"  {msg}", flush=True)


def _command_line() -> str:
    return "poetc " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# ---- boards -----------------------------------------------------------------------------------------------
def cmd_boards(a: argparse.Namespace) -> int:
    rows = []
    for b in boards.all_boards():
        rows.append(
            [
                b.name,
                b.core,
                nbytes(b.ram_bytes),
                nbytes(b.flash_bytes) if b.flash_bytes else "-",
                f"{b.clock_hz / 1e6:g} MHz",
                f"{b.storage} {nbytes(b.storage_bytes)}",
                b.port,
                b.description,
            ]
        )
    print(
        table(["board", "core", "RAM", "flash", "clock", "storage", "port", "description"], rows, "llrrrlll")
    )
    return 0


# ---- build ------------------------------------------------------------------------------------------------
def _solve_options(a: argparse.Namespace) -> strategies.SolveOptions:
    if a.time_limit <= 0:
        raise PoetcError(f"--time-limit must be positive, got {a.time_limit}")
    if not 0 <= a.gap < 1:
        raise PoetcError(f"--gap must be in [0, 1), got {a.gap}")
    return strategies.SolveOptions(
        solver=a.solver.upper(),
        time_limit_s=a.time_limit,
        gap=a.gap,
        formulation=a.formulation,
        remat=not a.no_remat,
        paging=not a.no_paging,
        verbose=a.verbose_solver,
    )


def _process_age() -> float:
    """Seconds since this process started (Linux: /proc; elsewhere 0)."""
    try:
        start_ticks = float(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        import os

        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def _load_model(a: argparse.Namespace) -> Model:
    from . import frontend

    if a.batch is not None and a.batch <= 0:
        raise PoetcError(f"--batch must be positive, got {a.batch}")
    model = frontend.load(a.model, batch=a.batch)
    if getattr(a, "input_u8", None) is not None:
        from .frontend.quantize import u8_input

        model = u8_input(model, a.input_u8)
    for note in model.notes:
        print(f"note: {note}", flush=True)
    _say(
        f"model {model.source}: {len(model.graph.nodes)} layers, "
        f"{sum(v.size for v in model.params.values())} parameters, "
        f"input {list(model.graph.tensor(model.input).shape)}"
    )
    return model


def _display(live: bool | None = None) -> progress.Display:
    return progress.Display(quiet=_QUIET, live=live)


def _solving(what: str, opts: strategies.SolveOptions) -> tuple[progress.Task, Callable]:
    """A task that follows a solve (elapsed against the time limit) and the ``watch`` that feeds it the
    solver's records: best extra energy so far, bound, gap."""
    # with the solver's own log on the terminal (--verbose-solver), plain lines rather than a bar among it
    task = _display(live=False if opts.verbose else None).task(
        what, total=opts.time_limit_s, unit="s", clock=True
    )

    def watch(r: strategies.Progress) -> None:
        if r.best_j is None:
            info = "no schedule yet" + (f", bound {joules(r.bound_j)}" if r.bound_j is not None else "")
        else:  # the gap first: a narrow terminal cuts the line's end
            info = f"gap {100 * r.gap:.1f}%, " if r.gap is not None else ""
            info += f"best {joules(r.best_j)} extra ({r.what})"
            if r.bound_j is not None:
                info += f", bound {joules(r.bound_j)}"
        task.update(info=info)

    return task, watch


def _figure_rows(figs: list[dict]) -> list[list[object]]:
    """One row per strategy; an infeasible one says why in full (the table wraps it)."""
    rows = []
    for f in figs:
        if not f["feasible"]:
            why = f"{f['status']}: {f['message']}" if f["message"] else f["status"]
            rows.append([f["strategy"], *["-"] * 7, f"{f['solve_s']:.2f} s", why])
            continue
        gap = "" if f["gap"] is None else f"gap {100 * f['gap']:.2f}%"
        repairs = f.get("fragmentation_repairs") or 0
        rows.append(
            [
                f["strategy"],
                joules(f["energy_j"]),
                joules(f["extra_energy_j"]),
                joules(f["compute_energy_j"]),
                joules(f["paging_energy_j"]),
                seconds(f["time_s"]),
                nbytes(f["peak_ram_bytes"]),
                nbytes(f["arena_bytes"]),
                f"{f['solve_s']:.2f} s",
                f"{f['status']} {gap}".strip()
                + (f"; {repairs} re-solve(s) for fragmentation" if repairs else ""),
            ]
        )
    return rows


_FIG_HEADERS = [
    "strategy",
    "energy",
    "extra",
    "compute",
    "paging",
    "time",
    "peak RAM",
    "arena",
    "solve",
    "status",
]
_FIG_ALIGN = "lrrrrrrrrl"


def _profile_path(text: str) -> str:
    """A profile: poetc profile's directory (its profile.json) or the file itself."""
    path = Path(text)
    return str(path / PROFILE_FILE) if path.is_dir() else text


def _profile_kw(a: argparse.Namespace, model: Model, board: boards.Board) -> dict:
    """--profile PROFILE: measured seconds per node in place of the cost model (checked against model and board)."""
    if not a.profile:
        return {}
    from .device import profile

    path = _profile_path(a.profile)
    prof = profile.for_build(path, model, board, _say)
    return {"profile": prof.node_seconds(), "profile_source": path}


def _default_out(kind: str, model: str, board: boards.Board) -> Path:
    """``kind``/MODEL-BOARD: where build, sweep and profile write when --out is not given."""
    stem = Path(model).stem if model.endswith(".onnx") else Path(model).name
    return Path(kind) / f"{stem}-{board.name}"


def _training(a: argparse.Namespace) -> TrainingOptions:
    """--train, --bn, --optimizer, --weight-decay as one record."""
    return TrainingOptions(a.train, a.bn, parse_optimizer(a.optimizer, a.weight_decay))


def _trainable_line(c: pipeline.Compiled) -> str:
    size = {p: int(c.model.params[p].size) for p in c.model.params}
    n_train, n_frozen = sum(size[p] for p in c.tg.params), sum(size[p] for p in c.tg.frozen)
    frozen_bn = sum(1 for n in c.tg.graph.nodes if n.op == "bn_frozen")
    return (
        f"training {n_train} parameters ({len(c.tg.params)} tensors), {n_frozen} frozen "
        f"({len(c.tg.frozen)} tensors); optimizer {c.training.optimizer}"
        + (f"; {frozen_bn} BatchNorm on running statistics" if frozen_bn else "")
    )


def cmd_build(a: argparse.Namespace) -> int:
    board = boards.load(a.board)
    opts = _solve_options(a)
    training = _training(a)
    out = Path(a.out) if a.out else _default_out("build", a.model, board)
    builddir.check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with builddir.locked(out, "build"):
        return _build(a, board, opts, training, out)


def _build(
    a: argparse.Namespace,
    board: boards.Board,
    opts: strategies.SolveOptions,
    training: TrainingOptions,
    out: Path,
) -> int:
    tgt = target.for_board(board)
    t0 = time.perf_counter()
    print(f"poetc build {a.model} for {board.name}", flush=True)
    model = _load_model(a)
    app = _on_device(a, model)  # checked before the solve
    task, watch = _solving("scheduling", opts)
    with task:
        c = pipeline.compile_model(
            model, board, a.ram, a.strategy, _command_line(), progress=_say, opts=opts, deadline=a.deadline,
            params=a.params, watch=watch, training=training, overlap=not a.no_overlap,
            **_profile_kw(a, model, board),
        )  # fmt: skip
    builddir.write(c, out, _command_line(), tgt, say=_say, compile_=not a.no_compile, app=app)
    from .report import page

    page.record_build(
        c, out, _profile_path(a.profile) if a.profile else None
    )  # program.json (and profile.json) for poetc report
    s = builddir.schedule_summary(c)
    print(_trainable_line(c))
    print(table(["memory", "bytes"], [[k, v] for k, v in c.memory.rows()], "lr"))
    print(table(_FIG_HEADERS, _figure_rows([s]), _FIG_ALIGN))
    wear = builddir.flash_pager_wear(c)
    if wear and wear["erases_per_step"]:
        print(
            f"with the internal-flash pager (make PAGER=flash) the most-worn flash page is erased "
            f"{wear['erases_per_step']:g} times per step: {wear['max_steps']} steps wear it out "
            f"({wear['endurance_cycles']} cycles); poetc train refuses more"
        )
    if c.repairs:
        print(
            f"fragmentation: {c.repairs} re-solve(s) to fit the arena; extra energy "
            f"{joules(s.get('repair_overhead_j', 0.0))} over the first schedule"
        )
    if app is not None:
        _on_device_lines(out, app)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s (build hash {c.hash_hex})")
    return 0


def _on_device(a: argparse.Namespace, model: Model):  # -> ondevice.OnDevice | None
    """--on-device and its options as one record (the data set loaded and checked against the model)."""
    from .emit import ondevice

    if a.on_device is None:
        for opt in ("on_device_steps", "checkpoint_every", "data", "lr"):
            if getattr(a, opt) is not None:
                raise PoetcError(
                    f"--{opt.replace('_', '-')} is an option of on-device training: add --on-device"
                )
        return None
    if a.data is None:
        raise PoetcError("--on-device needs --data FILE.npz (or digits): the data set linked into the image")
    from .frontend import zoo

    g = model.graph
    shape, classes = tuple(g.tensor(model.input).shape[1:]), int(g.tensor(model.logits).shape[-1])
    if a.data == "digits" or (a.data.startswith("digits:") and not Path(a.data).exists()):
        ds = data.digits_for(shape, classes, only=data.parse_digits(a.data))
    else:
        ds = data.load_npz(a.data, shape, classes)
    lr = a.lr if a.lr is not None else zoo.default_lr(model.source)
    return ondevice.OnDevice(
        a.on_device,
        ds,
        200 if a.on_device_steps is None else a.on_device_steps,
        lr,
        10 if a.checkpoint_every is None else a.checkpoint_every,
        a.seed or 0,
    )


def _on_device_lines(out: Path, app) -> None:
    doc = builddir.open_build(out).doc
    ck = doc["checkpoint"]
    wear = ck["wear"]
    print(
        f"on-device training ({app.kind}): {app.steps} steps at lr {app.lr:g} on {app.data.name} "
        f"({len(app.data.x)} samples in flash); a checkpoint every {app.checkpoint_every} steps, two slots of "
        f"{nbytes(ck['slot_bytes'])} at storage address {ck['addr']}"
    )
    if wear.get("erases_per_step"):
        print(
            f"with the internal-flash pager the checkpoints erase each slot page {wear['erases_per_step']:g} times "
            f"per step: {wear['max_steps']} steps wear it out; make PAGER=flash refuses a longer run"
        )


# ---- solve / sweep ----------------------------------------------------------------------------------------
def _solve_one(
    pl: pipeline.Planned, model: Model, board: boards.Board, name: str, opts: strategies.SolveOptions
) -> tuple[dict, strategies.Solution | None]:
    """What ``poetc build --strategy name`` would produce at this budget (the same pipeline: schedule, arena
    plan, fragmentation re-solves, storage), as figures; or, when it would fail, why, with the strategy's own
    answer. The smallest feasible budget is left to build (its search re-solves many times)."""
    from .emit import builddir

    task, watch = _solving(f"solving {name}", opts)
    try:
        with task:
            c = pipeline.compile_planned(pl, model, board, name, opts, _say, smallest=False, watch=watch)
    except pipeline.NoSchedule as e:
        sol = e.solution
        if sol is None or sol.ok:  # the schedule itself was found but does not fit once laid out
            sol = strategies.Solution(name, "infeasible", None, None, None, sol.solve_s if sol else 0.0)
        return strategies.figures(pl.problem, sol, pl.fixed.fixed, None) | {"message": str(e)}, None
    return builddir.schedule_summary(c), c.solution


def cmd_solve(a: argparse.Namespace) -> int:
    if a.graph is not None:
        return _solve_graph(a)
    if a.model is None:
        raise PoetcError("solve: give a MODEL (an ONNX file or a zoo name), or --graph FILE.json")
    if a.board is None:
        raise PoetcError("solve: --board is required with a MODEL")
    board = boards.load(a.board)
    opts = _solve_options(a)
    quiet = a.json
    global _QUIET
    _QUIET = quiet
    try:
        if not quiet:
            print(f"poetc solve {a.model} for {board.name}", flush=True)
        model = _load_model(a)
        pl = pipeline.plan(
            model,
            board,
            a.ram,
            a.deadline,
            _say,
            params=a.params,
            training=_training(a),
            overlap=not a.no_overlap,
            **_profile_kw(a, model, board),
        )
        if a.export_graph:
            from .schedule import graphfile

            graphfile.write(
                pl.problem,
                a.export_graph,
                source=_command_line(),
                model=a.model,
                platform=board.name,
                batch=int(model.graph.tensor(model.input).shape[0]),
                notes="budget_bytes is the arena: the board's RAM less what poetc fixes outside it "
                f"({pl.fixed.fixed} B)",
            )
            _say(f"wrote the scheduling problem to {a.export_graph}")
        names = list(strategies.NAMES) if a.compare else [a.strategy]
        figs, sols = [], []
        for name in names:
            f, sol = _solve_one(pl, model, board, name, opts)
            figs.append(f)
            sols.append(sol)
    finally:
        _QUIET = False
    if a.plot:
        from .report import plots

        d = Path(a.plot)
        d.mkdir(parents=True, exist_ok=True)
        subject = plots.Subject.of(model, board.name, pl.fixed.budget)
        for sol in sols:
            if sol is not None:
                plots.schedule_grid(pl.problem, sol, d / f"schedule-{sol.strategy}.png", subject)
                plots.ram_timeline(pl.problem, sol, d / f"ram-{sol.strategy}.png", subject)
    if a.json:
        print(json.dumps(figs if a.compare else figs[0], indent=1))
    else:
        p = pl.problem
        print(
            f"RAM budget {nbytes(pl.fixed.budget)} ({nbytes(p.budget)} for the arena after "
            f"{nbytes(pl.fixed.fixed)} fixed); floor energy {joules(p.floor_j)}"
            + (f"; deadline {seconds(p.deadline_s)}" if p.deadline_s else "")
        )
        print(table(_FIG_HEADERS, _figure_rows(figs), _FIG_ALIGN))
        if a.plot:
            print(f"plots in {a.plot}")
    return 0 if all(f["feasible"] for f in figs) or a.compare else 1


def _solve_graph(a: argparse.Namespace) -> int:
    """poetc solve --graph FILE.json: the problem as data, every strategy's schedule replayed on it."""
    from .schedule import graphfile

    for opt, what in ((a.model, "a MODEL"), (a.export_graph, "--export-graph"), (a.profile, "--profile")):
        if opt is not None:
            raise PoetcError(f"solve --graph: {what} cannot be given with --graph")
    opts = _solve_options(a)
    p = graphfile.read(a.graph, budget=a.ram)
    if a.deadline is not None:
        p = replace(p, deadline_s=pipeline.parse_deadline(a.deadline, p.floor_s))
    global _QUIET
    _QUIET = a.json
    try:
        if not a.json:
            print(f"poetc solve --graph {a.graph}: {p.T} nodes, {len(p.edges)} edges", flush=True)
        names = list(strategies.NAMES) if a.compare else [a.strategy]
        figs = []
        # the time limit is a promise on the process: the first solve gets what the start-up (imports, the
        # file) left of it
        first = replace(opts, time_limit_s=max(0.5, opts.time_limit_s - _process_age()))
        for k, name in enumerate(names):
            task, watch = _solving(f"solving {name}", opts)
            with task:
                sol = strategies.run(name, p, first if k == 0 else opts, progress=_say, watch=watch)
            # no arena plan here (no tensor layout): the arena is the replay's peak
            figs.append(strategies.figures(p, sol, 0, sol.replay.peak_bytes if sol.ok else None))
    finally:
        _QUIET = False
    if a.json:
        print(json.dumps(figs if a.compare else figs[0], indent=1))
    else:
        print(
            f"arena budget {nbytes(p.budget)}; floor energy {joules(p.floor_j)}"
            + (f"; deadline {seconds(p.deadline_s)}" if p.deadline_s else "")
        )
        print(table(_FIG_HEADERS, _figure_rows(figs), _FIG_ALIGN))
    return 0 if all(f["feasible"] for f in figs) or a.compare else 1


def cmd_sweep(a: argparse.Namespace) -> int:
    from .report import plots
    from .schedule import sweep

    board = boards.load(a.board)
    opts = _solve_options(a)
    if a.points < 2:
        raise PoetcError(f"--points must be at least 2, got {a.points}")
    if a.jobs < 0:
        raise PoetcError(f"--jobs must be >= 0, got {a.jobs}")
    names = a.strategies or list(strategies.NAMES)
    out = Path(a.out) if a.out else _default_out("sweep", a.model, board)
    print(f"poetc sweep {a.model} for {board.name}", flush=True)
    model = _load_model(a)
    pl = pipeline.plan(
        model, board, a.ram, a.deadline, _say, training=_training(a), params=a.params,
        overlap=not a.no_overlap, **_profile_kw(a, model, board),
    )  # fmt: skip
    with _display().task("sweep", total=None, unit="solves") as task:
        res = sweep.run(
            pl.problem, pl.fixed.fixed, pl.fixed.budget, names, opts, a.points, jobs=a.jobs, say=_say,
            on_solve=lambda done, total: task.update(done=done, total=total),
        )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    png = plots.energy_vs_budget(res, out / "energy-vs-ram.png", plots.Subject.of(model, board.name))
    (out / "sweep.json").write_text(json.dumps(res.rows, indent=1) + "\n")
    print(sweep.table_text(res))
    print(f"wrote {png} and {out / 'sweep.json'}")
    bad = sweep.poet_not_best(res)
    if bad:
        print("POET is above a baseline at: " + "; ".join(bad))
    return 0


# ---- train ------------------------------------------------------------------------------------------------
def _dataset(b: BuildInfo, path: str | None) -> Dataset:
    from . import data

    shape = b.input_shape[1:]
    if path and (path == "digits" or path.startswith("digits:")) and not Path(path).exists():
        return data.digits_for(shape, b.classes, only=data.parse_digits(path))
    if path:
        return data.load_npz(path, shape, b.classes)
    return data.digits_for(shape, b.classes)


def _check_batch(b: BuildInfo, batch: int | None) -> None:
    if batch is not None and batch != b.batch:
        raise PoetcError(
            f"--batch {batch}: {b.dir} was built for batch {b.batch}; "
            f"rebuild with poetc build ... --batch {batch}"
        )


def _lr(a: argparse.Namespace, b: BuildInfo) -> float:
    """--lr, or the model's default (zoo.default_lr: measured per zoo model)."""
    from .frontend import zoo

    lr = a.lr if a.lr is not None else zoo.default_lr(b.doc["model"]["source"])
    if not (lr > 0 and math.isfinite(lr)):
        raise PoetcError(f"--lr must be positive and finite, got {lr}")
    return lr


def _check_writable(path: Path, what: str) -> None:
    """An output file's folder exists and takes a new file (checked before the work that produces it)."""
    import os

    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise PoetcError(f"{what} {path}: is a directory")
    if not folder.is_dir():
        raise PoetcError(f"{what} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PoetcError(f"{what} {path}: folder {folder} is not writable")


def _run_stopped(
    e: harness.RunStopped, runw: _RunWriter, b: builddir.BuildInfo, start: harness.StartPoint | None
) -> int:
    """A run that ended early: its last checkpoint saved as an interrupted or failed run, then one line."""
    log = e.log
    saved = log.saved
    interrupted = isinstance(e.cause, KeyboardInterrupt)
    status = "interrupted" if interrupted else "failed"
    what = (
        ("stopped by SIGTERM" if isinstance(e.cause, Terminated) else "interrupted")
        if interrupted
        else str(e)
    )
    if saved is not None and (start is None or saved.steps > start.saved.steps or runw.dir is not None):
        runw.write(saved, log, status, what)
        kept = (
            f"; the weights of step {saved.steps} are saved in {runw.where()}: "
            f"poetc train {b.dir} --resume continues"
        )
    elif saved is not None:
        kept = f"; no step beyond {start.source if start else 'the start'} to save"
    elif log.steps:  # recorded (train.json alone), so that export does not quietly take an older run
        runw.record(log, status, what)
        kept = f"; {len(log.steps)} steps ran but no checkpoint was taken yet (--save-every): no weights kept"
    else:
        kept = ""
    print(f"poetc: error: {what}{kept}", file=sys.stderr)
    if isinstance(e.cause, Terminated):
        return 143
    return e.exit_code


def _train_summary(
    a: argparse.Namespace,
    b: builddir.BuildInfo,
    tgt: target.Target,
    tm: harness.Timing,
    log: harness.TrainLog,
) -> None:
    if log.loss:
        first, last = log.loss[0], float(np.mean(log.loss[-max(1, len(log.loss) // 10) :]))
        mean_ms = log.mean_step_s * 1e3  # on the board's clock (QEMU: instructions x CPI / clock)
        line = f"loss {first:.4f} -> {last:.4f} (mean of the last steps)"
        if log.evals:
            line += f"; accuracy {log.evals[0][1]:.3f} -> {log.evals[-1][1]:.3f}"
        print(line)
        print(
            (
                f"{mean_ms:.3f} ms per step on the target ({tm.label}"
                + (", emulated" if tm.emulated else "")
                + "); "
                if tm.board_time
                else f"{mean_ms:.3f} ms per step of emulation on this machine (emulated, not the board's time); "
            )
            + f"{log.wall_s:.1f} s wall time; "
            f"paging per step: {log.paging[2]} page-ins ({nbytes(log.paging[0])}), "
            f"{log.paging[3]} page-outs ({nbytes(log.paging[1])})"
        )
        print(harness.energy_report(b, tgt, log))
        if log.metered is not None:
            print(harness.metered_report(b, tgt, log))
        if a.profile_nodes:
            print(harness.node_profile(b, tgt, log))
    if log.link_retried or log.link_stale or log.link_resent:
        print(
            f"link: {log.link_retried} requests sent again after a corrupted frame, "
            f"{log.link_resent} after the target fell silent, {log.link_stale} late replies dropped"
        )


class _StopOnSignal:
    """While training: the first Ctrl-C (SIGINT) or SIGTERM asks the loop to stop at the next step boundary, with
    the weights read back and saved; a second one interrupts at once (the last checkpoint is then saved)."""

    def __init__(self) -> None:
        self.why: str | None = None
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        import signal

        if self.why is not None:  # the second one: stop now
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()
        self.signum = signum
        self.why = "interrupted (Ctrl-C)" if signum == signal.SIGINT else "stopped by SIGTERM"
        print(
            f"\npoetc: {self.why}: stopping after this step and saving the weights",
            file=sys.stderr,
            flush=True,
        )

    def __call__(self) -> str | None:
        return self.why

    def __exit__(self, *exc: object) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)


class _RunWriter:
    """A training run's directory (runs/<n>/), made at its first checkpoint; every file written atomically."""

    def __init__(self, b: builddir.BuildInfo, tgt: target.Target, a: argparse.Namespace, extra: dict) -> None:
        self.b, self.tgt, self.a, self.extra = b, tgt, a, extra
        self.run: int | None = None
        self.dir: Path | None = None

    def write(
        self, saved: harness.Saved, log: harness.TrainLog, status: str, error: str | None = None
    ) -> None:
        if self.dir is None:
            self.run, self.dir = self.b.new_run()
        harness.write_npz(self.dir / builddir.TRAINED, saved.weights)
        if saved.opt:
            harness.write_npz(self.dir / builddir.OPTIMIZER, saved.opt)
        rec = harness.train_record(self.b, self.tgt, log, self.a.lr, self.a.seed)
        rec.update(self.extra)
        rec.update({"status": status, "steps": saved.steps, "steps_planned": self.a.steps,
                    "steps_this_run": len(log.steps), "error": error})  # fmt: skip
        harness.write_train_record(self.dir, rec)

    def record(self, log: harness.TrainLog, status: str, error: str) -> None:
        """A run that kept no weights: its train.json alone (export then refuses to take an older run quietly)."""
        if self.dir is None:
            self.run, self.dir = self.b.new_run()
        rec = harness.train_record(self.b, self.tgt, log, self.a.lr, self.a.seed)
        rec.update(self.extra)
        rec.update({"status": status, "steps": 0, "steps_planned": self.a.steps,
                    "steps_this_run": len(log.steps), "error": error})  # fmt: skip
        harness.write_train_record(self.dir, rec)

    def where(self) -> str:
        return f"run {self.run} ({self.dir})"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every cleanup (finally, with) runs; exit code 143."""


def _resume_point(b: builddir.BuildInfo, a: argparse.Namespace) -> harness.StartPoint | None:
    if a.resume is None:
        return None
    have = b.runs()
    if not have:
        raise PoetcError(f"--resume: {b.dir} has no saved run to continue (poetc train {b.dir} first)")
    run = have[-1] if a.resume == "latest" else int(a.resume)
    if run not in have:
        raise PoetcError(f"--resume {run}: {b.dir} has no run {run} (runs: {', '.join(map(str, have))})")
    return harness.StartPoint.from_run(b, run)


def cmd_train(a: argparse.Namespace) -> int:
    b = builddir.open_build(Path(a.dir))
    with builddir.locked(b.dir, "train"):
        return _train(a, b)


def _train(a: argparse.Namespace, b: builddir.BuildInfo) -> int:
    _check_batch(b, a.batch)
    start = _resume_point(b, a)
    rec = b.run_record(start.run) if start is not None and start.run is not None else {}
    if a.steps is None:
        a.steps = int(rec.get("steps_planned") or 200) if start is not None else 200
    if a.steps < 0:
        raise PoetcError(f"--steps must be >= 0, got {a.steps}")
    if a.save_every < 0:
        raise PoetcError(f"--save-every must be >= 0, got {a.save_every}")
    if start is not None:  # the same run continued: its learning rate, seed and data unless told otherwise
        if a.lr is None and isinstance(rec.get("lr"), int | float):
            a.lr = float(rec["lr"])
        if a.seed is None and isinstance(rec.get("seed"), int):
            a.seed = rec["seed"]
        if a.data is None and isinstance(rec.get("data"), str):
            a.data = rec["data"]
        if start.saved.steps >= a.steps:
            raise PoetcError(
                f"--resume: {start.source} already did {start.saved.steps} steps; give --steps more than that"
            )
    if a.seed is None:
        a.seed = 0
    board = b.board()
    tgt = target.for_board(board, port=a.port)
    a.lr = _lr(a, b)
    ds = _dataset(b, a.data)
    dump = Path(a.dump) if a.dump else None
    if dump is not None:  # checked before training, which a late failure would throw away
        if dump.suffix != ".npz":
            raise PoetcError(f"--dump {dump}: the dump file must end in .npz")
        _check_writable(dump, "--dump")
    todo = a.steps - (start.saved.steps if start else 0)
    eval_every = a.eval_every if a.eval_every is not None else max(1, todo // 10)
    print(
        f"poetc train {b.dir} on {board.name}: {a.steps} steps, batch {b.batch}, lr {a.lr}, data {ds.name} "
        f"({len(ds.x)} train" + (f", {len(ds.x_test)} held out)" if ds.x_test is not None else ")"),
        flush=True,
    )
    if start is not None:
        print(f"resuming from {start.source}: {todo} steps to go", flush=True)
    tm = harness.timing(tgt)
    header = ["step", "loss", "held-out acc" if ds.x_test is not None else "train acc", f"{tm.label} ms/step"]
    print(table(header, []), flush=True)
    widths = [len(h) for h in header]

    def on_step(s: int, loss: float, acc: float | None, out: harness.StepOut) -> None:
        bar.update(done=s - (a.steps - todo))
        if acc is None and s % max(1, todo // 20) and s != a.steps:
            return
        ms = out.seconds * 1e3
        cells = [str(s), f"{loss:.4f}", f"{acc:.3f}" if acc is not None else "", f"{ms:.3f}"]
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)), flush=True)

    meter = None
    if a.meter:
        from .device import meter as meter_mod

        meter = meter_mod.parse(a.meter)
        print(f"metering with the {meter.name}", flush=True)
    extra = {"data": a.data or "digits"}
    if start is not None:
        extra["resumed_from"] = start.source
    runw = _RunWriter(b, tgt, a, extra)

    def on_save(saved: harness.Saved, log: harness.TrainLog) -> None:  # on disk at once: kill -9 keeps it too
        runw.write(saved, log, "interrupted", "the run did not finish (a checkpoint)")

    try:
        with (
            _StopOnSignal() as stop,
            _display().task("training", total=todo, unit="steps", plain=False) as bar,
        ):
            log, _final = harness.train(
                b, tgt, ds, a.steps, a.lr, a.seed, eval_every, dump, on_step, meter=meter, start=start,
                stop=stop, save_every=a.save_every, on_save=on_save,
            )  # fmt: skip
    except harness.RunStopped as e:
        return _run_stopped(e, runw, b, start)
    assert log.saved is not None
    if log.stopped:
        runw.write(log.saved, log, "interrupted", log.stopped)
        print(
            f"poetc: {log.stopped} after {log.saved.steps} of {a.steps} steps: weights saved in {runw.where()}; "
            f"poetc train {b.dir} --resume continues",
            file=sys.stderr,
        )
        return 143 if "SIGTERM" in log.stopped else 130
    runw.write(log.saved, log, "complete")  # the weights first: a failing dump must not lose them
    run, run_dir = runw.run, runw.dir
    assert run_dir is not None
    if dump is not None and log.dump is not None:
        harness.write_npz(dump, log.dump)
    _train_summary(a, b, tgt, tm, log)
    print(f"run {run}: trained weights in {run_dir / builddir.TRAINED}" + (f"; dump: {dump}" if dump else ""))
    return 0


# ---- profile / report -------------------------------------------------------------------------------------
def cmd_profile(a: argparse.Namespace) -> int:
    from .device import profile

    board = boards.load(a.board)
    if a.time_limit <= 0:
        raise PoetcError(f"--time-limit must be positive, got {a.time_limit}")
    out = Path(a.out) if a.out else _default_out("profile", a.model, board)
    if out.exists() and not out.is_dir():
        raise PoetcError(f"--out {out}: exists and is not a directory")
    print(f"poetc profile {a.model} on {board.name}", flush=True)
    model = _load_model(a)
    prof = profile.measure(
        model,
        board,
        steps=a.steps,
        strategy=a.strategy,
        opts=strategies.SolveOptions(time_limit_s=a.time_limit),
        say=_say,
        keep=out / "build" if a.keep_build else None,
        command=_command_line(),
        port=a.port,
        training=_training(a),
    )
    out.mkdir(parents=True, exist_ok=True)
    profile.save(prof, out / PROFILE_FILE)
    print(profile.table_text(prof))
    print(
        f"wrote {out / PROFILE_FILE}"
        + (f" and the profiling build {out / 'build'}" if a.keep_build else "")
        + f"; use it with poetc build/solve/sweep ... --profile {out}"
    )
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from .emit import builddir
    from .report import page

    b = builddir.open_build(Path(a.dir))
    out = Path(a.html) if a.html else b.dir / "report.html"
    with builddir.locked(b.dir, "report"):
        path, notes = page.write(
            b, out, profile_path=_profile_path(a.profile) if a.profile else None, run=a.run
        )
    if b.runs():
        print(f"training {b.run_summary(a.run)}")
    for n in notes:
        print(f"note: {n}")
    print(f"wrote {path}")
    return 0


# ---- flash ------------------------------------------------------------------------------------------------
def cmd_flash(a: argparse.Namespace) -> int:
    import os
    import subprocess

    from .device import target
    from .emit import builddir

    b = builddir.open_build(Path(a.dir))
    board = b.board()
    cmd = target.flash(board, b.dir, port=a.port, env=a.env)
    print(f"poetc flash {b.dir} to {board.name}: {' '.join(cmd)}", flush=True)
    with builddir.locked(b.dir, "flash"):
        rc = subprocess.run(cmd, env={**os.environ, **target.PIO_ENV}).returncode
    if rc != 0:
        raise PoetcError(f"pio run -t upload failed (exit {rc}); its output is above")
    return 0


# ---- verify -----------------------------------------------------------------------------------------------
def cmd_verify(a: argparse.Namespace) -> int:
    from .device import harness, target
    from .emit import builddir

    b = builddir.open_build(Path(a.dir))
    tgt = target.for_board(b.board(), port=a.port)
    ds = _dataset(b, a.data)
    with builddir.locked(b.dir, "verify"):
        r = harness.verify(b, tgt, ds, _lr(a, b), a.seed, say=_say)
    rows = [[p, f"{r.errors[p]:.2e}", f"{r.update_errors[p]:.2e}"] for p in r.errors]
    print(table(["parameter", "grad rel. error", "update rel. error"], rows, "lrr"))
    worst_name, worst = r.worst
    loss_err = abs(r.loss_device - r.loss_ref) / max(abs(r.loss_ref), 1e-30)
    print(f"loss: target {r.loss_device:.6f}, reference {r.loss_ref:.6f} (rel. error {loss_err:.2e})")
    n_frozen = len(b.doc.get("training", {}).get("frozen", []))
    if n_frozen:
        print(
            f"frozen parameters: {n_frozen - len(r.frozen_changed)} of {n_frozen} unchanged"
            + (f"; changed: {', '.join(r.frozen_changed)}" if r.frozen_changed else "")
        )
    ok = worst <= a.tol and loss_err <= a.tol and not r.frozen_changed
    print(
        f"worst relative gradient error {worst:.2e} ({worst_name}); tolerance {a.tol:g}: "
        + ("PASS" if ok else "FAIL")
    )
    return 0 if ok else 1


# ---- export -----------------------------------------------------------------------------------------------
def cmd_export(a: argparse.Namespace) -> int:
    b = builddir.open_build(Path(a.dir))
    with builddir.locked(b.dir, "export"):
        return _export(a, b)


def _export(a: argparse.Namespace, b: builddir.BuildInfo) -> int:
    if a.onnx is None and a.arduino is None:
        raise PoetcError(
            "export needs --onnx FILE.onnx (trained weights) or --arduino DIR (a library), or both"
        )
    if a.arduino is not None:
        _export_arduino(b, Path(a.arduino))
        if a.onnx is None:
            return 0
    a.run = b.exportable_run(a.run)
    trained = b.load_trained(a.run)
    model = frontend.load(b.dir / "model.onnx", batch=b.batch)
    out = Path(a.onnx)
    if out.suffix != ".onnx":
        raise PoetcError(f"--onnx {out}: the output must end in .onnx")
    _check_writable(out, "--onnx")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        frontend.export_onnx(model, trained, tmp)
        tmp.replace(out)
    except OSError as e:
        raise PoetcError(f"--onnx {out}: cannot write: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    n_state = sum(1 for k in trained if k in b.doc.get("state", []))
    what = f"{len(trained) - n_state} trained parameters" + (
        f" and {n_state} BatchNorm running statistics (BatchNormalization set to inference)"
        if n_state
        else ""
    )
    print(f"wrote {out}: {what} of {b.run_summary(a.run)} written back into {b.doc['model']['source']}")
    return 0


def _export_arduino(b: builddir.BuildInfo, out: Path) -> None:
    from .emit import arduino

    files = arduino.export(b, out)
    print(
        f"wrote {out}: Arduino library {arduino.library_name(b)} ({len(files)} files: the runtime, the model of "
        f"build {b.doc['hash']}, its data set, examples/Train/Train.ino)"
    )


# ---- fleet ------------------------------------------------------------------------------------------------
def _record_build(c: pipeline.Compiled, out: Path) -> None:
    from .report import page

    page.record_build(c, out, None)  # program.json for poetc report, as poetc build writes it


def cmd_fleet(a: argparse.Namespace) -> int:
    """A local fleet in Flower's simulation (MODEL), or one board joining a real SuperLink (--connect)."""
    from . import fleet
    from .emit import builddir

    fleet.require_flower()
    from .fleet import local, partition

    if not a.model:
        raise PoetcError("fleet: give a MODEL (an ONNX file or a zoo name), or --connect ADDR")
    build_dir = Path(a.model) if (Path(a.model) / builddir.MANIFEST).is_file() else None
    if not a.board and build_dir is None:
        raise PoetcError("fleet: --board B[,B2...] is required (client k gets the k-th board, cycling)")
    spec = local.FleetSpec(
        model=a.model, clients=a.clients, rounds=a.rounds, boards=tuple((a.board or "").split(",")), out=Path(a.out),
        rams=tuple(pipeline.parse_bytes(r) for r in a.ram.split(",")) if a.ram else (None,), batch=a.batch,
        input_u8=a.input_u8, data=a.data, partition=partition.parse(a.partition), local_steps=a.local_steps,
        lr=a.lr, strategy=a.aggregation, seed=a.seed, training=_training(a), schedule=a.strategy,
        time_limit_s=a.time_limit, command=_command_line(), verbose=a.verbose, on_build=_record_build,
    )  # fmt: skip
    spec.check()
    if a.connect:
        from .fleet import supernode

        conn = supernode.ConnectSpec(a.connect, spec, build_dir, a.shard, a.port)
        return supernode.run(conn, _say, verbose=a.verbose)
    if build_dir is not None:
        raise PoetcError(f"fleet: {a.model} is a build directory; a local fleet builds MODEL for each board")
    print(
        f"poetc fleet {a.model}: {a.clients} clients on {a.board}, {a.rounds} rounds of {a.local_steps} local "
        f"step(s), {a.aggregation}, partition {spec.partition}",
        flush=True,
    )
    header_done = []

    def on_round(r) -> None:
        if not header_done:
            print(local.round_header(), flush=True)
            header_done.append(1)
        print(local.round_line(r), flush=True)

    res = local.run(spec, _say, on_round)
    last = res.rounds[-1]
    print(
        f"held-out accuracy {res.rounds[0].accuracy:.3f} -> {last.accuracy:.3f} after {last.round} rounds; "
        f"weights in {spec.out / builddir.TRAINED} and a new run of each build ({', '.join(sorted({str(b.dir) for b in res.builds}))})"
    )
    return 0


# ---- demo -------------------------------------------------------------------------------------------------
PROFILE_FILE = "profile.json"  # in poetc profile's --out directory

DEMO_MODEL = "digits-deep-mlp"
# On the emulated Cortex-M4 (256 KB like the nRF52840): 200 KB of RAM leaves 72 KB for 120 KB of activations,
# and a step may take 1.2x the time of computing every node once, so the schedule must both recompute (cheap
# in energy, slow on this core) and page (fast, but expensive in energy).
DEMO_QEMU_ARGS = ["--ram", "200K", "--deadline", "1.2x"]


def demo_board() -> tuple[str, list[str], str]:
    """(board, build options, why): the emulated Cortex-M4 when its toolchain is here, else the host."""
    import shutil

    if "qemu-m4" in boards.names() and shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc"):
        return "qemu-m4", DEMO_QEMU_ARGS, "the emulated Cortex-M4F (QEMU mps2-an386), 200 KB of RAM"
    return "host", [], "the host (no arm-none-eabi-gcc / qemu-system-arm found)"


def cmd_demo(a: argparse.Namespace) -> int:
    board, extra, why = demo_board()
    out = Path(a.out)
    print(f"poetc demo: train {DEMO_MODEL} on the bundled digits on {why}\n", flush=True)
    rc = main(["build", DEMO_MODEL, "--board", board, "--out", str(out), *extra])
    if rc:
        return rc
    print(flush=True)
    rc = main(["train", str(out), "--steps", str(a.steps)])
    if rc:
        return rc
    print(flush=True)
    return main(["verify", str(out)])


class _Formatter(argparse.HelpFormatter):
    """Every option's help ends with its default; options whose default is worked out later (from the board,
    the model, the build) say what it is in their own words ("default: the board's RAM")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.required
            or not action.option_strings
            or any(action.default is x for x in (None, False, argparse.SUPPRESS))  # (0 is a default to show)
            or "default" in text
        ):
            return text
        return text + " (default: %(default)s)"


# ---- option types: checked while the command line is parsed, before any model loads --------------------------
def _board_arg(text: str) -> str:
    if text.endswith(".toml"):
        if not Path(text).is_file():
            raise argparse.ArgumentTypeError(f"no board file {text}")
        return text
    if text not in boards.names():
        raise argparse.ArgumentTypeError(
            f"unknown board {text!r} (known: {', '.join(boards.names())}; or a board .toml file)"
        )
    return text


def _boards_arg(text: str) -> str:
    """B[,B2...] (poetc fleet): every name checked like --board."""
    for name in text.split(","):
        _board_arg(name.strip())
    return text


def _strategy_arg(text: str) -> str:
    if text not in strategies.NAMES:
        raise argparse.ArgumentTypeError(f"unknown strategy {text!r} (known: {', '.join(strategies.NAMES)})")
    return text


def _strategies_arg(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no strategy named")
    return [_strategy_arg(n) for n in names]


def _bytes_arg(text: str) -> int:
    try:
        return pipeline.parse_bytes(text)
    except PoetcError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _deadline_arg(text: str) -> str:
    try:
        pipeline.parse_deadline(text, 1.0)
    except PoetcError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _choices(names: list[str] | tuple[str, ...]) -> str:
    return "{" + ",".join(names) + "}"


def _add(s: argparse.ArgumentParser, name: str, kind: str, **kw) -> argparse.ArgumentParser:
    """The subcommand ``name``: ``kind`` is its one-line summary in ``poetc --help``."""
    return s.add_parser(
        name, help=kind, description=kind[0].upper() + kind[1:] + ".", formatter_class=_Formatter, **kw
    )


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="poetc",
        description="Compile neural-network training to microcontrollers.",
        formatter_class=_Formatter,
    )
    p.add_argument("--version", action="version", version=f"poetc {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser, metavar="COMMAND")

    s = _add(sub, "boards", "list the board files: RAM, flash, clock, storage, port")
    s.set_defaults(func=cmd_boards)

    s = _add(sub, "build", "compile a model's training step for a board into a build directory")
    _model_args(s)
    s.add_argument(
        "--out",
        metavar="DIR",
        help="build directory: new, empty, or an earlier poetc build (default: build/MODEL-BOARD, e.g. "
        "build/digits-mlp-qemu-m4)",
    )
    _schedule_args(s)
    s.add_argument("--no-compile", action="store_true", help="generate the sources only, do not compile them")
    _training_args(s)
    _on_device_args(s)
    s.set_defaults(func=cmd_build)

    s = _add(sub, "solve", "schedule a model under a RAM budget and print the figures build would produce")
    _model_args(s, optional=True)
    s.add_argument(
        "--graph",
        metavar="FILE.json",
        help="solve a scheduling problem given as data (docs/graph-format.md) instead of a MODEL; --ram "
        "(the arena budget) and --deadline override the file's (default: none, solve MODEL)",
    )
    s.add_argument(
        "--export-graph",
        metavar="FILE.json",
        help="also write MODEL's scheduling problem as data (docs/graph-format.md) for other schedulers "
        "(default: none)",
    )
    _schedule_args(s)
    s.add_argument(
        "--compare",
        action="store_true",
        help="one row per strategy, each what build --strategy of that row would produce (or why not)",
    )
    s.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    s.add_argument(
        "--plot", metavar="DIR", help="also write schedule and RAM plots (PNG) to DIR (default: no plots)"
    )
    _training_args(s)
    s.set_defaults(func=cmd_solve)

    s = _add(sub, "sweep", "energy versus RAM budget for POET and every baseline (table and plot)")
    _model_args(s)
    _schedule_args(s, sweep=True)
    s.add_argument(
        "--points",
        type=int,
        default=6,
        help="RAM budgets, from the smallest feasible one to the store-all peak",
    )
    s.add_argument("--jobs", type=int, default=0, help="parallel solves; 0: one per core")
    s.add_argument(
        "--out",
        metavar="DIR",
        help="directory for energy-vs-ram.png and sweep.json (default: sweep/MODEL-BOARD)",
    )
    _training_args(s)
    s.set_defaults(func=cmd_sweep)

    s = _add(sub, "train", "train a built model on its target and report loss, accuracy, time and energy")
    _dir_arg(s)
    s.add_argument(
        "--steps",
        type=int,
        help="training steps, counted from the image's initial weights (default: 200; with --resume, the "
        "resumed run's)",
    )
    s.add_argument("--lr", type=float, help=_LR_HELP + "; with --resume, the resumed run's")
    _data_arg(s)
    s.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="RUN",
        type=_resume_arg,
        help="continue a run that stopped (Ctrl-C, SIGTERM, a target error) from its saved weights, step count, "
        "momentum buffers and data position, as a new run (default RUN: the latest run)",
    )
    s.add_argument(
        "--save-every",
        type=int,
        default=0,
        metavar="N",
        help="read the weights back and save them every N steps; 0: every 10 s of training",
    )
    s.add_argument(
        "--dump",
        metavar="FILE.npz",
        help="write x, y, loss, lr, param/, grad/ and final/ arrays of the run to this .npz (default: none)",
    )
    s.add_argument(
        "--batch", type=int, help="check that the build has this batch size (default: the build's batch)"
    )
    _seed_arg(s, default=None, extra="; with --resume, the resumed run's; otherwise 0")
    s.add_argument(
        "--eval-every",
        type=int,
        metavar="N",
        help="steps between accuracy checks on the held-out data; 0: never (default: steps / 10)",
    )
    s.add_argument(
        "--profile-nodes",
        action="store_true",
        help="print the last step's ticks per node (instructions in QEMU) beside its FLOPs",
    )
    s.add_argument(
        "--meter",
        metavar="ppk2:PORT[,mv=3300][,mode=source|ampere][,bit=0]",
        help="meter every step's energy with a Nordic PPK2 on PORT (default: no meter; docs/architecture.md)",
    )
    _port_arg(s)
    s.set_defaults(func=cmd_train)

    s = _add(sub, "verify", "run one training step on the target and check it against the host reference")
    _dir_arg(s)
    _data_arg(s)
    s.add_argument("--lr", type=float, help=_LR_HELP)
    _seed_arg(s)
    s.add_argument(
        "--tol",
        type=float,
        default=1e-4,
        help="largest relative error of the gradients and the loss that passes",
    )
    _port_arg(s)
    s.set_defaults(func=cmd_verify)

    s = _add(sub, "profile", "time every node of a training step on the board and write a profile")
    _model_args(s)
    s.add_argument(
        "--out",
        metavar="DIR",
        help="directory for profile.json (pass DIR to build/solve/sweep --profile) (default: "
        "profile/MODEL-BOARD)",
    )
    s.add_argument(
        "--steps",
        type=int,
        help="training steps timed (default: 2 in QEMU, whose counts are exact; 7 elsewhere)",
    )
    s.add_argument(
        "--strategy",
        type=_strategy_arg,
        metavar=_choices(strategies.NAMES),
        help="the profiling build's schedule (default: the cheapest heuristic that fits, else poet)",
    )
    s.add_argument(
        "--time-limit", type=float, default=60.0, help="seconds for the profiling build's poet solve"
    )
    s.add_argument(
        "--keep-build", action="store_true", help="keep the profiling build in DIR/build (default: deleted)"
    )
    _port_arg(s, flashed=True)
    _training_args(s)
    s.set_defaults(func=cmd_profile)

    s = _add(
        sub,
        "fleet",
        "many boards train one model through Flower (federated learning): a local fleet of emulated boards, "
        "or --connect one board to a Flower SuperLink (docs/fleet.md)",
    )
    s.add_argument(
        "model", nargs="?", help="an ONNX file or a zoo name; with --connect also a build directory"
    )
    s.add_argument(
        "--board",
        type=_boards_arg,
        metavar="B[,B2...]",
        help="client k runs on the k-th board, cycling (a fleet may mix boards); required for a local fleet "
        "(default: none)",
    )
    s.add_argument("--clients", type=int, default=4, help="boards in a local fleet")
    s.add_argument("--rounds", type=int, default=3, help="federated rounds")
    s.add_argument("--local-steps", type=int, default=1, help="training steps on each board per round")
    s.add_argument(
        "--data",
        help="as for train; the training samples are split among the clients (default: the bundled digits)",
    )
    s.add_argument(
        "--partition", default="iid", help="iid (equal random shards) or dirichlet:ALPHA (label skew)"
    )
    s.add_argument(
        "--aggregation",
        default="fedavg",
        metavar="fedavg|fedavgm[:M[:LR]]",
        help="how the server combines the boards' weights: FedAvg, or FedAvg with server momentum M and rate LR",
    )
    s.add_argument("--lr", type=float, help=_LR_HELP)
    s.add_argument("--ram", help="RAM budget per board of --board (R[,R2...]; default: each board's RAM)")
    s.add_argument("--batch", type=int, help="batch size of every board (default: the model's)")
    s.add_argument(
        "--input-u8",
        type=float,
        metavar="SCALE",
        help="byte inputs on every board, as for build (default: floats)",
    )
    s.add_argument(
        "--strategy",
        type=_strategy_arg,
        default="poet",
        metavar=_choices(strategies.NAMES),
        help="each board's scheduling strategy",
    )
    s.add_argument("--time-limit", type=float, default=20.0, help="seconds per MILP solve")
    s.add_argument("--seed", type=int, default=0, help="partition and batch order")
    s.add_argument("--out", metavar="DIR", default="poetc-fleet", help="builds, fleet.json and trained.npz")
    s.add_argument(
        "--connect",
        metavar="ADDR",
        help="join the Flower SuperLink at ADDR (host:port) as a SuperNode (default: a local fleet)",
    )
    s.add_argument(
        "--shard",
        type=int,
        metavar="K",
        help="with --connect: train on shard K of --clients (--partition) (default: all the data)",
    )
    s.add_argument(
        "--port",
        help="with --connect: a real board's serial device (default: found by USB id, or $POETC_SERIAL)",
    )
    s.add_argument("--verbose", action="store_true", help="show Flower's own log")
    _training_args(s)
    s.set_defaults(func=cmd_fleet)

    s = _add(sub, "report", "write an HTML report of a build: schedule, RAM, energy, profile, loss")
    _dir_arg(s)
    s.add_argument("--html", metavar="FILE", help="the HTML file to write (default: DIR/report.html)")
    s.add_argument(
        "--profile",
        metavar="PROFILE",
        help="a profile (poetc profile's directory or its profile.json) to compare per node "
        "(default: the build's profile, else the training run's node ticks)",
    )
    s.add_argument("--run", type=int, help="the training run to show (default: the latest; DIR/runs/<n>)")
    s.set_defaults(func=cmd_report)

    s = _add(
        sub,
        "flash",
        "build and upload the firmware with PlatformIO (a real board; or a QEMU board through poetc's local "
        "platform, offline: boot the image in QEMU and install it for train/verify)",
    )
    _dir_arg(s)
    s.add_argument(
        "--port",
        metavar="DEVICE",
        help="the device to upload through (default: found by USB id, or $POETC_SERIAL; the MKR1000 uploads "
        "through its native USB port, not the adapter it talks on: docs/boards.md)",
    )
    s.add_argument(
        "--env",
        help="PlatformIO environment (default: the board's own; e.g. nrf52840_flash for the flash pager)",
    )
    s.set_defaults(func=cmd_flash)

    s = _add(
        sub, "export", "write a build's trained weights into its ONNX model, or an Arduino library of it"
    )
    _dir_arg(s)
    s.add_argument(
        "--onnx",
        metavar="FILE.onnx",
        help="the ONNX file to write (default: none; --onnx or --arduino or both)",
    )
    s.add_argument(
        "--arduino",
        metavar="DIR",
        help="write an Arduino library of an --on-device build (runtime, model, data, examples/Train) "
        "(default: none)",
    )
    s.add_argument("--run", type=int, help="the training run to export (default: the latest; DIR/runs/<n>)")
    s.set_defaults(func=cmd_export)

    s = _add(sub, "demo", "build, train and verify a digits MLP on the emulated Cortex-M4 (or the host)")
    s.add_argument("--out", metavar="DIR", default="poetc-demo", help="build directory of the demo")
    s.add_argument("--steps", type=int, default=200, help="training steps")
    s.set_defaults(func=cmd_demo)
    return p


_PORT_HELP = "a real board's serial device (default: found by USB id, or POETC_SERIAL; docs/boards.md)"


def _lr_help() -> str:
    from .frontend import zoo

    rates = ", ".join(f"{n} {e.lr:g}" for n, e in zoo.ZOO.items())
    return f"SGD learning rate (default: the model's: {rates}; ONNX files {zoo.ONNX_LR:g})"


class _LateHelp(str):
    """A help text made only when argparse shows it (``_expand_help`` formats it with ``%``): the zoo's names and
    learning rates need the frontend, whose import (onnx) takes seconds that ``solve --graph`` should not pay."""

    def __new__(cls, make: Callable[[], str]) -> _LateHelp:
        s = super().__new__(cls, "(made when shown)")
        s.make = make  # type: ignore[attr-defined]
        return s

    def __mod__(self, params: object) -> str:
        return self.make() % params  # type: ignore[attr-defined]

    def __add__(self, more: str) -> _LateHelp:  # still made when shown
        return _LateHelp(lambda: self.make() + more)  # type: ignore[attr-defined]


_LR_HELP = _LateHelp(_lr_help)


def _model_args(s: argparse.ArgumentParser, optional: bool = False) -> None:
    """MODEL and --board; ``optional``: both may be left out (poetc solve --graph)."""
    s.add_argument(
        "model",
        nargs="?" if optional else None,
        help=_LateHelp(lambda: "an ONNX file or a zoo name (" + ", ".join(_zoo_names()) + ")"),
    )
    s.add_argument(
        "--board",
        required=not optional,
        type=_board_arg,
        metavar=_choices(boards.names()),
        help="the target board (poetc boards lists them), or a board .toml file"
        + (" (default: none; required with a MODEL)" if optional else ""),
    )
    s.add_argument(
        "--batch", type=int, help="batch size (default: the model input's first dimension; zoo: its own)"
    )
    s.add_argument(
        "--input-u8",
        type=float,
        metavar="SCALE",
        help="hold the input batch as bytes (x = SCALE * q) and dequantize it on the target (default: floats)",
    )


def _training_args(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("training (what trains and how; build-time, recorded in the build)")
    g.add_argument(
        "--train",
        default="all",
        metavar="SPEC",
        help="which parameters train: all, bias (every bias-like 1-D parameter), last:K (the last K layers with "
        "parameters), auto (the largest last:K that fits the RAM budget) or NAME[,NAME...] (ONNX initializer "
        "names); the others are frozen",
    )
    g.add_argument(
        "--bn",
        default="frozen",
        choices=["frozen", "train"],
        help="a BatchNorm whose scale and bias are frozen uses its running statistics (frozen) or batch "
        "statistics with running-statistics updates (train)",
    )
    g.add_argument(
        "--optimizer",
        default="sgd",
        metavar="sgd|momentum[:M]",
        help="plain SGD, or SGD with momentum M (0.9 if not given), PyTorch's semantics; momentum and weight "
        "decay are build-time constants, the learning rate is given to poetc train",
    )
    g.add_argument("--weight-decay", type=float, default=0.0, metavar="WD", help="L2 weight decay: g + WD w")


def _schedule_args(s: argparse.ArgumentParser, sweep: bool = False) -> None:
    """The scheduling options of build, solve and sweep: one meaning in all three."""
    if sweep:
        s.add_argument(
            "--ram",
            type=_bytes_arg,
            help="the largest RAM budget swept, e.g. 200K (default: the board's RAM)",
        )
        s.add_argument(
            "--strategies",
            type=_strategies_arg,
            metavar="NAME,...",
            help=f"comma-separated strategies among {', '.join(strategies.NAMES)} (default: all)",
        )
    else:
        s.add_argument("--ram", type=_bytes_arg, help="RAM budget, e.g. 64K (default: the board's RAM)")
        s.add_argument(
            "--strategy",
            type=_strategy_arg,
            default="poet",
            metavar=_choices(strategies.NAMES),
            help="scheduling strategy",
        )
    s.add_argument(
        "--deadline",
        type=_deadline_arg,
        help="time budget of one step: 1.5x (of one computation of every node), 0.2s or 200ms (default: none)",
    )
    s.add_argument(
        "--profile",
        metavar="PROFILE",
        help="schedule with measured node times: poetc profile's directory or its profile.json (default: the "
        "board's cost model)",
    )
    s.add_argument("--solver", default="HIGHS", help="MILP solver known to cvxpy (HIGHS, SCIP, GUROBI, ...)")
    s.add_argument("--time-limit", type=float, default=60.0, help="seconds per MILP solve")
    s.add_argument("--gap", type=float, default=1e-4, help="relative optimality gap on the extra energy")
    s.add_argument(
        "--formulation",
        default="poet",
        choices=list(milp.FORMULATIONS),
        help="the MILP: poetc's; compact (one memory row per stage, at most 3 computations per output; its bound "
        "from a relaxed model solved in a second process); or POET's original (an ablation)",
    )
    s.add_argument("--no-remat", action="store_true", help="POET without recomputation")
    s.add_argument("--no-paging", action="store_true", help="POET without paging")
    s.add_argument(
        "--no-overlap",
        action="store_true",
        help="time paging as if the core waited for every transfer (the default overlaps transfers with "
        "computation on boards whose pager can: pager_overlap in the board file)",
    )
    s.add_argument("--verbose-solver", action="store_true", help="show the solver's log")
    s.add_argument(
        "--params",
        default="auto",
        choices=pipeline.PARAM_HOMES,
        help="where parameters live: auto = the schedule keeps each trainable parameter (and its optimizer "
        "state) in RAM or on storage, frozen ones in flash; ram = all in RAM; storage = all on storage, loaded "
        "when needed (default: auto)",
    )


def _on_device_args(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("on-device training (the board trains with no host: docs/c-api.md)")
    g.add_argument(
        "--on-device",
        nargs="?",
        const="flash",
        choices=("flash", "sensor"),
        help="build an application that trains on the device (firmware/examples/): flash: on the --data set "
        "linked into flash; sensor: on samples a callback pushes into a ring buffer (a stand-in replays --data) (default: off; "
        "--on-device alone: flash)",
    )
    g.add_argument(
        "--data",
        metavar="FILE.npz",
        help="with --on-device: the data set linked into the image (x, y; optional x_test, y_test), or digits "
        "(default: none; --on-device needs it)",
    )
    g.add_argument(
        "--on-device-steps", type=int, help="with --on-device: training steps of the run (default 200)"
    )
    g.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help="with --on-device: steps between checkpoints to storage (default 10)",
    )
    g.add_argument("--lr", type=float, help="with --on-device: the learning rate (default: the model's)")
    g.add_argument(
        "--seed", type=_seed_type, help="with --on-device: the order of the data set in flash (default 0)"
    )


def _dir_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument("dir", metavar="DIR", help="a build directory (poetc build --out)")


def _data_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--data",
        metavar="FILE.npz",
        help="x [N, ...input shape] and y [N] (optional x_test, y_test; dimensions of size 1 may differ: "
        "[N, 8, 8] for an input [1, 8, 8]), or the bundled 8x8 digits: digits, digits:5-9, digits:0,2,4 "
        "(default: digits)",
    )


def _seed_arg(s: argparse.ArgumentParser, default: int | None = 0, extra: str = "") -> None:
    s.add_argument(
        "--seed",
        type=_seed_type,
        default=default,
        help="seed of the batch order (a non-negative integer)" + (f" (default{extra})" if extra else ""),
    )


def _resume_arg(text: str) -> str:
    if text != "latest" and not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a run number")
    return text


def _seed_type(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} must be a non-negative integer")
    return v


def _port_arg(s: argparse.ArgumentParser, flashed: bool = False) -> None:
    s.add_argument(
        "--port",
        metavar="DEVICE",
        help="a real board's serial device"
        + (" (it is flashed with the profiling build)" if flashed else "")
        + " (default: found by USB vendor id, or $POETC_SERIAL)",
    )


def _zoo_names() -> list[str]:
    from .frontend import zoo

    return list(zoo.NAMES)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    old_term = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C: every finally and with-block runs, so temporary files (pager files, the
        # QEMU directory, a build's temporary directory), child processes and locks go with it
        old_term = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        args = make_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except PoetcError as e:
        print(f"poetc: error: {e}", file=sys.stderr)
        return e.exit_code
    except Terminated:
        print("poetc: stopped by SIGTERM", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("poetc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    sys.exit(main())
