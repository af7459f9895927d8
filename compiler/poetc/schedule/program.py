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
When the pager overlaps computation (``Problem.overlap``), every page-in of the stage starts right after the
stage-start frees instead (step 2), so that it moves while the stage's earlier nodes compute; the MILP's memory
rows count page-ins from the stage start anyway. Where the device waits for a transfer is decided later, on the
program with its arena offsets (``waits.insert``).
Then ``finalize`` turns the computations of load nodes into LOADs (a read of a persistent tensor's master
copy), drops everything about load nodes homed in RAM (their tensors are static), and writes every
storage-homed tensor that an update changed back to storage (STORE) right after the update.
The resulting ``Program`` is what the device executes and what the replay simulator checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from ..graph.autodiff import TrainingGraph
from .problem import Problem


class Op(IntEnum):
    """Instruction opcodes; the values are the C runtime's POET_OP_* (checked in tests)."""

    RUN = 1
    PAGE_OUT = 2
    PAGE_IN = 3
    FREE = 4
    RECOMPUTE = 5
    LOAD = 6  # read a storage-homed persistent tensor (a load node's output) from its master copy
    STORE = 7  # write a storage-homed tensor's new value back to its master copy, after its update
    WAIT = 8  # wait until the transfer in flight of a tensor (PAGE_OUT, PAGE_IN, LOAD, STORE) has completed


TRANSFERS = (Op.PAGE_OUT, Op.PAGE_IN, Op.LOAD, Op.STORE)  # the instructions that start a pager transfer


@dataclass(frozen=True)
class Instr:
    op: Op
    node: int  # RUN/RECOMPUTE: the node; PAGE_*/FREE: the node whose output tensor is meant
    stage: int


@dataclass(frozen=True)
class Program:
    name: str  # "train" | "infer"
    instrs: tuple[Instr, ...]
    required: tuple[int, ...]  # nodes that must have run by the end
    keep: tuple[int, ...] = ()  # nodes whose outputs must be resident at the end (e.g. logits)
    ram_homes: frozenset[int] = frozenset()  # load nodes whose tensors stay in RAM (static) the whole step
    # > 0: transfers are asynchronous and the program carries its wait points for a port that accepts this
    # many in flight (``waits.insert``): a transfer only starts, a WAIT completes it. 0: not yet compiled for
    # the device; every transfer is taken to complete as it starts (and there is no WAIT).
    queue: int = 0

    def count(self, op: Op) -> int:
        return sum(1 for i in self.instrs if i.op == op)

    def runs(self, T: int, ir_node: tuple[int, ...] = ()) -> np.ndarray:
        """How often each of T nodes computes in the program (its RUN plus every RECOMPUTE). With ``ir_node``
        (``Problem.ir_node``), T counts training-graph nodes and the program's nodes are mapped to them."""
        out = np.zeros(T, dtype=np.int64)
        for ins in self.instrs:
            if ins.op in (Op.RUN, Op.RECOMPUTE):
                out[ir_node[ins.node] if ir_node else ins.node] += 1
        return out

    @staticmethod
    def from_json(doc: dict[str, Any]) -> Program:
        """A program as program.json records it (instructions as [op, node, stage, arena offset])."""
        instrs = tuple(Instr(Op[op], int(node), int(stage)) for op, node, stage, _off in doc["instrs"])
        return Program(
            doc["name"],
            instrs,
            tuple(doc["required"]),
            tuple(doc["keep"]),
            frozenset(int(x) for x in doc.get("ram_homes", ())),
            int(doc.get("queue", 0)),
        )


@dataclass(frozen=True)
class Schedule:
    R: np.ndarray
    S_RAM: np.ndarray
    S_SD: np.ndarray
    M_in: np.ndarray
    M_out: np.ndarray
    strategy: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    ram_homes: frozenset[int] = frozenset()  # load nodes homed in RAM (they never run: R is 0 for them)

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


def lower(p: Problem, s: Schedule) -> Program:
    """Turn a schedule's matrices into the train program (see the module doc for the order)."""
    T = s.T
    ins = [list(dict.fromkeys(x)) for x in p.inputs]
    arena = p.mem > 0
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
        if p.overlap:
            needed = [u for k in runs for u in ins[k] if u in pending_in]
            for u in dict.fromkeys(needed):
                code.append(Instr(Op.PAGE_IN, u, t))
                pending_in.discard(u)
                resident.add(u)
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
    return finalize(p, Program("train", tuple(code), tuple(range(T))), s.ram_homes)


def finalize(p: Problem, prog: Program, ram_homes: frozenset[int] | set[int] = frozenset()) -> Program:
    """A program of ``p``'s nodes made one the device can run (see the module doc): LOAD for computations of
    storage-homed load nodes, nothing for RAM-homed ones, STORE after each update of a storage-homed tensor.
    Programs without load nodes come back unchanged (but for ``required``, which never lists load nodes)."""
    ram = frozenset(ram_homes)
    if not p.loads:
        return prog
    is_load = p.is_load
    stores: dict[int, list[int]] = {}
    for u, l in p.writes:
        if l not in ram:
            stores.setdefault(u, []).append(l)
    code: list[Instr] = []
    for ins in prog.instrs:
        if ins.node in ram:
            continue
        if is_load[ins.node] and ins.op in (Op.RUN, Op.RECOMPUTE):
            code.append(Instr(Op.LOAD, ins.node, ins.stage))
            continue
        code.append(ins)
        if ins.op in (Op.RUN, Op.RECOMPUTE):
            code += [Instr(Op.STORE, l, ins.stage) for l in stores.get(ins.node, ())]
    required = tuple(i for i in prog.required if not is_load[i])
    return Program(prog.name, tuple(code), required, prog.keep, ram, prog.queue)


def store_all(p: Problem) -> Schedule:
    """Compute every node once and keep each output until its last reader ran (no recomputation, no paging).
    Load nodes are loaded once, so their tensors are on storage (``with_ram_homes`` first to keep some in RAM)."""
    T = p.T
    R = np.eye(T, dtype=bool)
    S = np.zeros((T, T), dtype=bool)
    for i in range(T):
        if p.mem[i] > 0:
            S[i + 1 : p.last_use[i] + 1, i] = True
    z = np.zeros((T, T), dtype=bool)
    return Schedule(R, S, z, z.copy(), z.copy(), "store-all")


def forward_program(tg: TrainingGraph, p: Problem, ram_homes: frozenset[int] = frozenset()) -> Program:
    """Inference: the forward nodes once (storage-homed parameters loaded right before their first reader),
    each output freed after its last forward reader; logits kept."""
    n = p.n_forward or tg.n_forward
    ins = [list(dict.fromkeys(x)) for x in p.inputs]
    ir = tg.graph.producer[tg.logits]
    logits = p.ir_node.index(ir) if p.ir_node else ir
    is_load = p.is_load
    code: list[Instr] = []
    last_use: dict[int, int] = {}
    for k in range(n):
        for u in ins[k]:
            last_use[u] = k
    for k in range(n):
        if k in ram_homes:
            continue
        code.append(Instr(Op.LOAD if is_load[k] else Op.RUN, k, k))
        for j in dict.fromkeys([*ins[k], k]):
            if p.mem[j] > 0 and j not in ram_homes and j != logits and last_use.get(j, j) == k:
                code.append(Instr(Op.FREE, j, k))
    required = tuple(k for k in range(n) if not is_load[k])
    return Program("infer", tuple(code), required, keep=(logits,), ram_homes=frozenset(ram_homes))


def from_program(p: Problem, prog: Program, strategy: str, meta: dict[str, Any] | None = None) -> Schedule:
    """The matrices a program realises: what ran, was paged and was resident at each stage's start."""
    T = p.T
    R, S, SD, Mi, Mo = (np.zeros((T, T), dtype=bool) for _ in range(5))
    resident: set[int] = set()
    stored: set[int] = set()
    stage = -1
    for ins in prog.instrs:
        while stage < ins.stage:
            stage += 1
            for i in resident:
                S[stage, i] = True
            for i in stored:
                SD[stage, i] = True
        i = ins.node
        if ins.op in (Op.RUN, Op.RECOMPUTE, Op.LOAD):
            R[stage, i] = True
            if p.mem[i] > 0:
                resident.add(i)
        elif ins.op == Op.PAGE_OUT:
            Mo[stage, i] = True
            stored.add(i)
        elif ins.op == Op.PAGE_IN:
            Mi[stage, i] = True
            resident.add(i)
        elif ins.op == Op.FREE:
            resident.discard(i)
    return Schedule(R, S, SD, Mi, Mo, strategy, dict(meta or {}), prog.ram_homes)


def from_compute_sets(p: Problem, sets: list[list[int]], strategy: str) -> Schedule:
    """A schedule without paging from what each stage computes (in order; the last entry of stage t is t).

    Each use of a tensor is served by its latest computation at or before the use, and the tensor stays
    resident from that computation to the last use it serves, no longer.
    """
    T = p.T
    R = np.zeros((T, T), dtype=bool)
    S = np.zeros((T, T), dtype=bool)
    latest: dict[int, int] = {}  # node -> stage of its latest computation
    serve_until: dict[tuple[int, int], int] = {}  # (node, computation stage) -> last stage it serves
    for t, nodes in enumerate(sets):
        for k in nodes:
            for u in set(p.inputs[k]):
                if p.mem[u] > 0 and u in latest:
                    key = (u, latest[u])
                    serve_until[key] = max(serve_until.get(key, t), t)
            R[t, k] = True
            latest[k] = t
    for (u, c), last in serve_until.items():
        S[c + 1 : last + 1, u] = True
    z = np.zeros((T, T), dtype=bool)
    return Schedule(R, S, z, z.copy(), z.copy(), strategy)


def trim(p: Problem, s: Schedule) -> Schedule:
    """Drop residency that serves nothing: i resident at the start of stage t although no node of stage t reads
    it, it is not paged out in t and not kept for t+1. The lowered program then frees it one stage earlier, so
    the trimmed schedule uses no more RAM or energy (and matches the MILP's usefulness rows)."""
    T = s.T
    S = s.S_RAM.copy()
    for t in range(T - 1, 0, -1):
        for i in np.flatnonzero(S[t]):
            used = any(s.R[t, j] for j in p.consumers[i] if j <= t)
            kept = t + 1 < T and S[t + 1, i]
            if not (used or kept or s.M_out[t, i]):
                S[t, i] = False
    return Schedule(s.R, S, s.S_SD, s.M_in, s.M_out, s.strategy, dict(s.meta), s.ram_homes)
