"""Independent replay of a program: the check every schedule must pass before it is built.

It knows nothing of the solver or of the lowering's intent; it walks the instructions and checks:
- a node runs only when every arena input is resident, and never reads a parameter after that parameter's
  in-place update; an update runs exactly once; RUN is a node's first computation, RECOMPUTE a later one;
- only resident tensors are paged out or freed, only stored tensors are paged in, nothing is allocated twice;
- RAM in use (arena tensors + a running node's scratch) never exceeds the budget at any instruction;
- persistent tensors (load nodes): homed in RAM they are resident throughout and never loaded, freed or
  stored; on storage they are only ever LOADed (never computed or paged), never loaded after their in-place
  update, never freed between their update and its write-back (STORE), stored only after the update and only
  once; a step that ends with an updated tensor not written back is rejected;
- at the end every node has run and the program's ``keep`` tensors are resident;
- in a program with wait points (``Program.queue`` > 0, ``waits.insert``), where a transfer only starts and
  ``WAIT t`` completes it: no kernel reads a tensor before its page-in or load completed, no page-out starts
  before the tensor's page-in completed, at most ``queue`` transfers are in flight, a WAIT names a transfer in
  flight, the step ends with none in flight, and (given the arena ``offsets``) no kernel output or page-in is
  placed over bytes a transfer in flight still reads or writes.
A violation raises ``ScheduleError`` naming the instruction index, the stage and the tensor.

Time. ``time_s`` is the schedule's time model, the one the MILP and the baselines use: per stage, its compute
(RUN, RECOMPUTE) and its transfers (PAGE_IN, PAGE_OUT, LOAD, STORE) summed, or with ``Problem.overlap`` the
larger of the two (``problem.stage_time``). ``event_time_s`` plays the program itself on one core and one bus:
a transfer starts when the bus is free and the core has reached it, the core stalls at a WAIT until the
transfer completes (a program without wait points, or a pager that cannot overlap, waits for every transfer as
it starts), so it shows what the stage model leaves out (a kernel that needs a page-in issued just before it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PoetcError
from .problem import Problem, stage_time
from .program import TRANSFERS, Op, Program


class ScheduleError(PoetcError):
    def __init__(self, program: str, pc: int, stage: int, tensor: str, msg: str) -> None:
        super().__init__(
            f"invalid {program} program at instruction {pc} (stage {stage}), tensor {tensor!r}: {msg}"
        )
        self.pc = pc
        self.stage = stage
        self.tensor = tensor


@dataclass(frozen=True)
class Replay:
    peak_bytes: int  # arena bytes in use at the worst instruction (live tensors, no fragmentation)
    peak_pc: int
    compute_j: float
    page_in_j: float
    page_out_j: float
    time_s: float
    runs: int
    recomputes: int
    page_ins: int
    page_outs: int
    page_in_bytes: int
    page_out_bytes: int
    # persistent tensors on storage: loads (first reads and re-reads) and write-backs
    param_load_j: float = 0.0
    param_store_j: float = 0.0
    param_loads: int = 0
    param_stores: int = 0
    param_load_bytes: int = 0
    param_store_bytes: int = 0
    param_ram_bytes: int = 0  # persistent tensors homed in RAM (included in peak_bytes)
    compute_s: float = 0.0  # the step's computation (RUN, RECOMPUTE)
    transfer_s: float = 0.0  # the step's transfers (page-ins and -outs, loads, write-backs)
    event_time_s: float = 0.0  # the program played on one core and one bus (see the module doc)
    waits: int = 0  # WAIT instructions

    @property
    def energy_j(self) -> float:
        return self.compute_j + self.page_in_j + self.page_out_j + self.param_load_j + self.param_store_j

    @property
    def paging_j(self) -> float:
        """Storage traffic of every kind: activations paged, parameters loaded and written back."""
        return self.page_in_j + self.page_out_j + self.param_load_j + self.param_store_j

    @property
    def param_paging_j(self) -> float:
        return self.param_load_j + self.param_store_j


def replay(
    p: Problem, prog: Program, budget: int | None = None, offsets: tuple[int, ...] | None = None
) -> Replay:
    """Walk ``prog`` over problem ``p`` (graph, sizes, costs); raise ScheduleError at the first violation.
    ``offsets`` (``MemPlan.offsets``) lets a program with wait points be checked for arena reuse too."""
    name = prog.name
    T = p.T
    names = p.names
    ins = [sorted(set(x)) for x in p.inputs]
    # nodes that update a tensor in place, and the readers that must not run after them
    readers_of: dict[int, list[int]] = {}
    for u, readers in p.updates:
        for r in readers:
            readers_of.setdefault(r, []).append(u)
    is_update = {u for u, _ in p.updates}

    is_load = p.is_load
    ram = prog.ram_homes
    writer = p.written_by  # load node -> (update node, store J, store s)
    updated_by = {u: [l for (uu, l) in p.writes if uu == u] for u, _ in p.writes}
    resident: set[int] = set(ram)
    stored: set[int] = set()
    ran = [0] * T
    used = sum(int(p.mem[i]) for i in ram)
    param_ram = used
    peak = used
    peak_pc = 0
    cj = pij = poj = lj = sj = 0.0
    n_run = n_re = n_in = n_out = b_in = b_out = 0
    n_ld = n_st = b_ld = b_st = 0
    dirty: set[int] = set()  # storage-homed tensors updated and not yet written back
    written: set[int] = set()

    def tname(i: int) -> str:
        return p.tensor_names[i]

    # time: per stage compute and transfers; the event model's core and bus clocks
    stage_c: dict[int, float] = {}
    stage_x: dict[int, float] = {}
    cpu = bus = 0.0
    asynchronous = prog.queue > 0
    if offsets is not None and len(offsets) != len(prog.instrs):
        raise ValueError(f"{len(offsets)} offsets for {len(prog.instrs)} instructions")
    where: dict[int, tuple[int, int]] = {}  # arena range of each resident tensor (with offsets)
    flight: dict[
        int, tuple[bool, tuple[int, int] | None, float, int]
    ] = {}  # tensor -> (read, range, done, pc)
    n_wait = 0

    def compute(st: int, s_: float) -> None:
        nonlocal cpu
        stage_c[st] = stage_c.get(st, 0.0) + s_
        cpu += s_

    def transfer(pc: int, st: int, i: int, s_: float, read: bool) -> None:
        nonlocal cpu, bus
        stage_x[st] = stage_x.get(st, 0.0) + s_
        start = max(cpu, bus)
        bus = start + s_
        if not p.overlap:  # the core moves the bytes itself: it waits for every transfer
            cpu = bus
        if not asynchronous:
            cpu = bus
            return
        if i in flight:
            raise fail(
                pc, st, i, "a transfer starts while another of the same tensor is in flight (missing WAIT)"
            )
        if len(flight) >= prog.queue:
            raise fail(
                pc,
                st,
                i,
                f"a transfer starts while {len(flight)} are in flight, the port's limit (missing WAIT)",
            )
        flight[i] = (read, where.get(i), bus, pc)

    def reuse(pc: int, st: int, i: int, what: str) -> None:
        """``what`` places tensor i at its offset: no transfer in flight may still use those bytes."""
        if not asynchronous or offsets is None or not p.mem[i] or i in ram:
            return
        rng = (offsets[pc], offsets[pc] + int(p.mem[i]))
        where[i] = rng
        for t, (rd, r, _d, tpc) in flight.items():
            if r is not None and r[0] < rng[1] and rng[0] < r[1]:
                kind = "page-in" if rd else "page-out"
                if is_load[t]:
                    kind = "load" if rd else "write-back"
                raise fail(
                    pc, st, t,
                    f"{what} is placed over arena bytes [{r[0]}, {r[1]}) of this tensor while its {kind} "
                    f"(instruction {tpc}) is in flight (missing WAIT)",
                )  # fmt: skip

    def fail(pc: int, stage: int, i: int, msg: str) -> ScheduleError:
        return ScheduleError(name, pc, stage, tname(i) if 0 <= i < T else str(i), msg)

    def charge(pc: int, stage: int, i: int, total: int) -> None:
        """``total`` bytes live at instruction ``pc``: within the budget, and the peak so far."""
        nonlocal peak, peak_pc
        if budget is not None and total > budget:
            raise fail(pc, stage, i, f"RAM {total} B exceeds the budget {budget} B")
        if total > peak:
            peak, peak_pc = total, pc

    for pc, ins_ in enumerate(prog.instrs):
        i, st = ins_.node, ins_.stage
        if not 0 <= i < T:
            raise ScheduleError(name, pc, st, str(i), "node index out of range")
        if ins_.op == Op.WAIT:
            if not asynchronous:
                raise fail(pc, st, i, "WAIT in a program without asynchronous transfers")
            if i not in flight:
                raise fail(pc, st, i, "WAIT for a tensor with no transfer in flight")
            cpu = max(cpu, flight.pop(i)[2])
            n_wait += 1
            continue
        if ins_.op in TRANSFERS and i in flight and flight[i][0]:
            raise fail(
                pc, st, i, f"{ins_.op.name} reads the tensor before its transfer (instruction "
                f"{flight[i][3]}) completed (missing WAIT)",
            )  # fmt: skip
        size = int(p.mem[i])
        if i in ram:
            raise fail(pc, st, i, f"{ins_.op.name} of a tensor homed in RAM")
        if is_load[i] and ins_.op not in (Op.LOAD, Op.STORE, Op.FREE):
            raise fail(
                pc, st, i, f"{ins_.op.name} of a persistent tensor (only LOAD, STORE and FREE move it)"
            )
        if ins_.op in (Op.LOAD, Op.STORE) and not is_load[i]:
            raise fail(pc, st, i, f"{ins_.op.name} of a tensor that is not persistent")
        if ins_.op == Op.LOAD:
            if i in resident:
                raise fail(pc, st, i, "loaded while already resident")
            if i in writer and ran[writer[i][0]]:
                raise fail(pc, st, i, f"loaded after its in-place update {names[writer[i][0]]!r}")
            used += size
            charge(pc, st, i, used)
            reuse(pc, st, i, "the load")
            resident.add(i)
            ran[i] += 1
            lj += float(p.compute_j[i])
            transfer(pc, st, i, float(p.compute_s[i]), True)
            n_ld += 1
            b_ld += size
            continue
        if ins_.op == Op.STORE:
            if i not in resident:
                raise fail(pc, st, i, "written back while not resident")
            if i not in dirty:
                raise fail(
                    pc, st, i, "written back twice" if i in written else "written back before its update ran"
                )
            dirty.discard(i)
            written.add(i)
            sj += writer[i][1]
            transfer(pc, st, i, writer[i][2], False)
            n_st += 1
            b_st += size
            continue
        if ins_.op in (Op.RUN, Op.RECOMPUTE):
            if i in is_update and ran[i]:
                raise fail(pc, st, i, "in-place update applied twice")
            for u in readers_of.get(i, ()):
                if ran[u]:
                    raise fail(
                        pc, st, i, f"node {names[i]!r} reads a tensor after its in-place update {names[u]!r}"
                    )
            for u in ins[i]:
                if p.mem[u] > 0 and u not in resident:
                    raise fail(pc, st, u, f"input of node {names[i]!r} is not resident")
                if u in flight and flight[u][0]:
                    raise fail(
                        pc, st, u, f"node {names[i]!r} reads this tensor before its "
                        f"{'load' if is_load[u] else 'page-in'} (instruction {flight[u][3]}) completed "
                        "(missing WAIT)",
                    )  # fmt: skip
            if ran[i] and st > p.last_stage[i]:
                raise fail(pc, st, i, f"node {names[i]!r} may not run after stage {p.last_stage[i]}")
            if ins_.op == Op.RUN and ran[i]:
                raise fail(pc, st, i, "RUN of a node already computed (should be RECOMPUTE)")
            if ins_.op == Op.RECOMPUTE and not ran[i]:
                raise fail(pc, st, i, "RECOMPUTE of a node never computed")
            if size and i in resident:
                raise fail(pc, st, i, "computed while already resident")
            charge(pc, st, i, used + size)
            if size:
                reuse(pc, st, i, f"the output of {names[i]!r}")
                resident.add(i)
                used += size
            ran[i] += 1
            dirty.update(l for l in updated_by.get(i, ()) if l not in ram)
            cj += float(p.compute_j[i])
            compute(st, float(p.compute_s[i]))
            n_run += ins_.op == Op.RUN
            n_re += ins_.op == Op.RECOMPUTE
        elif ins_.op == Op.PAGE_OUT:
            if not size:
                raise fail(pc, st, i, "only arena tensors can be paged")
            if i not in resident:
                raise fail(pc, st, i, "paged out while not resident")
            stored.add(i)
            poj += float(p.page_out_j[i])
            transfer(pc, st, i, float(p.page_out_s[i]), False)
            n_out += 1
            b_out += size
        elif ins_.op == Op.PAGE_IN:
            if i not in stored:
                raise fail(pc, st, i, "paged in but never paged out")
            if i in resident:
                raise fail(pc, st, i, "paged in while already resident")
            used += size
            charge(pc, st, i, used)
            reuse(pc, st, i, "the page-in")
            resident.add(i)
            pij += float(p.page_in_j[i])
            transfer(pc, st, i, float(p.page_in_s[i]), True)
            n_in += 1
            b_in += size
        elif ins_.op == Op.FREE:
            if i not in resident:
                raise fail(pc, st, i, "freed while not resident")
            if i in dirty:
                raise fail(pc, st, i, "freed after its update before its new value was written back")
            resident.discard(i)
            where.pop(i, None)
            used -= size
        else:
            raise ScheduleError(name, pc, st, tname(i), f"unknown opcode {ins_.op}")

    n_prog = len(prog.instrs)
    for i in prog.required:
        if not ran[i]:
            raise fail(n_prog, -1, i, f"node {names[i]!r} never ran")
    for k in prog.keep:
        if k not in resident:
            raise fail(n_prog, -1, k, "must be resident at the end of the program")
    for i in sorted(dirty):
        raise fail(n_prog, -1, i, "the step ends with its new value not written back to storage")
    for i, (_rd, _r, _d, tpc) in flight.items():
        raise fail(
            n_prog, -1, i, f"the step ends with the transfer of instruction {tpc} in flight (missing WAIT)"
        )
    c_s, x_s = sum(stage_c.values()), sum(stage_x.values())
    time_s = sum(
        stage_time(stage_c.get(t, 0.0), stage_x.get(t, 0.0), p.overlap) for t in {*stage_c, *stage_x}
    )
    return Replay(
        peak, peak_pc, cj, pij, poj, time_s, n_run, n_re, n_in, n_out, b_in, b_out,
        lj, sj, n_ld, n_st, b_ld, b_st, param_ram, c_s, x_s, max(cpu, bus), n_wait,
    )  # fmt: skip
