"""The poetc command line. It only wires stages together; every stage lives in its own module."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__, boards, builddir, data, frontend, harness, pipeline, target
from .errors import PoetcError
from .fmt import joules, nbytes, seconds, table


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise PoetcError(f"{self.prog}: {message}")


def _say(msg: str) -> None:
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
def _load_board(name: str) -> boards.Board:
    return boards.load(name)


def cmd_build(a: argparse.Namespace) -> int:
    board = _load_board(a.board)
    ram = pipeline.parse_bytes(a.ram) if a.ram else None
    if a.batch is not None and a.batch <= 0:
        raise PoetcError(f"--batch must be positive, got {a.batch}")
    out = Path(a.out)
    builddir.check_out_dir(out)
    tgt = target.for_board(board)
    t0 = time.perf_counter()
    print(f"poetc build {a.model} for {board.name}", flush=True)
    model = frontend.load(a.model, batch=a.batch)
    _say(
        f"model {model.source}: {len(model.graph.nodes)} layers, "
        f"{sum(v.size for v in model.params.values())} parameters, input {list(model.graph.tensor(model.input).shape)}"
    )
    c = pipeline.compile_model(model, board, ram, a.strategy, _command_line(), progress=_say)
    builddir.write(c, out, _command_line(), tgt, say=_say, compile_=not a.no_compile)
    s = builddir.schedule_summary(c)
    print(table(["memory", "bytes"], [[k, v] for k, v in c.memory.rows()], "lr"))
    print(
        table(
            ["strategy", "energy", "compute", "paging", "time", "recomputes", "page-outs", "page-ins"],
            [
                [
                    c.strategy,
                    joules(s["energy_j"]),
                    joules(s["compute_energy_j"]),
                    joules(s["paging_energy_j"]),
                    seconds(s["time_s"]),
                    s["recomputes"],
                    s["page_outs"],
                    s["page_ins"],
                ]
            ],
            "lrrrrrrr",
        )
    )
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s (build hash {c.hash_hex})")
    return 0


# ---- train ------------------------------------------------------------------------------------------------
def _dataset(b: builddir.BuildInfo, path: str | None) -> data.Dataset:
    shape = b.input_shape[1:]
    if path:
        return data.load_npz(path, shape, b.classes)
    return data.digits_for(shape, b.classes)


def _check_batch(b: builddir.BuildInfo, batch: int | None) -> None:
    if batch is not None and batch != b.batch:
        raise PoetcError(
            f"--batch {batch}: {b.dir} was built for batch {b.batch}; "
            f"rebuild with poetc build ... --batch {batch}"
        )


def cmd_train(a: argparse.Namespace) -> int:
    b = builddir.open_build(Path(a.dir))
    _check_batch(b, a.batch)
    if a.steps < 0:
        raise PoetcError(f"--steps must be >= 0, got {a.steps}")
    ds = _dataset(b, a.data)
    board = _load_board(b.doc["board"])
    tgt = target.for_board(board)
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
        if acc is None and s % max(1, a.steps // 20) and s != a.steps:
            return
        ms = out.seconds * 1e3
        cells = [str(s), f"{loss:.4f}", f"{acc:.3f}" if acc is not None else "", f"{ms:.3f}"]
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)), flush=True)

    log, final = harness.train(b, tgt, ds, a.steps, a.lr, a.seed, eval_every, dump, on_step)
    harness.write_npz(b.add_file("trained.npz"), final)
    if log.loss:
        first, last = log.loss[0], float(np.mean(log.loss[-max(1, len(log.loss) // 10) :]))
        mean_ms = float(np.mean(log.step_ticks)) / log.tick_hz * 1e3
        line = f"loss {first:.4f} -> {last:.4f} (mean of the last steps)"
        if log.evals:
            line += f"; accuracy {log.evals[0][1]:.3f} -> {log.evals[-1][1]:.3f}"
        print(line)
        print(
            f"{mean_ms:.3f} ms per step on the target; {log.wall_s:.1f} s wall time; "
            f"paging per step: {log.paging[2]} page-ins ({nbytes(log.paging[0])}), "
            f"{log.paging[3]} page-outs ({nbytes(log.paging[1])})"
        )
    print(f"trained weights: {b.trained_path()}" + (f"; dump: {dump}" if dump else ""))
    return 0


# ---- verify -----------------------------------------------------------------------------------------------
def cmd_verify(a: argparse.Namespace) -> int:
    b = builddir.open_build(Path(a.dir))
    ds = _dataset(b, a.data)
    board = _load_board(b.doc["board"])
    r = harness.verify(b, target.for_board(board), ds, a.lr, a.seed)
    rows = [[p, f"{r.errors[p]:.2e}", f"{r.update_errors[p]:.2e}"] for p in r.errors]
    print(table(["parameter", "grad rel. error", "update rel. error"], rows, "lrr"))
    worst_name, worst = r.worst
    loss_err = abs(r.loss_device - r.loss_ref) / max(abs(r.loss_ref), 1e-30)
    print(f"loss: target {r.loss_device:.6f}, reference {r.loss_ref:.6f} (rel. error {loss_err:.2e})")
    ok = worst <= a.tol and loss_err <= a.tol
    print(
        f"worst relative gradient error {worst:.2e} ({worst_name}); tolerance {a.tol:g}: "
        + ("PASS" if ok else "FAIL")
    )
    return 0 if ok else 1


# ---- export -----------------------------------------------------------------------------------------------
def cmd_export(a: argparse.Namespace) -> int:
    b = builddir.open_build(Path(a.dir))
    trained = b.load_trained()
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
    print(f"wrote {out}: {len(trained)} trained parameters written back into {b.doc['model']['source']}")
    return 0


# ---- demo -------------------------------------------------------------------------------------------------
def demo_board() -> tuple[str, str | None, str]:
    """(board, RAM budget, why): the emulated Cortex-M4 when its toolchain is here, else the host."""
    import shutil

    if "qemu-m4" in boards.names() and shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc"):
        return "qemu-m4", DEMO_QEMU_RAM, "emulated Cortex-M4F (QEMU mps2-an386)"
    return "host", None, "the host (no arm-none-eabi-gcc / qemu-system-arm found)"


DEMO_QEMU_RAM: str | None = None


def cmd_demo(a: argparse.Namespace) -> int:
    board, ram, why = demo_board()
    out = Path(a.out)
    print(f"poetc demo: train the digits MLP on {why}\n", flush=True)
    build_args = ["build", "digits-mlp", "--board", board, "--out", str(out)] + (
        ["--ram", ram] if ram else []
    )
    rc = main(build_args)
    if rc:
        return rc
    print(flush=True)
    rc = main(["train", str(out), "--steps", str(a.steps), "--lr", "0.1"])
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
    s.add_argument("model", help="an ONNX file or a zoo name (" + ", ".join(_zoo_names()) + ")")
    s.add_argument("--board", required=True)
    s.add_argument("--out", required=True, help="build directory (new, empty, or an earlier poetc build)")
    s.add_argument("--ram", help="RAM budget, e.g. 64K (default: the board's RAM)")
    s.add_argument("--batch", type=int, help="batch size (default: the model input's first dimension)")
    s.add_argument("--strategy", default="store-all", help="schedule strategy")
    s.add_argument("--no-compile", action="store_true", help="generate sources only")
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("train", help="train a built model on its target")
    s.add_argument("dir")
    s.add_argument("--steps", type=int, default=200)
    s.add_argument("--lr", type=float, default=0.05)
    s.add_argument("--data", help=".npz with x [N, ...input shape] and y [N] (optional x_test, y_test)")
    s.add_argument("--dump", help="write x, y, loss, lr, param/, grad/, final/ arrays to this .npz")
    s.add_argument("--batch", type=int, help="must equal the built batch size")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--eval-every", type=int, help="steps between accuracy checks (default: steps/10)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("verify", help="one step on the target against the host reference")
    s.add_argument("dir")
    s.add_argument("--data")
    s.add_argument("--lr", type=float, default=0.05)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--tol", type=float, default=1e-4)
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("demo", help="build and train the digits MLP on the emulated Cortex-M4 (or the host)")
    s.add_argument("--out", default="poetc-demo")
    s.add_argument("--steps", type=int, default=200)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("export", help="write trained weights back into the ONNX model")
    s.add_argument("dir")
    s.add_argument("--onnx", required=True)
    s.set_defaults(func=cmd_export)
    return p


def _zoo_names() -> list[str]:
    from . import zoo

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
