"""Static memory plan: one arena offset for every residency interval of every tensor.

Algorithm. Each allocating instruction (RUN/RECOMPUTE of a node with an arena output, PAGE_IN, LOAD) opens an interval
that lasts until the tensor's FREE (or the program's end). Two intervals that are live at the same instruction
must not share bytes; intervals that never coexist may. Placement is greedy first-fit, as in TFLM's
greedy_memory_planner: intervals are taken in some order and each is put at the lowest aligned offset that
does not collide with an already placed interval live at the same time. Several orders are tried (largest
first, earliest first, largest size x lifetime first, longest first, then size-biased random orders from a
fixed seed), each with first-fit and best-fit gaps, and the smallest arena wins; the search stops as soon as a
plan reaches the live peak, which no plan can beat. A tensor recomputed or paged in
later may come back at a different offset; the runtime follows it. ``check`` is a brute-force pairwise overlap
check used in tests and after every plan; ``timeline`` prints the arena over the program.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PoetcError
from .cost import PAGE_CRC_BYTES
from .program import Op, Program

ALIGN = 8
RANDOM_ORDERS = 64
# two-ended placement (``plan(..., ceiling=)``, and the greedy scheduler's online allocator): tensors of at least
# this many bytes go as high under the ceiling as they fit, smaller ones as low as they fit, so small long-lived
# tensors (parameters, statistics) do not split the room large activations need
BIG_BYTES = 4096


@dataclass(frozen=True)
class Interval:
    node: int  # whose output tensor
    start: int  # allocating instruction
    end: int  # instruction that frees it (exclusive), or len(program)
    size: int
    offset: int = -1


@dataclass(frozen=True)
class MemPlan:
    program: str
    intervals: tuple[Interval, ...]
    offsets: tuple[int, ...]  # per instruction: arena offset for allocating instructions, else -1
    arena_bytes: int
    live_peak_bytes: int  # max over instructions of bytes live (a lower bound for any plan)
    order: str  # which placement order won

    @property
    def fragmentation_bytes(self) -> int:
        return self.arena_bytes - self.live_peak_bytes


def aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def intervals(prog: Program, mem: np.ndarray) -> list[Interval]:
    open_: dict[int, tuple[int, int]] = {}
    out: list[Interval] = []
    for pc, ins in enumerate(prog.instrs):
        size = int(mem[ins.node])
        if not size or ins.node in prog.ram_homes:
            continue
        if ins.op in (Op.RUN, Op.RECOMPUTE, Op.PAGE_IN, Op.LOAD):
            if ins.node in open_:
                raise PoetcError(f"{prog.name} program: node {ins.node} allocated twice (instruction {pc})")
            open_[ins.node] = (pc, size)
        elif ins.op == Op.FREE:
            start, sz = open_.pop(ins.node)
            out.append(Interval(ins.node, start, pc, sz))
    for node, (start, sz) in open_.items():
        out.append(Interval(node, start, len(prog.instrs), sz))
    return sorted(out, key=lambda iv: iv.start)


def _place(ivs: list[Interval], order: list[int], best_fit: bool = False) -> tuple[list[int], int]:
    """Place intervals in ``order``: each at the lowest free gap (first fit) or the tightest one (best fit)."""
    offsets = [-1] * len(ivs)
    placed: list[int] = []
    top = 0
    for k in order:
        a = ivs[k]
        size = aligned(a.size)
        busy = sorted(
            (offsets[j], offsets[j] + aligned(ivs[j].size))
            for j in placed
            if ivs[j].start < a.end and a.start < ivs[j].end
        )
        off, chosen, slack = 0, -1, None
        for lo, hi in busy:
            if off + size <= lo:
                if not best_fit:
                    chosen = off
                    break
                if slack is None or lo - off - size < slack:
                    chosen, slack = off, lo - off - size
            off = max(off, hi)
        if chosen < 0:
            chosen = off
        offsets[k] = chosen
        placed.append(k)
        top = max(top, chosen + size)
    return offsets, top


def gap(busy: list[tuple[int, int]], size: int, ceiling: int | None) -> int | None:
    """Where ``size`` bytes go among the ``busy`` spans (sorted by start): a large block as high under
    ``ceiling`` as it fits, anything else at the lowest fit; None when a large block fits nowhere under it.
    Offsets are multiples of ALIGN when ``size`` and the spans are (a ceiling that is not counts as the multiple
    below it)."""
    if ceiling is None or size < BIG_BYTES:
        off = 0
        for lo, hi in busy:
            if off + size <= lo:
                break
            off = max(off, hi)
        return off if ceiling is None or off + size <= ceiling else None
    top = ceiling // ALIGN * ALIGN
    for lo, hi in sorted(busy, key=lambda b: -b[1]):
        if hi + size <= top:
            return top - size
        top = min(top, lo)
    return top - size if top >= size else None


def _place_two_ended(ivs: list[Interval], ceiling: int) -> tuple[list[int], int] | None:
    """Place intervals in program order, large ones from ``ceiling`` down, small ones from 0 up (``gap``)."""
    offsets = [-1] * len(ivs)
    top = 0
    for k in sorted(range(len(ivs)), key=lambda k: ivs[k].start):
        a = ivs[k]
        size = aligned(a.size)
        busy = sorted(
            (offsets[j], offsets[j] + aligned(ivs[j].size))
            for j in range(len(ivs))
            if offsets[j] >= 0 and ivs[j].start < a.end and a.start < ivs[j].end
        )
        at = gap(busy, size, ceiling)
        if at is None:
            return None
        offsets[k] = at
        top = max(top, at + size)
    return offsets, top


def live_peak(ivs: list[Interval], n_instrs: int) -> int:
    delta = np.zeros(n_instrs + 2, dtype=np.int64)
    for iv in ivs:
        delta[iv.start] += aligned(iv.size)
        delta[iv.end] -= aligned(iv.size)
    return int(np.cumsum(delta).max(initial=0))


def plan(prog: Program, mem: np.ndarray, ceiling: int | None = None) -> MemPlan:
    """The smallest arena plan found; ``ceiling`` (the arena budget the schedule was made for) adds the
    two-ended placement the greedy scheduler allocates with, which fits under it whenever the greedy's did."""
    ivs = intervals(prog, mem)
    n = len(ivs)
    orders = {
        "largest-first": sorted(range(n), key=lambda k: (-ivs[k].size, ivs[k].start)),
        "earliest-first": sorted(range(n), key=lambda k: (ivs[k].start, -ivs[k].size)),
        "area-first": sorted(
            range(n), key=lambda k: (-ivs[k].size * (ivs[k].end - ivs[k].start), ivs[k].start)
        ),
        "longest-first": sorted(range(n), key=lambda k: (-(ivs[k].end - ivs[k].start), -ivs[k].size)),
    }
    peak = live_peak(ivs, len(prog.instrs))
    best: tuple[int, str, list[int]] | None = None
    rng = np.random.default_rng(0)  # deterministic: the same program always gets the same plan
    candidates = [(name, order, fit) for name, order in orders.items() for fit in (False, True)]
    for r in range(RANDOM_ORDERS):  # size-biased random orders, kept only if they beat the fixed ones
        jitter = rng.uniform(0.6, 1.4, size=n)
        candidates.append(
            (f"random-{r}", sorted(range(n), key=lambda k: -ivs[k].size * jitter[k]), bool(r % 2))
        )
    for name, order, fit in candidates:
        offs, top = _place(ivs, order, fit)
        if best is None or top < best[0]:
            best = (top, name + (" best-fit" if fit else ""), offs)
        if best[0] <= peak:
            break  # as small as any plan can be
    if ceiling is not None and (best is None or best[0] > peak):
        two = _place_two_ended(ivs, ceiling)
        if two is not None and (best is None or two[1] < best[0]):
            best = (two[1], "two-ended", two[0])
    top, name, offs = best if best else (0, "empty", [])
    placed = tuple(Interval(iv.node, iv.start, iv.end, iv.size, o) for iv, o in zip(ivs, offs, strict=True))
    per_instr = [-1] * len(prog.instrs)
    for iv in placed:
        per_instr[iv.start] = iv.offset
    result = MemPlan(prog.name, placed, tuple(per_instr), top, peak, name)
    check(result)
    return result


def check(mp: MemPlan) -> None:
    """Brute force: every pair of intervals live at the same time must occupy disjoint bytes."""
    ivs = mp.intervals
    for a in ivs:
        if a.offset < 0 or a.offset % ALIGN or a.offset + a.size > mp.arena_bytes:
            raise AssertionError(f"{mp.program}: interval of node {a.node} at {a.offset} outside the arena")
    for x in range(len(ivs)):
        a = ivs[x]
        for y in range(x + 1, len(ivs)):
            b = ivs[y]
            if (
                a.start < b.end
                and b.start < a.end
                and a.offset < b.offset + b.size
                and b.offset < a.offset + a.size
            ):
                raise AssertionError(
                    f"{mp.program}: nodes {a.node} [{a.start},{a.end}) and {b.node} [{b.start},{b.end}) overlap "
                    f"in the arena at {max(a.offset, b.offset)}"
                )


def storage_slots(prog: Program, mem: np.ndarray, masters: tuple[int, ...] = ()) -> dict[int, int]:
    """A storage address for every tensor that lives on storage (data + CRC32): first the master copies of the
    storage-homed persistent tensors (``masters``, load nodes, in order), then every tensor the program pages
    out, packed in first-use order."""
    slots: dict[int, int] = {}
    addr = 0

    def take(i: int) -> None:
        nonlocal addr
        slots[i] = addr
        addr += (int(mem[i]) + PAGE_CRC_BYTES + 3) // 4 * 4

    for i in masters:
        take(i)
    for ins in prog.instrs:
        if ins.op == Op.PAGE_OUT and ins.node not in slots:
            take(ins.node)
    return slots


def storage_bytes(slots: dict[int, int], mem: np.ndarray) -> int:
    return max((a + (int(mem[n]) + PAGE_CRC_BYTES + 3) // 4 * 4 for n, a in slots.items()), default=0)


def timeline(mp: MemPlan, names: list[str], width: int = 72) -> str:
    """ASCII picture of the arena: one row per interval, columns = instructions (scaled to ``width``)."""
    n = max((iv.end for iv in mp.intervals), default=0)
    if n == 0:
        return f"{mp.program}: empty arena\n"
    scale = max(1, -(-n // width))
    lines = [f"{mp.program}: arena {mp.arena_bytes} B (live peak {mp.live_peak_bytes} B, {mp.order})"]
    for iv in sorted(mp.intervals, key=lambda v: (v.offset, v.start)):
        row = "".join(
            "#" if iv.start <= c * scale < iv.end or (iv.start // scale == c) else "."
            for c in range(-(-n // scale))
        )
        lines.append(f"{iv.offset:>8} {iv.size:>8} {row} {names[iv.node]}")
    return "\n".join(lines) + "\n"


def flash_wear(
    prog: Program, slots: dict[int, int], mem: np.ndarray, page_bytes: int, steps: int = 12, warmup: int = 4
) -> float:
    """Erases per step of the most-erased physical page when the storage is the internal-flash pager
    (firmware/cortexm/flashpager.c): n logical pages over n + 1 physical ones, every write of a logical page
    erases the spare page, programs it and makes the old one the spare. Replays the program's page-outs and
    write-backs (data, then the 4-byte CRC: a second write) for ``steps`` steps and measures the steps after
    ``warmup``. Rated endurance / this = the steps the flash lasts."""
    if page_bytes <= 0:
        raise ValueError("page_bytes must be positive")
    n = max(1, -(-storage_bytes(slots, mem) // page_bytes))
    where = list(range(n))  # logical page -> physical page
    spare = n
    erases = np.zeros(n + 1, dtype=np.int64)
    writes: list[tuple[int, int]] = []
    for ins in prog.instrs:
        if ins.op in (Op.PAGE_OUT, Op.STORE):
            a, size = slots[ins.node], int(mem[ins.node])
            writes += [(a, size), (a + size, PAGE_CRC_BYTES)]
    before = erases.copy()
    for step in range(steps):
        if step == warmup:
            before = erases.copy()
        for addr, size in writes:
            for page in range(addr // page_bytes, (addr + size - 1) // page_bytes + 1):
                erases[spare] += 1
                where[page], spare = spare, where[page]
    measured = max(1, steps - warmup)
    return float((erases - before).max()) / measured
