"""Predicted versus counted energy per training step on the emulated boards (qemu-m4, qemu-m0), for every zoo
model, with the boards' calibrated compute model; and the measurement that calibrates it.

    python benchmarks/cost_calibration.py                 # the table: every zoo model on qemu-m4 and qemu-m0
    python benchmarks/cost_calibration.py --boards qemu-m4 --models digits-mlp,lenet
    python benchmarks/cost_calibration.py --measure qemu-m4   # re-measure: prints the board file's tables

The table. Each model is built for the board (at its default batch, else the largest batch that fits, else, on
qemu-m4, for "qemu-m4 4MB": the same board file with the 4 MB of RAM and flash that QEMU's mps2-an386 has,
which only the budget check and the linker script limit to 256 KB / 1 MB), with the cheapest heuristic schedule
that fits the board's RAM (else POET's), and with POET's under tight budgets that make it recompute and page. Three training
steps run in QEMU (lr 0). "predicted" is the schedule's energy per step (schedule.json: the board's cost model);
"counted" is what ``poetc train`` reports: the instructions QEMU counted x cycles_per_instruction / clock_hz x
active power, plus the paging the RUN reported x the board's paging constants. "POET FLOP" is the same schedule
priced by POET's flat model (FLOPs / flop_per_j), the boards' model before calibration.

--measure. ``poetc profile`` (device/profile.py) counts every node's instructions on the board for a set of
models (qemu-m4: the zoo models that fit, the larger ones on the 4 MB variant, MobileNetV2 at batch 1; qemu-m0,
16 KB: the digits MLP at several batches and small convolutional nets built for it). Nodes are grouped by cost key
(op.class for convolutions, "conv2d.k3", "conv2d_dw.depthwise"; the op otherwise; then the op family and
"default" over everything as fallbacks) and each group is fitted with non-negative least squares,
instructions = instructions_per_flop x FLOPs + instructions_per_run, weighted by 1/sqrt(instructions). Groups
whose nodes all have about the same size keep instructions_per_run = 0 (the two are not separable). The output
is the [instructions_per_flop] and [instructions_per_run] tables for boards/<board>.toml.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from poetc import boards, frontend, pipeline
from poetc.device import harness, profile, target
from poetc.emit import builddir
from poetc.errors import PoetcError
from poetc.fmt import joules, table
from poetc.frontend import zoo
from poetc.frontend.quantize import u8_input
from poetc.graph import autodiff
from poetc.graph.ir import Model
from poetc.schedule import cost, simulate, strategies

BIG_RAM = 4 * 1024 * 1024  # mps2-an386: 4 MB SSRAM at 0x0 (code) and at 0x20000000 (data)
OPTS = strategies.SolveOptions(time_limit_s=20.0)
# tight budgets where the schedule recomputes or pages: (model, batch, byte input scale, RAM, deadline): the
# demo's, the CNN test's, and the 16 KB Cortex-M0's digits MLP (README)
TIGHT = {
    "qemu-m4": [("digits-deep-mlp", None, None, "200K", "1.2x"), ("digits-cnn", None, None, "108K", "1.2x")],
    "qemu-m0": [("digits-mlp", 8, 1 / 16, None, None)],
}


def big_board(board: boards.Board, d: Path) -> boards.Board:
    """The qemu-m4 board file with QEMU's 4 MB of RAM and flash: for models over the nRF52840's 256 KB."""
    src = Path(board.path).read_text()
    text = (
        src.replace(f'name = "{board.name}"', f'name = "{board.name}-4mb"')
        .replace(f"ram_bytes = {board.ram_bytes:_}", f"ram_bytes = {BIG_RAM:_}")
        .replace(f"flash_bytes = {board.flash_bytes:_}", f"flash_bytes = {BIG_RAM:_}")
    )
    path = d / f"{board.name}-4mb.toml"
    path.write_text(text)
    big = boards.load_file(path)
    assert big.ram_bytes == BIG_RAM and big.flash_bytes == BIG_RAM, "qemu-m4.toml's sizes moved"
    return big


def _fits(model: Model, board: boards.Board) -> bool:
    try:
        pipeline.plan(model, board)
        return True
    except PoetcError:
        return False


def candidates(name: str, board: boards.Board, big: boards.Board | None) -> list[tuple[Model, boards.Board]]:
    """Where the model may run, in order: on the board at its default batch, then at halved batches, then the
    same on ``big``."""
    out = []
    for b in (board, big):
        if b is None:
            continue
        k = zoo.default_batch(name)
        while k >= 1:
            m = frontend.load(name, batch=k)
            if _fits(m, b):
                out.append((m, b))
            k //= 2
    return out


# ---- the table --------------------------------------------------------------------------------------------------
def run_steps(c: pipeline.Compiled, out: Path, steps: int = 3) -> tuple[int, tuple[int, int, int, int], int]:
    """Build ``c`` into ``out``, run ``steps`` training steps (lr 0) in QEMU: (instructions per step, paging,
    tick_hz) of the last step."""
    tgt = target.for_board(c.board)
    builddir.write(c, out, "benchmarks/cost_calibration.py", tgt)
    b = builddir.open_build(out)
    x, y, q8 = profile._batch(b, 0)
    with tgt.launch(b.dir, timeout_s=600) as sess:
        dev = harness.Device(b, sess, tgt.seconds)
        dev.set_batch(x, y, q8)
        for _ in range(steps):
            r = dev.step(0.0).reply
        return r.ticks, harness.storage_traffic(r), dev.tick_hz


def flat_energy(c: pipeline.Compiled, deadline: str | None) -> float:
    """The schedule's energy per step under POET's flat FLOP model (the board without its calibration), on the
    same problem (parameter homes, what trains) the build planned."""
    flat = dataclasses.replace(c.board, instructions_per_flop={}, instructions_per_run={})
    pl = pipeline.plan(c.model, flat, c.memory.budget, deadline, training=c.training, params=c.param_homes)
    return simulate.replay(pl.problem, c.programs[0]).energy_j


def row(
    label: str, model: Model, board: boards.Board, ram: str | None, deadline: str | None, work: Path
) -> list:
    budget = pipeline.parse_bytes(ram) if ram else None
    strategy = "poet"
    if ram is None and deadline is None:  # any schedule will do at the board's RAM: the cheapest heuristic's
        best = strategies.best_heuristic(pipeline.plan(model, board).problem)
        strategy = best.strategy if best is not None else "poet"
    c = pipeline.compile_model(model, board, budget, strategy, opts=OPTS, deadline=deadline)
    f = builddir.schedule_summary(c)
    ticks, paging, hz = run_steps(c, work / "b")
    e = harness.step_energy(board, target.for_board(board), ticks, hz, paging)
    what = c.strategy + (
        f", {f['recomputes']} recomp., {f['page_outs']} page-outs"
        if f["recomputes"] or f["page_outs"]
        else ""
    )
    return [
        board.name,
        label,
        model.graph.tensor(model.input).shape[0],
        f"{c.memory.budget // 1024} K" + (f", {deadline}" if deadline else ""),
        what,
        joules(f["energy_j"]),
        joules(e.total_j),
        f"{f['energy_j'] / e.total_j:.3f}",
        joules(flat := flat_energy(c, deadline)),
        f"{flat / e.total_j:.2f}",
    ]


def print_table(board_names: list[str], models: list[str]) -> None:
    headers = ["board", "model", "batch", "RAM", "schedule", "predicted", "counted", "pred/counted",
               "POET FLOP", "FLOP/counted"]  # fmt: skip
    rows, worst = [], 0.0
    with tempfile.TemporaryDirectory(prefix="poetc-calib-") as td:
        work = Path(td)
        for bname in board_names:
            board = boards.load(bname)
            big = big_board(board, work) if board.ram_bytes < BIG_RAM and bname == "qemu-m4" else None
            for name in models:
                r, why = None, f"does not fit {board.ram_bytes // 1024} KB at any batch"
                if big is not None:
                    why = (
                        f"does not fit {board.ram_bytes // 1024} KB nor {big.ram_bytes >> 20} MB at any batch"
                    )
                for model, b in candidates(name, board, big):
                    print(
                        f"  {b.name} {name} (batch {model.graph.tensor(model.input).shape[0]}) ...",
                        flush=True,
                    )
                    try:
                        r = row(name, model, b, None, None, work)
                        break
                    except PoetcError as e:  # e.g. no schedule whose arena fits: a smaller batch may
                        why = f"failed: {e}"
                        print(f"  {why}", flush=True)
                    finally:
                        shutil.rmtree(work / "b", ignore_errors=True)
                if r is None:
                    rows.append([bname, name, "-", "-", why] + ["-"] * 5)
                    print(f"  {bname} {name}: {why}", flush=True)
                    continue
                rows.append(r)
                worst = max(worst, abs(math.log(float(r[7]))))
                print(table(headers, [r]).splitlines()[-1], flush=True)
            for name, batch, u8, ram, deadline in TIGHT.get(bname, []):
                if name not in models:
                    continue
                model = frontend.load(name, batch=batch)
                if u8 is not None:
                    model = u8_input(model, u8)
                r = row(name + (" (u8 input)" if u8 else ""), model, board, ram, deadline, work)
                rows.append(r)
                worst = max(worst, abs(math.log(float(r[7]))))
                print(table(headers, [r]).splitlines()[-1], flush=True)
                shutil.rmtree(work / "b", ignore_errors=True)
    print()
    print(table(headers, rows, "llrllrrrrr"))
    print(
        f"worst predicted/counted: {math.exp(worst):.3f}x (target: within 25%); counted = QEMU's instructions x "
        "cycles_per_instruction / clock_hz x active power + paging x the board's constants"
    )


# ---- the measurement --------------------------------------------------------------------------------------------
def m0_nets() -> list[tuple[str, Model]]:
    """Small nets that fit the 16 KB qemu-m0 and run every op family of the small zoo models."""
    out = []
    for k, batch in ((3, 1), (3, 2), (5, 2)):
        b = zoo._Builder(f"m0_cnn{k}_{batch}", (1, 8, 8), seed=7)
        b.conv("conv1", 1, 4, k, pad=k // 2, bias=True)
        b.relu()
        b.maxpool(2, 2)
        b.conv("conv2", 4, 4, k, pad=k // 2, bias=True)
        b.relu()
        b.flatten()
        b.linear("fc", 4 * 4 * 4, 10)
        proto = b.model(0, 10)
        out.append((f"cnn k{k} b{batch}", frontend.from_onnx(proto, f"calib:m0_cnn{k}_{batch}", batch)))
    for batch in (2, 4):
        out.append((f"digits-mlp b{batch}", frontend.load("digits-mlp", batch=batch)))
    out.append(("digits-mlp b8 u8", u8_input(frontend.load("digits-mlp", batch=8), 1 / 16)))
    return out


def m0_stack_board(board: boards.Board, d: Path) -> boards.Board:
    """qemu-m0 with a 2 KB stack reserve: its 1 KB overflows in the convolution kernels (soft float), which
    locks the core up; the instruction counts do not depend on it."""
    text = (
        Path(board.path)
        .read_text()
        .replace(f'name = "{board.name}"', f'name = "{board.name}-2kstack"')
        .replace(f"stack_bytes = {board.stack_bytes}", "stack_bytes = 2048")
    )
    path = d / f"{board.name}-2kstack.toml"
    path.write_text(text)
    return boards.load_file(path)


def calibration_models(board: boards.Board, work: Path) -> list[tuple[str, Model, boards.Board]]:
    if board.ram_bytes <= 16 * 1024:
        stack = m0_stack_board(board, work)
        return [(label, m, stack if label.startswith("cnn") else board) for label, m in m0_nets()]
    big = big_board(board, work)
    out = []
    for name in zoo.NAMES:
        batch = 1 if name == "mobilenetv2-cifar" else None  # its batch-2 training graph is slow to schedule
        m = frontend.load(name, batch=batch)
        for b in (board, big):
            if _fits(m, b):
                out.append((name, m, b))
                break
    return out


def measure(board_name: str) -> None:
    board = boards.load(board_name)
    samples: list[tuple[tuple[str, ...], float, float]] = []  # (cost keys, FLOPs, instructions per run)
    with tempfile.TemporaryDirectory(prefix="poetc-calib-") as td:
        for label, model, b in calibration_models(board, Path(td)):
            print(f"  profiling {label} on {b.name} ...", flush=True)
            prof = profile.measure(model, b, steps=2, opts=OPTS)
            tg = autodiff.build_training_graph(model)
            by_name = {n.name: n for n in prof.nodes}
            for i, n in enumerate(tg.graph.nodes):
                t = by_name[n.name]
                samples.append((cost.cost_keys(tg, i), float(t.flops), float(t.ticks)))
    per_flop, per_run = fit(samples)
    print(
        f"\n# boards/{board_name}.toml, measured by: python benchmarks/cost_calibration.py --measure {board_name}"
    )
    for title, tab in (("instructions_per_flop", per_flop), ("instructions_per_run", per_run)):
        print(f"[{title}]")
        for k in sorted(tab, key=lambda k: (k == "default", k)):
            print(f"{k if '.' not in k else repr(k).replace(chr(39), chr(34))} = {tab[k]:.4g}")
        print()


def _fit_one(f: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    if f.max() <= 0:
        return 0.0, float(np.median(t))
    if f.max() < 2 * max(f.min(), 1.0):  # one size: a per-run term is not separable from the per-FLOP one
        return float(t.sum() / f.sum()), 0.0
    w = 1.0 / np.sqrt(np.maximum(t, 1.0))
    (a, c), _ = nnls(np.stack([f, np.ones_like(f)], axis=1) * w[:, None], t * w)
    return float(a), float(c)


def fit(samples: list[tuple[tuple[str, ...], float, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per cost key: (instructions per FLOP, per run). Every key a node has is fitted over the nodes that have
    it: op.class and op over their nodes, the family over the family's, default over all of them."""
    groups: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for keys, fl, t in samples:
        for k in keys:
            groups[k].append((fl, t))
    per_flop, per_run = {}, {}
    for k, pts in groups.items():
        f, t = (np.array(v) for v in zip(*pts, strict=True))
        per_flop[k], per_run[k] = _fit_one(f, t)
    return per_flop, per_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boards", default="qemu-m4,qemu-m0", help="emulated boards (default: qemu-m4,qemu-m0)")
    ap.add_argument("--models", default=",".join(zoo.NAMES), help="zoo models (default: all)")
    ap.add_argument("--measure", metavar="BOARD", help="re-measure BOARD's calibration and print its tables")
    a = ap.parse_args()
    for tool in ("qemu-system-arm", "arm-none-eabi-gcc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs {tool} (scripts/setup.sh installs it)")
    if a.measure:
        measure(a.measure)
        return
    print_table(a.boards.split(","), a.models.split(","))


if __name__ == "__main__":
    main()
