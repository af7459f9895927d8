"""The compile pipeline: model -> training graph -> cost -> schedule -> programs -> memory plan.

Each step is one module; this file only wires them and does the RAM accounting that ties the schedule's
budget to the board: the budget covers parameters, inputs, labels, the loss, runtime tables, the link's frame
buffers, the port's own buffers and the stack, and what is left is the arena the schedule may use.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import autodiff, cost, memplan, schedule, simulate
from .autodiff import TrainingGraph
from .boards import Board
from .cost import CostModel
from .errors import PoetcError
from .frontend import Model
from .ir import Role
from .memplan import MemPlan
from .schedule import Program, Schedule
from .simulate import Replay


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
    schedule: Schedule
    programs: tuple[Program, Program]  # train, infer
    plans: tuple[MemPlan, MemPlan]
    replays: tuple[Replay, Replay]
    slots: dict[int, int] = field(hash=False)
    storage_bytes: int
    memory: MemoryReport
    hash_hex: str
    strategy: str
    solve_s: float

    @property
    def arena_bytes(self) -> int:
        return self.memory.arena


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


Strategy = Callable[[TrainingGraph, CostModel, int], Schedule]


def strategies() -> dict[str, Strategy]:
    return {"store-all": lambda tg, c, budget: schedule.store_all(tg)}


def compile_model(
    model: Model,
    board: Board,
    ram: int | None = None,
    strategy: str = "store-all",
    command: str = "",
    progress: Callable[[str], None] | None = None,
) -> Compiled:
    say = progress or (lambda s: None)
    budget = ram if ram is not None else board.ram_bytes
    if budget > board.ram_bytes:
        raise PoetcError(f"--ram {budget} exceeds the RAM of board {board.name} ({board.ram_bytes} bytes)")
    tg = autodiff.build_training_graph(model)
    say(f"training graph: {len(tg.graph.nodes)} nodes ({tg.n_forward} forward), {len(tg.params)} parameters")
    cm = cost.build(tg, board)
    fixed = fixed_memory(tg, board, budget)
    if fixed.arena_budget <= 0:
        raise PoetcError(
            f"board {board.name}: parameters and fixed buffers need {fixed.fixed} bytes, over the {budget}-byte "
            f"RAM budget before any activation is stored"
        )
    strat = strategies().get(strategy)
    if strat is None:
        raise PoetcError(f"unknown strategy {strategy!r} (known: {', '.join(strategies())})")
    t0 = time.perf_counter()
    sched = strat(tg, cm, fixed.arena_budget)
    solve_s = time.perf_counter() - t0
    train = schedule.lower(tg, sched, cm)
    infer = schedule.forward_program(tg, cm)
    replays = (simulate.replay(tg, train, cm), simulate.replay(tg, infer, cm))
    plans = (memplan.plan(train, cm), memplan.plan(infer, cm))
    arena = max(p.arena_bytes for p in plans)
    say(
        f"schedule {strategy}: peak live {replays[0].peak_bytes} B, arena {arena} B "
        f"({plans[0].fragmentation_bytes} B fragmentation)"
    )
    if arena > fixed.arena_budget:
        need = fixed.fixed + arena
        raise PoetcError(
            f"model needs {need} bytes of RAM with strategy {strategy} (arena {arena} + fixed {fixed.fixed}), "
            f"over the budget of {budget} bytes; the smallest budget that fits this schedule is {need}"
        )
    slots = memplan.storage_slots(train, cm)
    storage = memplan.storage_bytes(slots, cm)
    if storage > board.storage_bytes:
        raise PoetcError(f"schedule pages {storage} bytes, over the board's storage of {board.storage_bytes}")
    mem = MemoryReport(
        budget, fixed.params, fixed.io, fixed.tables, fixed.link, fixed.port, fixed.stack, arena
    )
    h = hashlib.sha256()
    for part in (
        model.sha256,
        tg.graph.fingerprint(),
        board.name,
        repr(train.instrs),
        repr(infer.instrs),
        repr([p.offsets for p in plans]),
        str(arena),
    ):
        h.update(part.encode())
    return Compiled(
        model,
        tg,
        board,
        cm,
        sched,
        (train, infer),
        plans,
        replays,
        slots,
        storage,
        mem,
        h.hexdigest()[:16],
        strategy,
        solve_s,
    )
