"""The compile pipeline: model -> training graph -> cost -> schedule -> programs -> memory plan.

Each step is one module; this file only wires them and does the RAM accounting that ties the schedule's
budget to the board: the budget covers parameters, inputs, labels, the loss, runtime tables, the link's frame
buffers, the port's own buffers and the stack, and what is left is the arena the schedule may use.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from .boards import Board
from .errors import PoetcError
from .graph import autodiff
from .graph.autodiff import TrainingGraph
from .graph.ir import Model, Role
from .graph.options import TrainingOptions, layers_with_params, select_trainable
from .schedule import cost, memplan, problem, program, simulate, strategies, waits
from .schedule.cost import CostModel
from .schedule.memplan import MemPlan
from .schedule.problem import Problem
from .schedule.program import Program, Schedule
from .schedule.simulate import Replay
from .schedule.strategies import Solution, SolveOptions

PARAM_HOMES = ("auto", "ram", "storage")


@dataclass(frozen=True)
class MemoryReport:
    budget: int  # the RAM budget (--ram, or the board's RAM)
    params: int  # parameters, optimizer and BatchNorm state homed in RAM
    io: int  # input batch, labels, loss
    tables: int  # runtime RAM tables: tensor locations and write numbers, per-node tick counters
    link: int  # frame buffers of the link
    port: int  # the port's own buffers
    stack: int
    arena: int
    params_flash: int = 0  # frozen parameters read in place from flash (no RAM)
    params_storage: int = 0  # master copies on storage (RAM only while loaded, inside the arena)

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
            ("parameters in flash (not RAM)", self.params_flash),
            ("parameters on storage (not RAM)", self.params_storage),
        ]


def param_homes(tg: TrainingGraph, mode: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(persistent tensors whose home the schedule chooses, frozen parameters read in place from flash).

    ``ram``: neither (every parameter in RAM, as poetc always did); ``auto``: trainable parameters and their
    optimizer state are scheduled, frozen ones stay in flash, and so do the running statistics of a frozen
    BatchNorm (constants too); ``storage``: every parameter and optimizer state lives on storage and is loaded
    when needed (none in RAM, none in flash). Running statistics that training updates stay in RAM (a few
    floats per channel)."""
    if mode not in PARAM_HOMES:
        raise PoetcError(f"--params {mode!r}: choose one of {', '.join(PARAM_HOMES)}")
    trainable = tuple(tg.params)
    frozen = tuple(tg.frozen)
    opt = tuple(tg.opt_state.values())
    constant_state = tuple(
        t.name
        for t in tg.graph.by_role(Role.STATE)
        if t.name not in tg.state_updates and tg.graph.consumers[t.name]
    )
    if mode == "ram":
        return (), ()
    if mode == "auto":
        return trainable + opt, frozen + constant_state
    return trainable + frozen + opt, ()


def fixed_memory(
    tg: TrainingGraph, board: Board, budget: int, scheduled: tuple[str, ...] = (), flash: tuple[str, ...] = ()
) -> MemoryReport:
    """What the arena cannot use. ``scheduled`` persistent tensors are the schedule's (inside its budget);
    ``flash`` parameters take no RAM."""
    g = tg.graph
    ptr = 8 if board.core == "host" or board.core.startswith("cortex-a") else 4
    elsewhere = set(scheduled) | set(flash)
    params = sum(
        t.nbytes
        for t in g.tensors.values()
        if t.role in (Role.PARAM, Role.STATE, Role.OPT_STATE)
        if t.name not in elsewhere
    )
    io = sum(t.nbytes for t in g.tensors.values() if t.role in (Role.INPUT, Role.LABEL, Role.LOSS))
    tables = (ptr + 4) * len(g.tensors) + 8 * len(g.nodes)  # loc[] and wgen[] per tensor, ticks per node
    # interp.c's transfers in flight: POET_MAX_XFERS slots of a poet_xfer (address, buffer pointer, length,
    # trailer, flags, status, port state) + tensor id and busy flag, aligned: 28 B each as arm-none-eabi-gcc lays
    # them out (the nRF52840 image's `xfers` is 112 B), 48 B with 8-byte pointers; and its write counter
    tables += waits.MAX_QUEUE * (28 if ptr == 4 else 48) + 4
    link = 2 * board.frame_max_bytes + 8
    in_flash = sum(g.tensor(n).nbytes for n in flash)
    return MemoryReport(
        budget, params, io, tables, link, board.port_ram_bytes, board.stack_bytes, 0, in_flash
    )


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
    flash: tuple[str, ...] = ()  # frozen parameters read in place from flash
    param_homes: str = "auto"  # --params: where parameters may live (param_homes)

    @property
    def fixed_bytes(self) -> int:
        """RAM outside the schedule's budget: the fixed part without the parameters the schedule keeps in RAM
        (those are in the replay's peak)."""
        return self.memory.fixed - int(sum(int(self.problem.mem[i]) for i in self.ram_homes))

    @property
    def ram_homes(self) -> frozenset[int]:
        """Load nodes of the problem whose tensors the schedule keeps in RAM."""
        return self.programs[0].ram_homes

    def home(self, tensor: str) -> str:
        """Where a parameter or optimizer tensor lives: "flash", "storage" or "ram"."""
        if tensor in self.flash:
            return "flash"
        k = self.problem.tensor_names.index(tensor) if tensor in self.problem.tensor_names else -1
        if k >= 0 and self.problem.is_load[k] and k not in self.ram_homes:
            return "storage"
        return "ram"

    training: TrainingOptions = TrainingOptions()  # what trains and how (recorded in the manifest)

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
    if not (v > 0 and math.isfinite(v)):  # NaN and infinity too
        raise PoetcError(f"bad byte size {text!r}: must be a positive, finite number")
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
    if not (v > 0 and math.isfinite(v)):  # NaN and infinity too
        raise PoetcError(f"bad deadline {text!r}: must be a positive, finite number")
    return v


@dataclass(frozen=True)
class Planned:
    """Everything up to the scheduling problem: the graph, its costs and the RAM left for the arena."""

    tg: TrainingGraph
    cost: CostModel
    fixed: MemoryReport
    problem: Problem
    flash: tuple[str, ...] = ()  # frozen parameters read in place from flash
    training: TrainingOptions = TrainingOptions()  # as planned (``--train auto`` resolved to names)
    params: str = "auto"  # --params: where parameters may live (param_homes)


def plan(
    model: Model,
    board: Board,
    ram: int | None = None,
    deadline: str | None = None,
    say: Callable[[str], None] | None = None,
    profile: Mapping[str, float] | None = None,
    profile_source: str = "",
    training: TrainingOptions = TrainingOptions(),
    params: str = "auto",
    overlap: bool = True,
) -> Planned:
    """``profile``: measured seconds per node name (``poetc profile``) replacing the FLOP estimates.
    ``overlap``: use the board's overlapping pager in the time model (False: ``--no-overlap``, the core waits for
    every transfer).
    ``training``: what trains and how (``--train``, ``--bn``, ``--optimizer``, ``--weight-decay``);
    ``params``: where parameters may live (``param_homes``). ``--train auto`` is resolved here
    (``resolve_train_auto``); the plan records the parameters it chose."""
    say = say or (lambda s: None)
    budget = ram if ram is not None else board.ram_bytes
    if budget > board.ram_bytes:
        raise PoetcError(f"--ram {budget} exceeds the RAM of board {board.name} ({board.ram_bytes} bytes)")
    if training.train == "auto":
        training = resolve_train_auto(
            model, board, budget, deadline, say, profile, profile_source, training, params, overlap=overlap
        )
    return _plan(model, board, budget, deadline, say, profile, profile_source, training, params, overlap)


def resolve_train_auto(
    model: Model,
    board: Board,
    budget: int,
    deadline: str | None,
    say: Callable[[str], None],
    profile: Mapping[str, float] | None,
    profile_source: str,
    training: TrainingOptions,
    params: str,
    time_limit_s: float = 20.0,
    overlap: bool = True,
) -> TrainingOptions:
    """``--train auto``: the largest K such that training the last K layers with parameters fits the RAM budget
    (and the deadline), by bisection on K (more layers never need less RAM). A K fits when a heuristic finds a
    schedule, or else POET's MILP within ``time_limit_s``. Returns the options with the chosen names."""
    layers = layers_with_params(model)
    if not layers:
        raise PoetcError(f"--train auto: {model.source} has no parameters")
    quiet = lambda s: None  # noqa: E731

    def fits(k: int) -> TrainingOptions | None:
        opts = replace(training, train=select_trainable(model, f"last:{k}"))
        try:
            pl = _plan(model, board, budget, deadline, quiet, profile, profile_source, opts, params, overlap)
        except PoetcError:
            return None
        p = pl.problem
        if strategies.feasible_heuristics(p):
            return opts
        sol = strategies.run("poet", p, SolveOptions(time_limit_s=time_limit_s, warm_start=False))
        return opts if sol.ok else None

    lo, hi = 0, len(layers)  # the largest fitting K lies in [lo, hi]; K = 0 stands for "none fits"
    best = fits(hi)
    if best is None:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            got = fits(mid)
            if got is not None:
                lo, best = mid, got
            else:
                hi = mid
        hi = lo
    if best is None:
        raise PoetcError(
            f"--train auto: not even the last layer with parameters ({layers[-1][0]}) trains in a RAM budget of "
            f"{budget} bytes on {board.name}; raise --ram"
        )
    n = sum(int(model.params[p].size) for p in best.train)
    say(
        f"--train auto: the last {hi} of {len(layers)} layers with parameters train ({n} parameters, "
        f"{len(best.train)} tensors) in a RAM budget of {budget} bytes"
    )
    return best


def _plan(
    model: Model,
    board: Board,
    budget: int,
    deadline: str | None,
    say: Callable[[str], None],
    profile: Mapping[str, float] | None,
    profile_source: str,
    training: TrainingOptions,
    params: str,
    overlap: bool = True,
) -> Planned:
    tg = autodiff.build(model, training)
    say(
        f"training graph: {len(tg.graph.nodes)} nodes ({tg.n_forward} forward), {len(tg.params)} trainable "
        f"and {len(tg.frozen)} frozen parameter tensors; optimizer {training.optimizer}"
    )
    if profile is not None:
        missing = [n.name for n in tg.graph.nodes if n.name not in profile]
        if missing:
            raise PoetcError(
                f"profile {profile_source}: no measurement for node {missing[0]!r} ({len(missing)} of "
                f"{len(tg.graph.nodes)} nodes missing); profile this model and batch size again"
            )
    cm = cost.build(tg, board, profile, profile_source)
    scheduled, flash = param_homes(tg, params)
    fixed = fixed_memory(tg, board, budget, scheduled, flash)
    p = problem.from_training(
        tg,
        cm,
        max(0, fixed.arena_budget),
        parse_deadline(deadline, cm.floor_s),
        board.storage_bytes,
        persistent=scheduled,
        storage_only=params == "storage",
        overlap=board.pager_overlap and overlap,
    )
    if fixed.arena_budget < p.min_budget():
        need = fixed.fixed + p.min_budget()
        raise PoetcError(
            f"board {board.name}: parameters and fixed buffers need {fixed.fixed} bytes and the largest node "
            f"{p.min_budget()} more with its inputs, so no schedule fits a RAM budget of {budget} bytes; the "
            f"smallest budget that could fit is {need} bytes (a lower bound)"
            + (f", over the board's {board.ram_bytes}" if need > board.ram_bytes else "")
        )
    return Planned(tg, cm, fixed, p, flash, training, params)


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
    params: str = "auto",
    watch: Callable[[strategies.Progress], None] | None = None,
    training: TrainingOptions = TrainingOptions(),
    overlap: bool = True,
) -> Compiled:
    """``progress`` gets one-line messages, ``watch`` the solver's progress records (see ``strategies.run``).
    ``overlap``: False times paging as if the core waited for every transfer (``--no-overlap``)."""
    say = progress or (lambda s: None)
    pl = plan(model, board, ram, deadline, say, profile, profile_source, training, params, overlap)
    return compile_planned(pl, model, board, strategy, opts, say, watch=watch)


def compile_planned(
    pl: Planned,
    model: Model,
    board: Board,
    strategy: str = "poet",
    opts: SolveOptions = SolveOptions(),
    progress: Callable[[str], None] | None = None,
    smallest: bool = True,
    watch: Callable[[strategies.Progress], None] | None = None,
) -> Compiled:
    """Schedule a planned model with ``strategy`` and lay out its arena: what ``poetc build`` compiles and what
    every ``poetc solve`` row shows. Raises NoSchedule when the strategy's schedule does not fit (the budget,
    the deadline, the arena after fragmentation, the storage); ``smallest`` also searches the smallest RAM
    budget that would fit for the message (a bisection: slow for MILP strategies). ``progress`` gets one-line
    messages, ``watch`` the solver's progress records (see ``strategies.run``). The programs come back with
    their wait points for the board's pager (``waits.insert``), replayed with their arena offsets."""
    say = progress or (lambda s: None)
    tg, cm, fixed, p = pl.tg, pl.cost, pl.fixed, pl.problem
    t0 = time.perf_counter()
    lean = memplan.plan(program.forward_program(tg, p), p.mem)  # inference, every scheduled tensor loaded
    if lean.arena_bytes > p.budget:
        raise NoSchedule(
            f"even inference needs an arena of {lean.arena_bytes} bytes, over the "
            f"{p.budget} left in a RAM budget of {fixed.budget}; smallest feasible RAM budget: "
            f"{fixed.fixed + lean.arena_bytes} bytes or more"
        )
    sol = strategies.run(strategy, p, opts, progress=say, watch=watch)
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
    # The arena honours the budget: if fragmentation pushes the planned arena (beside the parameters the
    # schedule keeps in RAM) over it, re-solve with the budget tightened by the overflow, until the plan fits.
    repairs = 0
    q = p
    shrink, last_over = 0, None  # bytes the next re-solve cuts; the overflow it last saw
    while True:
        train = sol.program
        ram_homes = train.ram_homes
        infer = program.forward_program(tg, p, ram_homes)
        held = int(sum(int(p.mem[i]) for i in ram_homes))
        # the ceiling: the arena budget the schedule was made for (the greedy allocates under it)
        train_plan = memplan.plan(train, p.mem, ceiling=q.budget - held)
        infer_plan = memplan.plan(infer, p.mem)
        arena = max(train_plan.arena_bytes, infer_plan.arena_bytes)
        if arena + held <= p.budget:
            break
        over = arena + held - p.budget
        if repairs == MAX_REPAIRS:
            raise NoSchedule(
                f"the {strategy} schedule's arena ({arena} B) and the {held} B of parameters it keeps in RAM "
                f"exceed the {p.budget} B left for them by fragmentation, still {over} B after {repairs} "
                "re-solves; raise --ram by that much"
            )
        repairs += 1
        if q.budget <= q.min_budget():
            raise NoSchedule(
                f"the arena needs {over} bytes more than the budget leaves, by fragmentation, and the schedule "
                f"cannot shrink below its largest node ({q.min_budget()} B with its inputs); raise --ram by "
                f"{over} bytes"
            )
        # tighten by the overflow, twice as much each time a re-solve did not shrink it (the same schedule again,
        # say store-all, whose live bytes fit the tighter budget but whose layout does not); if no schedule fits
        # that tight a budget, back off half-way (twice at most): one in between may lay out with less
        # fragmentation
        shrink = over if last_over is None or over < last_over else max(over, 2 * shrink)
        last_over = over
        lo = max(q.min_budget(), q.budget - shrink)
        tries = [lo, (lo + q.budget) // 2, (3 * q.budget + lo) // 4]
        for k, b in enumerate(tries):
            say(
                f"arena {arena} B + {held} B of parameters in RAM exceed the {p.budget} B budget by fragmentation: "
                f"re-solving with {b} B"
            )
            trial = strategies.run(strategy, q.with_budget(b), opts, progress=say, watch=watch)
            if trial.ok or k == len(tries) - 1 or tries[k + 1] >= q.budget:
                break
        if not trial.ok:
            raise NoSchedule(
                f"the {strategy} schedule's arena ({arena} B) exceeds the {p.budget} B left for it by "
                f"fragmentation, and re-solving at arena budgets of {tries[0]} to {b} B failed: {trial.message}; "
                "raise --ram",
                trial,
            )
        q, sol = q.with_budget(b), trial
    solve_s = time.perf_counter() - t0
    train, train_plan = waits.insert(p, train, train_plan, board.pager_queue)
    infer, infer_plan = waits.insert(p, infer, infer_plan, board.pager_queue)
    replays = (
        simulate.replay(p, train, budget=p.budget, offsets=train_plan.offsets),
        simulate.replay(p, infer, budget=p.budget, offsets=infer_plan.offsets),
    )
    plans = (train_plan, infer_plan)
    homes = _homes_summary(p, ram_homes)
    say(
        f"schedule {strategy}: {sol.status}{' (' + sol.message + ')' if sol.message else ''}; peak live "
        f"{replays[0].peak_bytes} B, arena {arena} B ({train_plan.fragmentation_bytes} B fragmentation)"
        + (f"; {homes}" if homes else "")
    )
    masters = tuple(l for l in p.loads if l not in ram_homes)
    slots = memplan.storage_slots(train, p.mem, masters)
    storage = memplan.storage_bytes(slots, p.mem)
    if storage > board.storage_bytes:
        raise NoSchedule(
            f"the {strategy} schedule pages {storage} bytes, over the board's storage of {board.storage_bytes}"
        )
    mem = MemoryReport(
        fixed.budget,
        fixed.params + held,
        fixed.io,
        fixed.tables,
        fixed.link,
        fixed.port,
        fixed.stack,
        arena,
        fixed.params_flash,
        int(sum(int(p.mem[i]) for i in masters)),
    )
    h = hashlib.sha256()
    for part in (
        model.sha256,
        tg.graph.fingerprint(),
        board.name,
        repr(train.instrs),
        repr(infer.instrs),
        repr(sorted(ram_homes)),
        repr(pl.flash),
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
        pl.flash,
        pl.params,
        pl.training,
    )


def _homes_summary(p: Problem, ram_homes: frozenset[int]) -> str:
    """'3 of 8 parameter tensors on storage (70.1 KiB), 5 in RAM' (empty without scheduled homes)."""
    if not p.loads:
        return ""
    on = [l for l in p.loads if l not in ram_homes]
    nbytes = int(sum(int(p.mem[l]) for l in on))
    return (
        f"{len(on)} of {len(p.loads)} parameter and optimizer tensors on storage ({nbytes} B), "
        f"{len(p.loads) - len(on)} in RAM"
    )
