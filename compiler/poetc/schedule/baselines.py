"""Heuristic schedules with the same cost model and the same replay check as the MILP.

- ``chen_sqrt``: Chen et al. (2016) sqrt(n) checkpointing. The forward pass is cut into segments of about
  sqrt(n) nodes; only each segment's last output is kept; when the backward pass first needs a dropped
  activation, the segment is recomputed from its checkpoint and kept until the backward pass leaves it. The
  segment length is sqrt(n) unless that does not fit the budget, then the fitting length of least energy.
- ``greedy``: a dynamic-eviction heuristic of the Capuchin / DTR family. Nodes run in order; when RAM would
  overflow, the resident tensor with the lowest DTR score cost / (bytes x staleness) is evicted, by paging it
  out or by dropping it for recomputation, whichever Capuchin's rule says is cheaper in energy (a swap
  costs page-out + page-in, a drop costs the recomputation); a missing input is paged back in or recomputed.
  A persistent tensor on storage (a load node) is dropped and re-read, never paged.
Both see the problem with the RAM homes of its persistent tensors already chosen (``Problem.with_ram_homes``;
``strategies`` chooses them).
"""

from __future__ import annotations

import math
from collections import Counter

from .problem import Problem
from .program import Instr, Op, Program, Schedule, finalize, from_compute_sets, lower
from .simulate import ScheduleError, replay


def chen_segments(p: Problem, seg_len: int) -> Schedule:
    F = p.n_forward or p.T
    # persistent tensors (load nodes) are not segmented: each is loaded once and kept while it is read
    fwd = [i for i in range(F) if p.mem[i] > 0 and not p.is_load[i]]
    segments = [fwd[k : k + seg_len] for k in range(0, len(fwd), seg_len)]
    seg_of = {i: s for s, seg in enumerate(segments) for i in seg}
    # segment ends are checkpoints, and so is whatever may not be recomputed (the input data)
    checkpoint = {seg[-1] for seg in segments} | {i for i in fwd if p.last_stage[i] < p.last_use[i]}
    sets: list[list[int]] = [[t] for t in range(F)]
    recomputed: set[int] = set()
    for t in range(F, p.T):
        pre: list[int] = []
        for a in sorted(set(p.inputs[t])):
            if a in seg_of and a not in checkpoint and a not in recomputed:
                seg = segments[seg_of[a]]
                for n in seg[: seg.index(a) + 1]:
                    if n not in checkpoint and n not in recomputed:
                        pre.append(n)
                        recomputed.add(n)
        sets.append([*sorted(set(pre)), t])
    return from_compute_sets(p, sets, "chen-sqrt")


def chen_sqrt(p: Problem) -> tuple[Program | None, str]:
    F = len([i for i in range(p.n_forward or p.T) if p.mem[i] > 0 and not p.is_load[i]])
    first = max(1, round(math.sqrt(F)))
    best: tuple[float, Program] | None = None
    why = ""
    for seg_len in [first, *[k for k in range(1, F + 1) if k != first]]:
        prog = lower(p, chen_segments(p, seg_len))
        try:
            r = replay(p, prog, budget=p.budget)
        except ScheduleError as e:
            why = why or str(e)
            continue
        if p.deadline_s is not None and r.time_s > p.deadline_s:
            why = why or f"takes {r.time_s:.3g} s, over the deadline"
            continue
        if seg_len == first:
            return prog, f"segments of {seg_len}"
        if best is None or r.energy_j < best[0]:
            best = (r.energy_j, prog)
    if best is None:
        return None, f"no segment length fits ({why})"
    return best[1], "sqrt(n) segments do not fit; least-energy segment length that does"


class _Greedy:
    def __init__(self, p: Problem, shallow_only: bool = False) -> None:
        self.p = p
        self.shallow_only = shallow_only  # drop only tensors whose recomputation needs no other recomputation
        self.code: list[Instr] = []
        self.resident: dict[int, int] = {}  # node -> last access (instruction count)
        self.stored: set[int] = set()
        self.used = 0
        self.ran = [0] * p.T
        self.clock = 0
        self.stage = 0  # the stage instructions are emitted in
        self.frontier = 0  # uses before this node are over
        # tensors the node being run (and the nodes it recomputes on the way) needs: a count, because a nested
        # recomputation pins and unpins an input its caller has pinned too
        self.pinned: Counter[int] = Counter()
        self.uses = [sorted(c) for c in p.consumers]
        self.update_ran: set[int] = set()
        self.dropped_readers: dict[
            int, set[int]
        ] = {}  # input -> dropped tensors that need it to be recomputed
        self.blocked_by: dict[int, list[int]] = {}
        for u, readers in p.updates:
            for r in readers:
                self.blocked_by.setdefault(r, []).append(u)

    def next_use(self, i: int, depth: int = 0) -> int | None:
        """The next stage (from the frontier on) that needs i: a reader's own stage, or the next use of a
        dropped reader that will have to be recomputed from i."""
        nu = None
        for j in self.uses[i]:
            if j >= self.frontier:
                nu = j
                break
        if depth < 20:
            for d in self.dropped_readers.get(i, ()):
                dn = self.next_use(d, depth + 1) if d not in self.resident else None
                if dn is not None and (nu is None or dn < nu):
                    nu = dn
        return nu

    def can_recompute(self, i: int, at: int, depth: int = 0) -> bool:
        """Whether i could be recomputed in stage ``at`` (no in-place update of what it reads before then)."""
        if (
            depth > 50
            or at > self.p.last_stage[i]
            or any(u in self.update_ran for u in self.blocked_by.get(i, ()))
        ):
            return False
        return all(
            self.p.mem[u] == 0
            or u in self.resident
            or u in self.stored
            or self.can_recompute(u, at, depth + 1)
            for u in set(self.p.inputs[i])
        )

    def shallow(self, i: int) -> bool:
        """Whether recomputing i now would need no further recomputation: every input is resident, paged out,
        or a persistent tensor (re-read from its home). Dropping a tensor whose recomputation needs dropped
        tensors builds chains that pin the whole chain at once when it is finally recomputed."""
        p = self.p
        return all(
            p.mem[u] == 0 or u in self.resident or u in self.stored or not p.pageable[u]
            for u in set(p.inputs[i])
        )

    def recompute_cost(self, i: int) -> float:
        p = self.p
        c = float(p.compute_j[i])
        for u in set(p.inputs[i]):
            if p.mem[u] > 0 and u not in self.resident:
                c += float(p.page_in_j[u]) if u in self.stored else float(p.compute_j[u])
        return c

    def emit(self, op: Op, i: int) -> None:
        self.code.append(Instr(op, i, self.stage))
        self.clock += 1

    def make_space(self, need: int) -> None:
        p = self.p
        while self.used + need > p.budget:
            best = None
            for v, last in self.resident.items():
                if v in self.pinned:
                    continue
                nu = self.next_use(v)
                if nu is None:
                    self.free(v)
                    best = None
                    break
                if p.pageable[v]:
                    swap = (0.0 if v in self.stored else float(p.page_out_j[v])) + float(p.page_in_j[v])
                else:  # a persistent tensor: dropped and re-read from its master copy, never paged
                    swap = math.inf
                drop = (
                    self.recompute_cost(v)
                    if self.can_recompute(v, nu) and (not self.shallow_only or self.shallow(v))
                    else math.inf
                )
                cost = min(swap, drop)
                if cost == math.inf:
                    continue  # can be neither paged nor recomputed
                stale = max(1, self.clock - last)
                score = cost / (float(p.mem[v]) * stale)
                if best is None or score < best[0]:
                    best = (score, v, swap <= drop)
            else:
                if best is None:
                    raise _NoFit(f"cannot make room for {need} B at stage {self.stage}")
                _, v, page = best
                if page and v not in self.stored:
                    self.emit(Op.PAGE_OUT, v)
                    self.stored.add(v)
                if not page:
                    for u in set(p.inputs[v]):
                        if p.mem[u] > 0:
                            self.dropped_readers.setdefault(u, set()).add(v)
                self.free(v)

    def free(self, v: int) -> None:
        self.emit(Op.FREE, v)
        self.used -= int(self.p.mem[v])
        del self.resident[v]

    def materialize(self, u: int) -> None:
        p = self.p
        if u in self.resident or p.mem[u] == 0:
            return
        if u in self.stored:
            self.make_space(int(p.mem[u]))
            self.emit(Op.PAGE_IN, u)
            self.resident[u] = self.clock
            self.used += int(p.mem[u])
            return
        if not self.can_recompute(u, self.stage):
            raise _NoFit(f"{p.names[u]} was dropped but can no longer be recomputed at stage {self.stage}")
        self.run(u)

    def run(self, k: int) -> None:
        p = self.p
        ins = sorted(set(p.inputs[k]))
        self.pinned[k] += 1
        for u in ins:
            self.pinned[u] += 1
        for u in ins:
            self.materialize(u)
        self.make_space(int(p.mem[k]))
        self.emit(Op.RECOMPUTE if self.ran[k] else Op.RUN, k)
        self.ran[k] += 1
        if any(k == u for u, _ in p.updates):
            self.update_ran.add(k)
        if p.mem[k] > 0:
            self.resident[k] = self.clock
            self.used += int(p.mem[k])
        for u in ins:
            if u in self.resident:
                self.resident[u] = self.clock
        for u in (*ins, k):
            self.pinned[u] -= 1
            if not self.pinned[u]:
                del self.pinned[u]

    def release_dead(self) -> None:
        for v in list(self.resident):
            if v not in self.pinned and self.next_use(v) is None:
                self.free(v)


class _NoFit(Exception):
    pass


def greedy(p: Problem) -> tuple[Program | None, str]:
    """The greedy schedule, run twice: dropping any tensor it can recompute, and dropping only those whose
    recomputation needs no other (deep drops save energy on chains of cheap nodes, but a long recomputation
    chain pins every tensor on it at once and can stop fitting: ResNet-8 in 256 KB); the fitting one of
    least energy."""
    found: list[tuple[float, Program]] = []
    why = ""
    for shallow in (False, True):
        prog, msg = _greedy(p, shallow)
        if prog is None:
            why = why or msg
            continue
        try:
            found.append((replay(p, prog).energy_j, prog))
        except ScheduleError as e:
            why = why or str(e)
    if not found:
        return None, why
    return min(found, key=lambda f: f[0])[1], "DTR score, Capuchin swap-or-drop"


def _greedy(p: Problem, shallow_only: bool) -> tuple[Program | None, str]:
    g = _Greedy(p, shallow_only)
    try:
        for t in range(p.T):
            g.stage = g.frontier = t
            g.release_dead()
            g.run(t)
            g.frontier = t + 1
            g.release_dead()
    except _NoFit as e:
        return None, str(e)
    for v in list(g.resident):
        g.free(v)
    return finalize(p, Program("train", tuple(g.code), tuple(range(p.T)))), ""
