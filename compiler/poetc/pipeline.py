"""The compile pipeline: model -> training graph -> cost -> schedule -> programs -> memory plan.

Each step is one module; this file only wires them and does the RAM accounting that ties the schedule's
budget to the board: the budget covers parameters, inputs, labels, the loss, runtime tables, the link's frame
buffers, the port's own buffers and the stack, and what is left is the arena the schedule may use.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .boards import Board
from .errors import PoetcError
from .graph import autodiff
from .graph.autodiff import TrainingGraph
from .graph.ir import Model, Role
from .schedule import cost, memplan, problem, program, simulate, strategies
from .schedule.cost import CostModel
from .schedule.memplan import MemPlan
from .schedule.problem import Problem
from .schedule.program import Program, Schedule
from .schedule.simulate import Replay
from .schedule.strategies import Solution, SolveOptions


@dataclass(frozen=True)
class MemoryReport:
    budget: int  # the RAM budget (--ram, or the board's RAM)
    params: int  # trainable parameters (RAM homes)
    io: int  # input batch, labels, loss
    tables: int  # runtime RAM tables: tensor locations, per-node tick counters
    link: int  # frame buffers of the link
    port: int  # the port's own buffers
    stack: int
    arena: int

    @property
    def fixed(self) -> int:
        return self.params + self.io + self.tables + self.link + self.port + self.stack

    @property
    def total(self) -> int:
        return self.fixed + self.arena

    @property
    def arena_budget(self) -> int:
        return self.budget - self.fixed

    def rows(self) -> list[tuple[str, int]]:
        return [
            ("parameters", self.params),
            ("inputs, labels, loss", self.io),
            ("runtime tables", self.tables),
            ("link buffers", self.link),
            ("port buffers", self.port),
            ("stack reserve", self.stack),
            ("arena", self.arena),
            ("total", self.total),
            ("budget", self.budget),
        ]


def fixed_memory(tg: TrainingGraph, board: Board, budget: int) -> MemoryReport:
    g = tg.graph
    ptr = 8 if board.core == "host" or board.core.startswith("cortex-a") else 4
    params = sum(t.nbytes for t in g.tensors.values() if t.role in (Role.PARAM, Role.STATE))
    io = sum(t.nbytes for t in g.tensors.values() if t.role in (Role.INPUT, Role.LABEL, Role.LOSS))
    tables = ptr * len(g.tensors) + 8 * len(g.nodes)
    link = 2 * board.frame_max_bytes + 8
    return MemoryReport(budget, params, io, tables, link, board.port_ram_bytes, board.stack_bytes, 0)


@dataclass(frozen=True)
class Compiled:
    model: Model
    tg: TrainingGraph
    board: Board
    cost: CostModel
    problem: Problem
    solution: Solution
    programs: tuple[Program, Program]  # train, infer
    plans: tuple[MemPlan, MemPlan]
    replays: tuple[Replay, Replay]
    slots: dict[int, int] = field(hash=False)
    storage_bytes: int
    memory: MemoryReport
    hash_hex: str
    strategy: str
    solve_s: float
    repairs: int = 0  # re-solves needed to absorb fragmentation
    first_extra_j: float | None = None  # extra energy of the first solution, before any repair

    @property
    def arena_bytes(self) -> int:
        return self.memory.arena

    @property
    def schedule(self) -> Schedule:
        return self.solution.schedule


def parse_bytes(text: str) -> int:
    """'64K' -> 65536, '1M' -> 1048576, '1500' -> 1500."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    if t and t[-1] in "KMG":
        mult = {"K": 1024, "M": 1024**2, "G": 1024**3}[t[-1]]
        t = t[:-1]
    try:
        v = float(t)
    except ValueError:
        raise PoetcError(f"bad byte size {text!r} (examples: 65536, 64K, 1.5M)") from None
    if v <= 0:
        raise PoetcError(f"bad byte size {text!r}: must be positive")
    return int(v * mult)


def parse_deadline(text: str | None, floor_s: float) -> float | None:
    """'1.5x' -> 1.5 times one computation of every node; '0.2s' or '200ms' -> seconds."""
    if text is None:
        return None
    t = text.strip().lower()
    try:
        if t.endswith("x"):
            v = float(t[:-1]) * floor_s
        elif t.endswith("ms"):
            v = float(t[:-2]) / 1e3
        elif t.endswith("s"):
            v = float(t[:-1])
        else:
            raise ValueError
    except ValueError:
        raise PoetcError(f"bad deadline {text!r} (examples: 1.5x the compute time, 0.2s, 200ms)") from None
    if v <= 0:
        raise PoetcError(f"bad deadline {text!r}: must be positive")
    return v


@dataclass(frozen=True)
class Planned:
    """Everything up to the scheduling problem: the graph, its costs and the RAM left for the arena."""

    tg: TrainingGraph
    cost: CostModel
    fixed: MemoryReport
    problem: Problem


def plan(
    model: Model,
    board: Board,
    ram: int | None = None,
    deadline: str | None = None,
    say: Callable[[str], None] | None = None,
    profile: Mapping[str, float] | None = None,
    profile_source: str = "",
) -> Planned:
    """``profile``: measured seconds per node name (``poetc profile``) replacing the FLOP estimates."""
    say = say or (lambda s: None)
    budget = ram if ram is not None else board.ram_bytes
    if budget > board.ram_bytes:
        raise PoetcError(f"--ram {budget} exceeds the RAM of board {board.name} ({board.ram_bytes} bytes)")
    tg = autodiff.build_training_graph(model)
    say(f"training graph: {len(tg.graph.nodes)} nodes ({tg.n_forward} forward), {len(tg.params)} parameters")
    if profile is not None:
        missing = [n.name for n in tg.graph.nodes if n.name not in profile]
        if missing:
            raise PoetcError(
                f"profile {profile_source}: no measurement for node {missing[0]!r} ({len(missing)} of "
                f"{len(tg.graph.nodes)} nodes missing); profile this model and batch size again"
            )
    cm = cost.build(tg, board, profile, profile_source)
    fixed = fixed_memory(tg, board, budget)
    p = problem.from_training(
        tg, cm, max(0, fixed.arena_budget), parse_deadline(deadline, cm.floor_s), board.storage_bytes
    )
    if fixed.arena_budget < p.min_budget():
        need = fixed.fixed + p.min_budget()
        raise PoetcError(
            f"board {board.name}: parameters and fixed buffers need {fixed.fixed} bytes and the largest node "
            f"{p.min_budget()} more with its inputs, so no schedule fits a RAM budget of {budget} bytes; the "
            f"smallest budget that could fit is {need} bytes (a lower bound)"
            + (f", over the board's {board.ram_bytes}" if need > board.ram_bytes else "")
        )
    return Planned(tg, cm, fixed, p)


class NoSchedule(PoetcError):
    """No schedule of the asked strategy fits: the message says why; ``solution`` is the strategy's answer when
    there was one (its status and figures), else None."""

    def __init__(self, message: str, solution: Solution | None = None) -> None:
        super().__init__(message)
        self.solution = solution


def infeasible_message(
    pl: Planned, sol: Solution, strategy: str, opts: SolveOptions, smallest: bool = True
) -> str:
    budget = pl.fixed.budget
    msg = (
        f"no {strategy} schedule fits a RAM budget of {budget} bytes ({pl.problem.budget} left for the arena)"
    )
    if pl.problem.deadline_s is not None:
        msg += f" and the deadline of {pl.problem.deadline_s:.4g} s"
    msg += f": {sol.message}"
    if not smallest:
        return msg
    b, how = strategies.smallest_budget(pl.problem, strategy, opts)
    if b < 0:
        return msg + f"; {how}"
    return msg + f"; smallest feasible RAM budget: {pl.fixed.fixed + b} bytes ({how})"


MAX_REPAIRS = 6


def compile_model(
    model: Model,
    board: Board,
    ram: int | None = None,
    strategy: str = "poet",
    command: str = "",
    progress: Callable[[str], None] | None = None,
    opts: SolveOptions = SolveOptions(),
    deadline: str | None = None,
    profile: Mapping[str, float] | None = None,
    profile_source: str = "",
) -> Compiled:
    say = progress or (lambda s: None)
    pl = plan(model, board, ram, deadline, say, profile, profile_source)
    return compile_planned(pl, model, board, strategy, opts, say)


def compile_planned(
    pl: Planned,
    model: Model,
    board: Board,
    strategy: str = "poet",
    opts: SolveOptions = SolveOptions(),
    progress: Callable[[str], None] | None = None,
    smallest: bool = True,
) -> Compiled:
    """Schedule a planned model with ``strategy`` and lay out its arena: what ``poetc build`` compiles and what
    every ``poetc solve`` row shows. Raises NoSchedule when the strategy's schedule does not fit (the budget,
    the deadline, the arena after fragmentation, the storage); ``smallest`` also searches the smallest RAM
    budget that would fit for the message (a bisection: slow for MILP strategies)."""
    say = progress or (lambda s: None)
    tg, cm, fixed, p = pl.tg, pl.cost, pl.fixed, pl.problem
    t0 = time.perf_counter()
    infer = program.forward_program(tg, p)
    infer_plan = memplan.plan(infer, p.mem)
    if infer_plan.arena_bytes > p.budget:
        raise NoSchedule(
            f"even inference needs an arena of {infer_plan.arena_bytes} bytes, over the "
            f"{p.budget} left in a RAM budget of {fixed.budget}; smallest feasible RAM budget: "
            f"{fixed.fixed + infer_plan.arena_bytes} bytes or more"
        )
    sol = strategies.run(strategy, p, opts, progress=say)
    if not sol.ok and sol.status == "no_solution":
        raise NoSchedule(
            f"no {strategy} schedule within the time limit of {opts.time_limit_s:g} s, and no fallback schedule "
            f"(store-all, chen-sqrt, greedy) fits a RAM budget of {fixed.budget} bytes either; raise --time-limit "
            f"or --ram",
            sol,
        )
    if not sol.ok:
        raise NoSchedule(infeasible_message(pl, sol, strategy, opts, smallest), sol)
    first_extra = sol.extra_j(p)
    # The arena honours the budget: if fragmentation pushes the planned arena over it, re-solve with the
    # budget tightened by the overflow, until the plan fits.
    repairs = 0
    q = p
    while True:
        train = sol.program
        train_plan = memplan.plan(train, p.mem)
        arena = max(train_plan.arena_bytes, infer_plan.arena_bytes)
        if arena <= p.budget:
            break
        if repairs == MAX_REPAIRS:
            raise NoSchedule(
                f"the {strategy} schedule's arena ({arena} B) exceeds the {p.budget} B left for it by "
                f"fragmentation, still {arena - p.budget} B after {repairs} re-solves; raise --ram by that much"
            )
        repairs += 1
        q = q.with_budget(q.budget - (arena - p.budget))
        say(f"arena {arena} B exceeds the {p.budget} B budget by fragmentation: re-solving with {q.budget} B")
        sol = strategies.run(strategy, q, opts, progress=say)
        if not sol.ok:
            raise NoSchedule(
                f"the {strategy} schedule's arena ({arena} B) exceeds the {p.budget} B left for it by "
                f"fragmentation, and re-solving at an arena budget of {q.budget} B failed: {sol.message}; "
                "raise --ram",
                sol,
            )
    solve_s = time.perf_counter() - t0
    replays = (simulate.replay(p, train, budget=p.budget), simulate.replay(p, infer, budget=p.budget))
    plans = (train_plan, infer_plan)
    say(
        f"schedule {strategy}: {sol.status}{' (' + sol.message + ')' if sol.message else ''}; peak live "
        f"{replays[0].peak_bytes} B, arena {arena} B ({train_plan.fragmentation_bytes} B fragmentation)"
    )
    slots = memplan.storage_slots(train, p.mem)
    storage = memplan.storage_bytes(slots, p.mem)
    if storage > board.storage_bytes:
        raise NoSchedule(
            f"the {strategy} schedule pages {storage} bytes, over the board's storage of {board.storage_bytes}"
        )
    mem = MemoryReport(
        fixed.budget, fixed.params, fixed.io, fixed.tables, fixed.link, fixed.port, fixed.stack, arena
    )
    h = hashlib.sha256()
    for part in (
        model.sha256,
        tg.graph.fingerprint(),
        board.name,
        repr(train.instrs),
        repr(infer.instrs),
        repr([pp.offsets for pp in plans]),
        repr(sorted(slots.items())),
        str(arena),
    ):
        h.update(part.encode())
    return Compiled(
        model,
        tg,
        board,
        cm,
        p,
        sol,
        (train, infer),
        plans,
        replays,
        slots,
        storage,
        mem,
        h.hexdigest()[:16],
        strategy,
        solve_s,
        repairs,
        first_extra,
    )
