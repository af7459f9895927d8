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

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import PoetcError
from . import baselines, milp
from .milp import Progress
from .problem import Problem
from .program import Program, Schedule, from_program, lower, store_all, trim
from .simulate import Replay, ScheduleError, replay

NAMES = ("poet", "store-all", "remat-only", "paging-only", "chen-sqrt", "greedy")
MILP_STRATEGIES = {"poet": (True, True), "remat-only": (True, False), "paging-only": (False, True)}
LATE_SEEDS_T = 64  # up to this many nodes the poet MILP runs before the seeding MILPs (see run)


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
    trace: bool = False  # keep (seconds, best extra J, bound J) as the solve progresses (meta["trace"])
    bounder: bool = True  # poet: the relaxed model's MILP in a second process meanwhile, for the bound
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


def _heuristic_program(name: str, p: Problem) -> tuple[Program | None, str]:
    if name == "store-all":
        return lower(p, store_all(p)), ""
    fn = {"chen-sqrt": baselines.chen_sqrt, "greedy": baselines.greedy}[name]
    return fn(p)


def store_all_peak(p: Problem) -> int:
    """RAM the store-all schedule needs with every persistent tensor that may stay in RAM there: the budget
    above which no schedule can save energy."""
    ram = frozenset(l for l in p.loads if l not in p.storage_only)
    q = p.with_ram_homes(ram)
    return replay(p, _rehome(p, lower(q, store_all(q)), ram)).peak_bytes


def _rehome(p: Problem, prog: Program, ram: frozenset[int]) -> Program:
    """A program of ``p.with_ram_homes(ram)`` as one of ``p``: the RAM-homed load nodes leave the program."""
    if not ram:
        return prog
    instrs = tuple(i for i in prog.instrs if i.node not in ram)
    required = tuple(i for i in prog.required if not p.is_load[i])
    return Program(prog.name, instrs, required, prog.keep, ram)


def _heuristic(name: str, p: Problem) -> Solution:
    """A heuristic's schedule. With persistent tensors, it also chooses their homes: the largest ones go to
    storage, as few as make the heuristic's schedule fit (bisection on how many), and of the fitting choices
    near that point the one of least energy wins."""
    t0 = time.perf_counter()
    if not p.loads:
        prog, msg = _heuristic_program(name, p)
        if prog is None:
            return Solution(name, "infeasible", None, None, None, time.perf_counter() - t0, message=msg)
        return _check(p, name, prog, t0, "heuristic", msg)
    movable = sorted((l for l in p.loads if l not in p.storage_only), key=lambda l: (-int(p.mem[l]), l))
    tried: dict[int, Solution] = {}

    def attempt(k: int) -> Solution:  # the k largest movable tensors on storage, the rest in RAM
        if k not in tried:
            ram = frozenset(movable[k:])
            prog, msg = _heuristic_program(name, p.with_ram_homes(ram))
            if prog is None:
                tried[k] = Solution(name, "infeasible", None, None, None, 0.0, message=msg)
            else:
                tried[k] = _check(p, name, _rehome(p, prog, ram), t0, "heuristic", msg)
        return tried[k]

    n = len(movable)
    if attempt(0).ok:
        hi = 0
    elif attempt(n).ok:
        lo, hi = 0, n  # the smallest k that fits lies in (lo, hi]
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if attempt(mid).ok:
                hi = mid
            else:
                lo = mid
    else:
        return replace(attempt(n), solve_s=time.perf_counter() - t0)
    for k in (hi + 1, hi + 2, n):
        if k <= n:
            attempt(k)
    fits = [sol for sol in tried.values() if sol.ok]
    best = min(fits, key=lambda sol: sol.replay.energy_j)
    return replace(best, solve_s=time.perf_counter() - t0)


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
    watch: Callable[[Progress], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> Solution:
    """Solve ``p`` with strategy ``name``.

    MILP strategies also evaluate the best heuristic (and ``warm``, a schedule found elsewhere, e.g. by a
    baseline at the same budget) within what the variant allows, and return the best replayed schedule; the
    solver's bound (from a search that did not see these incumbents) still bounds the gap. ``progress`` gets
    one-line messages (the model's size, a restart); ``watch`` gets ``Progress`` records as the solve goes
    (best extra energy so far, bound, gap; monotone). ``stop``: a seed's run inside another one ends when that
    run's own bound proves its best schedule (such a run starts no bound process of its own)."""
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
    milp.warm_up(opt.solver)  # the solver's process starts while the heuristics run
    track = _Track(t0, opt.time_limit_s, watch, opt.gap, stop)
    # compact: the bound comes from the relaxed model, solved meanwhile in another process from the start on;
    # poet: the relaxed MILP runs beside the MILP from the start (it often proves the optimum first)
    bounder = None
    if opt.formulation == "compact":
        bounder = _Bounder(p, _milp_options(opt, remat, paging), t0 + opt.time_limit_s)
    elif (
        opt.formulation == "poet"
        and opt.bounder
        and stop is None
        and p.T >= _Bounder.CONCURRENT_T
        and opt.time_limit_s >= _Bounder.CONCURRENT_S
    ):
        bounder = _Bounder.concurrent(p, _milp_options(opt, remat, paging), t0 + opt.time_limit_s)
    track.bounder = bounder
    seeds = _candidates(p, opt, remat, paging, warm, track)
    # small graphs (HiGHS, poet): the MILP first, which often proves its optimum in seconds; the seeding MILPs
    # only if it did not (before its restart). Larger graphs: the seeds first (the MILP can take long to find
    # as much).
    late = opt.formulation == "poet" and opt.solver.upper() == "HIGHS" and p.T <= LATE_SEEDS_T
    if not late:
        seeds += _milp_seeds(p, opt, remat, paging, track)
    best_seed = min(seeds, key=lambda x: x.replay.energy_j, default=None)
    more = (lambda: _milp_seeds(p, opt, remat, paging, track)) if late else None
    milp_sol, res, meta = _solve_milp(name, p, opt, remat, paging, best_seed, track, progress, bounder, more)
    best_seed = _better(best_seed, bounder.best() if bounder is not None else None)
    sol = _choose(name, p, opt, milp_sol, best_seed, res, track.bound, meta, t0)
    if opt.trace:
        sol.meta["trace"] = track.trace
    return sol


class _Track:
    """The best extra energy and the best bound so far, over the candidates and the solver's runs: monotone
    ``Progress`` records for ``watch`` and the trace."""

    def __init__(
        self,
        t0: float,
        limit: float,
        watch: Callable[[Progress], None] | None,
        gap: float = 1e-4,
        outer: Callable[[], bool] | None = None,
    ) -> None:
        self.t0, self.limit, self.watch, self.gap, self.outer = t0, limit, watch, gap, outer
        self.bounder: _Bounder | None = None  # polled by done() when it runs concurrently
        self.best: float | None = None
        self.found_by = ""  # who found the best schedule so far
        self.bound: float | None = None
        self.trace: list[tuple[float, float, float]] = []  # (s, best extra J or inf, bound J or 0)

    def record(self, best: float | None, bound: float | None, what: str) -> None:
        if best is not None and (self.best is None or best < self.best):
            self.best, self.found_by = best, what
        if bound is not None:
            self.bound = bound if self.bound is None else max(self.bound, bound)
        if self.bound is not None and self.best is not None and self.bound > self.best:
            self.bound = self.best  # two runs' rounding; the bound never passes the incumbent
        rec = Progress(time.perf_counter() - self.t0, self.best, self.bound, self.limit, self.found_by)
        self.trace.append(
            (rec.elapsed_s, float("inf") if self.best is None else self.best, self.bound or 0.0)
        )
        if self.watch is not None:
            self.watch(rec)

    def done(self) -> bool:
        """Whether the best schedule so far is proven within the gap (by any bound: the solver's, the bound
        process's, polled here) or the enclosing run says stop."""
        if self.outer is not None and self.outer():
            return True
        if self.bounder is not None:
            self.bounder.poll(self)
        g = _gap_of(self.best, self.bound)
        return g is not None and g <= self.gap

    def left(self) -> float:
        """Seconds left of the time limit (the whole run's: model builds and heuristics count)."""
        return self.t0 + self.limit - time.perf_counter()

    def solver(self, rec: Progress) -> None:
        """A record of the MILP of this very problem: its incumbent and its bound both count."""
        self.record(rec.best_j, rec.bound_j, rec.what)

    def incumbents(self, what: str) -> Callable[[Progress], None]:
        """Records of a restricted problem (the paging-only MILP): its schedules fit, its bound does not hold."""
        return lambda rec: self.record(rec.best_j, None, what)


def _candidates(
    p: Problem, opt: SolveOptions, remat: bool, paging: bool, warm: Schedule | None, track: _Track
) -> list[Solution]:
    """Replayed schedules the MILP has to beat (and may start from): the heuristics and ``warm``."""
    seeds: list[Solution] = []
    t0 = time.perf_counter()
    if opt.warm_start:
        seeds += [h for h in feasible_heuristics(p) if _allowed(p, h.schedule, remat, paging)]
        for h in seeds:
            track.record(h.replay.energy_j - p.floor_j, None, h.strategy)
    if warm is not None and _allowed(p, warm, remat, paging):
        sol = _check(p, "warm", lower(p, trim(p, warm)), t0, "heuristic")
        if sol.ok:
            seeds.append(sol)
            track.record(sol.replay.energy_j - p.floor_j, None, "warm start")
    return seeds


def _milp_seeds(p: Problem, opt: SolveOptions, remat: bool, paging: bool, track: _Track) -> list[Solution]:
    """More schedules for the MILP to beat and restart from, from smaller MILPs: for POET the paging-only
    MILP's (small and quick, while POET's larger one can take long to find what it finds) and, with a pager
    that overlaps, the schedule made as if it did not. Each ends early once the best schedule is proven."""
    seeds: list[Solution] = []
    t0 = time.perf_counter()
    left = track.left()
    if (
        opt.warm_start
        and remat
        and paging
        and left > 1.0
        and opt.formulation != "compact"
        and not track.done()
    ):
        sub = run(
            "paging-only",
            p,
            replace(opt, time_limit_s=min(max(1.0, 0.2 * opt.time_limit_s), 0.5 * left), trace=False),
            watch=track.incumbents("paging-only MILP"),
            stop=track.done,
        )
        if sub.ok:
            seeds.append(sub)
    if (
        opt.warm_start
        and p.overlap
        and p.deadline_s is not None
        and opt.formulation == "poet"
        and not track.done()
    ):
        # The schedule made as if transfers did not overlap meets the deadline with overlap too (a stage's
        # max(compute, transfers) never exceeds their sum): a seed the overlapping MILP must beat (its TAU rows
        # can make the solver much slower to find as much: the demo's at 1.2x found 9.8 mJ in 30 s where the
        # no-overlap MILP proves 6.3 mJ in about 10 s, so the seed gets 40% of the time left).
        name = next((k for k, v in MILP_STRATEGIES.items() if v == (remat, paging)), "poet")
        sub = run(
            name,
            replace(p, overlap=False),
            replace(opt, time_limit_s=max(1.0, 0.4 * track.left()), trace=False),
            watch=track.incumbents("no-overlap MILP"),
            stop=track.done,
        )
        if sub.ok and sub.schedule is not None:
            sol = _check(p, "no-overlap MILP", lower(p, trim(p, sub.schedule)), t0, "heuristic")
            if sol.ok:
                seeds.append(sol)
    return seeds


def _milp_options(opt: SolveOptions, remat: bool, paging: bool) -> milp.MilpOptions:
    return milp.MilpOptions(
        solver=opt.solver,
        time_limit_s=opt.time_limit_s,
        gap=opt.gap,
        remat=remat,
        paging=paging,
        formulation=opt.formulation,
        verbose=opt.verbose,
    )


def _solve_milp(
    name: str,
    p: Problem,
    opt: SolveOptions,
    remat: bool,
    paging: bool,
    best_seed: Solution | None,
    track: _Track,
    progress: Callable[[str], None] | None,
    bounder: _Bounder | None = None,
    more_seeds: Callable[[], list[Solution]] | None = None,
) -> tuple[Solution | None, milp.MilpResult, dict[str, Any]]:
    """The MILP, built once. HiGHS: a cold solve with presolve (fast on small models, and its bound is always
    valid) for half the time left (70% on small graphs; all of it without a seed); then,
    if it did not prove optimality and time is left, a solve started from the best schedule so far, without
    presolve, for the rest; ``more_seeds`` (small graphs) makes the seeding MILPs' schedules between the two.
    Every solve stops once the best schedule so far is proven (``track.done``: the bound process's bound).
    Other solvers run once, for the whole time limit, given the best schedule as cvxpy's warm start. Returns (the MILP's replayed schedule or None, the
    last solver result, meta). Everything (the model's build too) ends by the run's time limit."""
    t0 = track.t0
    mopt = _milp_options(opt, remat, paging)
    meta: dict[str, Any] = {"formulation": opt.formulation, "remat": remat, "paging": paging}
    compact = opt.formulation == "compact"
    if track.done():  # a seed's schedule is proven already (the bound process's bound)
        if bounder is not None:
            meta["relaxed_bound_j"] = bounder.collect(track, opt.gap)
        meta["milp_status"] = "skipped"
        why = "not run: the best schedule so far is proven already"
        return (
            None,
            milp.MilpResult("skipped", None, None, None, 0.0, 0.0, 0, 0, 0, mopt.solver.upper(), why),
            meta,
        )
    try:
        model = milp.Milp(p, mopt, strategy=name, deadline=t0 + opt.time_limit_s)
    except milp.OutOfTime:
        if bounder is not None:
            bounder.collect(track, opt.gap)
        why = f"time limit reached while building the MILP ({time.perf_counter() - t0:.3g} s)"
        if progress:
            progress(f"MILP ({opt.formulation}): {why}")
        meta["milp_status"] = "no_solution"
        res = milp.MilpResult("no_solution", None, None, None, 0.0, 0.0, 0, 0, 0, mopt.solver.upper(), why)
        return None, res, meta
    highs = model.solver == "HIGHS"
    start = trim(p, best_seed.schedule) if best_seed is not None and opt.mip_start and not highs else None
    # an inline bounder solves the relaxed MILP after the compact solves: a fifth of the limit is kept for it
    reserve = 0.2 * opt.time_limit_s if bounder is not None and bounder.inline is not None else 0.0
    left = track.left() - reserve
    first_s = left
    # HiGHS (poet, poet2022): half the time from scratch, then the rest from the best schedule so far: the
    # restart from a seed is what finds the mixed schedules of the zoo's points (the CNN at 106K, 1.2x) where a
    # cold solve left to itself settles near the paging-only one. Compact: its cold solves are quick, all of it.
    if highs and best_seed is not None and opt.mip_start and not compact:
        # small graphs (seeds after the cold solve): 70%, the cold solve is the strong one there
        first_s = (0.7 if more_seeds is not None else 0.5) * left
    if progress and first_s < left:
        progress(
            f"{name}: {left:.3g} s left: up to {first_s:.3g} s from scratch, then the rest from the best schedule "
            "so far (only if the first does not prove optimality)"
        )
    if progress:
        progress(model.describe(first_s))
    # compact: its schedules are schedules of the problem, its bound is not (it forgoes memory freed inside a
    # stage); the bound comes from the relaxed model, solved meanwhile in another process
    watch = track.incumbents("compact MILP") if compact else track.solver
    # the MILP stops once any bound proves its best schedule (the bound process's, polled by track.done)
    res = model.solve(first_s, start=start, watch=watch, stop=track.done)
    meta |= {
        "solver": res.solver,
        "n_binary": res.n_binary,
        "n_rows": res.n_rows,
        "build_s": model.build_s,
        "milp_status": res.status,
    }
    if res.start_j is not None:
        meta["warm_start"] = best_seed.strategy
    milp_sol = _milp_solution(p, name, res, t0, meta)
    if res.status not in ("optimal", "infeasible") and more_seeds is not None and not track.done():
        seeds = [c for c in (best_seed, *more_seeds()) if c is not None]
        best_seed = min(seeds, key=lambda c: c.replay.energy_j, default=None)
    if res.status not in ("optimal", "infeasible") and opt.mip_start and highs and not track.done():
        relaxed = bounder.best() if bounder is not None else None
        inc = min(
            [c for c in (milp_sol, best_seed, relaxed) if c is not None],
            key=lambda c: c.replay.energy_j,
            default=None,
        )
        left = track.left() - reserve
        if inc is not None and left > 1.0:
            if progress:
                whose = "the first HIGHS run's" if inc is milp_sol else inc.strategy
                progress(
                    f"MILP ({opt.formulation}): restarting HIGHS from the best schedule so far ({whose}) for "
                    f"{left:.3g} s, presolve off"
                )
            res2 = model.solve(
                left, start=trim(p, inc.schedule), presolve=False, watch=watch, stop=track.done
            )
            meta["milp_status"] = res2.status
            meta["warm_start"] = inc.strategy
            meta["mip_start"] = "" if res2.schedule is None else res2.schedule.meta.get("mip_start", "")
            sol2 = _milp_solution(p, name, res2, t0, meta)
            if sol2 is not None and (milp_sol is None or sol2.replay.energy_j < milp_sol.replay.energy_j):
                milp_sol = sol2
            res = res2 if res2.status != "no_solution" else res
    if bounder is not None:
        meta["relaxed_bound_j"] = bounder.collect(track, opt.gap)
    if bounder is not None and not bounder.is_concurrent:
        # the compact model's "optimal" and "infeasible" are about its own stricter rows
        st = {"optimal": "feasible", "infeasible": "no_solution"}.get(res.status, res.status)
        why = "the compact model has no schedule (it forgoes memory freed inside a stage)"
        res = replace(
            res, bound_j=None, status=st, message=why if res.status == "infeasible" else res.message
        )
    return milp_sol, res, meta


class _Bounder:
    """The relaxed model (``milp`` formulation "relaxed": rows every schedule satisfies) solved in a child
    process until ``deadline`` (a ``time.perf_counter()`` time: the monotonic clock, the same in every
    process): its bounds are lower bounds on the extra energy of every schedule of the problem.

    For the compact formulation (``_Bounder(...)``) the child solves the LP relaxation at once (vgg16_cifar-m4:
    within 0.1% of the optimum in 1.6 s; resnet18_cifar-m4: 8.5 s, 2.6% under the compact model's optimum),
    then waits: the relaxed MILP (exact on linear-m0, where the LP is 46% short) runs only once the parent's own
    solve is over, so it never takes the core the incumbent search needs.

    For the poet formulation (``_Bounder.concurrent(...)``) the child solves the relaxed MILP at once, beside
    the parent's search on the second core, and sends every bound it raises; the parent polls them
    (``poll``, from ``_Track.done``) and stops as soon as its best schedule meets one. The child also sends every
    solution it finds: those that replay as schedules of the problem are incumbents (``cands``, ``best``; on
    POET's graphs they do, and the relaxed MILP finds them faster than the poet MILP). On the zoo's small points
    the relaxed MILP's optimum is the problem's (mlp 226K, the demo's digits-deep-mlp 200K 1.2x, digits-cnn
    106K 1.2x: proven in 2 s where the poet MILP takes 5 to 10 s to prove what it finds)."""

    INLINE_T = 64  # compact: up to this many nodes the relaxed model is solved in this process, after the compact one
    CONCURRENT_T = 24  # poet: below this many nodes the MILP proves its optimum before a child has started
    CONCURRENT_S = 10.0  # poet: shorter limits keep both cores for the search (a child takes 1-2 s to start)

    def __init__(self, p: Problem, mopt: milp.MilpOptions, deadline: float, concurrent: bool = False) -> None:
        import multiprocessing

        self.deadline = deadline
        self.is_concurrent = concurrent
        self.bound: float | None = None
        self.p, self.mopt = p, mopt
        self.cands: list[Solution] = []  # (concurrent) the relaxed model's solutions that are schedules
        # small: a child's start-up (seconds of imports) would cost more; a daemonic process may have no child
        small = p.T <= self.INLINE_T or multiprocessing.current_process().daemon
        self.inline = (p, mopt) if small and not concurrent else None
        if self.inline is not None:  # the relaxed MILP after the compact solve (the caller keeps it time)
            return
        ctx = multiprocessing.get_context("spawn")  # not fork: the parent may hold HiGHS threads
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_relaxed_bound, args=(p, mopt, deadline, child, concurrent), daemon=True
        )
        self.proc.start()
        child.close()
        if concurrent:
            # a thread takes what the child sends as it comes: a schedule is larger than a pipe's buffer, and
            # the child must not wait for this process, whose HiGHS may be inside a long LP (no callbacks)
            self._inbox: list[Any] = []
            self._lock = threading.Lock()
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                msg = self.conn.recv()
                with self._lock:
                    self._inbox.append(msg)
        except (EOFError, OSError):
            pass

    @classmethod
    def concurrent(cls, p: Problem, mopt: milp.MilpOptions, deadline: float) -> _Bounder | None:
        """The relaxed MILP in a child process from now on (None in a daemonic process, which may have none)."""
        import multiprocessing

        if multiprocessing.current_process().daemon:
            return None
        return cls(p, mopt, deadline, concurrent=True)

    def poll(self, track: _Track) -> None:
        """(concurrent) Record the bounds the child has sent so far, without waiting."""
        if not self.is_concurrent:
            return
        with self._lock:
            msgs, self._inbox = self._inbox, []
        for msg in msgs:
            self._take(msg, track)

    def _take(self, b: float | tuple | None, track: _Track) -> None:
        if isinstance(b, tuple):  # ("schedule", a relaxed solution): a candidate if it replays
            self._candidate(b[1], track)
            return
        if b is not None:
            self.bound = b if self.bound is None else max(self.bound, b)
            track.record(None, self.bound, "relaxed MILP")

    def _candidate(self, s: Schedule, track: _Track) -> None:
        p = self.p
        if not _allowed(p, s, self.mopt.remat, self.mopt.paging):
            return
        sol = _check(p, "relaxed MILP", lower(p, trim(p, s)), time.perf_counter(), "heuristic")
        if sol.ok:
            self.cands.append(sol)
            track.record(sol.replay.energy_j - p.floor_j, None, "relaxed MILP")

    def best(self) -> Solution | None:
        """The best of the relaxed model's solutions that replay as schedules of the problem."""
        return min(self.cands, key=lambda c: c.replay.energy_j, default=None)

    def collect(self, track: _Track, gap: float) -> float | None:
        """The child's best bound (None: none by the deadline); the child is ended either way. Compact: waits
        for it until the deadline or until the best schedule so far is proven within ``gap``; concurrent: takes
        what it has sent (the parent's search is over: nothing is left to prove against it)."""
        if self.inline is not None:
            return self._inline(track, gap)
        try:
            if self.is_concurrent:
                self.poll(track)
            else:
                self.conn.send("go")
                while not self._proven(track, gap) and self.conn.poll(
                    max(0.0, self.deadline - time.perf_counter())
                ):
                    self._take(self.conn.recv(), track)
        except (EOFError, OSError):
            pass
        finally:
            if self.proc.is_alive():
                self.proc.terminate()
            self.proc.join(1.0)
        if self.is_concurrent:  # what the child sent before it ended (the reader stops at the pipe's end)
            self._reader.join(0.5)
            self.poll(track)
        return self.bound

    def _inline(self, track: _Track, gap: float) -> float | None:
        """The relaxed LP, then its MILP, in this process for the time left (a MILP stopped before its first
        solution reports no bound: the LP's stands)."""
        p, mopt = self.inline
        try:
            m = milp.Milp(p, replace(mopt, formulation="relaxed"), strategy="relaxed", deadline=self.deadline)
        except milp.OutOfTime:
            return None
        bound = m.lp_bound(self.deadline - time.perf_counter())
        if bound is not None:
            track.record(None, bound, "relaxed LP")
        if not self._proven(track, gap) and self.deadline - time.perf_counter() > 0.1:
            r = m.solve(self.deadline - time.perf_counter())
            b = r.extra_j if r.status == "optimal" and r.bound_j is None else r.bound_j
            if r.status != "infeasible" and b is not None:
                bound = b if bound is None else max(bound, b)
                track.record(None, bound, "relaxed MILP")
        return bound

    @staticmethod
    def _proven(track: _Track, gap: float) -> bool:
        g = _gap_of(track.best, track.bound)
        return g is not None and g <= gap


def _better(a: Solution | None, b: Solution | None) -> Solution | None:
    """The one of lower energy (``a`` on a tie), either may be None."""
    if a is None or (b is not None and b.replay.energy_j < a.replay.energy_j):
        return b
    return a


def _gap_of(best: float | None, bound: float | None) -> float | None:
    if best is None or bound is None:
        return None
    return 0.0 if best <= 1e-15 else max(0.0, (best - bound) / best)


def _relaxed_bound(p: Problem, mopt: milp.MilpOptions, deadline: float, conn: Any, concurrent: bool) -> None:
    """(child process) The relaxed model's LP bound at once; then its MILP, at once (``concurrent``: each bound
    it raises is sent as it comes) or after the parent says "go"."""
    try:
        m = milp.Milp(p, replace(mopt, formulation="relaxed"), strategy="relaxed", deadline=deadline)
        conn.send(m.lp_bound(deadline - time.perf_counter()))
        if not concurrent and not (
            conn.poll(max(0.0, deadline - time.perf_counter())) and conn.recv() == "go"
        ):
            return
        sent = [0.0]

        def watch(rec: Progress) -> None:  # HiGHS's bounds as they rise (every record's is valid)
            if rec.bound_j is not None and rec.bound_j > sent[0] * (1 + 1e-6):
                sent[0] = rec.bound_j
                conn.send(rec.bound_j)

        def found(s: Schedule) -> None:  # its solutions, as it finds them: the parent replays them
            conn.send(("schedule", s))

        r = m.solve(
            deadline - time.perf_counter(),
            watch=watch if concurrent else None,
            found=found if concurrent else None,
        )
        if r.status != "infeasible":  # the parent's schedules say otherwise: claim nothing
            conn.send(r.extra_j if r.status == "optimal" and r.bound_j is None else r.bound_j)
    except (milp.OutOfTime, EOFError, OSError):
        pass
    finally:
        conn.close()


def _choose(
    name: str,
    p: Problem,
    opt: SolveOptions,
    milp_sol: Solution | None,
    best_seed: Solution | None,
    res: milp.MilpResult,
    bound: float | None,
    meta: dict[str, Any],
    t0: float,
) -> Solution:
    """The best of the MILP's schedule and the best candidate, with an honest status: "optimal" only if the
    bound (the solver's, over all its runs) proves it within the requested gap."""
    cands = [c for c in (milp_sol, best_seed) if c is not None]
    trivial = bound is None
    if trivial:  # the solver proved nothing: what every schedule pays for sure
        bound = trivial_bound(p)
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
        if res.status == "skipped":
            how = f"{best.strategy} schedule, proven before the MILP ran"
        meta["incumbent"] = best.strategy
    status = "optimal" if proven else "feasible"
    msg = (
        f"proven optimal ({how})"
        if proven
        else f"not proven optimal, gap {100 * gap:.2f}% ({how}"
        + ("; the solver gave no bound: the trivial one" if trivial else "")
        + ")"
    )
    sched = best.schedule if best is milp_sol else from_program(p, best.program, name)
    return Solution(
        name, status, best.program, sched, best.replay, time.perf_counter() - t0, gap, bound, msg, meta
    )


def trivial_bound(p: Problem) -> float:
    """A lower bound on the extra energy of every schedule: the loads (and write-backs) of the persistent
    tensors that must live on storage (each is loaded at least once); 0 without them."""
    wb = {l: j for l, (_u, j, _s) in p.written_by.items()}
    return float(sum(p.compute_j[l] + wb.get(l, 0.0) for l in p.storage_only))


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


def _allowed(p: Problem, s: Schedule, remat: bool, paging: bool) -> bool:
    """Whether a warm start uses only what the MILP variant allows. Loading (and re-reading) persistent tensors
    is neither recomputation nor paging: every variant may."""
    import numpy as np

    act = ~p.is_load
    if not remat and (s.R & ~np.eye(s.T, dtype=bool))[:, act].any():
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
            if any(_allowed(p, h.schedule, remat, paging) for h in feasible_heuristics(q)):
                return True
            # feasibility only: no bound process (a child per bisection step would cost more than it gives)
            limit = min(opt.time_limit_s, 20.0)
            r = run(name, q, replace(opt, time_limit_s=limit, warm_start=False, bounder=False))
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
            compute_time_s=None,
            transfer_time_s=None,
            event_time_s=None,
            peak_ram_bytes=None,
            arena_bytes=None,
            recomputes=None,
            page_outs=None,
            page_ins=None,
            param_loads=None,
            param_stores=None,
            param_paging_energy_j=None,
            param_ram_bytes=None,
        )
    else:
        out.update(
            energy_j=r.energy_j,
            compute_energy_j=r.compute_j,
            paging_energy_j=r.paging_j,
            time_s=r.time_s,  # the time model (overlap or not): what the deadline bounds
            compute_time_s=r.compute_s,
            transfer_time_s=r.transfer_s,
            event_time_s=r.event_time_s,  # the program played on one core and one bus
            peak_ram_bytes=fixed_bytes + r.peak_bytes,
            arena_bytes=arena_bytes,
            recomputes=r.recomputes,
            page_outs=r.page_outs,
            page_ins=r.page_ins,
            param_loads=r.param_loads,  # persistent tensors read from storage (first reads and re-reads)
            param_stores=r.param_stores,  # and written back after their update
            param_paging_energy_j=r.param_paging_j,
            param_ram_bytes=r.param_ram_bytes,  # persistent tensors the schedule keeps in RAM
        )
    out.update(
        solve_s=sol.solve_s,
        gap=sol.gap,
        floor_energy_j=p.floor_j,
        extra_energy_j=None if r is None else r.energy_j - p.floor_j,
        bound_extra_j=sol.bound_j,
        # the same three under short names (poetc solve --json): energy above the floor, the proven lower bound
        # on it (None: no bound), the floor (one computation of every node, nothing paged)
        extra_j=None if r is None else r.energy_j - p.floor_j,
        bound_j=sol.bound_j,
        floor_j=p.floor_j,
        ram_budget_bytes=fixed_bytes + p.budget,
        deadline_s=p.deadline_s,
        overlap=p.overlap,  # transfers overlap computation in the time model
    )
    return out
