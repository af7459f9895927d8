"""The compact formulation (milp "compact") and its lower-bound twin ("relaxed"): compact solutions are schedules
of the problem (they replay), relaxed optima are bounds of it, and strategies.run with --formulation compact
reports the relaxed bound, never the compact model's own."""

from __future__ import annotations

import pytest

from poetc import boards, frontend, pipeline
from poetc.schedule import milp, poetgraphs, program, simulate, strategies


def _solve(p, formulation: str, limit: float = 8.0) -> milp.MilpResult:
    return milp.Milp(p, milp.MilpOptions(time_limit_s=limit, formulation=formulation)).solve()


@pytest.fixture(scope="module")
def linear():
    p = poetgraphs.build("linear", boards.load("nrf52840"))
    return p.with_budget(int(0.6 * strategies.store_all_peak(p)))


def test_compact_is_smaller_and_its_schedule_replays(linear):
    p = linear
    big = milp.Formulation(p, milp.MilpOptions(formulation="poet"))
    small = milp.Formulation(p, milp.MilpOptions(formulation="compact"))
    rows = lambda f: len(f.m.rows_le) + len(f.m.rows_eq)  # noqa: E731
    assert rows(small) < rows(big) / 2 and not small.m.cont  # no FREE, FREE0, U columns
    r = _solve(p, "compact")
    assert r.status == "optimal" and r.schedule is not None
    rep = simulate.replay(p, program.lower(p, r.schedule))
    assert rep.peak_bytes <= p.budget
    assert rep.energy_j - p.floor_j == pytest.approx(r.extra_j, rel=1e-9, abs=1e-15)
    assert r.schedule.R.sum(axis=0).max() <= milp.COMPACT_C  # bounded computations per output


def test_relaxed_bounds_every_schedule(linear):
    """relaxed <= any schedule's extra energy (the greedy's, the compact optimum's), and its LP <= its MILP."""
    p = linear
    relaxed = _solve(p, "relaxed")
    compact = _solve(p, "compact")
    assert relaxed.status == "optimal" and compact.status == "optimal"
    greedy = strategies.run("greedy", p)
    assert greedy.ok
    lp = milp.Milp(p, milp.MilpOptions(formulation="relaxed")).lp_bound(5.0)
    assert lp is not None and 0 < lp <= relaxed.extra_j + 1e-12
    assert relaxed.extra_j <= compact.extra_j + 1e-12
    assert relaxed.extra_j <= greedy.replay.energy_j - p.floor_j + 1e-12


@pytest.mark.parametrize("inline_t", [64, 0])  # the relaxed model in this process, or in a spawned child
def test_strategy_with_compact_and_parameter_homes(monkeypatch, inline_t):
    """mlp with parameter homes (load nodes, write-backs): the compact run's schedule replays, its bound is the
    relaxed one (at most the extra energy) and no solution is called optimal beyond its proof."""
    monkeypatch.setattr(strategies._Bounder, "INLINE_T", inline_t)
    pl = pipeline.plan(frontend.load("mlp", batch=8), boards.load("nrf52840"), 160 * 1024, "1.5x")
    p = pl.problem
    assert p.loads
    s = strategies.run("poet", p, strategies.SolveOptions(time_limit_s=6.0, formulation="compact"))
    assert s.ok and s.meta["formulation"] == "compact"
    assert s.meta["relaxed_bound_j"] is not None  # the bound came from the relaxed model
    assert s.bound_j is not None and s.bound_j <= s.extra_j(p) + 1e-12
    assert s.status == ("optimal" if s.gap <= 1e-4 else "feasible")
    assert s.replay.peak_bytes <= p.budget
