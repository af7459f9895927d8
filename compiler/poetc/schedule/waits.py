"""Wait points: where the device must wait for an asynchronous transfer, compiled into the program.

PAGE_OUT, PAGE_IN, LOAD and STORE only *start* a transfer on the device (a DMA engine moves the bytes while the
core computes); ``WAIT t`` blocks until the transfer of tensor t has completed (for a read: its CRC checked).
``insert`` walks a program with its arena plan and puts a WAIT right before the first instruction that needs a
transfer to be over, and nowhere else:
  - a kernel that reads a tensor being paged in or loaded (RUN/RECOMPUTE of a reader);
  - an instruction that writes arena bytes a transfer still uses: a kernel's output or a page-in's destination
    over the bytes of a tensor being paged out (the DMA still reads them) or paged in (the DMA still writes them);
  - a page-out of a tensor whose page-in is still in flight;
  - a transfer started while ``queue`` transfers are in flight (the port's limit; the oldest is waited for);
  - the end of the step (every transfer completes before the program returns).
The replay simulator checks a program with waits independently (``simulate.replay(..., offsets=...)``): a read
before completion, a reuse before a transfer completes, too many transfers in flight or a step that ends with
one in flight is rejected with the instruction named.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .memplan import Interval, MemPlan
from .problem import Problem
from .program import TRANSFERS, Instr, Op, Program

MAX_QUEUE = 4  # the C runtime's transfer slots (POET_MAX_XFERS)


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def insert(p: Problem, prog: Program, mp: MemPlan, queue: int) -> tuple[Program, MemPlan]:
    """``prog`` with its wait points for a port that accepts ``queue`` transfers in flight, and ``mp`` with the
    same intervals renumbered (a WAIT allocates nothing)."""
    if not 1 <= queue <= MAX_QUEUE:
        raise ValueError(f"queue must be in 1..{MAX_QUEUE}, got {queue}")
    if prog.queue:
        raise ValueError(f"{prog.name} program already has its wait points")
    mem = p.mem
    ins_of = [tuple(dict.fromkeys(x)) for x in p.inputs]
    where: dict[int, tuple[int, int]] = {}  # arena range of each resident tensor
    flight: dict[int, tuple[bool, tuple[int, int]]] = {}  # tensor -> (is a read into RAM, its RAM range)
    code: list[Instr] = []
    new_pc: list[int] = []

    def wait(t: int, stage: int) -> None:
        code.append(Instr(Op.WAIT, t, stage))
        del flight[t]

    def wait_over(rng: tuple[int, int], stage: int) -> None:
        for t in [t for t, (_r, r) in flight.items() if _overlaps(r, rng)]:
            wait(t, stage)

    for pc, ins in enumerate(prog.instrs):
        i, st = ins.node, ins.stage
        size = int(mem[i]) if i not in prog.ram_homes else 0
        off = mp.offsets[pc]
        if ins.op in (Op.RUN, Op.RECOMPUTE):
            for u in ins_of[i]:
                if u in flight and flight[u][0]:
                    wait(u, st)
            if size:
                wait_over((off, off + size), st)
        if ins.op in TRANSFERS:
            if i in flight:
                wait(i, st)
            while len(flight) >= queue:
                wait(next(iter(flight)), st)  # the oldest transfer in flight
            if ins.op in (Op.PAGE_IN, Op.LOAD):
                wait_over((off, off + size), st)
        new_pc.append(len(code))
        code.append(ins)
        if ins.op in (Op.RUN, Op.RECOMPUTE, Op.PAGE_IN, Op.LOAD) and size:
            where[i] = (off, off + size)
        if ins.op in TRANSFERS:
            flight[i] = (ins.op in (Op.PAGE_IN, Op.LOAD), where[i])
        elif ins.op == Op.FREE:
            where.pop(i, None)
    last = prog.instrs[-1].stage if prog.instrs else 0
    for t in list(flight):
        wait(t, last)
    n_old, n_new = len(prog.instrs), len(code)

    def at(k: int) -> int:
        return n_new if k >= n_old else new_pc[k]

    offsets = [-1] * n_new
    for k, o in enumerate(mp.offsets):
        offsets[new_pc[k]] = o
    ivs = tuple(Interval(iv.node, at(iv.start), at(iv.end), iv.size, iv.offset) for iv in mp.intervals)
    return (
        replace(prog, instrs=tuple(code), queue=queue),
        replace(mp, intervals=ivs, offsets=tuple(offsets)),
    )


def drop(prog: Program, mp: MemPlan, pc: int) -> tuple[Program, MemPlan]:
    """The program without instruction ``pc`` (a WAIT), for tests that must see a missing wait caught."""
    if prog.instrs[pc].op != Op.WAIT:
        raise ValueError(f"instruction {pc} is {prog.instrs[pc].op.name}, not WAIT")

    def at(k: int) -> int:
        return k - 1 if k > pc else k

    code = prog.instrs[:pc] + prog.instrs[pc + 1 :]
    ivs = tuple(Interval(iv.node, at(iv.start), at(iv.end), iv.size, iv.offset) for iv in mp.intervals)
    return replace(prog, instrs=code), replace(
        mp, intervals=ivs, offsets=mp.offsets[:pc] + mp.offsets[pc + 1 :]
    )


def count(prog: Program) -> int:
    return int(np.sum([ins.op == Op.WAIT for ins in prog.instrs]))
