"""Every strategy's schedule is replayed; POET is never above a baseline; the switches really switch."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from poetc import boards, frontend
from poetc.graph import autodiff
from poetc.schedule import cost, poetgraphs, problem, program, simulate, strategies
from poetc.schedule.program import Op

OPT = strategies.SolveOptions(time_limit_s=60)


@pytest.fixture(scope="module")
def mlp() -> problem.Problem:
    tg = autodiff.build_training_graph(frontend.load("mlp", batch=8))
    cm = cost.build(tg, boards.load("nrf52840"))
    p = problem.from_training(tg, cm, 10**9)
    peak = simulate.replay(p, program.lower(p, program.store_all(p))).peak_bytes
    return p.with_budget(peak)


def _budgets(p: problem.Problem) -> list[int]:
    lo, peak = p.min_budget(), p.budget
    return [lo, lo + (peak - lo) // 3, lo + 2 * (peak - lo) // 3, peak]


@pytest.mark.slow
def test_sweep_poet_is_never_above_a_baseline_and_every_output_replays(tmp_path):
    from poetc import pipeline
    from poetc.report import plots
    from poetc.schedule import sweep

    board = boards.load("nrf52840")
    pl = pipeline.plan(frontend.load("mlp", batch=8), board)
    res = sweep.run(
        pl.problem,
        pl.fixed.fixed,
        pl.fixed.budget,
        list(strategies.NAMES),
        # short solves: POET starts at each budget from the best baseline there (sweep.run), so it is never
        # above one however short its limit; three budgets: the smallest, one between and the store-all peak
        strategies.SolveOptions(time_limit_s=5),
        points=3,
        jobs=2,
    )
    assert len(res.budgets) == 3
    assert res.budgets[0] == res.smallest[0]  # from the smallest feasible budget ...
    store = [r for r in res.rows if r["strategy"] == "store-all" and r["feasible"]]
    assert store and max(r["ram_budget_bytes"] for r in store) == res.budgets[-1]  # ... to the store-all peak
    assert sweep.poet_not_best(res) == []
    poet = [r for r in res.rows if r["strategy"] == "poet"]
    assert all(r["feasible"] for r in poet)
    # the tightest budget is below what the parameters and activations need together: POET moves parameters
    # to storage there, and still has to recompute or page activations
    tight = poet[0]
    assert tight["param_loads"] and (tight["recomputes"] or tight["page_outs"]), tight
    assert poet[-1]["param_loads"] == 0  # at the store-all peak everything stays in RAM
    for r in res.rows:
        if r["feasible"]:
            assert r["peak_ram_bytes"] <= r["ram_budget_bytes"]
    png = plots.energy_vs_budget(res, tmp_path / "e.png", plots.Subject("mlp", "nrf52840", 8))
    assert png.stat().st_size > 10_000


def test_switches_really_switch(mlp):
    # what each variant may do, not its optimum: every schedule that fits this budget recomputes or pages, so
    # short solves do (the remat-only ones run to their limit; with 3 s HiGHS's own schedules come back)
    q = mlp.with_budget(_budgets(mlp)[1])
    short = strategies.SolveOptions(time_limit_s=3)
    no_remat = strategies.run("poet", q, replace(short, remat=False))
    no_page = strategies.run("poet", q, replace(short, paging=False))
    assert no_remat.ok and no_remat.replay.recomputes == 0 and no_remat.replay.page_outs > 0
    assert no_page.ok and no_page.replay.page_outs == 0 and no_page.replay.recomputes > 0
    assert strategies.run("remat-only", q, short).replay.page_ins == 0
    assert strategies.run("paging-only", q, short).replay.recomputes == 0


def test_infeasible_budget_names_the_smallest(mlp):
    lo = mlp.min_budget()
    q = mlp.with_budget(lo - 1)
    short = strategies.SolveOptions(time_limit_s=5)  # a schedule at the smallest budget, not its optimum
    s = strategies.run("poet", q, short)
    assert not s.ok and s.status == "infeasible"
    b, how = strategies.smallest_budget(q, "poet", short)
    assert b >= lo and how
    assert strategies.run("poet", q.with_budget(b), short).ok


def test_time_limit_without_solution_is_reported():
    p = poetgraphs.build("vgg16_cifar", boards.load("nrf52840"))
    s = strategies.run("poet", p, strategies.SolveOptions(time_limit_s=0.01, warm_start=False))
    assert not s.ok and s.status == "no_solution" and "time limit" in s.message
    # with the heuristics as incumbents a schedule is still returned, marked as not proven
    s = strategies.run("poet", p, strategies.SolveOptions(time_limit_s=0.01))
    assert s.ok and s.status == "feasible" and ("not proven" in s.message or "no bound" in s.message)


def test_poet2022_formulation_is_an_ablation_that_still_replays(mlp):
    q = mlp.with_budget(_budgets(mlp)[2])
    s = strategies.run(
        "poet", q, strategies.SolveOptions(time_limit_s=60, formulation="poet2022", warm_start=False)
    )
    assert s.ok and s.meta["formulation"] == "poet2022"
    ours = strategies.run("poet", q, strategies.SolveOptions(time_limit_s=60, warm_start=False))
    assert ours.replay.energy_j <= s.replay.energy_j * (1 + 1e-9)


@pytest.mark.parametrize("name, T", [("linear", 27), ("vgg16_cifar", 81), ("resnet18_cifar", 133)])
def test_poet_shaped_graphs(name, T):
    p = poetgraphs.build(name, boards.load("nrf52840"))
    assert p.T == T
    peak = simulate.replay(p.with_budget(10**12), program.lower(p, program.store_all(p))).peak_bytes
    assert p.budget == int(0.6 * peak)
    assert p.deadline_s == pytest.approx(1.5 * p.floor_s)


def test_heuristics_respect_in_place_updates(mlp):
    q = mlp.with_budget(_budgets(mlp)[0])
    for n in ("greedy", "chen-sqrt"):
        s = strategies.run(n, q)
        if s.ok:
            upd = {u for u, _ in q.updates}
            runs = [i.node for i in s.program.instrs if i.op in (Op.RUN, Op.RECOMPUTE)]
            assert all(runs.count(u) == 1 for u in upd)


def test_tie_break_prefers_less_ram(mlp):
    s = strategies.run("poet", mlp, OPT)
    store = simulate.replay(mlp, program.lower(mlp, program.store_all(mlp)))
    assert s.replay.energy_j == pytest.approx(store.energy_j)
    assert s.replay.peak_bytes <= store.peak_bytes


def test_from_program_round_trip(mlp):
    q = mlp.with_budget(_budgets(mlp)[1])
    s = strategies.run("greedy", q)
    sched = program.from_program(q, s.program, "greedy")
    assert sched.R.sum() == s.replay.runs + s.replay.recomputes
    assert sched.M_out.sum() == s.replay.page_outs and sched.M_in.sum() == s.replay.page_ins
    assert np.all(sched.R.diagonal())


def test_other_solvers_through_cvxpy(mlp):
    import cvxpy as cp

    if "SCIP" not in cp.installed_solvers():
        pytest.skip("SCIP is not installed (pip install pyscipopt)")
    q = mlp.with_budget(_budgets(mlp)[2])
    scip = strategies.run("poet", q, strategies.SolveOptions(solver="SCIP", time_limit_s=60))
    highs = strategies.run("poet", q, strategies.SolveOptions(time_limit_s=60))
    assert scip.ok and scip.meta["solver"] == "SCIP"
    assert scip.replay.energy_j == pytest.approx(highs.replay.energy_j, rel=1e-6)


def test_fragmentation_is_repaired_by_resolving_tighter(monkeypatch):
    """If the arena plan overshoots the budget, compile_model re-solves with the budget tightened by the
    overflow until the plan fits, and reports how many re-solves that took."""
    from dataclasses import replace as dc_replace

    from poetc import pipeline
    from poetc.schedule import memplan

    real_plan = memplan.plan
    calls = {"n": 0}

    def inflated(prog, mem, ceiling=None):  # the first train plan wastes 4 KiB, as a fragmented arena would
        mp = real_plan(prog, mem, ceiling)
        if prog.name == "train" and calls["n"] == 0:
            calls["n"] += 1
            return dc_replace(mp, arena_bytes=mp.arena_bytes + 4096)
        return mp

    monkeypatch.setattr(memplan, "plan", inflated)
    board = boards.load("nrf52840")
    model = frontend.load("mlp", batch=8)
    # the repair is what is tested, not the schedule's optimum: short solves
    c = pipeline.compile_model(model, board, ram=229 * 1024, opts=strategies.SolveOptions(time_limit_s=5))
    assert c.repairs == 1 and c.arena_bytes <= c.problem.budget
    assert c.memory.total <= 229 * 1024


def test_greedy_fits_resnet8_in_256k_with_its_parameters_paged():
    """ResNet-8 (305 KB of float32 parameters, 64 KB activations at batch 1) in qemu-m4's 256 KB: greedy must
    page parameters and activations. Two past failures: a nested recomputation unpinned an input its caller had
    pinned (the program read a freed tensor), and deep drops built recomputation chains that pin too much.
    Its 64 KB activations also fragment the arena unless the greedy allocates as it schedules (two-ended,
    contiguous holes): the schedule's own layout must fit the budget, with no re-solve."""
    from poetc import pipeline

    pl = pipeline.plan(
        frontend.load("resnet8", batch=1), boards.load("qemu-m4"), pipeline.parse_bytes("256K")
    )
    p = pl.problem
    sol = strategies._heuristic("greedy", p)
    assert sol.ok, sol.message
    r = simulate.replay(p, sol.program, budget=p.budget)
    assert r.peak_bytes <= p.budget
    on_storage = [l for l in p.loads if l not in sol.program.ram_homes]
    assert on_storage, "the parameters cannot all stay in RAM"
    assert sum(int(p.mem[l]) for l in p.loads) > p.budget
    from poetc.schedule import memplan

    held = sum(int(p.mem[l]) for l in sol.program.ram_homes)
    assert memplan.plan(sol.program, p.mem, ceiling=p.budget - held).arena_bytes + held <= p.budget


def test_the_bound_process_sends_relaxed_solutions_that_replay_as_incumbents():
    # POET's linear graph: the relaxed model's optimum is a schedule of the problem, so the bound process alone
    # proves it (its solution replays, and its optimum bounds every schedule)
    import time

    p = poetgraphs.build("linear", boards.load("nrf52840"))
    t0 = time.perf_counter()
    mopt = strategies._milp_options(strategies.SolveOptions(), True, True)
    b = strategies._Bounder.concurrent(p, mopt, t0 + 30)
    track = strategies._Track(t0, 30, None)
    while b.proc.is_alive() and time.perf_counter() < t0 + 30:
        b.poll(track)
        time.sleep(0.05)
    bound = b.collect(track, 1e-4)
    assert b.cands and bound is not None
    for c in b.cands:  # each one passed the replay against the budget and the deadline
        r = simulate.replay(p, c.program, budget=p.budget)
        assert r.peak_bytes <= p.budget and r.time_s <= p.deadline_s * (1 + 1e-9)
    best = b.best()
    assert track.best == pytest.approx(best.replay.energy_j - p.floor_j)
    assert bound <= track.best * (1 + 1e-6) and track.best - bound <= 1e-4 * track.best
    # a run with the bound process returns a proven schedule at least as good
    s = strategies.run("poet", p, strategies.SolveOptions(time_limit_s=30))
    assert s.status == "optimal" and s.replay.energy_j <= best.replay.energy_j * (1 + 1e-9)
