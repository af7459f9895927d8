"""The poetc command line. It only wires stages together; every stage lives in its own module."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import __version__, boards, data, frontend, pipeline, progress
from .device import harness, target
from .emit import builddir
from .errors import PoetcError
from .fmt import joules, nbytes, seconds, table
from .graph.ir import Model
from .graph.options import TrainingOptions, parse_optimizer
from .schedule import memplan, strategies


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


def _load_model(a: argparse.Namespace) -> Model:
    if a.batch is not None and a.batch <= 0:
        raise PoetcError(f"--batch must be positive, got {a.batch}")
    model = frontend.load(a.model, batch=a.batch)
    if getattr(a, "input_u8", None) is not None:
        from .frontend.quantize import u8_input

        model = u8_input(model, a.input_u8)
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
    rows = []
    for f in figs:
        if not f["feasible"]:
            rows.append(
                [
                    f["strategy"],
                    "no",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    f"{f['solve_s']:.2f} s",
                    f["message"][:60],
                ]
            )
            continue
        gap = "" if f["gap"] is None else f"gap {100 * f['gap']:.2f}%"
        rows.append(
            [
                f["strategy"],
                "yes",
                joules(f["energy_j"]),
                joules(f["extra_energy_j"]),
                joules(f["compute_energy_j"]),
                joules(f["paging_energy_j"]),
                seconds(f["time_s"]),
                nbytes(f["peak_ram_bytes"]),
                nbytes(f["arena_bytes"]),
                f"{f['solve_s']:.2f} s",
                f"{f['status']} {gap}".strip(),
            ]
        )
    return rows


_FIG_HEADERS = [
    "strategy",
    "feasible",
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


def _profile_kw(a: argparse.Namespace, model: Model, board: boards.Board) -> dict:
    """--profile FILE: measured seconds per node in place of the FLOP model (checked against model and board)."""
    if not a.profile:
        return {}
    from .device import profile

    prof = profile.for_build(a.profile, model, board, _say)
    return {"profile": prof.node_seconds(), "profile_source": a.profile}


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
    ram = pipeline.parse_bytes(a.ram) if a.ram else None
    opts = _solve_options(a)
    training = _training(a)
    out = Path(a.out)
    builddir.check_out_dir(out)
    tgt = target.for_board(board)
    t0 = time.perf_counter()
    print(f"poetc build {a.model} for {board.name}", flush=True)
    model = _load_model(a)
    task, watch = _solving("scheduling", opts)
    with task:
        c = pipeline.compile_model(
            model, board, ram, a.strategy, _command_line(), progress=_say, opts=opts, deadline=a.deadline,
            params=a.params, watch=watch, training=training, overlap=not a.no_overlap,
            **_profile_kw(a, model, board),
        )  # fmt: skip
    builddir.write(c, out, _command_line(), tgt, say=_say, compile_=not a.no_compile)
    from .report import page

    page.record_build(c, out, a.profile)  # program.json (and profile.json) for poetc report
    s = builddir.schedule_summary(c)
    print(_trainable_line(c))
    print(table(["memory", "bytes"], [[k, v] for k, v in c.memory.rows()], "lr"))
    print(table(_FIG_HEADERS, _figure_rows([s])))
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
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s (build hash {c.hash_hex})")
    return 0


# ---- solve / sweep ----------------------------------------------------------------------------------------
def _solve_one(pl: pipeline.Planned, name: str, opts: strategies.SolveOptions) -> dict:
    task, watch = _solving(f"solving {name}", opts)
    with task:
        sol = strategies.run(name, pl.problem, opts, progress=_say, watch=watch)
    arena = None
    if sol.ok:
        arena = memplan.plan(sol.program, pl.problem.mem).arena_bytes
    return strategies.figures(pl.problem, sol, pl.fixed.fixed, arena) | {"_solution": sol}


def cmd_solve(a: argparse.Namespace) -> int:
    board = boards.load(a.board)
    ram = pipeline.parse_bytes(a.ram) if a.ram else None
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
            ram,
            a.deadline,
            _say,
            params=a.params,
            training=_training(a),
            overlap=not a.no_overlap,
            **_profile_kw(a, model, board),
        )
        names = list(strategies.NAMES) if a.compare else [a.strategy]
        figs = [_solve_one(pl, name, opts) for name in names]
    finally:
        _QUIET = False
    if a.plot:
        from .report import plots

        d = Path(a.plot)
        d.mkdir(parents=True, exist_ok=True)
        subject = plots.Subject.of(model, board.name, pl.fixed.budget)
        for f in figs:
            sol = f["_solution"]
            if sol.ok:
                plots.schedule_grid(pl.problem, sol, d / f"schedule-{sol.strategy}.png", subject)
                plots.ram_timeline(pl.problem, sol, d / f"ram-{sol.strategy}.png", subject)
    for f in figs:
        f.pop("_solution")
    if a.json:
        print(json.dumps(figs if a.compare else figs[0], indent=1))
    else:
        p = pl.problem
        print(
            f"RAM budget {nbytes(pl.fixed.budget)} ({nbytes(p.budget)} for the arena after "
            f"{nbytes(pl.fixed.fixed)} fixed); floor energy {joules(p.floor_j)}"
            + (f"; deadline {seconds(p.deadline_s)}" if p.deadline_s else "")
        )
        print(table(_FIG_HEADERS, _figure_rows(figs)))
        if a.plot:
            print(f"plots in {a.plot}")
    return 0 if all(f["feasible"] for f in figs) or a.compare else 1


def cmd_sweep(a: argparse.Namespace) -> int:
    from .report import plots
    from .schedule import sweep

    board = boards.load(a.board)
    opts = _solve_options(a)
    print(f"poetc sweep {a.model} for {board.name}", flush=True)
    model = _load_model(a)
    pl = pipeline.plan(
        model,
        board,
        None,
        a.deadline,
        _say,
        training=_training(a),
        params=a.params,
        overlap=not a.no_overlap,
    )
    names = a.strategies.split(",") if a.strategies else list(strategies.NAMES)
    for n in names:
        if n not in strategies.NAMES:
            raise PoetcError(f"--strategies: unknown strategy {n!r} (known: {', '.join(strategies.NAMES)})")
    if a.points < 2:
        raise PoetcError(f"--points must be at least 2, got {a.points}")
    with _display().task("sweep", total=None, unit="solves") as task:
        res = sweep.run(
            pl.problem, pl.fixed.fixed, pl.fixed.budget, names, opts, a.points, jobs=a.jobs, say=_say,
            on_solve=lambda done, total: task.update(done=done, total=total),
        )  # fmt: skip
    out = Path(a.out)
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
def _dataset(b: builddir.BuildInfo, path: str | None) -> data.Dataset:
    shape = b.input_shape[1:]
    if path and (path == "digits" or path.startswith("digits:")) and not Path(path).exists():
        return data.digits_for(shape, b.classes, only=data.parse_digits(path))
    if path:
        return data.load_npz(path, shape, b.classes)
    return data.digits_for(shape, b.classes)


def _check_batch(b: builddir.BuildInfo, batch: int | None) -> None:
    if batch is not None and batch != b.batch:
        raise PoetcError(
            f"--batch {batch}: {b.dir} was built for batch {b.batch}; "
            f"rebuild with poetc build ... --batch {batch}"
        )


def _lr(a: argparse.Namespace, b: builddir.BuildInfo) -> float:
    """--lr, or the model's default (zoo.default_lr: measured per zoo model)."""
    from .frontend import zoo

    lr = a.lr if a.lr is not None else zoo.default_lr(b.doc["model"]["source"])
    if not lr > 0:
        raise PoetcError(f"--lr must be positive, got {lr}")
    return lr


def cmd_train(a: argparse.Namespace) -> int:
    b = builddir.open_build(Path(a.dir))
    _check_batch(b, a.batch)
    if a.steps < 0:
        raise PoetcError(f"--steps must be >= 0, got {a.steps}")
    ds = _dataset(b, a.data)
    board = b.board()
    tgt = target.for_board(board, port=a.port)
    a.lr = _lr(a, b)
    dump = Path(a.dump) if a.dump else None
    if dump is not None and dump.suffix != ".npz":
        raise PoetcError(f"--dump {dump}: the dump file must end in .npz")
    eval_every = a.eval_every if a.eval_every is not None else max(1, a.steps // 10)
    print(
        f"poetc train {b.dir} on {board.name}: {a.steps} steps, batch {b.batch}, lr {a.lr}, data {ds.name} "
        f"({len(ds.x)} train" + (f", {len(ds.x_test)} held out)" if ds.x_test is not None else ")"),
        flush=True,
    )
    header = ["step", "loss", "held-out acc" if ds.x_test is not None else "train acc", "target ms/step"]
    print(table(header, []), flush=True)
    widths = [len(h) for h in header]

    def on_step(s: int, loss: float, acc: float | None, out: harness.StepOut) -> None:
        bar.update(done=s)
        if acc is None and s % max(1, a.steps // 20) and s != a.steps:
            return
        ms = out.seconds * 1e3
        cells = [str(s), f"{loss:.4f}", f"{acc:.3f}" if acc is not None else "", f"{ms:.3f}"]
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)), flush=True)

    meter = None
    if a.meter:
        from .device import meter as meter_mod

        meter = meter_mod.parse(a.meter)
        print(f"metering with the {meter.name}", flush=True)
    with _display().task("training", total=a.steps, unit="steps", plain=False) as bar:
        log, final = harness.train(b, tgt, ds, a.steps, a.lr, a.seed, eval_every, dump, on_step, meter=meter)
    run, run_dir = b.new_run()  # every run is kept: runs/<n>/ (export and report take the latest, or --run)
    harness.write_npz(run_dir / builddir.TRAINED, final)
    harness.write_train_record(run_dir, harness.train_record(b, tgt, log, a.lr, a.seed))
    if log.loss:
        first, last = log.loss[0], float(np.mean(log.loss[-max(1, len(log.loss) // 10) :]))
        mean_ms = log.mean_step_s * 1e3  # on the board's clock (QEMU: instructions x CPI / clock)
        line = f"loss {first:.4f} -> {last:.4f} (mean of the last steps)"
        if log.evals:
            line += f"; accuracy {log.evals[0][1]:.3f} -> {log.evals[-1][1]:.3f}"
        print(line)
        print(
            f"{mean_ms:.3f} ms per step on the target; {log.wall_s:.1f} s wall time; "
            f"paging per step: {log.paging[2]} page-ins ({nbytes(log.paging[0])}), "
            f"{log.paging[3]} page-outs ({nbytes(log.paging[1])})"
        )
        print(harness.energy_report(b, tgt, log))
        if log.metered is not None:
            print(harness.metered_report(b, tgt, log))
        if a.profile_nodes:
            print(harness.node_profile(b, tgt, log))
    print(f"run {run}: trained weights in {run_dir / builddir.TRAINED}" + (f"; dump: {dump}" if dump else ""))
    return 0


# ---- profile / report -------------------------------------------------------------------------------------
def cmd_profile(a: argparse.Namespace) -> int:
    from .device import profile

    board = boards.load(a.board)
    if a.time_limit <= 0:
        raise PoetcError(f"--time-limit must be positive, got {a.time_limit}")
    print(f"poetc profile {a.model} on {board.name}", flush=True)
    model = _load_model(a)
    prof = profile.measure(
        model,
        board,
        steps=a.steps,
        strategy=a.strategy,
        opts=strategies.SolveOptions(time_limit_s=a.time_limit),
        say=_say,
        keep=Path(a.keep_build) if a.keep_build else None,
        command=_command_line(),
        port=a.port,
        training=_training(a),
    )
    out = Path(a.out)
    profile.save(prof, out)
    print(profile.table_text(prof))
    print(f"wrote {out}; use it with poetc build/solve ... --profile {out}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from .report import page

    b = builddir.open_build(Path(a.dir))
    out = Path(a.out) if a.out else b.dir / "report.html"
    path, notes = page.write(b, out, profile_path=a.profile, run=a.run)
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

    b = builddir.open_build(Path(a.dir))
    board = b.board()
    cmd = target.flash(board, b.dir, port=a.port, env=a.env)
    print(f"poetc flash {b.dir} to {board.name}: {' '.join(cmd)}", flush=True)
    rc = subprocess.run(cmd, env={**os.environ, **target.PIO_ENV}).returncode
    if rc != 0:
        raise PoetcError(f"pio run -t upload failed (exit {rc}); its output is above")
    return 0


# ---- verify -----------------------------------------------------------------------------------------------
def cmd_verify(a: argparse.Namespace) -> int:
    b = builddir.open_build(Path(a.dir))
    ds = _dataset(b, a.data)
    board = b.board()
    r = harness.verify(b, target.for_board(board, port=a.port), ds, _lr(a, b), a.seed)
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
    trained = b.load_trained(a.run)
    model = frontend.load(b.dir / "model.onnx", batch=b.batch)
    out = Path(a.onnx)
    if out.suffix != ".onnx":
        raise PoetcError(f"--onnx {out}: the output must end in .onnx")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        frontend.export_onnx(model, trained, tmp)
        tmp.replace(out)
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


# ---- fleet ------------------------------------------------------------------------------------------------
def _record_build(c: pipeline.Compiled, out: Path) -> None:
    from .report import page

    page.record_build(c, out, None)  # program.json for poetc report, as poetc build writes it


def cmd_fleet(a: argparse.Namespace) -> int:
    """A local fleet in Flower's simulation (MODEL), or one board joining a real SuperLink (--connect)."""
    from . import fleet

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
        lr=a.lr, strategy=a.strategy, seed=a.seed, training=_training(a), schedule=a.schedule,
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
        f"step(s), {a.strategy}, partition {spec.partition}",
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


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="poetc", description="Compile neural-network training to microcontrollers.")
    p.add_argument("--version", action="version", version=f"poetc {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    s = sub.add_parser("boards", help="list the board files")
    s.set_defaults(func=cmd_boards)

    s = sub.add_parser("build", help="compile a model's training step for a board")
    _model_args(s)
    s.add_argument("--out", required=True, help="build directory (new, empty, or an earlier poetc build)")
    s.add_argument("--ram", help="RAM budget, e.g. 64K (default: the board's RAM)")
    _schedule_args(s)
    s.add_argument("--no-compile", action="store_true", help="generate sources only")
    s.add_argument("--profile", help="measured node times (poetc profile) instead of the FLOP model")
    _training_args(s)
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("solve", help="schedule a model under a RAM budget and print the figures")
    _model_args(s)
    s.add_argument("--ram", help="RAM budget, e.g. 64K (default: the board's RAM)")
    _schedule_args(s)
    s.add_argument("--compare", action="store_true", help="one row per strategy")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--plot", metavar="DIR", help="write schedule and RAM plots (PNG) to DIR")
    s.add_argument("--profile", help="measured node times (poetc profile) instead of the FLOP model")
    _training_args(s)
    s.set_defaults(func=cmd_solve)

    s = sub.add_parser("sweep", help="energy versus RAM budget for POET and every baseline (table + plot)")
    _model_args(s)
    _schedule_args(s, strategy=False)
    s.add_argument(
        "--points", type=int, default=6, help="budgets from the smallest feasible to the store-all peak"
    )
    s.add_argument("--strategies", help="comma-separated subset (default: all)")
    s.add_argument("--jobs", type=int, default=0, help="parallel solves (default: the number of cores)")
    s.add_argument("--out", default="poetc-sweep", help="directory for energy-vs-ram.png and sweep.json")
    _training_args(s)
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("train", help="train a built model on its target")
    s.add_argument("dir")
    s.add_argument("--steps", type=int, default=200)
    s.add_argument("--lr", type=float, help=_LR_HELP)
    s.add_argument(
        "--data",
        help=".npz with x [N, ...input shape] and y [N] (optional x_test, y_test; dimensions of size 1 may "
        "differ: [N, 8, 8] for an input [1, 8, 8]), or the bundled digits: digits (default), digits:5-9, "
        "digits:0,2,4",
    )
    s.add_argument("--dump", help="write x, y, loss, lr, param/, grad/, final/ arrays to this .npz")
    s.add_argument("--port", help=_PORT_HELP)
    s.add_argument("--batch", type=int, help="must equal the built batch size")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--eval-every", type=int, help="steps between accuracy checks (default: steps/10)")
    s.add_argument(
        "--profile-nodes", action="store_true", help="print each node's ticks (instructions in QEMU)"
    )
    s.add_argument("--meter", metavar="ppk2:PORT", help="meter each step's energy with a PPK2 (see docs)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("profile", help="time every node of a training step on the board; write a profile")
    _model_args(s)
    s.add_argument("--out", default="profile.json", help="the profile (JSON) to write")
    s.add_argument("--steps", type=int, help="training steps measured (default: 2 in QEMU, 7 elsewhere)")
    s.add_argument("--strategy", help="the profiling build's schedule (default: cheapest that fits)")
    s.add_argument("--time-limit", type=float, default=60.0, help="seconds for a poet solve (default 60)")
    s.add_argument("--keep-build", metavar="DIR", help="keep the profiling build in DIR")
    s.add_argument("--port", help="a real board's serial device (it is flashed with the profiling build)")
    _training_args(s)
    s.set_defaults(func=cmd_profile)

    s = sub.add_parser("report", help="an HTML report of a build: schedule, RAM, energy, profile, loss")
    s.add_argument("dir")
    s.add_argument("--out", help="the HTML file (default: DIR/report.html)")
    s.add_argument("--run", type=int, help="the training run to show (default: the latest; DIR/runs/<n>)")
    s.add_argument("--profile", help="a profile to compare per node (default: the training run's node ticks)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser(
        "flash",
        help="build and upload the firmware with PlatformIO (a real board; or a QEMU board through poetc's local "
        "platform, offline: boot the image in QEMU and install it for train/verify)",
    )
    s.add_argument("dir")
    s.add_argument(
        "--port",
        help="the device to upload through (default: found by USB id, or POETC_SERIAL; the MKR1000 uploads "
        "through its native USB port, not the adapter it talks on: docs/boards.md)",
    )
    s.add_argument("--env", help="PlatformIO environment (default: the board's; e.g. nrf52840_flash)")
    s.set_defaults(func=cmd_flash)

    s = sub.add_parser("verify", help="one step on the target against the host reference")
    s.add_argument("dir")
    s.add_argument("--data", help="as for train (default: the bundled digits)")
    s.add_argument("--lr", type=float, help=_LR_HELP)
    s.add_argument("--port", help=_PORT_HELP)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--tol", type=float, default=1e-4)
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("demo", help="build and train a digits MLP on the emulated Cortex-M4 (or the host)")
    s.add_argument("--out", default="poetc-demo")
    s.add_argument("--steps", type=int, default=200)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser(
        "fleet",
        help="many boards train one model through Flower (federated learning): a local fleet of emulated boards, "
        "or --connect one board to a Flower SuperLink (docs/fleet.md)",
    )
    s.add_argument(
        "model", nargs="?", help="an ONNX file or a zoo name; with --connect also a build directory"
    )
    s.add_argument(
        "--board", help="B[,B2...]: client k runs on the k-th board, cycling (a fleet may mix boards)"
    )
    s.add_argument("--clients", type=int, default=4, help="boards in a local fleet (default 4)")
    s.add_argument("--rounds", type=int, default=3, help="federated rounds (default 3)")
    s.add_argument(
        "--local-steps", type=int, default=1, help="training steps on each board per round (default 1)"
    )
    s.add_argument("--data", help="as for train; the training samples are split among the clients")
    s.add_argument(
        "--partition", default="iid", help="iid (equal random shards) or dirichlet:ALPHA (label skew)"
    )
    s.add_argument(
        "--strategy", default="fedavg", help="fedavg or fedavgm[:MOMENTUM[:SERVER_LR]] (server momentum)"
    )
    s.add_argument("--lr", type=float, help=_LR_HELP)
    s.add_argument("--ram", help="RAM budget per board of --board (R[,R2...]; default: each board's RAM)")
    s.add_argument("--batch", type=int, help="batch size of every board (default: the model's)")
    s.add_argument(
        "--input-u8", type=float, metavar="SCALE", help="byte inputs on every board (as for build)"
    )
    s.add_argument("--schedule", default="poet", help="each board's schedule strategy (default poet)")
    s.add_argument("--time-limit", type=float, default=20.0, help="seconds per MILP solve (default 20)")
    s.add_argument("--seed", type=int, default=0, help="partition and batch order")
    s.add_argument(
        "--out", default="poetc-fleet", help="builds, fleet.json and trained.npz (default poetc-fleet)"
    )
    s.add_argument(
        "--connect", metavar="ADDR", help="join the Flower SuperLink at ADDR (host:port) as a SuperNode"
    )
    s.add_argument(
        "--shard", type=int, metavar="K", help="with --connect: train on shard K of --clients (--partition)"
    )
    s.add_argument("--port", help="with --connect: a real board's serial device")
    s.add_argument("--verbose", action="store_true", help="show Flower's own log")
    _training_args(s)
    s.set_defaults(func=cmd_fleet)

    s = sub.add_parser("export", help="write trained weights back into the ONNX model")
    s.add_argument("dir")
    s.add_argument("--onnx", required=True)
    s.add_argument("--run", type=int, help="the training run to export (default: the latest; DIR/runs/<n>)")
    s.set_defaults(func=cmd_export)
    return p


_PORT_HELP = "a real board's serial device (default: found by USB id, or POETC_SERIAL; docs/boards.md)"


def _lr_help() -> str:
    from .frontend import zoo

    rates = ", ".join(f"{n} {e.lr:g}" for n, e in zoo.ZOO.items())
    return f"SGD learning rate (default: the model's: {rates}; ONNX files {zoo.ONNX_LR:g})"


_LR_HELP = _lr_help()


def _model_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("model", help="an ONNX file or a zoo name (" + ", ".join(_zoo_names()) + ")")
    s.add_argument("--board", required=True)
    s.add_argument("--batch", type=int, help="batch size (default: the model input's first dimension)")
    s.add_argument(
        "--input-u8",
        type=float,
        metavar="SCALE",
        help="hold the input batch as bytes (x = SCALE * q) and dequantize it on the target",
    )


def _training_args(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("training (what trains and how; build-time, recorded in the build)")
    g.add_argument(
        "--train",
        default="all",
        metavar="SPEC",
        help="which parameters train: all (default), bias (every bias-like 1-D parameter), last:K (the last K "
        "layers with parameters), auto (the largest last:K that fits the RAM budget) or NAME[,NAME...] (ONNX "
        "initializer names); the others are frozen",
    )
    g.add_argument(
        "--bn",
        default="frozen",
        choices=["frozen", "train"],
        help="a BatchNorm whose scale and bias are frozen uses its running statistics (frozen, default) or "
        "batch statistics with running-statistics updates (train)",
    )
    g.add_argument(
        "--optimizer",
        default="sgd",
        metavar="sgd|momentum[:M]",
        help="plain SGD (default) or SGD with momentum M (default 0.9), PyTorch's semantics; momentum and weight "
        "decay are build-time constants, the learning rate is given to poetc train",
    )
    g.add_argument(
        "--weight-decay", type=float, default=0.0, metavar="WD", help="L2 weight decay: g + WD w (default 0)"
    )


def _schedule_args(s: argparse.ArgumentParser, strategy: bool = True) -> None:
    if strategy:
        s.add_argument("--strategy", default="poet", help="one of: " + ", ".join(strategies.NAMES))
    s.add_argument(
        "--deadline", help="time budget of one step: 1.5x (of one computation of every node) or 0.2s"
    )
    s.add_argument("--solver", default="HIGHS", help="MILP solver known to cvxpy (HIGHS, SCIP, GUROBI, ...)")
    s.add_argument("--time-limit", type=float, default=60.0, help="seconds per MILP solve (default 60)")
    s.add_argument("--gap", type=float, default=1e-4, help="relative gap on the extra energy (default 1e-4)")
    s.add_argument("--formulation", default="poet", choices=["poet", "poet2022"])
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


def _zoo_names() -> list[str]:
    from .frontend import zoo

    return list(zoo.NAMES)


def main(argv: list[str] | None = None) -> int:
    try:
        args = make_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except PoetcError as e:
        print(f"poetc: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("poetc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
