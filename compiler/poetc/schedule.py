"""Schedules (POET's matrices) and programs (flat instruction lists), and the lowering between them.

A ``Schedule`` holds, for T stages over T nodes (stage t computes node t for the first time), the decisions of
POET's formulation as boolean [T, T] matrices:
  R[t, i]      node i is (re)computed in stage t
  S_RAM[t, i]  node i's output is resident in RAM at the start of stage t
  S_SD[t, i]   node i's output is on storage at the start of stage t
  M_in[t, i]   node i's output is paged in during stage t
  M_out[t, i]  node i's output is paged out during stage t

Lowering fixes what a stage does, in this order (the MILP's memory accounting is an upper bound of it):
  1. page out the resident tensors marked M_out (they can then be freed);
  2. free resident tensors that no node of this stage reads and the next stage does not keep;
  3. for each node k with R[t, k], in index order: page in (M_in) the inputs it needs that are not resident,
     RUN (first time) or RECOMPUTE k, page k out right away if M_out[t, k], then free every tensor whose last
     reader in this stage was k and that the next stage does not keep;
  4. page in what M_in asks for and nothing in the stage read (kept for later stages).
The resulting ``Program`` is what the device executes and what the replay simulator checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from .autodiff import TrainingGraph
from .cost import CostModel


class Op(IntEnum):
    """Instruction opcodes; the values are the C runtime's POET_OP_* (checked in tests)."""

    RUN = 1
    PAGE_OUT = 2
    PAGE_IN = 3
    FREE = 4
    RECOMPUTE = 5


@dataclass(frozen=True)
class Instr:
    op: Op
    node: int  # RUN/RECOMPUTE: the node; PAGE_*/FREE: the node whose output tensor is meant
    stage: int


@dataclass(frozen=True)
class Program:
    name: str  # "train" | "infer"
    instrs: tuple[Instr, ...]
    keep: tuple[int, ...] = ()  # nodes whose outputs must be resident at the end (e.g. logits)

    def count(self, op: Op) -> int:
        return sum(1 for i in self.instrs if i.op == op)


@dataclass(frozen=True)
class Schedule:
    R: np.ndarray
    S_RAM: np.ndarray
    S_SD: np.ndarray
    M_in: np.ndarray
    M_out: np.ndarray
    strategy: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        T = self.R.shape[0]
        for name in ("R", "S_RAM", "S_SD", "M_in", "M_out"):
            a = np.asarray(getattr(self, name), dtype=bool)
            if a.shape != (T, T):
                raise ValueError(f"schedule matrix {name} has shape {a.shape}, expected {(T, T)}")
            a.setflags(write=False)
            object.__setattr__(self, name, a)

    @property
    def T(self) -> int:
        return self.R.shape[0]

    def energy(self, cost: CostModel) -> tuple[float, float, float]:
        """(compute, page-in, page-out) energy in joules, as the MILP's objective counts it."""
        return (
            float((self.R * cost.compute_j).sum()),
            float((self.M_in * cost.page_in_j).sum()),
            float((self.M_out * cost.page_out_j).sum()),
        )

    def time(self, cost: CostModel) -> float:
        return float(
            (self.R * cost.compute_s).sum()
            + (self.M_in * cost.page_in_s).sum()
            + (self.M_out * cost.page_out_s).sum()
        )


def _readers(tg: TrainingGraph) -> list[list[int]]:
    """For each node, the nodes that read its output."""
    g = tg.graph
    return [list(g.consumers[n.output]) for n in g.nodes]


def _inputs(tg: TrainingGraph) -> list[list[int]]:
    """For each node, the nodes whose outputs it reads (data edges only)."""
    g = tg.graph
    out: list[list[int]] = [[] for _ in g.nodes]
    for u, v in g.edges:
        out[v].append(u)
    return out


def lower(tg: TrainingGraph, s: Schedule, cost: CostModel) -> Program:
    """Turn a schedule's matrices into the train program (see the module doc for the order)."""
    T = s.T
    ins = _inputs(tg)
    arena = cost.mem > 0
    code: list[Instr] = []
    resident: set[int] = set()
    computed: set[int] = set()

    def keep_next(t: int, i: int) -> bool:
        return t + 1 < T and bool(s.S_RAM[t + 1, i])

    for t in range(T):
        runs = [k for k in range(t + 1) if s.R[t, k]]
        reads_in_stage: dict[int, list[int]] = {}
        for k in runs:
            for u in ins[k]:
                reads_in_stage.setdefault(u, []).append(k)
        for i in np.flatnonzero(s.M_out[t]):
            if s.S_RAM[t, i]:
                code.append(Instr(Op.PAGE_OUT, int(i), t))
        for i in sorted(resident):
            if i not in reads_in_stage and not keep_next(t, i):
                code.append(Instr(Op.FREE, i, t))
                resident.discard(i)
        pending_in = {int(i) for i in np.flatnonzero(s.M_in[t])}
        for pos, k in enumerate(runs):
            for u in ins[k]:
                if u in pending_in:
                    code.append(Instr(Op.PAGE_IN, u, t))
                    pending_in.discard(u)
                    resident.add(u)
            code.append(Instr(Op.RECOMPUTE if k in computed else Op.RUN, k, t))
            computed.add(k)
            if arena[k]:
                resident.add(k)
            if s.M_out[t, k] and not s.S_RAM[t, k]:
                code.append(Instr(Op.PAGE_OUT, k, t))
            later = runs[pos + 1 :]
            for j in dict.fromkeys([*ins[k], k]):
                if j in resident and not keep_next(t, j) and not any(j in ins[x] for x in later):
                    code.append(Instr(Op.FREE, j, t))
                    resident.discard(j)
        for i in sorted(pending_in):
            code.append(Instr(Op.PAGE_IN, i, t))
            resident.add(i)
            if not keep_next(t, i):
                code.append(Instr(Op.FREE, i, t))
                resident.discard(i)
    return Program("train", tuple(code))


def store_all(tg: TrainingGraph) -> Schedule:
    """Compute every node once and keep each output until its last reader ran (no recomputation, no paging)."""
    T = len(tg.graph.nodes)
    R = np.eye(T, dtype=bool)
    S = np.zeros((T, T), dtype=bool)
    readers = _readers(tg)
    for i in range(T):
        last = max(readers[i], default=i)
        S[i + 1 : last + 1, i] = True
    z = np.zeros((T, T), dtype=bool)
    return Schedule(R, S, z, z.copy(), z.copy(), "store-all")


def forward_program(tg: TrainingGraph, cost: CostModel) -> Program:
    """Inference: the forward nodes once, each output freed after its last forward reader; logits kept."""
    n = tg.n_forward
    ins = _inputs(tg)
    logits = tg.graph.producer[tg.logits]
    code: list[Instr] = []
    last_use: dict[int, int] = {}
    for k in range(n):
        for u in ins[k]:
            last_use[u] = k
    for k in range(n):
        code.append(Instr(Op.RUN, k, k))
        for j in dict.fromkeys([*ins[k], k]):
            if cost.mem[j] > 0 and j != logits and last_use.get(j, j) == k:
                code.append(Instr(Op.FREE, j, k))
    return Program("infer", tuple(code), keep=(logits,))
