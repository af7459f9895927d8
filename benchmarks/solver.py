"""Solver benchmark on graphs shaped like POET's (linear T=27, vgg16_cifar T=81, resnet18_cifar T=133).

RAM at 60% of the store-all peak, deadline 1.5x one computation of every node, POET's Cortex-M4F costs
(boards/nrf52840.toml). For each graph it prints, for our formulation and POET's original (poet2022) with the
same solver and time limit: the extra energy over the floor (one computation of every node) the solver
reached, its bound, the gap on extra energy, the time, and how the heuristics compare.

    python benchmarks/solver.py [--graphs linear,vgg16_cifar,resnet18_cifar] [--time-limit 60] [--solver HIGHS]
"""

from __future__ import annotations

import argparse
import time

from poetc import boards, milp, poetgraphs, strategies
from poetc.fmt import table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--graphs", default="linear,vgg16_cifar,resnet18_cifar")
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--solver", default="HIGHS")
    ap.add_argument("--ram-fraction", type=float, default=0.6)
    ap.add_argument("--formulations", default="poet,poet2022")
    a = ap.parse_args()
    board = boards.load("nrf52840")
    rows = []
    for name in a.graphs.split(","):
        p = poetgraphs.build(name, board, ram_fraction=a.ram_fraction)
        print(
            f"{name}: T = {p.T}, arena budget {p.budget} B (min {p.min_budget()} B), floor {p.floor_j:.6f} J, "
            f"deadline {p.deadline_s:.4g} s",
            flush=True,
        )
        for h in ("greedy", "chen-sqrt"):
            t0 = time.perf_counter()
            s = strategies.run(h, p)
            ex = s.extra_j(p)
            rows.append(
                [
                    name,
                    h,
                    "-",
                    f"{ex:.6f}" if ex is not None else "infeasible",
                    "-",
                    "-",
                    f"{time.perf_counter() - t0:.2f}",
                ]
            )
            print("  ", rows[-1], flush=True)
        for form in a.formulations.split(","):
            r = milp.solve(p, milp.MilpOptions(solver=a.solver, time_limit_s=a.time_limit, formulation=form))
            ex = "none" if r.extra_j is None else f"{r.extra_j:.6f}"
            bd = "-" if r.bound_j is None else f"{r.bound_j:.6f}"
            gap = "-" if r.gap is None else f"{100 * r.gap:.2f}%"
            rows.append([name, f"MILP {form}", r.n_binary, ex, bd, gap, f"{r.solve_s:.1f} ({r.status})"])
            print("  ", rows[-1], flush=True)
    print()
    print(
        table(["graph", "method", "binaries", "extra J", "bound J", "gap (extra)", "time s"], rows, "llrrrrr")
    )


if __name__ == "__main__":
    main()
