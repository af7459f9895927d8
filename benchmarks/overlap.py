"""Paging that overlaps computation: what the time model changes, per zoo model, board and deadline.

For each model (at its RAM budget) and board (one whose board file says ``pager_overlap = false`` is evaluated as if
it could, and labelled a what-if), at
deadlines of 1.1x, 1.2x, 1.5x and 2x one computation of every node, POET's schedule with the overlapping time
model (a stage takes max(compute, transfers)) and without it (``--no-overlap``: compute + transfers), printing
energy per step, recomputations, page transfers (activations out/in) and parameter transfers (loads/write-backs),
the step time of each model, and the event-model time of the program the device runs.

With ``--run``, on qemu-m4 the demo's case (digits-deep-mlp, 200 KB, deadline 1.1x by default) is built both
ways and trained for a few steps in QEMU: the counted instructions per step (and the RUNs + RECOMPUTEs of the
program) show that the overlapping schedule does no extra work, and the weights must be bit for bit equal.

    python benchmarks/overlap.py [--models digits-deep-mlp=200K,digits-cnn=106K] [--boards nrf52840,qemu-m4]
                                 [--deadlines 1.1x,1.2x,1.5x,2x] [--time-limit 20] [--run [--run-deadline 1.1x]]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from poetc import boards, frontend, pipeline
from poetc.errors import PoetcError
from poetc.fmt import joules, table
from poetc.frontend import zoo
from poetc.schedule import strategies

MODELS = "digits-deep-mlp=200K,digits-cnn=106K,digits-mlp=48K"
BOARDS = "nrf52840,qemu-m4"
DEADLINES = "1.1x,1.2x,1.5x,2x"


def solve(model, board, ram: int, deadline: str, overlap: bool, opt) -> dict | str:
    try:
        pl = pipeline.plan(model, board, ram, deadline, overlap=overlap)
    except PoetcError as e:
        return f"no plan: {e}"[:40]
    sol = strategies.run("poet", pl.problem, opt)
    if not sol.ok:
        return "infeasible"
    r = sol.replay
    return {
        "energy": r.energy_j,
        "re": r.recomputes,
        "pages": f"{r.page_outs}/{r.page_ins}",
        "params": f"{r.param_loads}/{r.param_stores}",
        "time": r.time_s,
        "event": r.event_time_s,
        "status": sol.status,
    }


def figures(a: argparse.Namespace) -> None:
    opt = strategies.SolveOptions(time_limit_s=a.time_limit)
    for bname in a.boards.split(","):
        board = boards.load(bname)
        what_if = ""
        if not board.pager_overlap:  # a board whose pager cannot overlap: evaluated as if it could
            board = dataclasses.replace(board, pager_overlap=True)
            what_if = " (what-if: its board file says pager_overlap = false)"
        rows = []
        for spec in a.models.split(","):
            name, _, ram_text = spec.partition("=")
            ram = pipeline.parse_bytes(ram_text) if ram_text else board.ram_bytes
            model = frontend.load(name, batch=zoo.default_batch(name))
            for dl in a.deadlines.split(","):
                t0 = time.perf_counter()
                got = {ov: solve(model, board, ram, dl, ov, opt) for ov in (True, False)}
                row = [name, ram_text or "board", dl]
                for ov in (True, False):
                    g = got[ov]
                    if isinstance(g, str):
                        row += [g, "-", "-", "-", "-"]
                    else:
                        row += [
                            joules(g["energy"]) + ("" if g["status"] == "optimal" else "*"),
                            g["re"], g["pages"], g["params"], f"{g['time']:.4g} s",
                        ]  # fmt: skip
                a_, b_ = got[True], got[False]
                if isinstance(a_, dict) and isinstance(b_, dict):
                    row.append(f"{100 * (b_['energy'] - a_['energy']) / b_['energy']:.1f}%")
                else:
                    row.append("-")
                row.append(f"{time.perf_counter() - t0:.0f} s")
                rows.append(row)
                print("  " + " | ".join(str(x) for x in row), flush=True)
        heads = ["model", "RAM", "deadline"]
        for tag in ("overlap", "no overlap"):
            heads += [f"energy ({tag})", "recomp.", "pages out/in", "params ld/st", "time"]
        heads += ["saved", "solves"]
        print(f"\n{board.name}: POET's schedule with and without overlapping transfers{what_if}\n")
        print(table(heads, rows))
        print("* not proven optimal within the time limit (a longer --time-limit may find less energy)\n")


def run_on_qemu(a: argparse.Namespace) -> None:
    from poetc.device import harness, target
    from poetc.emit import builddir
    from poetc.schedule import waits

    board = boards.load("qemu-m4")
    model = frontend.load("digits-deep-mlp")
    opt = strategies.SolveOptions(time_limit_s=a.time_limit)
    tgt = target.for_board(board)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ov in (True, False):
            c = pipeline.compile_model(
                model, board, 200 * 1024, "poet", opts=opt, deadline=a.run_deadline, overlap=ov
            )
            out = Path(tmp) / f"ov{int(ov)}"
            builddir.write(c, out, "benchmarks/overlap.py", tgt)
            b = builddir.open_build(out)
            rng = np.random.default_rng(0)  # the same batch for both builds
            x, y = rng.standard_normal(b.input_shape).astype(np.float32), rng.integers(0, 10, b.batch)
            with tgt.launch(out, timeout_s=120) as s:
                dev = harness.Device(b, s, tgt.seconds)
                dev.set_batch(x, y)
                reps = [dev.step(0.05).reply for _ in range(3)]
                kernels = sum(dev.node_ticks())  # RUN and RECOMPUTE of the last step, per node
                params = dev.params()
            runs = sum(1 for i in c.programs[0].instrs if i.op.name in ("RUN", "RECOMPUTE"))
            r = c.replays[0]
            results[ov] = (reps[-1], runs, r, params, waits.count(c.programs[0]), kernels)
    rows = []
    for ov, (rep, runs, r, _p, nw, kernels) in results.items():
        rows.append([
            "overlap" if ov else "no overlap", rep.ticks, kernels, rep.ticks - kernels, runs, r.recomputes,
            f"{rep.page_outs}/{rep.page_ins}", nw, rep.wait_ticks, joules(r.energy_j), f"{r.time_s:.4g} s",
        ])  # fmt: skip
    print(f"qemu-m4, digits-deep-mlp, 200 KB, deadline {a.run_deadline}: counted per step (last of 3)\n")
    print(table(["schedule", "instructions", "in kernels", "outside kernels", "RUN+RECOMPUTE", "recomputes",
                 "pages out/in", "WAITs", "in WAIT (CRC incl.)", "energy (model)", "time (model)"], rows))  # fmt: skip
    (r1, k1), (r0, k0) = (results[True][0], results[True][5]), (results[False][0], results[False][5])
    print(
        f"\nkernel instructions differ by {k1 - k0:+d} (the schedules' recomputations), the rest by "
        f"{(r1.ticks - k1) - (r0.ticks - k0):+d} (interpreter, CRCs of the bytes paged, WAITs and polls)"
    )
    same = all(np.array_equal(results[True][3][k], results[False][3][k]) for k in results[True][3])
    print(f"\ntrained weights bit for bit equal with and without overlap: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=MODELS, help="zoo models with RAM budgets, name=RAM, comma-separated")
    ap.add_argument("--boards", default=BOARDS)
    ap.add_argument("--deadlines", default=DEADLINES)
    ap.add_argument("--time-limit", type=float, default=20.0, help="seconds per MILP solve (default 20)")
    ap.add_argument("--run", action="store_true", help="also build and train the demo case in QEMU (qemu-m4)")
    ap.add_argument("--run-deadline", default="1.1x")
    ap.add_argument("--no-figures", action="store_true", help="only --run")
    a = ap.parse_args()
    if not a.no_figures:
        figures(a)
    if a.run:
        run_on_qemu(a)


if __name__ == "__main__":
    main()
