"""The solver's worker process (schedule/worker.py): the time limit holds whatever the solver does (a solver that
ignores every interrupt is killed past its limit, and the result is what it had sent), and one worker serves
every solve of a process until it has to be killed."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import pytest

from poetc import boards
from poetc.schedule import milp, poetgraphs, program, strategies, worker


@pytest.fixture(scope="module")
def vgg() -> milp.Problem:
    return poetgraphs.build("vgg16_cifar", boards.load("nrf52840"))


# Jobs the worker runs in place of the real one (module-level: the worker imports them from this module).
def _solves_then_stalls(chan, lp, job):
    """The real HiGHS for a second (its incumbents reach the parent), then a solver deaf to every interrupt."""
    milp._solve_job(chan, lp, dataclasses.replace(job, deadline=time.perf_counter() + 1.0))
    time.sleep(120)


def _stalls(chan, lp, job):
    time.sleep(120)


def test_a_solver_that_ignores_its_limit_is_ended_and_its_incumbent_kept(vgg, monkeypatch):
    start = strategies.best_heuristic(vgg)
    assert start is not None
    model = milp.Milp(vgg)
    warm = model.solve(1.0)  # a real solve: starts (or reuses) the worker
    pid = worker.get().pid
    assert warm.status in ("feasible", "no_solution", "optimal")
    monkeypatch.setattr(milp, "_solve_job", _solves_then_stalls)
    records: list[milp.Progress] = []
    limit = 3.0
    t0 = time.perf_counter()
    res = model.solve(limit, start=program.trim(vgg, start.schedule), presolve=False, watch=records.append)
    wall = time.perf_counter() - t0
    assert wall <= limit + worker.GRACE_S + 0.5, wall
    assert "its process was ended" in res.message, res.message
    # the start was HiGHS's first incumbent, sent before the stall: the result keeps it (or a better one)
    assert res.status == "feasible" and res.schedule is not None
    assert res.extra_j <= start.extra_j(vgg) * (1 + 1e-9)
    assert res.start_j == pytest.approx(start.extra_j(vgg), rel=1e-9)
    assert records and records[-1].best_j == pytest.approx(res.extra_j)
    assert res.bound_j is None or res.bound_j <= res.extra_j
    # the killed worker is replaced by the next solve, which the new one serves, and the one after it too
    monkeypatch.undo()
    model.solve(0.5)
    new = worker.get().pid
    assert new != pid
    model.solve(0.5)
    assert worker.get().pid == new


def test_the_run_keeps_its_limit_and_the_heuristic_when_the_solver_stalls(vgg, monkeypatch):
    best = strategies.best_heuristic(vgg)
    monkeypatch.setattr(milp, "_solve_job", _stalls)
    limit = 3.0
    t0 = time.perf_counter()
    s = strategies.run("poet", vgg, strategies.SolveOptions(time_limit_s=limit))
    wall = time.perf_counter() - t0
    assert wall <= 1.1 * limit + 2.0, wall
    assert s.ok and s.status == "feasible"
    assert s.extra_j(vgg) <= best.extra_j(vgg) * (1 + 1e-9)
    assert s.bound_j is not None and s.bound_j <= s.extra_j(vgg)
    assert "not proven optimal" in s.message, s.message


def test_one_worker_serves_every_solve():
    p = poetgraphs.build("linear", boards.load("nrf52840"))
    model = milp.Milp(p)
    a = model.solve(5.0)
    pid = worker.get().pid
    b = model.solve(5.0)
    assert worker.get().pid == pid
    assert a.status == b.status == "optimal" and b.extra_j == pytest.approx(a.extra_j)


def test_ctrl_c_ends_the_worker_and_raises_in_the_caller(vgg, monkeypatch):
    """Ctrl-C reaches the whole process group: the worker ignores it, the caller gets KeyboardInterrupt at once
    and ends the worker."""
    model = milp.Milp(vgg)
    monkeypatch.setattr(milp, "_solve_job", _stalls)
    w = worker.get()
    child_alive_after_sigint: list[bool] = []

    def ctrl_c() -> None:
        os.kill(w.pid, signal.SIGINT)
        time.sleep(0.3)
        child_alive_after_sigint.append(w.alive())
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(0.5, ctrl_c)
    timer.start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        model.solve(20.0)
    assert time.perf_counter() - t0 < 5.0
    timer.join()
    assert child_alive_after_sigint == [True]
    assert not w.alive() and worker.get().pid != w.pid


def test_a_solver_deaf_to_the_callers_stop_is_ended_soon_after_it(monkeypatch):
    model = milp.Milp(poetgraphs.build("linear", boards.load("nrf52840")))
    monkeypatch.setattr(milp, "_solve_job", _stalls)
    t0 = time.perf_counter()
    res = model.solve(20.0, stop=lambda: time.perf_counter() - t0 > 0.5)
    assert time.perf_counter() - t0 < 0.5 + worker.GRACE_S + 1.0
    assert res.status == "no_solution" and res.message.startswith("stopped:"), res.message
    assert "being asked to" in res.message
