"""Energy versus RAM budget: every strategy at budgets from the smallest feasible one to the store-all peak.

Solves run in parallel worker processes (one per core; each MILP solve then uses one thread). At each budget
POET is warm-started from the best baseline found at that budget, so its energy is never above a baseline's
unless the solver's reported gap allows it (``poet_not_best`` checks exactly that).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PoetcError
from ..fmt import joules, nbytes, table
from . import memplan, strategies
from .problem import Problem
from .program import from_program


@dataclass
class SweepResult:
    budgets: list[int]  # total RAM budgets (fixed + arena)
    strategies: list[str]
    rows: list[dict[str, Any]]
    floor_j: float
    smallest: tuple[int, str]


def _job(p: Problem, name: str, opt: strategies.SolveOptions, fixed: int, warm_prog=None) -> dict[str, Any]:
    warm = from_program(p, warm_prog, "warm") if warm_prog is not None else None
    sol = strategies.run(name, p, opt, warm=warm)
    arena = memplan.plan(sol.program, p.mem).arena_bytes if sol.ok else None
    f = strategies.figures(p, sol, fixed, arena)
    f["_program"] = sol.program
    return f


def run(
    p: Problem,
    fixed: int,
    ram_budget: int,
    names: list[str],
    opt: strategies.SolveOptions,
    points: int,
    jobs: int = 0,
    say: Callable[[str], None] = lambda s: None,
    on_solve: Callable[[int, int], None] | None = None,
) -> SweepResult:
    """Every strategy of ``names`` at ``points`` budgets. ``p``'s own budget is ignored: the arena budgets run
    from the smallest feasible one to the store-all peak, capped at ``ram_budget`` (the board's RAM) minus
    ``fixed`` (what the arena cannot use: parameters, buffers, stack). ``on_solve(done, total)`` follows the
    solves as they finish."""
    peak = strategies.store_all_peak(p)
    say("finding the smallest feasible budget ...")
    lo, how = strategies.smallest_budget(p, "poet", opt)
    if lo < 0:
        lo, how = p.min_budget(), "lower bound (no schedule found)"
    lo = min(lo, peak)
    cap = ram_budget - fixed  # the board's RAM minus what is fixed
    if lo > cap:
        raise PoetcError(
            f"the smallest feasible schedule needs {fixed + lo} bytes of RAM, over the board's {ram_budget}"
        )
    if peak > cap:
        say(
            f"the store-all peak ({nbytes(fixed + peak)}) is over the board's RAM: the sweep stops at "
            f"{nbytes(ram_budget)}"
        )
        peak = cap
    arena_budgets = sorted({round(x) for x in np.linspace(lo, peak, points)})
    say(
        f"{len(arena_budgets)} budgets from {nbytes(fixed + lo)} ({how}) to {nbytes(fixed + peak)} "
        f"(store-all peak); {len(names)} strategies"
    )
    workers = jobs or os.cpu_count() or 1
    baselines = [n for n in names if n != "poet"]
    total = len(arena_budgets) * len(names)
    rows: list[dict[str, Any]] = []
    left = {b: len(baselines) for b in arena_budgets}  # baselines still running at each budget
    base_rows: dict[int, list[dict[str, Any]]] = {b: [] for b in arena_budgets}
    if on_solve:
        on_solve(0, total)
    # spawn, not fork: a forked child inherits HiGHS's thread pool in an unusable state and hangs
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        running = {
            ex.submit(_job, p.with_budget(b), n, opt, fixed): (b, n) for b in arena_budgets for n in baselines
        }

        def poet_at(b: int) -> None:
            # POET at a budget starts once its baselines are in, from the best of them
            feas = [r for r in base_rows[b] if r["feasible"]]
            best = min(feas, key=lambda r: r["energy_j"])["_program"] if feas else None
            running[ex.submit(_job, p.with_budget(b), "poet", opt, fixed, best)] = (b, "poet")

        if "poet" in names:
            for b in arena_budgets:
                if not left[b]:
                    poet_at(b)
        done = 0
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                b, n = running.pop(fut)
                row = fut.result()
                rows.append(row)
                done += 1
                if n != "poet":
                    base_rows[b].append(row)
                    left[b] -= 1
                    if not left[b] and "poet" in names:
                        poet_at(b)
                if sum(1 for r in rows if r["ram_budget_bytes"] == fixed + b) == len(names):
                    say(f"budget {nbytes(fixed + b)} done")
                if on_solve:
                    on_solve(done, total)
    for r in rows:
        r.pop("_program", None)
    order = {n: k for k, n in enumerate(names)}
    rows.sort(key=lambda r: (r["ram_budget_bytes"], order[r["strategy"]]))
    return SweepResult([fixed + b for b in arena_budgets], names, rows, p.floor_j, (fixed + lo, how))


def table_text(res: SweepResult) -> str:
    by = {(r["ram_budget_bytes"], r["strategy"]): r for r in res.rows}
    rows = []
    for b in res.budgets:
        row: list[object] = [nbytes(b)]
        for n in res.strategies:
            r = by.get((b, n))
            row.append(joules(r["energy_j"]) if r and r["feasible"] else "-")
        rows.append(row)
    head = table(["RAM budget", *res.strategies], rows, "r" * (1 + len(res.strategies)))
    return (
        head + f"\nfloor (one computation of every node): {joules(res.floor_j)}; smallest feasible budget "
        f"{nbytes(res.smallest[0])} ({res.smallest[1]})"
    )


def poet_not_best(res: SweepResult) -> list[str]:
    """Budgets where POET's energy exceeds a baseline's by more than its reported gap allows."""
    bad = []
    for b in res.budgets:
        rows = {r["strategy"]: r for r in res.rows if r["ram_budget_bytes"] == b}
        poet = rows.get("poet")
        if poet is None:
            continue
        for n, r in rows.items():
            if n == "poet" or not r["feasible"]:
                continue
            if not poet["feasible"]:
                bad.append(f"{nbytes(b)}: poet infeasible but {n} feasible")
                continue
            allow = (poet["gap"] or 0.0) * max(poet["extra_energy_j"], 0.0) + 1e-12 + 1e-9 * poet["energy_j"]
            if poet["energy_j"] > r["energy_j"] + allow:
                bad.append(f"{nbytes(b)}: poet {poet['energy_j']:.6g} J > {n} {r['energy_j']:.6g} J")
    return bad
