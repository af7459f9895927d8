"""Every scheduling strategy behind one call: ``run(name, problem, options) -> Solution``.

  poet         the MILP with rematerialization and paging (milp.py), warm-started from the best heuristic
  remat-only   the same MILP without paging (Checkmate's problem)
  paging-only  the same MILP without rematerialization
  store-all    compute once, keep every output until its last reader
  chen-sqrt    Chen et al.'s sqrt(n) checkpointing (baselines.py)
  greedy       DTR-score eviction with Capuchin's swap-or-drop rule (baselines.py)

Every solution is lowered to a program and replayed by the simulator against the budget and the deadline
before it is returned; a strategy that cannot fit says so (status "infeasible") instead of returning a
schedule that would not run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import PoetcError
from . import baselines, milp
from .problem import Problem
from .program import Program, Schedule, from_program, lower, store_all, trim
from .simulate import Replay, ScheduleError, replay

NAMES = ("poet", "store-all", "remat-only", "paging-only", "chen-sqrt", "greedy")
MILP_STRATEGIES = {"poet": (True, True), "remat-only": (True, False), "paging-only": (False, True)}


@dataclass(frozen=True)
class SolveOptions:
    solver: str = "HIGHS"
    time_limit_s: float = 60.0
    gap: float = 1e-4
    formulation: str = "poet"
    remat: bool = True  # --no-remat switches recomputation off for the poet strategy
    paging: bool = True  # --no-paging switches paging off for the poet strategy
    warm_start: bool = True  # also evaluate the heuristics and keep the best schedule found
    mip_start: bool = True  # if the first solve is not proven optimal, restart HiGHS from the best schedule
    trace: bool = False  # record (seconds, best extra J, bound J) as the solve progresses (meta["trace"])
    verbose: bool = False


@dataclass
class Solution:
    strategy: str
    status: str  # optimal | feasible | heuristic | infeasible | no_solution
    program: Program | None
    schedule: Schedule | None
    replay: Replay | None
    solve_s: float
    gap: float | None = None  # on extra energy, for MILP strategies
    bound_j: float | None = None  # lower bound on the extra energy
    message: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.program is not None

    def extra_j(self, p: Problem) -> float | None:
        return None if self.replay is None else self.replay.energy_j - p.floor_j


def _check(
    p: Problem, name: str, prog: Program, t0: float, status: str, msg: str = "", **kw: Any
) -> Solution:
    try:
        r = replay(p, prog, budget=p.budget)
    except ScheduleError as e:
        return Solution(name, "infeasible", None, None, None, time.perf_counter() - t0, message=str(e))
    if p.deadline_s is not None and r.time_s > p.deadline_s * (1 + 1e-9):
        return Solution(
            name,
            "infeasible",
            None,
            None,
            None,
            time.perf_counter() - t0,
            message=f"needs {r.time_s:.4g} s, over the deadline of {p.deadline_s:.4g} s",
        )
    sched = kw.pop("schedule", None) or from_program(p, prog, name)
    return Solution(name, status, prog, sched, r, time.perf_counter() - t0, message=msg, **kw)


def _heuristic(name: str, p: Problem) -> Solution:
    t0 = time.perf_counter()
    if name == "store-all":
        return _check(p, name, lower(p, store_all(p)), t0, "heuristic")
    fn = {"chen-sqrt": baselines.chen_sqrt, "greedy": baselines.greedy}[name]
    prog, msg = fn(p)
    if prog is None:
        return Solution(name, "infeasible", None, None, None, time.perf_counter() - t0, message=msg)
    return _check(p, name, prog, t0, "heuristic", msg)


HEURISTICS = ("store-all", "chen-sqrt", "greedy")


def feasible_heuristics(p: Problem) -> list[Solution]:
    return [s for s in (_heuristic(h, p) for h in HEURISTICS) if s.ok]


def best_heuristic(p: Problem) -> Solution | None:
    return min(feasible_heuristics(p), key=lambda s: s.replay.energy_j, default=None)


def run(
    name: str,
    p: Problem,
    opt: SolveOptions = SolveOptions(),
    progress: Callable[[str], None] | None = None,
    warm: Schedule | None = None,
) -> Solution:
    """Solve ``p`` with strategy ``name``.

    MILP strategies also evaluate the best heuristic (and ``warm``, a schedule found elsewhere, e.g. by a
    baseline at the same budget) within what the variant allows, and return the best replayed schedule; the
    solver's bound (from a search that did not see these incumbents) still bounds the gap."""
    if name not in NAMES:
        raise PoetcError(f"unknown strategy {name!r} (known: {', '.join(NAMES)})")
    if name not in MILP_STRATEGIES:
        return _heuristic(name, p)
    remat, paging = MILP_STRATEGIES[name]
    remat, paging = remat and opt.remat, paging and opt.paging
    t0 = time.perf_counter()
    if p.budget < p.min_budget():
        k = max(range(p.T), key=lambda k: p.mem[k] + sum(p.mem[u] for u in set(p.inputs[k])))
        return Solution(
            name,
            "infeasible",
            None,
            None,
            None,
            0.0,
            message=(
                f"node {p.names[k]!r} alone needs {p.min_budget()} B with its inputs, over the arena budget of "
                f"{p.budget} B"
            ),
        )
    seeds: list[Solution] = []
    if opt.warm_start:
        seeds += [h for h in feasible_heuristics(p) if _allowed(h.schedule, remat, paging)]
    if opt.warm_start and remat and paging:
        # the paging-only MILP is small and quick; POET's larger one can take long to find what it finds
        sub = run(
            "paging-only",
            p,
            replace(opt, time_limit_s=max(1.0, 0.2 * opt.time_limit_s), trace=False),
            progress=None,
        )
        if sub.ok:
            seeds.append(sub)
    if warm is not None and _allowed(warm, remat, paging):
        sol = _check(p, "warm", lower(p, trim(p, warm)), t0, "heuristic")
        if sol.ok:
            seeds.append(sol)
    best_seed = min(seeds, key=lambda x: x.replay.energy_j, default=None)
    # Two phases: a cold solve with presolve (fast on small models, and its bound is always valid), then, if it
    # did not prove optimality, a solve started from the best schedule known so far for the remaining time.
    cold_s = opt.time_limit_s if best_seed is None or not opt.mip_start else 0.5 * opt.time_limit_s
    base = milp.MilpOptions(
        solver=opt.solver,
        time_limit_s=cold_s,
        gap=opt.gap,
        remat=remat,
        paging=paging,
        formulation=opt.formulation,
        verbose=opt.verbose,
        trace=opt.trace,
    )
    trace: list[tuple[float, float, float]] = []
    if best_seed is not None:
        trace.append((time.perf_counter() - t0, best_seed.replay.energy_j - p.floor_j, 0.0))
    if progress and cold_s < opt.time_limit_s:
        progress(
            f"{name}: time limit {opt.time_limit_s:g} s in two solves: up to {cold_s:g} s from scratch, then "
            "the rest from the best schedule so far (only if the first does not prove optimality)"
        )
    t_milp = time.perf_counter() - t0
    res = milp.solve(p, base, strategy=name, on_progress=progress)
    meta = {
        "formulation": opt.formulation,
        "solver": res.solver,
        "n_binary": res.n_binary,
        "n_rows": res.n_rows,
        "milp_status": res.status,
        "remat": remat,
        "paging": paging,
    }
    milp_sol = _milp_solution(p, name, res, t0, meta)
    bound = res.bound_j
    trace += [(t_milp + ts, b, lb) for ts, b, lb in res.log]
    if (
        res.status != "optimal"
        and res.status != "infeasible"
        and opt.mip_start
        and opt.solver.upper() == "HIGHS"
    ):
        inc = min(
            [c for c in (milp_sol, best_seed) if c is not None], key=lambda c: c.replay.energy_j, default=None
        )
        left = opt.time_limit_s - (time.perf_counter() - t0)
        if inc is not None and left > 1.0:
            t_milp = time.perf_counter() - t0
            res2 = milp.solve(
                p,
                replace(base, time_limit_s=left, warm_start=trim(p, inc.schedule)),
                strategy=name,
                on_progress=progress,
            )
            meta["milp_status"] = res2.status
            meta["warm_start"] = inc.strategy
            trace += [(t_milp + ts, b, lb) for ts, b, lb in res2.log]
            sol2 = _milp_solution(p, name, res2, t0, meta)
            if sol2 is not None and (milp_sol is None or sol2.replay.energy_j < milp_sol.replay.energy_j):
                milp_sol = sol2
            if res2.bound_j is not None:
                bound = max(bound or 0.0, res2.bound_j)
            res = res2 if res2.status != "no_solution" else res
    cands = [c for c in (milp_sol, best_seed) if c is not None]
    if not cands:
        why = {
            "infeasible": "the solver proved that no schedule fits the budget"
            + (" and the deadline" if p.deadline_s is not None else ""),
            "no_solution": f"time limit of {opt.time_limit_s:g} s reached without a schedule",
        }.get(res.status, res.message)
        status = "infeasible" if res.status == "infeasible" else "no_solution"
        return Solution(
            name, status, None, None, None, time.perf_counter() - t0, None, res.bound_j, why, meta
        )
    best = min(cands, key=lambda c: c.replay.energy_j)
    extra = best.replay.energy_j - p.floor_j
    gap = None if bound is None else (0.0 if extra <= 1e-15 else max(0.0, (extra - bound) / extra))
    proven = gap is not None and gap <= opt.gap
    if best is milp_sol:
        how = f"{opt.solver} MILP"
    else:
        how = f"{best.strategy} schedule (the MILP {'found nothing better' if milp_sol else res.status})"
        meta["incumbent"] = best.strategy
    status = "optimal" if proven else "feasible"
    msg = (
        f"proven optimal ({how})"
        if proven
        else f"not proven optimal, gap {100 * gap:.2f}% ({how})"
        if gap is not None
        else f"no bound ({how})"
    )
    sched = best.schedule if best is milp_sol else from_program(p, best.program, name)
    if opt.trace:
        meta["trace"] = _monotone(trace)
    return Solution(
        name, status, best.program, sched, best.replay, time.perf_counter() - t0, gap, bound, msg, meta
    )


def _monotone(trace: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """Best extra energy so far and best bound so far, over time."""
    out, best, bound = [], float("inf"), 0.0
    for ts, b, lb in sorted(trace):
        best, bound = min(best, b), max(bound, lb if lb == lb else 0.0)
        out.append((ts, best, bound))
    return out


def _milp_solution(p: Problem, name: str, res: milp.MilpResult, t0: float, meta: dict) -> Solution | None:
    if res.schedule is None:
        return None
    sol = _check(p, name, lower(p, res.schedule), t0, res.status, schedule=res.schedule)
    if sol.ok:
        return sol
    if res.status == "optimal":  # the solver's answer did not survive the replay: never build it
        raise PoetcError(f"internal error: the {name} schedule failed the replay check: {sol.message}")
    meta["rejected"] = sol.message  # a time-limited solver's point that is not a schedule
    return None


def _allowed(s: Schedule, remat: bool, paging: bool) -> bool:
    """Whether a warm start uses only what the MILP variant allows."""
    import numpy as np

    if not remat and (s.R & ~np.eye(s.T, dtype=bool)).any():
        return False
    return paging or not (s.M_in.any() or s.M_out.any())


def smallest_budget(p: Problem, name: str = "poet", opt: SolveOptions = SolveOptions()) -> tuple[int, str]:
    """The smallest arena budget at which ``name`` finds a schedule: (bytes, how it was found).

    Starts from the lower bound (largest node with its inputs); the sum of all outputs is an upper end; bisection
    in between with the heuristics whose schedules the strategy allows (cheap) and, for MILP strategies, the
    MILP's feasibility."""
    lo = p.min_budget()

    def feasible(b: int) -> bool:
        q = p.with_budget(b)
        if name in MILP_STRATEGIES:
            remat, paging = MILP_STRATEGIES[name]
            remat, paging = remat and opt.remat, paging and opt.paging
            if any(_allowed(h.schedule, remat, paging) for h in feasible_heuristics(q)):
                return True
            r = run(name, q, replace(opt, time_limit_s=min(opt.time_limit_s, 20.0), warm_start=False))
            return r.ok
        return _heuristic(name, q).ok

    if feasible(lo):
        return lo, "lower bound, reached"
    hi = max(lo, int(p.mem.sum()) + 1)
    if not feasible(hi):
        return -1, "no budget suffices (the deadline or the storage capacity is the limit)"
    while hi - lo > max(64, lo // 200):
        mid = (lo + hi) // 2
        if feasible(mid):
            hi = mid
        else:
            lo = mid
    return hi, "found by bisection (within 0.5%)"


def figures(p: Problem, sol: Solution, fixed_bytes: int, arena_bytes: int | None) -> dict[str, Any]:
    """The machine-readable result of one strategy (``poetc solve --json``, ``schedule.json``)."""
    r = sol.replay
    out: dict[str, Any] = {
        "status": sol.status,
        "strategy": sol.strategy,
        "feasible": sol.ok,
        "message": sol.message,
    }
    if r is None:
        out.update(
            energy_j=None,
            compute_energy_j=None,
            paging_energy_j=None,
            time_s=None,
            peak_ram_bytes=None,
            arena_bytes=None,
            recomputes=None,
            page_outs=None,
            page_ins=None,
        )
    else:
        out.update(
            energy_j=r.energy_j,
            compute_energy_j=r.compute_j,
            paging_energy_j=r.paging_j,
            time_s=r.time_s,
            peak_ram_bytes=fixed_bytes + r.peak_bytes,
            arena_bytes=arena_bytes,
            recomputes=r.recomputes,
            page_outs=r.page_outs,
            page_ins=r.page_ins,
        )
    out.update(
        solve_s=sol.solve_s,
        gap=sol.gap,
        floor_energy_j=p.floor_j,
        extra_energy_j=None if r is None else r.energy_j - p.floor_j,
        bound_extra_j=sol.bound_j,
        ram_budget_bytes=fixed_bytes + p.budget,
        deadline_s=p.deadline_s,
    )
    return out
