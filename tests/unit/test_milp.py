"""The MILP itself: the model the constraint groups build, the MIP start reaching HiGHS, progress records from
the solver's callbacks, and honest statuses and bounds for time-limited solves (HiGHS and SCIP)."""

from __future__ import annotations

import dataclasses
import time

import pytest

from poetc import boards, frontend, pipeline
from poetc.schedule import milp, poetgraphs, program, strategies


@pytest.fixture(scope="module")
def demo() -> pipeline.Planned:
    """poetc demo's problem: digits-deep-mlp on qemu-m4, 200 KB, 1.2x deadline (it recomputes and pages), timed
    without overlap (the overlap model's TAU rows: tests/e2e/test_overlap_deadline_host.py, test_overlap_host.py)."""
    model = frontend.load("digits-deep-mlp")
    return pipeline.plan(
        model, boards.load("qemu-m4"), pipeline.parse_bytes("200K"), "1.2x", overlap=False
    ).problem


# (formulation, remat, paging, storage-limited) -> (binaries, continuous, <= rows, = rows, nonzeros), as built
# on POET's linear graph before _constraints was split into one method per constraint group (poet: with the
# frontier rows, 282 K columns and 309 rows, since they became valid inequalities of it)
MODEL_SIZES = {
    ("poet", True, True, False): (1378, 1826, 6667, 352, 25810),
    ("poet", False, True, False): (1053, 731, 3021, 27, 14377),
    ("poet", True, False, False): (676, 1826, 5589, 352, 18613),
    ("poet2022", True, True, False): (2544, 352, 4253, 352, 16920),
    ("poet2022", False, True, False): (1449, 27, 1943, 27, 6977),
    ("poet", True, True, True): (1378, 1826, 6668, 352, 26161),
    ("poet2022", True, True, True): (2571, 352, 4579, 352, 17597),
    ("poet2022", False, True, True): (1476, 27, 2269, 27, 7654),
}


@pytest.mark.parametrize("key", list(MODEL_SIZES), ids=lambda k: "-".join(map(str, k)))
def test_constraint_groups_build_the_same_model(key):
    form, remat, paging, limited = key
    p = poetgraphs.build("linear", boards.load("nrf52840"))
    if limited:  # a third of what paging everything would need: the storage capacity row appears
        p = dataclasses.replace(p, storage_bytes=int(p.mem.sum() // 3))
    f = milp.Formulation(p, milp.MilpOptions(formulation=form, remat=remat, paging=paging))
    m = f.m
    nnz = sum(len(terms) for terms, _ in m.rows_le + m.rows_eq)
    assert (len(m.bin), len(m.cont), len(m.rows_le), len(m.rows_eq), nnz) == MODEL_SIZES[key]
    assert f.storage_row == limited
    lp = f.lp()  # the matrices a solver sees: one row per model row, one column per variable
    assert lp.a.shape == (len(m.rows_le) + len(m.rows_eq), len(m.bin) + len(m.cont))


def test_mip_start_reaches_highs_and_the_solve_starts_from_it(demo):
    start = strategies.run("paging-only", demo, strategies.SolveOptions(time_limit_s=20))  # no heuristic fits
    assert start.ok
    start_extra = start.extra_j(demo)
    model = milp.Milp(demo, milp.MilpOptions(time_limit_s=20))
    records: list[milp.Progress] = []
    # without presolve HiGHS does not prove this one: it runs to the limit, and takes the start at once
    res = model.solve(3, start=program.trim(demo, start.schedule), presolve=False, watch=records.append)
    assert res.start_j == pytest.approx(start_extra, rel=1e-9)
    assert "started from the given schedule" in res.schedule.meta["mip_start"]
    first = next(r for r in records if r.best_j is not None)
    assert first.best_j == pytest.approx(start_extra, rel=1e-9)  # HiGHS's first incumbent is the start
    assert res.extra_j <= start_extra * (1 + 1e-9)
    # and the same model solved cold has no start to report (its first schedule takes HiGHS about 5 s, its
    # proof about 10 s on an idle machine: the limit leaves room for a loaded one)
    cold = model.solve(20)
    assert cold.start_j is None and cold.schedule.meta["mip_start"] == ""


def _monotone(records: list[milp.Progress]) -> None:
    assert [r.elapsed_s for r in records] == sorted(r.elapsed_s for r in records)
    best = [r.best_j for r in records if r.best_j is not None]
    bound = [r.bound_j for r in records if r.bound_j is not None]
    assert best == sorted(best, reverse=True)
    assert bound == sorted(bound)
    for r in records:
        if r.best_j is not None and r.bound_j is not None:
            assert r.bound_j <= r.best_j and 0.0 <= r.gap <= 1.0


def test_progress_records_from_the_solver_are_monotone(demo):
    records: list[milp.Progress] = []
    res = milp.solve(demo, milp.MilpOptions(time_limit_s=30), watch=records.append)
    # optimal in about 10 s on an idle 2-core machine; a loaded one may stop at the limit with a proven gap
    assert res.status in ("optimal", "feasible") and records
    assert res.status == "optimal" or res.bound_j <= res.extra_j
    _monotone(records)
    assert all(r.what == "HIGHS" for r in records)
    assert records[-1].best_j == pytest.approx(res.extra_j) and records[-1].bound_j == pytest.approx(
        res.bound_j
    )
    assert [s for s, _, _ in res.trace] == [r.elapsed_s for r in records]


def test_strategy_progress_is_monotone_and_ends_at_the_answer(demo):
    records: list[milp.Progress] = []
    sol = strategies.run("poet", demo, strategies.SolveOptions(time_limit_s=30), watch=records.append)
    assert sol.ok and records
    _monotone(records)
    # a seed (a heuristic's schedule, with parameters moved to storage, or the paging-only MILP's) comes first,
    # then HiGHS's better ones
    first = next(r for r in records if r.best_j is not None)
    assert first.what in ("paging-only MILP", *strategies.HEURISTICS), first
    assert records[-1].what == "HIGHS" and records[-1].best_j < first.best_j
    last = records[-1]
    assert last.best_j == pytest.approx(sol.extra_j(demo)) and last.bound_j == pytest.approx(sol.bound_j)
    assert last.time_limit_s == 30


def test_the_model_is_built_once_for_both_highs_runs(monkeypatch):
    """A solve not proven in its cold run restarts HiGHS from the best schedule, on the model already built."""
    # digits16-mlp at 60% of its store-all peak: not proven in 60 s (benchmarks/zoo_solver.py), so never in 8
    model = frontend.load("digits16-mlp", batch=8)
    p = pipeline.plan(model, boards.load("nrf52840")).problem
    p = p.with_budget(int(0.6 * strategies.store_all_peak(p)))
    built = []
    real = milp.Formulation.__init__

    def counting(self, p, opt, deadline=None):
        built.append((opt.remat, opt.paging))
        real(self, p, opt, deadline)

    monkeypatch.setattr(milp.Formulation, "__init__", counting)
    lines: list[str] = []
    # cold POET, then (unproven) the paging-only MILP as a seed, then the restart from the best schedule
    sol = strategies.run("poet", p, strategies.SolveOptions(time_limit_s=8), progress=lines.append)
    assert sol.ok
    assert sorted(built) == [(False, True), (True, True)]  # the paging-only MILP and POET's, once each
    assert any("restarting HIGHS from the best schedule" in s for s in lines), lines
    assert sol.meta.get("warm_start") in (None, *strategies.HEURISTICS, "paging-only", "poet")


def test_scip_at_its_time_limit_is_not_reported_optimal(demo):
    import cvxpy as cp

    if "SCIP" not in cp.installed_solvers():
        pytest.skip("SCIP is not installed (pip install pyscipopt)")
    # HiGHS proves this problem in a few seconds; SCIP finds schedules in 2 s but cannot prove one
    res = milp.solve(demo, milp.MilpOptions(solver="SCIP", time_limit_s=2))
    # (on a loaded machine SCIP may not even find a schedule in 2 s: then it must say so, not "optimal")
    assert res.status in ("feasible", "no_solution"), (res.status, res.extra_j, res.bound_j)
    if res.status == "feasible":
        assert res.bound_j is not None and res.bound_j < res.extra_j and res.gap > 1e-4
    else:
        assert res.schedule is None and res.extra_j is None
    sol = strategies.run("poet", demo, strategies.SolveOptions(solver="SCIP", time_limit_s=4))
    assert sol.ok, sol.message
    # whether SCIP proves the restart within 4 s depends on the machine; what it reports must match its bound
    if sol.status == "optimal":
        assert sol.bound_j == pytest.approx(sol.extra_j(demo), rel=1e-3, abs=1e-9), sol.message
    else:
        assert sol.status == "feasible"  # an incumbent (SCIP's or the paging-only MILP's), not proven
        assert ("not proven" in sol.message and sol.bound_j < sol.extra_j(demo)) or (
            "no bound" in sol.message and sol.bound_j is None
        ), sol.message


def test_highs_at_its_time_limit_reports_its_real_bound():
    p = poetgraphs.build("vgg16_cifar", boards.load("nrf52840"))
    start = strategies.best_heuristic(p)
    assert start is not None
    records: list[milp.Progress] = []
    res = milp.Milp(p).solve(3, start=program.trim(p, start.schedule), presolve=False, watch=records.append)
    assert res.status == "feasible" and res.start_j == pytest.approx(start.extra_j(p), rel=1e-9)
    assert res.bound_j is not None and res.bound_j < res.extra_j and res.gap > 1e-4
    _monotone(records)


@pytest.mark.parametrize("name, limit", [("vgg16_cifar", 1.0), ("convchain", 2.0)])
def test_the_time_limit_is_a_promise(name, limit):
    """Wall time within limit + 10% + 2 s whatever the solver does (the model's build counts: on 300 nodes it
    alone takes longer than the limit), an incumbent at least as good as the best heuristic, an honest status
    and a bound."""
    p = poetgraphs.build(name, boards.load("nrf52840"), batch=1)
    best = strategies.best_heuristic(p)
    t0 = time.perf_counter()
    s = strategies.run("poet", p, strategies.SolveOptions(time_limit_s=limit))
    wall = time.perf_counter() - t0
    assert wall <= 1.1 * limit + 2.0, wall
    assert s.ok and s.extra_j(p) <= best.extra_j(p) * (1 + 1e-9)
    assert s.bound_j is not None and s.bound_j <= s.extra_j(p) * (1 + 1e-9)
    assert s.status == ("optimal" if s.gap <= 1e-4 else "feasible"), (s.status, s.gap)
