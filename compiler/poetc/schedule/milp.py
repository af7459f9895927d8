"""POET's mixed-integer program for rematerialization + paging, written with cvxpy.

After Patil et al., "POET: Training Neural Networks on Tiny Devices with Integrated Rematerialization and
Paging" (ICML 2022), which extends Checkmate (Jain et al., MLSys 2020). T stages over T nodes in topological
order; stage t computes node t for the first time (frontier-advancing). Decision variables, per (stage t,
node i), binary:

    R[t,i]      compute (or recompute) node i in stage t
    S_RAM[t,i]  i's output is resident in RAM at the start of stage t
    S_SD[t,i]   i's output is on storage at the start of stage t
    M_in[t,i]   page i in during stage t
    M_out[t,i]  page i out during stage t

and continuous FREE[t,i,k] in [0,1] (i's output is freed right after node k runs in stage t) and U[t,k]
(RAM in use after node k runs in stage t, after frees).

    minimise   sum_{t,i} R[t,i] E_i + M_in[t,i] E_in_i + M_out[t,i] E_out_i   -  floor
where the floor (one computation of every node: sum_i E_i) is a constant, so the objective and the solver's
gap are on the *extra* energy of the schedule, the part any schedule can change.

The stage semantics are those of ``schedule.lower`` (page-ins just before first use, page-outs right after
computing or at the stage start, frees right after a tensor's last reader in the stage), and the memory rows
below are an upper bound of what that program uses, so every solution fits once lowered; the replay
simulator checks each one independently anyway.

Two formulations:
  "poet"      (default) the exact per-hazard free rows: FREE[t,i,k] <= R[t,k], <= 1 - S_RAM[t+1,i],
              <= 1 - R[t,j] for every later reader j of i in stage t, with FREE continuous (freeing only
              ever helps, so it needs no integrality); a page-in serves the stage it happens in; page-outs
              may follow a computation in the same stage; paging time counts against the deadline.
  "poet2022"  POET's original: binary FREE tied to its hazards by one aggregated big-M pair of rows (whose
              LP relaxation is weak), page-ins only serve the next stage, page-outs only of tensors resident
              at the stage start, page-ins not counted in RAM during their stage. Kept as an ablation.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import cvxpy as cp
import numpy as np
import scipy.sparse as sp

from ..errors import PoetcError
from .problem import Problem
from .program import Schedule

Key = tuple  # ("R", t, i) and friends


@dataclass(frozen=True)
class MilpOptions:
    solver: str = "HIGHS"
    time_limit_s: float = 60.0
    gap: float = 1e-4  # relative gap on the extra energy
    remat: bool = True
    paging: bool = True
    formulation: str = "poet"  # "poet" | "poet2022"
    warm_start: Schedule | None = None
    verbose: bool = False
    trace: bool = False  # record the solver's progress (HiGHS log): (seconds, best extra J, bound J)


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
    log: list[tuple[float, float, float]] = field(default_factory=list)  # (s, best extra J, bound J)

    @property
    def gap(self) -> float | None:
        """Relative gap on the extra energy: (extra - bound) / extra."""
        if self.extra_j is None or self.bound_j is None:
            return None
        if self.extra_j <= 1e-15:
            return 0.0
        return max(0.0, (self.extra_j - self.bound_j) / self.extra_j)


class _Model:
    """Columns and sparse rows; variables fixed to a constant are substituted away."""

    def __init__(self) -> None:
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

    def eq(self, terms: Iterable[tuple[Key, float]], rhs: float) -> None:
        self.rows_eq.append((list(terms), rhs))

    def _matrix(self, rows: list[tuple[list[tuple[Key, float]], float]]):
        rb, cb, vb, rc, cc, vc = [], [], [], [], [], []
        rhs = np.zeros(len(rows))
        for r, (terms, b) in enumerate(rows):
            for key, coef in terms:
                if key in self.bin:
                    rb.append(r)
                    cb.append(self.bin[key])
                    vb.append(coef)
                elif key in self.cont:
                    rc.append(r)
                    cc.append(self.cont[key])
                    vc.append(coef)
                else:
                    b -= coef * self.const.get(key, 0.0)
            rhs[r] = b
        n = len(rows)
        ab = sp.csr_matrix((vb, (rb, cb)), shape=(n, max(1, len(self.bin))))
        ac = sp.csr_matrix((vc, (rc, cc)), shape=(n, max(1, len(self.cont))))
        return ab, ac, rhs


def _val(key: Key) -> tuple[Key, float]:
    return (key, 1.0)


class Formulation:
    """Builds the MILP of one problem (see the module docstring for the symbols)."""

    def __init__(self, p: Problem, opt: MilpOptions) -> None:
        if opt.formulation not in ("poet", "poet2022"):
            raise PoetcError(f"unknown formulation {opt.formulation!r} (poet, poet2022)")
        self.p = p
        self.opt = opt
        self.m = _Model()
        self.orig = opt.formulation == "poet2022"
        self._variables()
        self._constraints()

    # ---- variables ---------------------------------------------------------------------------------
    def _variables(self) -> None:
        p, m, opt = self.p, self.m, self.opt
        T = p.T
        self.arena = [bool(p.mem[i] > 0) for i in range(T)]
        self.runnable: list[list[int]] = [[] for _ in range(T)]  # nodes that may run in stage t, in order
        for t in range(T):
            for i in range(t + 1):
                if i == t:
                    m.fix(("R", t, t), 1.0)  # frontier-advancing: stage t computes node t
                    self.runnable[t].append(i)
                elif (
                    opt.remat
                    and self.arena[i]
                    and p.consumers[i]
                    and t <= p.horizon[i]
                    and t <= p.last_stage[i]
                ):
                    self.m.binary(("R", t, i))
                    self.runnable[t].append(i)
        for i in range(T):
            if not self.arena[i]:
                continue
            for t in range(i + 1, p.horizon[i] + 1):
                self.m.binary(("S_RAM", t, i))
                if opt.paging:
                    if self.orig:
                        self.m.binary(("S_SD", t, i))
                    self.m.binary(("M_in", t, i))
            if opt.paging:
                for t in range(i if not self.orig else i + 1, p.horizon[i]):
                    self.m.binary(("M_out", t, i))
        # FREE[t,i,k]: i's output freed right after node k (k = i or a reader of i) runs in stage t
        self.free_pairs: list[list[tuple[int, int]]] = [[] for _ in range(T)]
        for t in range(T):
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
        if not self.orig:
            for i in range(T):
                if self.arena[i]:
                    for t in range(i + 1, p.horizon[i] + 1):
                        m.continuous(("FREE0", t, i), 1.0)
        for t in range(T):
            for k in self.runnable[t]:
                m.continuous(("U", t, k), float(p.budget))
        # P[i]: i is ever written to storage (for the capacity row)
        self.storage_row = bool(
            opt.paging
            and p.storage_bytes is not None
            and float((p.mem + p.page_overhead).sum()) > p.storage_bytes
        )
        if self.storage_row and self.orig:
            for i in range(T):
                if self.arena[i]:
                    m.binary(("P", i))

    # ---- constraints -------------------------------------------------------------------------------
    def _constraints(self) -> None:
        p, m = self.p, self.m
        T = p.T
        mem = p.mem.astype(float)
        by_k: list[dict[int, list[int]]] = [{} for _ in range(T)]
        for t in range(T):
            for i, k in self.free_pairs[t]:
                by_k[t].setdefault(k, []).append(i)

        # Dependencies: R[t,v] <= R[t,u] + S_RAM[t,u] + M_in[t,u]   (POET 2022: without M_in)
        for t in range(T):
            for v in self.runnable[t]:
                for u in set(p.inputs[v]):
                    if not self.arena[u]:
                        continue
                    terms = [(("R", t, v), 1.0), (("R", t, u), -1.0), (("S_RAM", t, u), -1.0)]
                    if not self.orig:
                        terms.append((("M_in", t, u), -1.0))
                    m.le(terms, 0.0)

        for i in range(T):
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

        # Usefulness (valid inequalities that cut useless work and tighten the relaxation): recomputing,
        # paging in or keeping i in stage t pays only if a node of stage t reads i, or i is kept for t+1
        # (or paged out, for a recomputation):
        #   R[t,i] (i < t), M_in[t,i]  <=  sum_{j reads i} R[t,j] + S_RAM[t+1,i] (+ M_out[t,i] for R)
        if not self.orig:
            for t in range(T):
                for i in range(t):
                    if not self.arena[i] or t > p.horizon[i]:
                        continue
                    use = [(("R", t, j), -1.0) for j in p.consumers[i] if j <= t and m.has(("R", t, j))]
                    keep = [(("S_RAM", t + 1, i), -1.0)] if m.has(("S_RAM", t + 1, i)) else []
                    out = [(("M_out", t, i), -1.0)] if m.has(("M_out", t, i)) else []
                    for kind in ("R", "M_in"):
                        if m.has((kind, t, i)):
                            m.le([((kind, t, i), 1.0), *use, *keep, *(out if kind != "M_in" else [])], 0.0)

        # Frees. "poet": FREE[t,i,k] <= R[t,k];  <= 1 - S_RAM[t+1,i];  <= 1 - R[t,j], each reader j > k of i.
        # "poet2022": binary FREE = 1 iff hazards h = (1 - R[t,k]) + S_RAM[t+1,i] + sum_j R[t,j] are zero:
        #             1 - FREE <= h  and  h <= H (1 - FREE), H the most hazards there can be.
        for t in range(T):
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

        # Frees at the stage start ("poet" only): FREE0[t,i] <= S_RAM[t,i];  <= 1 - S_RAM[t+1,i];
        #   <= 1 - R[t,j] for every reader j of i in stage t   (i is resident but unused and not kept)
        if not self.orig:
            for i in range(T):
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

        # Memory, at every point inside a stage:
        #   base_t   = sum_i M_i (S_RAM[t,i] + M_in[t,i] - FREE0[t,i])  (POET 2022: S_RAM only)
        #   U[t,k]   = U[t,k-] + M_k R[t,k] - sum_i M_i FREE[t,i,k]   (k- the previous runnable node)
        #   U[t,k-] + M_k R[t,k] <= budget                            (while k runs, before its frees)
        for t in range(T):
            base: list[tuple[Key, float]] = []
            for i in range(t):
                if self.arena[i] and t <= p.horizon[i]:
                    base.append((("S_RAM", t, i), mem[i]))
                    if not self.orig:
                        base.append((("M_in", t, i), mem[i]))
                        base.append((("FREE0", t, i), -mem[i]))
            prev: list[tuple[Key, float]] = base
            for k in self.runnable[t]:
                run = [(("R", t, k), mem[k])] if mem[k] > 0 else []
                m.le([*prev, *run], float(p.budget))
                frees = [(("FREE", t, i, k), -mem[i]) for i in by_k[t].get(k, [])]
                m.eq([(("U", t, k), -1.0), *prev, *run, *frees], 0.0)
                prev = [(("U", t, k), 1.0)]

        # Time: sum R tau + M_in tau_in + M_out tau_out <= deadline (paging time counts, unlike POET's row)
        if p.deadline_s is not None:
            m.le(self._cost_terms(p.compute_s, p.page_in_s, p.page_out_s), float(p.deadline_s))
        # Storage capacity: sum_i (M_i + CRC) [i is ever paged out] <= storage
        if self.storage_row:
            if self.orig:
                m.le(
                    [(("P", i), float(mem[i] + p.page_overhead)) for i in range(T) if self.arena[i]],
                    float(p.storage_bytes),
                )
            else:
                m.le(
                    [
                        (("M_out", t, i), float(mem[i] + p.page_overhead))
                        for i in range(T)
                        if self.arena[i]
                        for t in range(i, p.horizon[i])
                        if m.has(("M_out", t, i))
                    ],
                    float(p.storage_bytes),
                )

    def _cost_terms(self, c: np.ndarray, cin: np.ndarray, cout: np.ndarray) -> list[tuple[Key, float]]:
        terms: list[tuple[Key, float]] = []
        for key in list(self.m.bin) + [k for k, v in self.m.const.items() if v]:
            kind = key[0]
            if kind == "R":
                terms.append((key, float(c[key[2]])))
            elif kind == "M_in":
                terms.append((key, float(cin[key[2]])))
            elif kind == "M_out":
                terms.append((key, float(cout[key[2]])))
        return terms

    # ---- solve ---------------------------------------------------------------------------------------
    def objective(self) -> np.ndarray:
        """Energy coefficients over the binary columns. The fixed R[t,t] are left out: they are the floor."""
        p = self.p
        c = np.zeros(max(1, len(self.m.bin)))
        for key, coef in self._cost_terms(p.compute_j, p.page_in_j, p.page_out_j):
            if key in self.m.bin:
                c[self.m.bin[key]] += coef
        return c

    def residency_weights(self) -> np.ndarray:
        """M_i / budget for every S_RAM[t,i] column (0 elsewhere)."""
        w = np.zeros(max(1, len(self.m.bin)))
        for key, col in self.m.bin.items():
            if key[0] == "S_RAM":
                w[col] = float(self.p.mem[key[2]]) / max(1, self.p.budget)
        return w

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
        return Schedule(mats["R"], mats["S_RAM"], mats["S_SD"], mats["M_in"], mats["M_out"], strategy, meta)

    def start_values(self, s: Schedule) -> tuple[np.ndarray, np.ndarray]:
        """Column values of a given schedule (a warm start): binaries from its matrices, FREE from its
        hazards, U from the memory recurrence."""
        p, m = self.p, self.m
        T = p.T
        xb = np.zeros(max(1, len(m.bin)))
        mats = {"R": s.R, "S_RAM": s.S_RAM, "S_SD": s.S_SD, "M_in": s.M_in, "M_out": s.M_out}
        free: dict[tuple[int, int, int], float] = {}
        for t in range(T):
            for i, k in self.free_pairs[t]:
                later = any(s.R[t, j] for j in p.consumers[i] if k < j <= t)
                keep = t + 1 < T and s.S_RAM[t + 1, i]
                free[(t, i, k)] = float(bool(s.R[t, k]) and not keep and not later)
        for key, col in m.bin.items():
            if key[0] in mats:
                xb[col] = float(mats[key[0]][key[1], key[2]])
            elif key[0] == "P":
                xb[col] = float(s.M_out[:, key[1]].any())
            elif key[0] == "FREE":
                xb[col] = free[key[1:]]
        free0: dict[tuple[int, int], float] = {}
        for t in range(T):
            for i in np.flatnonzero(s.S_RAM[t]):
                used = any(s.R[t, j] for j in p.consumers[i] if j <= t)
                kept = t + 1 < T and s.S_RAM[t + 1, i]
                free0[(t, int(i))] = float(not used and not kept and not self.orig)
        xc = np.zeros(max(1, len(m.cont)))
        mem = p.mem.astype(float)
        for t in range(T):
            u = sum(
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
                    xc[m.cont[("U", t, k)]] = max(u, 0.0)
        for key, col in m.cont.items():
            if key[0] == "FREE":
                xc[col] = free[key[1:]]
            elif key[0] == "FREE0":
                xc[col] = free0.get(key[1:], 0.0)
        return xb, xc


def _cvxpy_problem(p: Problem, f: Formulation):
    """The cvxpy problem of a formulation: (problem, binary vars x, continuous vars y, energy coefficients c,
    objective scale)."""
    m = f.m
    ab_le, ac_le, b_le = m._matrix(m.rows_le)
    ab_eq, ac_eq, b_eq = m._matrix(m.rows_eq)
    nb, nc = len(m.bin), len(m.cont)
    x = cp.Variable(max(1, nb), boolean=True)
    y = cp.Variable(max(1, nc))
    c = f.objective()
    cons = [ab_le @ x + ac_le @ y <= b_le, y >= 0, y <= np.array(m.cont_ub or [0.0])]
    if m.rows_eq:
        cons.append(ab_eq @ x + ac_eq @ y == b_eq)
    # the fixed R[t,t] contribute exactly the floor; the objective is the extra energy, scaled so that its
    # largest coefficient is 1000 (joules of tiny nodes are below the solvers' absolute tolerances otherwise)
    scale = 1000.0 / float(c.max()) if c.size and c.max() > 0 else 1.0
    # tie-break: among schedules of equal energy prefer the one that keeps less in RAM. Residency summed over
    # stages and divided by the budget is at most T, so a weight of (smallest energy coefficient) / (10 T)
    # can never outweigh a real energy difference.
    tie = f.residency_weights()
    pos = c[c > 0]
    eps = float(pos.min()) * scale / (10.0 * max(1, p.T)) if pos.size else 0.0
    prob = cp.Problem(cp.Minimize((c * scale + eps * tie) @ x), cons)
    return prob, x, y, c, scale


def solve(
    p: Problem,
    opt: MilpOptions = MilpOptions(),
    strategy: str = "poet",
    on_progress: Callable[[str], None] | None = None,
) -> MilpResult:
    t0 = time.perf_counter()
    f = Formulation(p, opt)
    m = f.m
    nb, nc = len(m.bin), len(m.cont)
    floor = p.floor_j
    prob, x, y, c, scale = _cvxpy_problem(p, f)
    build_s = time.perf_counter() - t0
    if on_progress:
        on_progress(
            f"MILP ({opt.formulation}): {nb} binaries, {nc} continuous, "
            f"{len(m.rows_le) + len(m.rows_eq)} rows; solving with {opt.solver} "
            f"(up to {opt.time_limit_s:g} s for this solve, gap {opt.gap:g} on extra energy)"
        )
    kwargs: dict[str, Any] = {"verbose": opt.verbose}
    log_path = None
    if opt.solver.upper() == "HIGHS":
        kwargs["output_flag"] = opt.verbose  # HiGHS prints its banner otherwise
        if opt.trace:
            import tempfile

            log_path = tempfile.mktemp(prefix="poetc-highs-", suffix=".log")
            kwargs.update(output_flag=True, log_to_console=opt.verbose, log_file=log_path)
    solver = opt.solver.upper()
    if solver not in cp.installed_solvers():
        raise PoetcError(
            f"solver {opt.solver} is not installed (installed MILP solvers: "
            f"{', '.join(s for s in cp.installed_solvers() if s in MILP_SOLVERS)})"
        )
    if solver == "HIGHS":
        kwargs.update(time_limit=float(opt.time_limit_s), mip_rel_gap=float(opt.gap), mip_abs_gap=1e-12)
        if opt.warm_start is not None:
            # HiGHS 1.16 mishandles a MIP start when presolve moves part of the objective into a constant: it
            # prunes with a shifted cutoff and declares the start optimal. Without presolve it is correct.
            kwargs["presolve"] = "off"
    elif solver == "SCIP":
        kwargs["scip_params"] = {
            "limits/time": float(opt.time_limit_s),
            "limits/gap": float(opt.gap),
            "limits/absgap": 1e-12,
        }
    elif solver == "GUROBI":
        kwargs.update(TimeLimit=float(opt.time_limit_s), MIPGap=float(opt.gap), MIPGapAbs=1e-12)
    elif solver == "CPLEX":
        kwargs["cplex_params"] = {
            "timelimit": float(opt.time_limit_s),
            "mip.tolerances.mipgap": float(opt.gap),
        }
    t1 = time.perf_counter()
    warm_note = ""
    if opt.warm_start is not None and nb:
        xb0, xc0 = f.start_values(opt.warm_start)
        x.value = xb0
        y.value = xc0
        kwargs["warm_start"] = True
        if solver == "HIGHS":
            with _quiet_stdout(not opt.verbose):
                warm_note = _prime_highs(prob, {x: xb0, y: xc0})
    msg = ""
    try:
        with _quiet_stdout(not opt.verbose), warnings.catch_warnings():
            # cvxpy warns "Solution may be inaccurate" on a time limit; the schedule is rounded and replayed
            # (simulate) below, and the status line says whether it is proven, so the warning only adds noise.
            warnings.filterwarnings("ignore", message="Solution may be inaccurate", category=UserWarning)
            prob.solve(solver=solver, **kwargs)
        status = prob.status
    except cp.error.SolverError as e:
        status, msg = "solver_error", str(e).splitlines()[0] if str(e) else "solver error"
    solve_s = time.perf_counter() - t1
    trace: list[tuple[float, float, float]] = []
    if log_path is not None:
        import gc

        prob._solver_cache.clear()  # drop cvxpy's cached HiGHS instance so that it closes (flushes) its log
        gc.collect()
        trace = _parse_highs_log(log_path, scale)

    def result(
        st: str, sched: Schedule | None, extra: float | None, bound: float | None, why: str = ""
    ) -> MilpResult:
        return MilpResult(
            st,
            sched,
            extra,
            bound,
            solve_s,
            build_s,
            nb,
            nc,
            len(m.rows_le) + len(m.rows_eq),
            solver,
            why,
            trace,
        )

    if status in ("infeasible", "infeasible_inaccurate"):
        return result("infeasible", None, None, None, "the solver proved that no schedule fits")
    xb = None if x.value is None or not nb else np.asarray(x.value)
    if status in ("optimal", "optimal_inaccurate", "user_limit") and (xb is not None or not nb):
        if xb is None:
            xb = np.zeros(0)
        extra = float(c[: len(xb)] @ np.round(xb)) if nb else 0.0
        bound = _bound(prob, solver, extra * scale, status)
        bound = None if bound is None else bound / scale
        if status == "user_limit" and not _has_incumbent(prob, solver):
            return result("no_solution", None, None, None, "time limit reached without a schedule")
        st = "optimal" if status.startswith("optimal") else "feasible"
        meta = {
            "status": st,
            "extra_j": extra,
            "bound_j": bound,
            "floor_j": floor,
            "solver": solver,
            "formulation": opt.formulation,
            "solve_s": solve_s,
            "warm_start": warm_note,
        }
        sched = f.schedule_from(xb, strategy, meta)
        r = result(st, sched, extra, bound)
        sched.meta["gap"] = r.gap
        return r
    if status == "user_limit" or "time" in msg.lower() or status == "solver_error":
        return result("no_solution", None, None, None, msg or "time limit reached without a schedule")
    return result("error", None, None, None, f"solver status {status} {msg}".strip())


def _prime_highs(prob: cp.Problem, values: dict[cp.Variable, np.ndarray]) -> str:
    """Hand a MIP start to HiGHS through cvxpy: cvxpy passes the solution cached from a previous solve of the
    same problem to HiGHS's setSolution when ``warm_start=True``, so the cache is filled with ours, laid out in
    cvxpy's canonical column order."""
    try:
        import highspy

        _data, _chain, inverse = prob.get_problem_data(cp.HIGHS)
        offsets = next(i for i in inverse if hasattr(i, "var_offsets"))
        col = np.zeros(offsets.x_length)
        for var, v in values.items():
            off = offsets.var_offsets[var.id]
            col[off : off + var.size] = np.asarray(v, dtype=float).reshape(-1)[: var.size]
        sol = highspy.HighsSolution()
        sol.col_value = list(col)
        sol.value_valid = True
        prob._solver_cache[cp.HIGHS] = (None, None, {"model_status": "kOptimal", "solution": sol})
        return "warm start passed to HiGHS"
    except Exception as e:
        return f"warm start not passed ({type(e).__name__})"


_LOG_ROW = re.compile(
    r"^\s*(?:[A-Za-z]\s+)?\d+\s+\d+\s+\d+\s+[\d.]+%\s+(\S+)\s+(\S+)\s+\S+\s.*?([\d.]+)s\s*$"
)


def _parse_highs_log(path: str, scale: float) -> list[tuple[float, float, float]]:
    """(seconds, best extra J or inf, bound J) from the rows of HiGHS's branch-and-bound table."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                mt = _LOG_ROW.match(line)
                if mt:
                    bound, best, secs = (float(v) for v in mt.groups())
                    out.append((secs, best / scale, bound / scale))
    except OSError:
        return []
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return out


@contextlib.contextmanager
def _quiet_stdout(quiet: bool):
    """Silence C-level writes to stdout (HiGHS prints a banner even with its output off in some paths), so that
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


def _has_incumbent(prob: cp.Problem, solver: str) -> bool:
    """At a time limit, whether the values cvxpy returns are a feasible integer solution (HiGHS reports the
    status of its primal solution; for other solvers the replay check decides)."""
    es = getattr(prob.solver_stats, "extra_stats", None)
    if solver == "HIGHS" and es is not None and hasattr(es, "primal_solution_status"):
        return int(es.primal_solution_status) == 2  # kSolutionStatusFeasible
    return True


MILP_SOLVERS = ("HIGHS", "SCIP", "GUROBI", "CPLEX", "MOSEK", "CBC", "GLPK_MI", "XPRESS", "COPT")


def _bound(prob: cp.Problem, solver: str, extra: float, status: str) -> float | None:
    stats = prob.solver_stats
    es = getattr(stats, "extra_stats", None)
    b = None
    if solver == "HIGHS" and es is not None and hasattr(es, "mip_gap"):
        # HiGHS's dual bound can be reported in the presolved space (without the objective's offset); its
        # relative gap is not, so the bound is derived from the gap
        gap = float(es.mip_gap)
        b = extra * (1.0 - gap) if np.isfinite(gap) and 0 <= gap <= 1 else None
    elif solver == "SCIP" and es is not None:
        try:
            b = float(es.getDualbound())
        except Exception:
            b = None
    elif solver == "GUROBI" and es is not None:
        b = float(getattr(es, "ObjBound", np.nan))
    if b is None or not np.isfinite(b):
        return extra if status.startswith("optimal") else None
    return min(b, extra)
