"""Solver benchmark on graphs shaped like POET's (linear T=27, vgg16_cifar T=81, resnet18_cifar T=133).

RAM at 60% of the store-all peak, deadline 1.5x one computation of every node, POET's Cortex-M4F costs
(boards/nrf52840.toml), HiGHS through highspy (--solver SCIP and the others through cvxpy). Everything is
judged on the *extra* energy: what a schedule costs above the floor (one computation of every node, no
paging). For each graph, in one run:

  ours       strategies.run("poet"): the exact per-hazard formulation, heuristics as incumbents, a cold HiGHS
             solve then a HiGHS solve started from the best schedule;
  poet2022   POET's original formulation (aggregated big-M frees), cold, same solver and time limit;
  greedy, chen-sqrt   the heuristics alone.

It prints each step's figures as they come: the time to reach each extra-energy level (relative to the best
schedule any method found), the final extra energy, the bound, and the gap on extra energy.

    python benchmarks/solver.py [--graphs linear,vgg16_cifar,resnet18_cifar] [--time-limit 60]
"""

from __future__ import annotations

import argparse
import time

from poetc import boards
from poetc.fmt import table
from poetc.schedule import milp, poetgraphs, strategies

LEVELS = (10.0, 2.0, 1.1, 1.01, 1.0)  # multiples of the best extra energy found by any method


def time_to(trace: list[tuple[float, float, float]], target: float) -> str:
    for ts, best, _ in trace:
        if best <= target * (1 + 1e-9):
            return f"{ts:.1f}"
    return "-"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--graphs", default="linear,vgg16_cifar,resnet18_cifar")
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--solver", default="HIGHS")
    ap.add_argument("--ram-fraction", type=float, default=0.6)
    a = ap.parse_args()
    board = boards.load("nrf52840")
    rows = []
    for name in a.graphs.split(","):
        p = poetgraphs.build(name, board, ram_fraction=a.ram_fraction)
        print(
            f"\n{name}: T = {p.T}, arena budget {p.budget} B (the largest node needs {p.min_budget()} B), "
            f"floor {p.floor_j:.6g} J, deadline {p.deadline_s:.4g} s",
            flush=True,
        )
        results: dict[str, tuple[float | None, float | None, list, str, float]] = {}
        for h in ("greedy", "chen-sqrt"):
            t0 = time.perf_counter()
            s = strategies.run(h, p)
            dt = time.perf_counter() - t0
            ex = s.extra_j(p)
            results[h] = (ex, None, [(dt, ex, 0.0)] if ex is not None else [], s.status, dt)
            print(f"  {h}: extra {ex} J in {dt:.2f} s", flush=True)
        t0 = time.perf_counter()
        s = strategies.run(
            "poet", p, strategies.SolveOptions(solver=a.solver, time_limit_s=a.time_limit, trace=True)
        )
        dt = time.perf_counter() - t0
        results["ours"] = (s.extra_j(p), s.bound_j, s.meta.get("trace", []), s.status, dt)
        print(
            f"  ours: {s.status}, extra {s.extra_j(p)} J, bound {s.bound_j} J, {dt:.1f} s ({s.message})",
            flush=True,
        )
        t0 = time.perf_counter()
        r = milp.solve(
            p, milp.MilpOptions(solver=a.solver, time_limit_s=a.time_limit, formulation="poet2022")
        )
        dt = time.perf_counter() - t0
        results["poet2022"] = (r.extra_j, r.bound_j, r.trace, r.status, dt)
        print(f"  poet2022: {r.status}, extra {r.extra_j} J, bound {r.bound_j} J, {dt:.1f} s", flush=True)
        best = min((v[0] for v in results.values() if v[0] is not None), default=None)
        for method, (ex, bd, trace, status, dt) in results.items():
            gap = "-" if ex is None or bd is None else f"{100 * max(0.0, ex - bd) / max(ex, 1e-30):.2f}%"
            lv = [time_to(trace, best * k) if best is not None else "-" for k in LEVELS]
            rows.append(
                [
                    name,
                    method,
                    "none" if ex is None else f"{ex:.6g}",
                    "-" if bd is None else f"{bd:.6g}",
                    gap,
                    *lv,
                    f"{dt:.1f} ({status})",
                ]
            )
    print()
    print(
        table(
            ["graph", "method", "extra J", "bound J", "gap", *[f"t@{k}x" for k in LEVELS], "total s"],
            rows,
            "llrrr" + "r" * len(LEVELS) + "r",
        )
    )
    print("t@kx: seconds until the method's best schedule was within k times the best extra energy found")


if __name__ == "__main__":
    main()
