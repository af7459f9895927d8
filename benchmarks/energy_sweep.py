"""Energy of POET versus every baseline over a RAM-budget sweep, as a table and a plot.

Budgets from the smallest feasible one to the store-all peak (both ends included), every strategy at every
budget (POET warm-started from the best baseline at the same budget), solves in parallel on the cores.

    python benchmarks/energy_sweep.py [--model mlp] [--board nrf52840] [--batch 8] [--points 6] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from poetc import boards, frontend, pipeline
from poetc.report import plots
from poetc.schedule import strategies, sweep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--board", default="nrf52840")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--points", type=int, default=6)
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--deadline", default=None)
    ap.add_argument("--out", default="benchmark-sweep")
    a = ap.parse_args()
    board = boards.load(a.board)
    model = frontend.load(a.model, batch=a.batch)
    pl = pipeline.plan(model, board, deadline=a.deadline)
    res = sweep.run(
        pl.problem,
        pl.fixed.fixed,
        pl.fixed.budget,
        list(strategies.NAMES),
        strategies.SolveOptions(time_limit_s=a.time_limit),
        a.points,
        say=lambda s: print("  " + s, flush=True),
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    png = plots.energy_vs_budget(res, out / "energy-vs-ram.png", plots.Subject.of(model, board.name))
    print(sweep.table_text(res))
    bad = sweep.poet_not_best(res)
    print(
        "POET is at or below every baseline at every budget"
        if not bad
        else "POET above a baseline: " + "; ".join(bad)
    )
    print(f"plot: {png}")


if __name__ == "__main__":
    main()
