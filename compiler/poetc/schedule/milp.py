"""POET's mixed-integer program for rematerialization + paging: modelled here, solved by HiGHS (highspy) or by
any MILP solver cvxpy knows.

After Patil et al., "POET: Training Neural Networks on Tiny Devices with Integrated Rematerialization and
Paging" (ICML 2022), which extends Checkmate (Jain et al., MLSys 2020). T stages over T nodes in topological
order; stage t computes node t for the first time (frontier-advancing). Decision variables, per (stage t,
node i), binary:

    R[t,i]      compute (or recompute) node i in stage t
    S_RAM[t,i]  i's output is resident in RAM at the start of stage t
    S_SD[t,i]   i's output is on storage at the start of stage t
    M_in[t,i]   page i in during stage t
    M_out[t,i]  page i out during stage t

and continuous FREE[t,i,k] in [0,1] (i's output is freed right after node k runs in stage t), FREE0[t,i]
(i is freed at the start of stage t) and U[t,k] (RAM in use after node k runs in stage t, after frees).

    minimise   sum_{t,i} R[t,i] E_i + M_in[t,i] E_in_i + M_out[t,i] E_out_i   -  floor
where the floor (one computation of every node: sum_i E_i) is a constant, so the objective and the solver's
gap are on the *extra* energy of the schedule, the part any schedule can change.

Constraint groups, one method of ``Formulation`` each, in the order of the rows:
  _dependencies       R[t,v] <= R[t,u] + S_RAM[t,u] + M_in[t,u]              for every input u of v
  _residency          S_RAM[t+1,i] <= S_RAM[t,i] + R[t,i] + M_in[t,i];   M_in[t,i] <= S_SD[t,i];
                      S_SD[t,i] = sum_{t'<t} M_out[t',i], sum_t M_out[t,i] <= 1;   M_out[t,i] <= S_RAM[t,i] + R[t,i];
                      S_RAM[t,i] + R[t,i] + M_in[t,i] <= 1                   (one source per stage)
  _usefulness         R[t,i], M_in[t,i] <= sum_{j reads i} R[t,j] + S_RAM[t+1,i] (+ M_out[t,i] for R)
  _frees              FREE[t,i,k] <= R[t,k];  <= 1 - S_RAM[t+1,i];  <= 1 - R[t,j] for readers j > k
  _stage_start_frees  FREE0[t,i] <= S_RAM[t,i];  <= 1 - S_RAM[t+1,i];  <= 1 - R[t,j] for readers j
  _memory             U[t,k] = U[t,k-] + M_k R[t,k] - sum_i M_i FREE[t,i,k];   U[t,k-] + M_k R[t,k] <= budget
  _deadline           sum R tau + M_in tau_in + M_out tau_out <= deadline        (no overlap), or with overlap
                      C_t = sum_i R[t,i] tau_i   (i not a load node: computation)
                      X_t = sum_i M_in[t,i] tau_in_i + M_out[t,i] tau_out_i + sum_l R[t,l] tau_l
                            + sum_{(t,l) in writes} R[l,l] tau_store_l   (transfers on the one bus)
                      C_t <= TAU[t],  X_t <= TAU[t],  sum_t TAU[t] <= deadline   (TAU continuous, one per stage)
  _storage_capacity   sum_i (M_i + CRC) sum_t M_out[t,i] <= storage
  _homes              R[t,l], S_RAM[t,l], FREE[t,l,k] <= R[l,l]              for every load node l (below)
  _frontier_memory    the relaxed model's rows (below) as valid inequalities: what must be in RAM while
                      stage t's frontier node runs, in binaries (and K[t,i] >= S_RAM[t+1,i] - M_in[t,i])

Persistent tensors (``Problem.loads``: parameters and optimizer state whose home the schedule chooses) are load
nodes: computing one reads its master copy from storage, recomputing it re-reads it. A load node's own stage
R[l,l] is a variable: 1 puts the tensor on storage (its cost is the load plus, for a tensor an update changes,
the write-back), 0 homes it in RAM. With H_l = 1 - R[l,l]:
  _dependencies       + H_u on the right when u is a load node (a RAM home is always there)
  _memory             + sum_l M_l H_l in every row of every stage (a RAM home takes its bytes all the time)
  _homes              a RAM-homed tensor is never loaded again, resident in the arena or freed from it
Load nodes are never paged (a re-read costs what a page-in would), and re-reads are allowed in every variant
(they are neither recomputation nor activation paging). Their loads and write-backs are not in the floor, so a
load node that must live on storage adds a constant to the extra energy.

The stage semantics are those of ``schedule.lower`` (page-ins just before first use, page-outs right after
computing or at the stage start, frees right after a tensor's last reader in the stage), and the memory rows
are an upper bound of what that program uses, so every solution fits once lowered; the replay simulator
checks each one independently anyway.

Two formulations:
  "poet"      (default) the exact per-hazard free rows above, with FREE continuous (freeing only ever helps, so
              it needs no integrality); a page-in serves the stage it happens in; page-outs may follow a
              computation in the same stage; paging time counts against the deadline: added to the compute
              time, or, when the pager overlaps computation (``Problem.overlap``), per stage the larger of the
              compute and the transfers (T continuous TAU and 2T + 1 rows; the simulator's ``stage_time``).
              The exact memory rows go through the continuous U chain and continuous frees, so their LP
              relaxation keeps fractions of tensors and is nearly empty (mlp at 226K: 1.4 uJ of 370 uJ;
              digits-cnn at 106K, 1.2x: 14 uJ of 4.2 mJ); the frontier rows, knapsacks over binaries, give
              HiGHS's cuts and heuristics something to work on (both points proven optimal in 5 to 10 s, from
              gaps of 47% and 99% after 30 and 60 s without them).
  "poet2022"  POET's original: binary FREE tied to its hazards by one aggregated big-M pair of rows (whose
              LP relaxation is weak), page-ins only serve the next stage, page-outs only of tensors resident
              at the stage start, page-ins not counted in RAM during their stage. Kept as an ablation.

Two more, not POET's (issue 14; ``Formulation`` with ``compact``):
  "compact"   the same stage matrices without FREE, FREE0, U: one memory row per stage counting everything the
              stage touches, sum_i M_i (S_RAM[t,i] + R[t,i] + M_in[t,i]) <= budget (an upper bound of the
              lowering: every solution fits, memory freed inside a stage is forgone), and at most C computations
              and C page-ins per output (COMPACT_C, Moccasin's bounded recomputation). Its bound is not the
              problem's.
  "relaxed"   its lower-bound twin: per stage, only what must be in RAM while the frontier node runs,
              M_t + sum_{u in(t)} M_u (R + S_RAM + M_in)[t,u] + sum_i M_i K[t,i] <= budget, K[t,i] >= S_RAM[t+1,i]
              - M_in[t,i]; every schedule satisfies it, so its optima (and its LP's, ``Milp.lp_bound``) bound
              the problem's extra energy. Its solutions are not schedules.

Solving. ``Formulation`` builds the rows once into sparse matrices (``_Lp``), and ``Milp`` solves them:
  HiGHS       through highspy directly, not through cvxpy: cvxpy's public API gives no way to hand HiGHS a MIP
              start from given values (its ``warm_start`` only reuses the solution of an earlier cvxpy solve of
              the same problem) nor to follow a running solve. highspy's own API does both: ``setSolution``
              for the start, and its callbacks for improving solutions (the incumbent), the MIP interrupt
              check (the bound, the gap, Ctrl-C, the caller's stop) and live ``Progress`` records; the LP
              solvers' interrupt checks stop a run past its limit inside a long LP. The matrices are built
              once; every solve passes them to a fresh instance (a second run on one instance does not keep
              its time limit in HiGHS 1.16), cold or from a given schedule (``Milp.solve(start=...)``).
  others      through cvxpy (``prob.solve(solver=...)``; the problem is built from the same matrices), with
              cvxpy's documented ``warm_start`` (the variables' values) where cvxpy's interface to the solver
              passes it on (``CVXPY_WARM_START``; SCIP's does not: it starts cold). The bound comes from the
              solver's own statistics; without one a time-limited solve is "feasible", never "optimal".
  where       in this process's solver worker (``worker.py``), for both: ``Milp.solve`` sends it the ``_Lp``
              and a ``_Job`` (deadline, gap, MIP start, options); the worker's ``_solve_job`` builds ``_Highs``
              (or the cvxpy problem) from them and sends back every ``Progress`` record and every improving
              solution, and stops when the parent's shared flag says so (the caller's ``stop``). HiGHS does not
              always heed its interrupt callbacks (sub-MIPs, restarts: 30 s past a 60 s limit), so a worker not
              done by the deadline plus ``worker.GRACE_S`` is killed, and the result is the best solution it had
              sent, with the last bound it had sent. One worker serves every solve (started once, warmed up by
              ``warm_up``; replaced after a kill); a daemonic process (which may have no child) solves in-process.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import PoetcError
from . import worker
from .problem import Problem
from .program import Schedule

Key = tuple  # ("R", t, i) and friends

FORMULATIONS = ("poet", "compact", "poet2022")  # and "relaxed", the bound model of strategies
COMPACT_C = 3  # computations of one output the compact formulation allows (Moccasin's C)

MILP_SOLVERS = ("HIGHS", "SCIP", "GUROBI", "CPLEX", "MOSEK", "CBC", "GLPK_MI", "XPRESS", "COPT")
CVXPY_WARM_START = ("GUROBI", "XPRESS", "COPT")  # MILP solvers whose cvxpy interface passes a warm start on


@dataclass(frozen=True)
class MilpOptions:
    solver: str = "HIGHS"
    time_limit_s: float = 60.0
    gap: float = 1e-4  # relative gap on the extra energy
    remat: bool = True
    paging: bool = True
    formulation: str = "poet"  # "poet" | "poet2022"
    warm_start: Schedule | None = None  # ``solve``: start from this schedule (HiGHS: with presolve off)
    verbose: bool = False


@dataclass(frozen=True)
class Progress:
    """How far a solve has come: what the schedule layer reports while it solves (a display renders it,
    ``MilpResult.log`` and the strategies' trace keep it)."""

    elapsed_s: float  # since the solve started
    best_j: float | None  # extra energy (above the floor) of the best schedule so far; None: none yet
    bound_j: float | None  # lower bound on the extra energy; None: none yet
    time_limit_s: float  # what the whole solve may take
    what: str = ""  # who found the best schedule: "HIGHS", "greedy", "paging-only MILP", ...

    @property
    def gap(self) -> float | None:
        """Relative gap on the extra energy: (best - bound) / best."""
        return _gap(self.best_j, self.bound_j)


def _gap(best: float | None, bound: float | None) -> float | None:
    if best is None or bound is None:
        return None
    if best <= 1e-15:
        return 0.0
    return max(0.0, (best - bound) / best)


@dataclass
class MilpResult:
    status: str  # optimal | feasible (time limit, incumbent) | infeasible | no_solution (time limit) | error
    schedule: Schedule | None
    extra_j: float | None  # objective: energy above the floor
    bound_j: float | None  # best lower bound on the extra energy
    solve_s: float
    build_s: float
    n_binary: int
    n_continuous: int
    n_rows: int
    solver: str
    message: str = ""
    log: list[Progress] = field(default_factory=list)  # as the solve went (HiGHS: from its callbacks)
    start_j: float | None = None  # extra energy of the MIP start the solver began from (None: no start used)

    @property
    def gap(self) -> float | None:
        """Relative gap on the extra energy: (extra - bound) / extra."""
        return _gap(self.extra_j, self.bound_j)

    @property
    def trace(self) -> list[tuple[float, float, float]]:
        """(seconds, best extra J or inf, bound J or 0) for every progress record."""
        inf = float("inf")
        return [(r.elapsed_s, inf if r.best_j is None else r.best_j, r.bound_j or 0.0) for r in self.log]


class OutOfTime(Exception):
    """The deadline passed while the model was being built (``Milp(deadline=...)``)."""


class _Model:
    """Columns and sparse rows; variables fixed to a constant are substituted away. With a ``deadline``
    (``time.perf_counter()`` seconds), adding rows after it raises ``OutOfTime`` (checked every 4096 rows)."""

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline
        self.n_added = 0
        self.bin: dict[Key, int] = {}
        self.cont: dict[Key, int] = {}
        self.cont_ub: list[float] = []
        self.const: dict[Key, float] = {}
        self.rows_le: list[tuple[list[tuple[Key, float]], float]] = []
        self.rows_eq: list[tuple[list[tuple[Key, float]], float]] = []

    def binary(self, key: Key) -> None:
        self.bin.setdefault(key, len(self.bin))

    def continuous(self, key: Key, ub: float) -> None:
        if key not in self.cont:
            self.cont[key] = len(self.cont)
            self.cont_ub.append(ub)

    def fix(self, key: Key, value: float) -> None:
        self.const[key] = value

    def has(self, key: Key) -> bool:
        return key in self.bin or key in self.cont or self.const.get(key, 0.0) != 0.0

    def le(self, terms: Iterable[tuple[Key, float]], rhs: float) -> None:
        """sum(coef * var) <= rhs; unknown keys are zero."""
        self.rows_le.append((list(terms), rhs))
        self._tick()

    def eq(self, terms: Iterable[tuple[Key, float]], rhs: float) -> None:
        self.rows_eq.append((list(terms), rhs))
        self._tick()

    def _tick(self) -> None:
        self.n_added += 1
        if not self.n_added & 4095:
            self.check()

    def check(self) -> None:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise OutOfTime

    def matrix(self, rows: list[tuple[list[tuple[Key, float]], float]]) -> tuple[sp.csr_matrix, np.ndarray]:
        """Rows over the columns [binaries, continuous] and their right-hand sides (constants moved there)."""
        nb = len(self.bin)
        col = {**self.bin, **{k: nb + j for k, j in self.cont.items()}}
        lens = np.fromiter((len(terms) for terms, _ in rows), dtype=np.int64, count=len(rows))
        rhs = np.fromiter((b for _, b in rows), dtype=float, count=len(rows))
        flat = [term for terms, _ in rows for term in terms]
        cols = np.fromiter((col.get(key, -1) for key, _ in flat), dtype=np.int64, count=len(flat))
        vals = np.fromiter((coef for _, coef in flat), dtype=float, count=len(flat))
        ri = np.repeat(np.arange(len(rows)), lens)
        for k in np.flatnonzero(cols < 0):  # a fixed variable (or one that does not exist): a constant
            key, coef = flat[k]
            rhs[ri[k]] -= coef * self.const.get(key, 0.0)
        keep = cols >= 0
        a = sp.csr_matrix((vals[keep], (ri[keep], cols[keep])), shape=(len(rows), nb + len(self.cont)))
        return a, rhs


class Formulation:
    """Builds the MILP of one problem (see the module docstring for the symbols)."""

    def __init__(self, p: Problem, opt: MilpOptions, deadline: float | None = None) -> None:
        if opt.formulation not in (*FORMULATIONS, "relaxed"):
            raise PoetcError(f"unknown formulation {opt.formulation!r} ({', '.join(FORMULATIONS)})")
        self.p = p
        self.opt = opt
        self.m = _Model(deadline)
        self.orig = opt.formulation == "poet2022"
        # compact: one memory row per stage, no FREE/U columns; relaxed: its lower-bound twin (see module doc)
        self.compact = opt.formulation in ("compact", "relaxed")
        self.relaxed = opt.formulation == "relaxed"
        if self.orig and p.loads:
            raise PoetcError(
                "formulation poet2022 keeps every parameter in RAM: build with --params ram to use it"
            )
        self._variables()
        self._constraints()

    # ---- variables ---------------------------------------------------------------------------------
    def _variables(self) -> None:
        p, m, opt = self.p, self.m, self.opt
        T = p.T
        self.arena = [bool(p.mem[i] > 0) for i in range(T)]
        self.runnable: list[list[int]] = [[] for _ in range(T)]  # nodes that may run in stage t, in order
        self.is_load = p.is_load
        # a load node's own stage loads it unless its tensor is homed in RAM: R[l,l] = 1 - H_l is a variable
        self.homeable = [l for l in p.loads if l not in p.storage_only]
        self.store_j = {l: j for l, (_u, j, _s) in p.written_by.items()}
        self.store_s = {l: t for l, (_u, _j, t) in p.written_by.items()}
        homeable = set(self.homeable)
        for t in range(T):
            m.check()
            for i in range(t + 1):
                if i == t:
                    if i in homeable:
                        m.binary(("R", t, t))
                    else:
                        m.fix(("R", t, t), 1.0)  # frontier-advancing: stage t computes node t
                    self.runnable[t].append(i)
                elif (
                    (opt.remat or self.is_load[i])  # re-reading a persistent tensor is not recomputation
                    and self.arena[i]
                    and p.consumers[i]
                    and t <= p.horizon[i]
                    and t <= p.last_stage[i]
                ):
                    self.m.binary(("R", t, i))
                    self.runnable[t].append(i)
        for i in range(T):
            m.check()
            if not self.arena[i]:
                continue
            for t in range(i + 1, p.horizon[i] + 1):
                self.m.binary(("S_RAM", t, i))
                if opt.paging and not self.is_load[i]:
                    if self.orig:
                        self.m.binary(("S_SD", t, i))
                    self.m.binary(("M_in", t, i))
            if opt.paging and not self.is_load[i]:
                for t in range(i if not self.orig else i + 1, p.horizon[i]):
                    self.m.binary(("M_out", t, i))
        # FREE[t,i,k]: i's output freed right after node k (k = i or a reader of i) runs in stage t
        self.free_pairs: list[list[tuple[int, int]]] = [[] for _ in range(T)]
        for t in range(T if not self.compact else 0):
            m.check()
            run = set(self.runnable[t])
            for i in range(t + 1):
                if not self.arena[i] or (t > p.horizon[i] and i != t):
                    continue
                for k in (i, *p.consumers[i]):
                    if k <= t and k in run:
                        if self.orig:
                            m.binary(("FREE", t, i, k))
                        else:
                            m.continuous(("FREE", t, i, k), 1.0)
                        self.free_pairs[t].append((i, k))
        # FREE0[t,i]: i, resident at the start of stage t, is freed at the stage start (lowering step 2)
        if not self.orig and not self.compact:
            for i in range(T):
                m.check()
                if self.arena[i]:
                    for t in range(i + 1, p.horizon[i] + 1):
                        m.continuous(("FREE0", t, i), 1.0)
        for t in range(T if not self.compact else 0):
            m.check()
            for k in self.runnable[t]:
                m.continuous(("U", t, k), float(p.budget))
        # TAU[t]: the time of stage t when the pager overlaps computation (deadline rows)
        self.overlap = bool(p.overlap and p.deadline_s is not None and not self.orig)
        if self.overlap:
            for t in range(T):
                m.continuous(("TAU", t), float(p.deadline_s))
        # relaxed and poet: K[t,i] >= S_RAM[t+1,i] - M_in[t,i], i is in RAM while the frontier node t runs
        self.frontier = self.relaxed or (not self.orig and not self.compact)
        if self.frontier:
            for t in range(T):
                m.check()
                for i in self._kept(t):
                    m.continuous(("K", t, i), 1.0)
        # P[i]: i is ever written to storage (for the capacity row)
        self.storage_row = bool(
            opt.paging
            and p.storage_bytes is not None
            and float((p.mem + p.page_overhead).sum()) > p.storage_bytes
        )
        if self.storage_row and self.orig:
            for i in range(T):
                m.check()
                if self.arena[i]:
                    m.binary(("P", i))

    # ---- constraints -------------------------------------------------------------------------------
    def _constraints(self) -> None:
        """The constraint groups of the module docstring, in this order (the order of the rows)."""
        self._dependencies()
        self._residency()
        if not self.orig:
            self._usefulness()
        if self.compact:
            if self.relaxed:
                self._frontier_memory()
            else:
                self._stage_memory()
                self._computations()
        else:
            self._frees()
            if not self.orig:
                self._stage_start_frees()
            self._memory()
            if self.frontier:
                self._frontier_memory()
        if self.p.deadline_s is not None:
            self._deadline()
        if self.storage_row:
            self._storage_capacity()
        if self.homeable:
            self._homes()

    def _dependencies(self) -> None:
        """R[t,v] <= R[t,u] + S_RAM[t,u] + M_in[t,u] (+ H_u = 1 - R[u,u] for a load node u that may be homed in
        RAM) for every input u of v   (POET 2022: without M_in)"""
        p, m = self.p, self.m
        homeable = set(self.homeable)
        for t in range(p.T):
            for v in self.runnable[t]:
                for u in set(p.inputs[v]):
                    if not self.arena[u]:
                        continue
                    terms = [(("R", t, v), 1.0), (("R", t, u), -1.0), (("S_RAM", t, u), -1.0)]
                    if not self.orig:
                        terms.append((("M_in", t, u), -1.0))
                    if u in homeable and t != u:
                        m.le([*terms, (("R", u, u), 1.0)], 1.0)
                    else:
                        m.le(terms, 0.0)

    def _homes(self) -> None:
        """A tensor homed in RAM is never loaded again, counted in the arena or freed from it:
        R[t,l] <= R[l,l],  S_RAM[t,l] <= R[l,l]  (t > l),  FREE[t,l,k] <= R[l,l]  (k a reader of l)."""
        p, m = self.p, self.m
        homeable = set(self.homeable)
        for l in self.homeable:
            for t in range(l + 1, p.T):
                for kind in ("R", "S_RAM"):
                    if m.has((kind, t, l)):
                        m.le([((kind, t, l), 1.0), (("R", l, l), -1.0)], 0.0)
        for t in range(p.T):
            for i, k in self.free_pairs[t]:
                if i in homeable and k != i:
                    m.le([(("FREE", t, i, k), 1.0), (("R", i, i), -1.0)], 0.0)

    def _residency(self) -> None:
        """Where each output is at each stage: RAM and storage residency, page-outs of what is there, at most
        one page-out, one source per stage (formulas inline)."""
        p, m = self.p, self.m
        for i in range(p.T):
            if not self.arena[i]:
                continue
            for t in range(i, p.horizon[i] + 1):
                nxt = t + 1
                # RAM residency: S_RAM[t+1,i] <= S_RAM[t,i] + R[t,i] + M_in[t,i]
                if m.has(("S_RAM", nxt, i)):
                    m.le(
                        [
                            (("S_RAM", nxt, i), 1.0),
                            (("S_RAM", t, i), -1.0),
                            (("R", t, i), -1.0),
                            (("M_in", t, i), -1.0),
                        ],
                        0.0,
                    )
                # storage residency. POET 2022: S_SD[t+1,i] <= S_SD[t,i] + M_out[t,i], M_in[t,i] <= S_SD[t,i].
                # poet: a tensor's value never changes, so it is paged out at most once and stays on storage:
                #   sum_t M_out[t,i] <= 1,   S_SD[t,i] = sum_{t' < t} M_out[t',i],   M_in[t,i] <= S_SD[t,i]
                if self.orig:
                    if m.has(("S_SD", nxt, i)):
                        m.le([(("S_SD", nxt, i), 1.0), (("S_SD", t, i), -1.0), (("M_out", t, i), -1.0)], 0.0)
                    if m.has(("M_in", t, i)):
                        m.le([(("M_in", t, i), 1.0), (("S_SD", t, i), -1.0)], 0.0)
                elif m.has(("M_in", t, i)):
                    m.le([(("M_in", t, i), 1.0), *[(("M_out", tt, i), -1.0) for tt in range(i, t)]], 0.0)
                # paging out only of what is there: M_out[t,i] <= S_RAM[t,i] + R[t,i]
                if m.has(("M_out", t, i)):
                    terms = [(("M_out", t, i), 1.0), (("S_RAM", t, i), -1.0)]
                    if not self.orig:
                        terms.append((("R", t, i), -1.0))
                    m.le(terms, 0.0)
                    if self.storage_row and self.orig:
                        m.le([(("M_out", t, i), 1.0), (("P", i), -1.0)], 0.0)
            if not self.orig and self.opt.paging:
                outs = [(("M_out", t, i), 1.0) for t in range(i, p.horizon[i]) if m.has(("M_out", t, i))]
                if len(outs) > 1:
                    m.le(outs, 1.0)
            for t in range(i, p.horizon[i] + 1):
                # one source per stage: S_RAM[t,i] + R[t,i] + M_in[t,i] <= 1  (for i < t)
                if t > i:
                    m.le([(("S_RAM", t, i), 1.0), (("R", t, i), 1.0), (("M_in", t, i), 1.0)], 1.0)

    def _usefulness(self) -> None:
        """("poet" only) Valid inequalities that cut useless work and tighten the relaxation: recomputing,
        paging in or keeping i in stage t pays only if a node of stage t reads i, or i is kept for t+1 (or
        paged out, for a recomputation):
          R[t,i] (i < t), M_in[t,i]  <=  sum_{j reads i} R[t,j] + S_RAM[t+1,i] (+ M_out[t,i] for R)"""
        p, m = self.p, self.m
        for t in range(p.T):
            for i in range(t):
                if not self.arena[i] or t > p.horizon[i]:
                    continue
                use = [(("R", t, j), -1.0) for j in p.consumers[i] if j <= t and m.has(("R", t, j))]
                keep = [(("S_RAM", t + 1, i), -1.0)] if m.has(("S_RAM", t + 1, i)) else []
                out = [(("M_out", t, i), -1.0)] if m.has(("M_out", t, i)) else []
                for kind in ("R", "M_in"):
                    if m.has((kind, t, i)):
                        m.le([((kind, t, i), 1.0), *use, *keep, *(out if kind != "M_in" else [])], 0.0)

    def _frees(self) -> None:
        """ "poet": FREE[t,i,k] <= R[t,k];  <= 1 - S_RAM[t+1,i];  <= 1 - R[t,j], each reader j > k of i.
        "poet2022": binary FREE = 1 iff hazards h = (1 - R[t,k]) + S_RAM[t+1,i] + sum_j R[t,j] are zero:
                    1 - FREE <= h  and  h <= H (1 - FREE), H the most hazards there can be."""
        p, m = self.p, self.m
        for t in range(p.T):
            for i, k in self.free_pairs[t]:
                f = ("FREE", t, i, k)
                later = [j for j in p.consumers[i] if k < j <= t and m.has(("R", t, j))]
                if self.orig:
                    # 1 - FREE <= h   <=>   -FREE + R[t,k] - S_RAM[t+1,i] - sum_j R[t,j] <= 0
                    m.le(
                        [
                            (f, -1.0),
                            (("R", t, k), 1.0),
                            (("S_RAM", t + 1, i), -1.0),
                            *[(("R", t, j), -1.0) for j in later],
                        ],
                        0.0,
                    )
                    # h <= H (1 - FREE)   <=>   -R[t,k] + S_RAM[t+1,i] + sum_j R[t,j] + H FREE <= H - 1
                    big = 2 + len(later)
                    m.le(
                        [
                            (("R", t, k), -1.0),
                            (("S_RAM", t + 1, i), 1.0),
                            *[(("R", t, j), 1.0) for j in later],
                            (f, float(big)),
                        ],
                        float(big) - 1.0,
                    )
                    continue
                m.le([(f, 1.0), (("R", t, k), -1.0)], 0.0)
                if m.has(("S_RAM", t + 1, i)):
                    m.le([(f, 1.0), (("S_RAM", t + 1, i), 1.0)], 1.0)
                for j in later:
                    m.le([(f, 1.0), (("R", t, j), 1.0)], 1.0)

    def _stage_start_frees(self) -> None:
        """("poet" only) FREE0[t,i] <= S_RAM[t,i];  <= 1 - S_RAM[t+1,i];  <= 1 - R[t,j] for every reader j of
        i in stage t   (i is resident but unused and not kept)"""
        p, m = self.p, self.m
        for i in range(p.T):
            if not self.arena[i]:
                continue
            for t in range(i + 1, p.horizon[i] + 1):
                f0 = ("FREE0", t, i)
                m.le([(f0, 1.0), (("S_RAM", t, i), -1.0)], 0.0)
                if m.has(("S_RAM", t + 1, i)):
                    m.le([(f0, 1.0), (("S_RAM", t + 1, i), 1.0)], 1.0)
                for j in p.consumers[i]:
                    if j <= t and m.has(("R", t, j)):
                        m.le([(f0, 1.0), (("R", t, j), 1.0)], 1.0)

    def _memory(self) -> None:
        """At every point inside a stage:
        base_t   = sum_i M_i (S_RAM[t,i] + M_in[t,i] - FREE0[t,i])  (POET 2022: S_RAM only)
        U[t,k]   = U[t,k-] + M_k R[t,k] - sum_i M_i FREE[t,i,k]   (k- the previous runnable node)
        U[t,k-] + M_k R[t,k] <= budget                            (while k runs, before its frees)
        + sum_l M_l (1 - R[l,l]) in every row: the persistent tensors homed in RAM"""
        p, m = self.p, self.m
        T = p.T
        mem = p.mem.astype(float)
        by_k: list[dict[int, list[int]]] = [{} for _ in range(T)]
        for t in range(T):
            for i, k in self.free_pairs[t]:
                by_k[t].setdefault(k, []).append(i)
        held = float(sum(mem[l] for l in self.homeable))
        for t in range(T):
            base: list[tuple[Key, float]] = []
            for i in range(t):
                if self.arena[i] and t <= p.horizon[i]:
                    base.append((("S_RAM", t, i), mem[i]))
                    if not self.orig:
                        base.append((("M_in", t, i), mem[i]))
                        base.append((("FREE0", t, i), -mem[i]))
            base += [(("R", l, l), -mem[l]) for l in self.homeable]  # + held below: sum_l M_l (1 - R[l,l])
            prev: list[tuple[Key, float]] = base
            first = True
            for k in self.runnable[t]:
                run = [(("R", t, k), mem[k])] if mem[k] > 0 else []
                m.le([*prev, *run], float(p.budget) - (held if first else 0.0))
                frees = [(("FREE", t, i, k), -mem[i]) for i in by_k[t].get(k, [])]
                m.eq([(("U", t, k), -1.0), *prev, *run, *frees], -held if first else 0.0)
                prev = [(("U", t, k), 1.0)]
                first = False

    def _held(self) -> tuple[list[tuple[Key, float]], float]:
        """The persistent tensors homed in RAM, in every memory row: sum_l M_l (1 - R[l,l]) as (terms, held)."""
        mem = self.p.mem
        return [(("R", l, l), -float(mem[l])) for l in self.homeable], float(
            sum(mem[l] for l in self.homeable)
        )

    def _stage_memory(self) -> None:
        """(compact) One row per stage, everything the stage touches counted at once:
        sum_i M_i (S_RAM[t,i] + R[t,i] + M_in[t,i])  <=  budget   (+ the RAM homes)
        The lowering never holds more than that in stage t (what is resident at its start, computed or paged
        in during it), so every solution fits; it forgoes the reuse of memory freed inside a stage."""
        p, m = self.p, self.m
        mem = p.mem.astype(float)
        homes, held = self._held()
        for t in range(p.T):
            m.check()
            row = [*homes]
            for i in range(t + 1):
                if self.arena[i] and (t <= p.horizon[i] or i == t):
                    row += [((kind, t, i), mem[i]) for kind in ("S_RAM", "R", "M_in") if m.has((kind, t, i))]
            m.le(row, float(p.budget) - held)

    def _computations(self) -> None:
        """(compact) At most C computations and C page-ins of each output (Moccasin's bounded recomputation):
        sum_{t>i} R[t,i] <= C - 1,   sum_t M_in[t,i] <= C"""
        p, m = self.p, self.m
        c = COMPACT_C
        for i in range(p.T):
            recs = [
                (("R", t, i), 1.0) for t in range(i + 1, p.T) if m.has(("R", t, i)) and ("R", t, i) in m.bin
            ]
            if len(recs) > c - 1:
                m.le(recs, float(c - 1))
            ins = [(("M_in", t, i), 1.0) for t in range(i, p.T) if ("M_in", t, i) in m.bin]
            if len(ins) > c:
                m.le(ins, float(c))

    def _kept(self, t: int) -> list[int]:
        """(relaxed) Outputs other than the frontier node's and its inputs that may be resident while it runs."""
        p = self.p
        ins = set(p.inputs[t])
        return [i for i in range(t) if self.arena[i] and i not in ins and t + 1 <= p.horizon[i]]

    def _frontier_memory(self) -> None:
        """(relaxed) What must be in RAM while the frontier node t runs: its output, its inputs, and every
        output kept into stage t+1 that was not paged in after it (a page-in in stage t of a tensor no node of
        the stage reads comes at its end):
        M_t R[t,t] + sum_{u in(t)} M_u (R[t,u] + S_RAM[t,u] + M_in[t,u]) + sum_i M_i K[t,i] <= budget,
        K[t,i] >= S_RAM[t+1,i] - M_in[t,i] (continuous, >= 0), + the RAM homes.
        Every schedule satisfies these rows, so this model's bound is a bound of the true problem's
        (it is no schedule: its rows miss the rest of each stage)."""
        p, m = self.p, self.m
        mem = p.mem.astype(float)
        homes, held = self._held()
        for t in range(p.T):
            m.check()
            row = [*homes]
            if self.arena[t]:
                row.append((("R", t, t), mem[t]))
            for u in set(p.inputs[t]):
                if self.arena[u]:
                    row += [((kind, t, u), mem[u]) for kind in ("R", "S_RAM", "M_in")]
            for i in self._kept(t):
                m.le([(("K", t, i), -1.0), (("S_RAM", t + 1, i), 1.0), (("M_in", t, i), -1.0)], 0.0)
                row.append((("K", t, i), mem[i]))
            m.le(row, float(p.budget) - held)

    def _deadline(self) -> None:
        """sum R tau + M_in tau_in + M_out tau_out <= deadline   (paging time counts, unlike POET's row); with
        overlap: C_t <= TAU[t], X_t <= TAU[t], sum_t TAU[t] <= deadline (see the module docstring)"""
        p = self.p
        terms = self._cost_terms(p.compute_s, p.page_in_s, p.page_out_s, self.store_s)
        if not self.overlap:
            self.m.le(terms, float(p.deadline_s))
            return
        comp, xfer = self.stage_terms(terms)
        for t in range(p.T):
            self.m.le([*comp[t], (("TAU", t), -1.0)], 0.0)
            self.m.le([*xfer[t], (("TAU", t), -1.0)], 0.0)
        self.m.le([(("TAU", t), 1.0) for t in range(p.T)], float(p.deadline_s))

    def stage_terms(
        self, terms: list[tuple[Key, float]]
    ) -> tuple[list[list[tuple[Key, float]]], list[list[tuple[Key, float]]]]:
        """The time terms of ``_cost_terms`` split per stage into computation and transfers. A load node's
        computation is a transfer (it reads the master copy), and so is the write-back its R[l,l] pays for,
        which happens in the stage of the update that changes the tensor."""
        T = self.p.T
        comp: list[list[tuple[Key, float]]] = [[] for _ in range(T)]
        xfer: list[list[tuple[Key, float]]] = [[] for _ in range(T)]
        writer = self.p.written_by
        for key, coef in terms:
            t, i = key[1], key[2]
            if key[0] == "R" and self.is_load[i]:
                xfer[t].append((key, float(self.p.compute_s[i])))
                if t == i and i in writer:
                    xfer[writer[i][0]].append((key, float(writer[i][2])))
            elif key[0] == "R":
                comp[t].append((key, coef))
            else:
                xfer[t].append((key, coef))
        return comp, xfer

    def _storage_capacity(self) -> None:
        """sum_i (M_i + CRC) [i is ever paged out] <= storage   ([.] is P[i] in POET 2022, sum_t M_out[t,i]
        in "poet", where a tensor is paged out at most once)"""
        p, m = self.p, self.m
        mem = p.mem.astype(float)
        if self.orig:
            m.le(
                [(("P", i), float(mem[i] + p.page_overhead)) for i in range(p.T) if self.arena[i]],
                float(p.storage_bytes),
            )
        else:
            m.le(
                [
                    (("M_out", t, i), float(mem[i] + p.page_overhead))
                    for i in range(p.T)
                    if self.arena[i]
                    for t in range(i, p.horizon[i])
                    if m.has(("M_out", t, i))
                ],
                float(p.storage_bytes),
            )

    def _cost_terms(
        self, c: np.ndarray, cin: np.ndarray, cout: np.ndarray, store: dict[int, float]
    ) -> list[tuple[Key, float]]:
        """Cost of every decision. A load node's own stage loads it and, for a tensor an update changes, writes
        it back later (R[l,l] = 1 exactly when it is homed on storage): ``store`` adds that cost."""
        terms: list[tuple[Key, float]] = []
        for key in list(self.m.bin) + [k for k, v in self.m.const.items() if v]:
            kind = key[0]
            if kind == "R":
                extra = store.get(key[2], 0.0) if key[1] == key[2] else 0.0
                terms.append((key, float(c[key[2]]) + extra))
            elif kind == "M_in":
                terms.append((key, float(cin[key[2]])))
            elif kind == "M_out":
                terms.append((key, float(cout[key[2]])))
        return terms

    # ---- objective, solutions ----------------------------------------------------------------------
    def objective(self) -> tuple[np.ndarray, float]:
        """Energy coefficients (J) over the binary columns, and the constant part of the extra energy. The fixed
        R[t,t] of ordinary nodes are left out (they are the floor); those of load nodes that must live on
        storage are the constant (their load and write-back are not in the floor)."""
        p = self.p
        c = np.zeros(len(self.m.bin))
        const = 0.0
        for key, coef in self._cost_terms(p.compute_j, p.page_in_j, p.page_out_j, self.store_j):
            if key in self.m.bin:
                c[self.m.bin[key]] += coef
            elif key[0] == "R" and self.is_load[key[2]]:
                const += coef
        return c, const

    def residency_weights(self) -> np.ndarray:
        """M_i / budget for every S_RAM[t,i] column (0 elsewhere)."""
        w = np.zeros(len(self.m.bin))
        for key, col in self.m.bin.items():
            if key[0] == "S_RAM":
                w[col] = float(self.p.mem[key[2]]) / max(1, self.p.budget)
        return w

    def lp(self) -> _Lp:
        """The matrices a solver sees. The objective is the extra energy scaled so that its largest coefficient
        is 1000 (joules of tiny nodes are below the solvers' absolute tolerances otherwise), plus a tie-break:
        among schedules of equal energy prefer the one that keeps less in RAM. Residency summed over stages
        and divided by the budget is at most T, so a weight of (smallest energy coefficient) / (10 T) can never
        outweigh a real energy difference."""
        m = self.m
        a_eq, b_eq = m.matrix(m.rows_eq)
        a_le, b_le = m.matrix(m.rows_le)
        nb, nc = len(m.bin), len(m.cont)
        c, const = self.objective()
        scale = 1000.0 / float(c.max()) if c.size and c.max() > 0 else 1.0
        pos = c[c > 0]
        eps = float(pos.min()) * scale / (10.0 * max(1, self.p.T)) if pos.size else 0.0
        return _Lp(
            a=sp.vstack([a_eq, a_le]).tocsc(),
            row_lo=np.concatenate([b_eq, np.full(len(b_le), -np.inf)]),
            row_hi=np.concatenate([b_eq, b_le]),
            col_hi=np.concatenate([np.ones(nb), np.asarray(m.cont_ub, dtype=float)]),
            cost=np.concatenate([c * scale + eps * self.residency_weights(), np.zeros(nc)]),
            n_bin=nb,
            n_eq=len(b_eq),
            energy=c,
            scale=scale,
            const=const,
        )

    def schedule_from(self, xb: np.ndarray, strategy: str, meta: dict[str, Any]) -> Schedule:
        T = self.p.T
        mats = {n: np.zeros((T, T), dtype=bool) for n in ("R", "S_RAM", "S_SD", "M_in", "M_out")}
        for key, col in self.m.bin.items():
            if key[0] in mats and xb[col] > 0.5:
                mats[key[0]][key[1], key[2]] = True
        for key, v in self.m.const.items():
            if key[0] in mats and v:
                mats[key[0]][key[1], key[2]] = True
        if not self.orig:  # on storage from the stage after the page-out on
            mats["S_SD"] = np.cumsum(mats["M_out"], axis=0, dtype=np.int64) > 0
            mats["S_SD"] = np.vstack([np.zeros((1, T), dtype=bool), mats["S_SD"][:-1]])
        ram = frozenset(l for l in self.homeable if not mats["R"][l, l])
        return Schedule(
            mats["R"], mats["S_RAM"], mats["S_SD"], mats["M_in"], mats["M_out"], strategy, meta, ram
        )

    def start_values(self, s: Schedule) -> np.ndarray:
        """Column values [binaries, continuous] of a given schedule (a MIP start): binaries from its matrices,
        FREE from its hazards, U from the memory recurrence."""
        p, m = self.p, self.m
        T = p.T
        nb = len(m.bin)
        z = np.zeros(nb + len(m.cont))
        mats = {"R": s.R, "S_RAM": s.S_RAM, "S_SD": s.S_SD, "M_in": s.M_in, "M_out": s.M_out}
        free: dict[tuple[int, int, int], float] = {}
        for t in range(T):
            for i, k in self.free_pairs[t]:
                later = any(s.R[t, j] for j in p.consumers[i] if k < j <= t)
                keep = t + 1 < T and s.S_RAM[t + 1, i]
                free[(t, i, k)] = float(bool(s.R[t, k]) and not keep and not later)
        for key, col in m.bin.items():
            if key[0] in mats:
                z[col] = float(mats[key[0]][key[1], key[2]])
            elif key[0] == "P":
                z[col] = float(s.M_out[:, key[1]].any())
            elif key[0] == "FREE":
                z[col] = free[key[1:]]
        free0: dict[tuple[int, int], float] = {}
        for t in range(T):
            for i in np.flatnonzero(s.S_RAM[t]):
                used = any(s.R[t, j] for j in p.consumers[i] if j <= t)
                kept = t + 1 < T and s.S_RAM[t + 1, i]
                free0[(t, int(i))] = float(not used and not kept and not self.orig)
        mem = p.mem.astype(float)
        held = sum(mem[l] for l in self.homeable if not s.R[l, l])
        for t in range(T):
            u = held + sum(
                mem[i] * (s.S_RAM[t, i] + (0 if self.orig else s.M_in[t, i]) - free0.get((t, i), 0.0))
                for i in range(t)
            )
            by_k: dict[int, float] = {}
            for (tt, i, k), v in free.items():
                if tt == t:
                    by_k[k] = by_k.get(k, 0.0) + mem[i] * v
            for k in self.runnable[t]:
                u += mem[k] * s.R[t, k] - by_k.get(k, 0.0)
                if ("U", t, k) in m.cont:
                    z[nb + m.cont[("U", t, k)]] = max(u, 0.0)
        for key, col in m.cont.items():
            if key[0] == "FREE":
                z[nb + col] = free[key[1:]]
            elif key[0] == "FREE0":
                z[nb + col] = free0.get(key[1:], 0.0)
        if self.overlap:  # TAU[t] = max(C_t, X_t) of the schedule
            comp, xfer = self.stage_terms(
                self._cost_terms(p.compute_s, p.page_in_s, p.page_out_s, self.store_s)
            )

            def value(key: Key) -> float:
                if key[0] in mats:
                    return float(mats[key[0]][key[1], key[2]])
                return 0.0

            for t in range(T):
                c = sum(coef * value(k) for k, coef in comp[t])
                x = sum(coef * value(k) for k, coef in xfer[t])
                z[nb + m.cont[("TAU", t)]] = max(c, x)
        return z


@dataclass(frozen=True)
class _Lp:
    """min cost @ z  subject to  row_lo <= a z <= row_hi,  0 <= z <= col_hi,  z[:n_bin] binary.
    Columns: the binaries, then the continuous columns (``_Model``'s numbering); rows: the n_eq equalities,
    then the inequalities."""

    a: sp.csc_matrix
    row_lo: np.ndarray
    row_hi: np.ndarray
    col_hi: np.ndarray
    cost: np.ndarray  # scaled energy + tie-break
    n_bin: int
    n_eq: int
    energy: np.ndarray  # extra energy (J) of each binary column
    scale: float
    const: float = 0.0  # extra energy (J) no decision changes (loads of tensors that must live on storage)

    @property
    def n_col(self) -> int:
        return self.a.shape[1]

    def extra_j(self, z: np.ndarray) -> float:
        """Extra energy of a solution, its binaries rounded."""
        var = float(self.energy @ np.round(np.asarray(z, dtype=float)[: self.n_bin])) if self.n_bin else 0.0
        return var + self.const

    def bound_j(self, extra: float, objective: float, dual: float) -> float | None:
        """A bound on the objective as a bound on the extra energy: the solver's relative gap on its objective
        (which includes the tie-break) applied to the part of the extra energy the decisions change. None if it
        is not finite."""
        if not (np.isfinite(dual) and np.isfinite(objective)):
            return None
        var = extra - self.const
        if objective <= 1e-12:
            b = var if dual >= objective - 1e-9 else max(0.0, dual / self.scale)
        else:
            b = min(var, max(0.0, var * dual / objective))
        return b + self.const


class Milp:
    """One problem's MILP, built once and solved once or more: ``solve(time_limit_s, start=...)`` (with HiGHS,
    each solve on a fresh highspy instance given the same matrices)."""

    def __init__(
        self,
        p: Problem,
        opt: MilpOptions = MilpOptions(),
        strategy: str = "poet",
        deadline: float | None = None,
    ) -> None:
        """``deadline`` (``time.perf_counter()`` seconds): building stops with ``OutOfTime`` after it, and no
        solve runs past it."""
        self.solver = opt.solver.upper()
        _check_installed(self.solver)
        t0 = time.perf_counter()
        self.p, self.opt, self.strategy, self.deadline = p, opt, strategy, deadline
        self.f = Formulation(p, opt, deadline)
        if deadline is not None and time.perf_counter() > deadline:
            raise OutOfTime
        self.lp = self.f.lp()
        self.build_s = time.perf_counter() - t0

    @property
    def n_rows(self) -> int:
        return len(self.f.m.rows_le) + len(self.f.m.rows_eq)

    def lp_bound(self, time_limit_s: float) -> float | None:
        """The optimum of the LP relaxation (on the extra energy, without the tie-break): a lower bound on the
        MILP's; None if it does not solve within ``time_limit_s``."""
        from scipy.optimize import linprog

        if time_limit_s <= 0:
            return None
        lp = self.lp
        a = lp.a.tocsr()
        ne = lp.n_eq
        cost = np.concatenate([lp.energy * lp.scale, np.zeros(lp.n_col - lp.n_bin)])
        r = linprog(
            cost,
            A_ub=a[ne:] if a.shape[0] > ne else None,
            b_ub=lp.row_hi[ne:] if a.shape[0] > ne else None,
            A_eq=a[:ne] if ne else None,
            b_eq=lp.row_hi[:ne] if ne else None,
            bounds=np.column_stack([np.zeros(lp.n_col), lp.col_hi]),
            method="highs",
            options={"time_limit": float(time_limit_s)},
        )
        if r.status != 0:
            return None
        # the solver's tolerance: a hair below its optimum, never above what it proved
        return max(0.0, float(r.fun) / lp.scale * (1 - 1e-7)) + lp.const

    def describe(self, time_limit_s: float) -> str:
        m = self.f.m
        return (
            f"MILP ({self.opt.formulation}): {len(m.bin)} binaries, {len(m.cont)} continuous, {self.n_rows} rows; "
            f"solving with {self.solver} (up to {time_limit_s:g} s for this solve, gap {self.opt.gap:g} on extra energy)"
        )

    def solve(
        self,
        time_limit_s: float | None = None,
        start: Schedule | None = None,
        presolve: bool = True,
        watch: Callable[[Progress], None] | None = None,
        stop: Callable[[], bool] | None = None,
        found: Callable[[Schedule], None] | None = None,
    ) -> MilpResult:
        """Solve for ``time_limit_s`` (default: the options'), from the schedule ``start`` if given; ``watch``
        gets ``Progress`` records as the solver finds schedules and raises its bound (HiGHS).
        ``stop`` (HiGHS): asked after every schedule found and every few tenths of a second; True ends the
        solve (the caller's own bound proves the best schedule so far: the result is "feasible").
        ``found`` (HiGHS): gets the schedule of every improving solution as the solver finds it (the relaxed
        model's, sent by the bound process: often a schedule of the problem too, which the replay decides).
        The solver runs in the worker process (module docstring), which is killed if it is not done by the
        limit (and ``deadline``) plus ``worker.GRACE_S``: the solve never takes longer, whatever the solver."""
        limit = self.opt.time_limit_s if time_limit_s is None else time_limit_s
        z0 = self.f.start_values(start) if start is not None else None
        t0 = time.perf_counter()
        limit = self._left(limit, t0)
        if limit <= 0:
            out = _Outcome("no_solution", message="time limit reached before the solver started")
        else:
            job = _Job(
                self.solver,
                t0 + limit,
                self.opt.gap,
                z0,
                presolve,
                self.opt.verbose,
                eager=self.opt.formulation in ("compact", "relaxed"),
            )
            out = _solve(self.lp, job, watch, stop, self._schedules(found))
        return self._result(out, time.perf_counter() - t0)

    def _schedules(self, found: Callable[[Schedule], None] | None) -> Callable[[np.ndarray], None] | None:
        """``found`` as a callback on the solver's columns."""
        if found is None:
            return None
        return lambda z: found(self.f.schedule_from(z, self.strategy, {"extra_j": self.lp.extra_j(z)}))

    def _left(self, limit: float, t0: float) -> float:
        """What is left of ``limit`` (counted from ``t0``) and of the deadline."""
        left = limit - (time.perf_counter() - t0)
        if self.deadline is not None:
            left = min(left, self.deadline - time.perf_counter())
        return left

    def _result(self, out: _Outcome, solve_s: float) -> MilpResult:
        m = self.f.m

        def result(st: str, sched: Schedule | None, extra: float | None, bound: float | None) -> MilpResult:
            return MilpResult(
                st,
                sched,
                extra,
                bound,
                solve_s,
                self.build_s,
                len(m.bin),
                len(m.cont),
                self.n_rows,
                self.solver,
                out.message,
                out.log,
                out.start_j,
            )

        if out.z is None:
            return result(out.status, None, None, None)
        extra = self.lp.extra_j(out.z)
        bound = out.bound_j
        # proven: the solver says so, or its bound is within the requested gap (a gap limit, e.g. SCIP's)
        optimal = out.status == "optimal" or (
            bound is not None and (_gap(extra, bound) or 0.0) <= self.opt.gap
        )
        if out.status == "optimal" and bound is None:
            bound = extra
        st = "optimal" if optimal else "feasible"
        meta = {
            "status": st,
            "extra_j": extra,
            "bound_j": bound,
            "floor_j": self.p.floor_j,
            "solver": self.solver,
            "formulation": self.opt.formulation,
            "solve_s": solve_s,
            "mip_start": out.start_note,
        }
        sched = self.f.schedule_from(out.z, self.strategy, meta)
        r = result(st, sched, extra, bound)
        sched.meta["gap"] = r.gap
        return r


@dataclass
class _Outcome:
    """What a solver run left: a status, the columns of its best solution, its bound, its progress records."""

    status: str
    z: np.ndarray | None = None
    bound_j: float | None = None
    log: list[Progress] = field(default_factory=list)
    start_j: float | None = None
    message: str = ""
    start_note: str = ""


# ---- the solve, in the worker process (``worker.py``) or in this one ----------------------------------------
@dataclass(frozen=True)
class _Job:
    """What a solve of an ``_Lp`` needs besides it (sent to the worker with it)."""

    solver: str
    deadline: float  # time.perf_counter() time the solve must end by (the monotonic clock: the same in every process)
    gap: float
    z0: np.ndarray | None = None  # MIP start (columns)
    presolve: bool = True
    verbose: bool = False
    eager: bool = (
        False  # HiGHS: more heuristic effort, feasibility jump on any size (the compact formulation)
    )


_LP_KEYS = itertools.count()


def _lp_key(lp: _Lp) -> tuple[int, int]:
    """A key naming this very ``_Lp`` object in the worker's cache (kept on the object: a copy gets its own)."""
    key = lp.__dict__.get("_worker_key")
    if key is None:
        key = (os.getpid(), next(_LP_KEYS))
        object.__setattr__(lp, "_worker_key", key)
    return key


def warm_up(solver: str = "HIGHS") -> None:
    """Start this process's solver worker now, so that its start-up (a second or two of imports) overlaps the
    caller's own work (the heuristics); cvxpy too for the solvers it drives."""
    worker.warm_up(() if solver.upper() == "HIGHS" else ("cvxpy",))


def _solve(
    lp: _Lp,
    job: _Job,
    watch: Callable[[Progress], None] | None,
    stop: Callable[[], bool] | None,
    found: Callable[[np.ndarray], None] | None = None,
) -> _Outcome:
    """Solve ``lp`` in this process's worker, which is killed if the solver does not end by ``job.deadline`` plus
    ``worker.GRACE_S``: the result is then the best incumbent the solver had sent. In a daemonic process (which
    may have no child), or while another thread uses the worker, the solve runs here (the solver's own time
    limit and interrupt callbacks are all that hold it)."""
    lock = worker.lock()
    if not worker.available() or not lock.acquire(blocking=False):
        return _solve_job(_Here(lp, watch, stop, found), lp, job)
    relay = _Relay(lp, job, watch, found)
    try:
        w = worker.get()
        return w.run(_solve_job, _lp_key(lp), lp, (job,), relay.take, stop, job.deadline)
    except worker.Killed as k:
        out = relay.outcome(k.why, k.asked)
    finally:
        lock.release()
    worker.warm_up()  # the next solve's worker starts now, while the caller looks at this result
    return out


def _solve_job(chan: Any, lp: _Lp, job: _Job) -> _Outcome:
    """(the worker, or this process) One solve. ``chan.send`` gets ("progress", Progress) records and every
    improving solution as ("incumbent", columns, objective); ``chan.stopping()`` asks whether to stop."""
    if job.solver == "HIGHS":
        return _Highs(lp, job.verbose, eager=job.eager).solve(job, chan)
    return _solve_cvxpy(lp, job, chan)


class _Here:
    """The channel of a solve in this process: records go to ``watch``, improving solutions to ``found``,
    ``stop`` is the caller's."""

    def __init__(
        self,
        lp: _Lp,
        watch: Callable[[Progress], None] | None,
        stop: Callable[[], bool] | None,
        found: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        self.lp, self.watch, self.stop, self.found = lp, watch, stop, found
        self.best: float | None = None

    def send(self, msg: tuple) -> None:
        if msg[0] == "progress" and self.watch is not None:
            self.watch(msg[1])
        elif msg[0] == "incumbent" and self.found is not None:
            extra = self.lp.extra_j(msg[1])
            if self.best is None or extra <= self.best:
                self.best = extra
                self.found(msg[1])

    def stopping(self) -> bool:
        return self.stop is not None and bool(self.stop())


class _Relay:
    """(the parent) What the worker has sent so far: records go on to ``watch``; the best incumbent and the last
    bound make the result if the worker has to be killed."""

    def __init__(
        self,
        lp: _Lp,
        job: _Job,
        watch: Callable[[Progress], None] | None,
        found: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        self.lp, self.job, self.watch, self.found = lp, job, watch, found
        self.log: list[Progress] = []
        self.z: np.ndarray | None = None
        self.best: float | None = None
        self.first_obj: float | None = None

    def take(self, msg: tuple) -> None:
        if msg[0] == "progress":
            self.log.append(msg[1])
            if self.watch is not None:
                self.watch(msg[1])
        elif msg[0] == "incumbent":
            z, obj = msg[1], msg[2]
            if self.first_obj is None:
                self.first_obj = obj
            extra = self.lp.extra_j(z)
            if self.best is None or extra <= self.best:
                self.z, self.best = z, extra
                if self.found is not None:
                    self.found(z)

    def outcome(self, why: str, asked: bool = False) -> _Outcome:
        """The result of a solve whose worker was killed (``asked``: after the caller's ``stop`` said stop)."""
        job = self.job
        bound = next((r.bound_j for r in reversed(self.log) if r.bound_j is not None), None)
        late = time.perf_counter() - job.deadline
        msg = (
            f"{job.solver} {why}" + ("" if asked else f" ({late:+.2g} s past it)") + ": its process was ended"
        )
        msg += "; the best schedule it had sent is kept" if self.z is not None else ", without a schedule"
        if asked:
            msg = f"stopped: the caller's bound proves the best schedule so far ({msg})"
        start_j, note = _start_note(self.lp, job.z0, self.first_obj)
        if self.z is None:
            return _Outcome("no_solution", log=self.log, message=msg)
        return _Outcome("feasible", self.z, bound, self.log, start_j, message=msg, start_note=note)


def _start_note(lp: _Lp, z0: np.ndarray | None, first_obj: float | None) -> tuple[float | None, str]:
    """(extra energy of the MIP start, a note) from the objective of the solver's first incumbent, which is the
    start when it takes it."""
    if z0 is None:
        return None, ""
    start_obj = float(lp.cost @ z0)
    if first_obj is not None and abs(first_obj - start_obj) <= 1e-9 * max(1.0, abs(start_obj)):
        start_j = lp.extra_j(z0)
        return start_j, f"HiGHS started from the given schedule ({start_j:.6g} J extra)"
    return None, "HiGHS did not take the given schedule as its start"


# ---- other solvers, through cvxpy ------------------------------------------------------------------------
_CVX: list[tuple[_Lp, tuple[Any, Any, Any]]] = []  # the last problems built, by their _Lp (identity)


def _cvxpy_problem(lp: _Lp) -> tuple[Any, Any, Any]:
    """The same matrices as a cvxpy problem: (problem, binary variables x, continuous variables y); the last
    two built are kept (a restart solves the same one again)."""
    import cvxpy as cp

    for known, built in _CVX:
        if known is lp:
            return built
    nb, nc = lp.n_bin, lp.n_col - lp.n_bin
    # cvxpy variables cannot be empty: an unused, free column stands in
    x = cp.Variable(max(1, nb), boolean=True)
    y = cp.Variable(max(1, nc))
    a = lp.a.tocsr()
    ab = sp.hstack([a[:, :nb], sp.csr_matrix((a.shape[0], max(1, nb) - nb))]).tocsr()
    ac = sp.hstack([a[:, nb:], sp.csr_matrix((a.shape[0], max(1, nc) - nc))]).tocsr()
    e, le = slice(0, lp.n_eq), slice(lp.n_eq, a.shape[0])
    ub = np.concatenate([lp.col_hi[nb:], np.zeros(max(1, nc) - nc)])
    cons = [ab[le] @ x + ac[le] @ y <= lp.row_hi[le], y >= 0, y <= ub]
    if lp.n_eq:
        cons.append(ab[e] @ x + ac[e] @ y == lp.row_hi[e])
    cost = np.concatenate([lp.cost[:nb], np.zeros(max(1, nb) - nb)])
    built = (cp.Problem(cp.Minimize(cost @ x), cons), x, y)
    _CVX[:] = [*_CVX[-1:], (lp, built)]
    return built


def _solve_cvxpy(lp: _Lp, job: _Job, chan: Any) -> _Outcome:
    import cvxpy as cp

    t_build = time.perf_counter()
    prob, x, y = _cvxpy_problem(lp)
    solver, z0 = job.solver, job.z0
    nb = lp.n_bin
    # cvxpy's canonicalization inside solve() takes about as long again as building the problem did
    now = time.perf_counter()
    limit = job.deadline - now - (now - t_build)
    if limit <= 0.1:
        return _Outcome("no_solution", message="time limit reached before the solver started")
    kwargs: dict[str, Any] = {"verbose": job.verbose, **_cvxpy_limits(solver, limit, job.gap)}
    note, start_j = "", None
    if z0 is not None and solver in CVXPY_WARM_START:
        # cvxpy's documented warm start: the variables' values
        x.value = np.concatenate([z0[:nb], np.zeros(x.size - nb)])
        y.value = np.concatenate([z0[nb:], np.zeros(y.size - (lp.n_col - nb))])
        kwargs["warm_start"] = True
        note, start_j = f"warm start given to {solver} through cvxpy", lp.extra_j(z0)
    elif z0 is not None:
        note = f"cvxpy's {solver} interface takes no warm start: {solver} started cold"
    t0 = time.perf_counter()
    log: list[Progress] = []
    chan.send(("progress", Progress(0.0, None, None, limit, solver)))
    msg = ""
    try:
        with _quiet_stdout(not job.verbose), warnings.catch_warnings():
            # cvxpy warns "Solution may be inaccurate" on a time limit; the schedule is rounded and replayed
            # (simulate) afterwards, and the status says whether it is proven, so the warning is only noise
            warnings.filterwarnings("ignore", message="Solution may be inaccurate", category=UserWarning)
            prob.solve(solver=solver, **kwargs)
        status = prob.status
    except cp.error.SolverError as e:
        status, msg = "solver_error", str(e).splitlines()[0] if str(e) else "solver error"
    if status in ("infeasible", "infeasible_inaccurate"):
        return _Outcome("infeasible", message="the solver proved that no schedule fits")
    has = x.value is not None and status in ("optimal", "optimal_inaccurate", "user_limit")
    if not has:
        if status == "user_limit" or "time" in msg.lower():
            return _Outcome("no_solution", message="time limit reached without a schedule")
        if status == "solver_error":  # e.g. SCIP at its time limit without a solution
            return _Outcome("no_solution", message=f"{solver} stopped without a schedule ({msg})")
        return _Outcome("error", message=f"solver status {status} {msg}".strip())
    z = np.concatenate([np.asarray(x.value)[:nb], np.asarray(y.value)[: lp.n_col - nb]])
    extra = lp.extra_j(z)
    dual = _dual_bound(prob, solver)
    bound = None if dual is None else lp.bound_j(extra, float(lp.cost @ np.round(z)) if nb else 0.0, dual)
    rec = Progress(time.perf_counter() - t0, extra, bound, limit, solver)
    log.append(rec)
    chan.send(("progress", rec))
    chan.send(("incumbent", z, float(lp.cost @ z)))
    st = "optimal" if status == "optimal" else "feasible"
    return _Outcome(st, z, bound, log, start_j, message=msg, start_note=note)


class _Highs:
    """An ``_Lp`` passed to one highspy instance, solved with callbacks (see the module docstring)."""

    def __init__(self, lp: _Lp, verbose: bool, eager: bool = False) -> None:
        import highspy

        self.lp, self.verbose, self.eager = lp, verbose, eager
        with _quiet_stdout(not verbose):  # the first instance of a process prints HiGHS's banner
            self.h = h = highspy.Highs()
        h.setOptionValue("output_flag", verbose)
        model = highspy.HighsLp()
        model.num_col_, model.num_row_ = lp.a.shape[1], lp.a.shape[0]
        model.col_cost_ = lp.cost
        model.col_lower_ = np.zeros(lp.n_col)
        model.col_upper_ = lp.col_hi
        model.row_lower_ = np.where(np.isfinite(lp.row_lo), lp.row_lo, -highspy.kHighsInf)
        model.row_upper_ = lp.row_hi
        model.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        model.a_matrix_.num_col_, model.a_matrix_.num_row_ = model.num_col_, model.num_row_
        model.a_matrix_.start_ = lp.a.indptr
        model.a_matrix_.index_ = lp.a.indices
        model.a_matrix_.value_ = lp.a.data
        if lp.n_bin:
            model.integrality_ = [highspy.HighsVarType.kInteger] * lp.n_bin + [
                highspy.HighsVarType.kContinuous
            ] * (lp.n_col - lp.n_bin)
        if h.passModel(model) != highspy.HighsStatus.kOk:
            raise PoetcError("internal error: HiGHS rejected the MILP")
        h.cbMipImprovingSolution.subscribe(self._on_solution)
        h.cbMipInterrupt.subscribe(self._on_interrupt)
        # inside a long LP (the root's, a node's) the MIP callback is not called: the LP solvers' checks stop it
        h.cbSimplexInterrupt.subscribe(self._on_lp_interrupt)
        h.cbIpmInterrupt.subscribe(self._on_lp_interrupt)
        self.run: _HighsRun | None = None

    def solve(self, job: _Job, chan: Any) -> _Outcome:
        """Run HiGHS until ``job.deadline``; ``chan`` (see ``_solve_job``) gets its records and incumbents, and
        says when to stop."""
        import highspy

        h, lp, z0 = self.h, self.lp, job.z0
        limit = job.deadline - time.perf_counter()
        if limit <= 0:
            return _Outcome("no_solution", message="time limit reached before the solver started")
        for name, value in (
            ("time_limit", float(limit)),
            # feasibility jump runs before the root LP without looking at the clock (7 s on vgg16_cifar's 28k
            # columns): only on small cold solves (a MIP start needs no first schedule)
            # compact (one row per stage, quick LPs): feasibility jump and more heuristic effort on any size
            # (resnet18_cifar-m4: a first schedule after 30 s and optimal in 34 s, against nothing in 60 s); the
            # relaxed model too (resnet18_cifar-m4: optimal in 25-27 s against 39-54 s; the zoo's points the same)
            ("mip_heuristic_run_feasibility_jump", z0 is None and (lp.n_col <= 20000 or self.eager)),
            ("mip_heuristic_effort", 0.3 if self.eager else 0.05),
            ("mip_rel_gap", float(job.gap)),
            ("mip_abs_gap", 1e-12),
            ("presolve", "on" if job.presolve else "off"),
        ):
            h.setOptionValue(name, value)
        self.run = run = _HighsRun(limit, chan)
        if z0 is not None:
            sol = highspy.HighsSolution()
            sol.col_value = list(z0)
            sol.value_valid = True
            h.setSolution(sol)
        with _ctrl_c_stops(run):
            h.run()  # releases the GIL; the callbacks below run as it goes
        if run.error is not None:
            raise run.error  # a bug in a callback, raised once HiGHS has stopped cleanly
        if run.stop:
            raise KeyboardInterrupt
        return self._outcome(run, z0)

    def _outcome(self, run: _HighsRun, z0: np.ndarray | None) -> _Outcome:
        """HiGHS's status, solution and bound after a run, and whether it started from ``z0``."""
        import highspy

        h, lp = self.h, self.lp
        ms = highspy.HighsModelStatus
        status, info = h.getModelStatus(), h.getInfo()
        start_j, note = _start_note(lp, z0, run.first_obj)
        if status == ms.kInfeasible:
            return _Outcome("infeasible", log=run.log, message="the solver proved that no schedule fits")
        if int(info.primal_solution_status) != int(highspy.SolutionStatus.kSolutionStatusFeasible):
            if status in (
                ms.kTimeLimit,
                ms.kInterrupt,
                ms.kHighsInterrupt,
                ms.kSolutionLimit,
                ms.kIterationLimit,
            ):
                return _Outcome("no_solution", log=run.log, message="time limit reached without a schedule")
            return _Outcome("error", log=run.log, message=f"HiGHS status {h.modelStatusToString(status)}")
        z = np.asarray(h.getSolution().col_value, dtype=float)
        extra = lp.extra_j(z)
        obj = float(info.objective_function_value)
        bound = lp.bound_j(extra, obj, float(info.mip_dual_bound)) if lp.n_bin else extra
        if status == ms.kOptimal and bound is None:
            bound = extra
        run.emit(extra, bound)  # the bound is the best of the run's (each one valid), as the records say
        st = "optimal" if status == ms.kOptimal else "feasible"
        msg = "stopped: the caller's bound proves the best schedule so far" if run.stopped else ""
        return _Outcome(st, z, run.bound, run.log, start_j, message=msg, start_note=note)

    # HiGHS calls these from inside run(), holding the GIL; an exception may not cross back into HiGHS, so it
    # is kept, HiGHS is asked to stop, and solve() raises it afterwards. Ctrl-C sets run.stop (_ctrl_c_stops).
    def _on_solution(self, e: Any) -> None:
        run = self.run
        try:
            d = e.data_out
            obj = float(d.objective_function_value)
            if run.first_obj is None:
                run.first_obj = obj
            z = np.array(d.mip_solution, dtype=float)
            extra = self.lp.extra_j(z)
            run.best = extra if run.best is None else min(run.best, extra)
            run.emit(run.best, self._bound(run, d))
            run.chan.send(("incumbent", z, obj))
            if run.enough():
                run.late = run.stopped = True
                e.interrupt()
        except BaseException as ex:  # re-raised by solve()
            run.error = ex
            e.interrupt()

    def _on_interrupt(self, e: Any) -> None:
        run = self.run
        try:
            now = time.perf_counter()
            if now - run.t0 > run.limit + 0.5:  # HiGHS's own clock missed its time limit: stop it now
                run.late = True
            if now - run.last_emit >= 0.5:
                run.emit(run.best, self._bound(run, e.data_out))
            run.ask(now)
        except BaseException as ex:  # re-raised by solve()
            run.error = ex
        if run.error is not None or run.stop or run.late:
            e.interrupt()

    def _on_lp_interrupt(self, e: Any) -> None:
        run = self.run
        if run is None:
            return
        try:
            now = time.perf_counter()
            if now - run.t0 > run.limit + 0.5:
                run.late = True
            run.ask(now)
        except BaseException as ex:  # re-raised by solve()
            run.error = ex
        if run.error is not None or run.stop or run.late:
            e.interrupt()

    def _bound(self, run: _HighsRun, d: Any) -> float | None:
        dual = float(d.mip_dual_bound)
        if run.best is not None:
            return self.lp.bound_j(run.best, float(d.mip_primal_bound), dual)
        return max(0.0, dual / self.lp.scale) if np.isfinite(dual) else None


class _HighsRun:
    """The state of one HiGHS run that its callbacks update."""

    def __init__(self, limit: float, chan: Any) -> None:
        self.t0 = self.last_emit = time.perf_counter()
        self.limit, self.chan = limit, chan
        self.best: float | None = None  # extra energy of the incumbent
        self.bound: float | None = None
        self.first_obj: float | None = None  # objective of the first incumbent (the MIP start, if taken)
        self.error: BaseException | None = None
        self.stop = False  # Ctrl-C: HiGHS is asked to stop at its next interrupt check
        self.late = False  # past the time limit: HiGHS is asked to stop (ends like a time limit)
        self.stopped = False  # the caller said stop (``chan.stopping()``)
        self.last_ask = self.t0
        self.log: list[Progress] = []

    def enough(self) -> bool:
        return self.chan.stopping()

    def ask(self, now: float) -> None:
        """Every 0.2 s: whether the caller says stop."""
        if now - self.last_ask >= 0.2:
            self.last_ask = now
            if self.enough():
                self.late = self.stopped = True

    def emit(self, best: float | None, bound: float | None) -> None:
        if bound is not None:  # HiGHS's bound only rises; keep the record monotone against rounding
            self.bound = bound if self.bound is None else max(self.bound, bound)
        if self.bound is not None and best is not None:
            self.bound = min(self.bound, best)
        self.last_emit = time.perf_counter()
        rec = Progress(self.last_emit - self.t0, best, self.bound, self.limit, "HIGHS")
        self.log.append(rec)
        self.chan.send(("progress", rec))


@contextlib.contextmanager
def _ctrl_c_stops(run: _HighsRun):
    """While HiGHS runs, Ctrl-C asks it to stop (a KeyboardInterrupt raised inside a callback would be lost in
    highspy's callback machinery); solve() raises KeyboardInterrupt once it has stopped."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) in (
        signal.SIG_IGN,
        None,
    ):
        yield  # (the worker process ignores SIGINT: its parent ends it)
        return

    def stop(signum: int, frame: Any) -> None:
        run.stop = True

    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def solve(
    p: Problem,
    opt: MilpOptions = MilpOptions(),
    strategy: str = "poet",
    on_progress: Callable[[str], None] | None = None,
    watch: Callable[[Progress], None] | None = None,
) -> MilpResult:
    """Build and solve once: cold, or from ``opt.warm_start`` (HiGHS: then without presolve, which HiGHS 1.16
    mishandles with a MIP start whose objective presolve shifts: it prunes with a shifted cutoff)."""
    t0 = time.perf_counter()
    try:  # the build counts against the time limit
        m = Milp(p, opt, strategy, deadline=t0 + opt.time_limit_s)
    except OutOfTime:
        why = f"time limit reached while building the MILP ({time.perf_counter() - t0:.3g} s)"
        return MilpResult(
            "no_solution", None, None, None, 0.0, time.perf_counter() - t0, 0, 0, 0, opt.solver, why
        )
    if on_progress:
        on_progress(m.describe(opt.time_limit_s))
    left = opt.time_limit_s - (time.perf_counter() - t0)
    return m.solve(left, opt.warm_start, presolve=opt.warm_start is None, watch=watch)


def _check_installed(solver: str) -> None:
    if solver == "HIGHS":
        try:
            import highspy  # noqa: F401
        except ImportError:
            raise PoetcError("solver HIGHS is not installed (pip install highspy)") from None
        return
    import cvxpy as cp

    if solver not in cp.installed_solvers():
        raise PoetcError(
            f"solver {solver} is not installed (installed MILP solvers: "
            f"{', '.join(s for s in cp.installed_solvers() if s in MILP_SOLVERS)})"
        )


def _cvxpy_limits(solver: str, limit: float, gap: float) -> dict[str, Any]:
    """Time limit and relative gap in each solver's own option names (cvxpy passes them through)."""
    if solver == "SCIP":
        return {
            "scip_params": {"limits/time": float(limit), "limits/gap": float(gap), "limits/absgap": 1e-12}
        }
    if solver == "GUROBI":
        return {"TimeLimit": float(limit), "MIPGap": float(gap), "MIPGapAbs": 1e-12}
    if solver == "CPLEX":
        return {"cplex_params": {"timelimit": float(limit), "mip.tolerances.mipgap": float(gap)}}
    return {}


def _dual_bound(prob: Any, solver: str) -> float | None:
    """The solver's bound on the objective from cvxpy's solver statistics (``extra_stats`` is whatever the
    solver's interface keeps: SCIP's is a dict holding the pyscipopt model). None when there is none."""
    es = getattr(prob.solver_stats, "extra_stats", None)
    b = None
    with contextlib.suppress(Exception):
        if solver == "SCIP" and isinstance(es, dict) and es.get("model") is not None:
            b = float(es["model"].getDualbound())
        elif solver == "GUROBI" and es is not None:
            b = float(es.ObjBound)
    return b if b is not None and np.isfinite(b) else None


@contextlib.contextmanager
def _quiet_stdout(quiet: bool):
    """Silence C-level writes to stdout (HiGHS prints a banner when its first instance is made), so that
    machine-readable output (poetc solve --json) stays clean."""
    if not quiet:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
