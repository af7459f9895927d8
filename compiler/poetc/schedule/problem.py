"""A scheduling problem: the DAG, sizes, costs and budgets that every strategy sees (and nothing else).

Built from a training graph and its cost model, or directly (benchmark graphs shaped like POET's). Node t is
computed for the first time in stage t. Sizes are arena bytes (0: the output has a static home and is never
scheduled). ``last_stage[i]`` is the last stage in which node i may run (in-place updates run only in their
own stage; readers of an updated tensor not after the update's stage).

Persistent tensors (parameters, optimizer state) whose home the schedule chooses appear as *load nodes*
(``loads``), placed just before their first reader: "computing" a load node reads the tensor's master copy
from storage into RAM (its cost is that read), a later computation re-reads it, and its readers read it like
any node's output. A load node may instead be *homed in RAM* (unless in ``storage_only``): then it never
runs, its bytes are held for the whole step and its readers always find it. When an update node changes a
load node's tensor in place (``writes``), a storage-homed tensor is written back (STORE) right after the
update, at ``store_j``/``store_s``. The floor (one computation of every node, nothing paged) leaves loads
and write-backs out: they are paging, which a schedule with the parameters in RAM avoids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..graph.autodiff import TrainingGraph
from .cost import CostModel


@dataclass(frozen=True)
class Problem:
    names: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]  # data edges (u, v): v reads u's output
    mem: np.ndarray = field(compare=False)  # [T] arena bytes of each output (0: static home)
    compute_j: np.ndarray = field(compare=False)
    compute_s: np.ndarray = field(compare=False)
    page_in_j: np.ndarray = field(compare=False)
    page_in_s: np.ndarray = field(compare=False)
    page_out_j: np.ndarray = field(compare=False)
    page_out_s: np.ndarray = field(compare=False)
    last_stage: tuple[int, ...]  # node i may only run in stages i..last_stage[i]
    budget: int  # arena bytes
    deadline_s: float | None = None  # time of one step (see ``overlap``)
    storage_bytes: int | None = None  # pager capacity (None: unlimited)
    page_overhead: int = 4  # storage bytes added to each paged tensor (its CRC)
    # in-place updates: (update node, nodes that read the updated tensor); the update runs exactly once and
    # none of its readers may run after it
    updates: tuple[tuple[int, tuple[int, ...]], ...] = ()
    outputs: tuple[str, ...] = ()  # output tensor names, for messages (default: the node names)
    n_forward: int = 0  # nodes[:n_forward] are the forward pass (0: unknown)
    # persistent tensors whose home the schedule chooses (see the module doc)
    loads: tuple[int, ...] = ()  # load nodes, in stage order
    storage_only: frozenset[int] = frozenset()  # load nodes that may not be homed in RAM
    writes: tuple[tuple[int, int], ...] = ()  # (update node u, load node l): u changes l's tensor in place
    store_j: tuple[float, ...] = ()  # per entry of ``writes``: writing l's new value back to storage
    store_s: tuple[float, ...] = ()
    ir_node: tuple[int, ...] = ()  # training-graph node of each node (-1: a load node); () = the identity
    # the time model: False, a step takes its compute plus its transfers (the core waits for each transfer);
    # True (a pager with DMA), a stage takes max(its compute, its transfers): transfers serialize on one bus
    # and the core computes meanwhile (``stage_time``)
    overlap: bool = False

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return self.outputs or self.names

    @property
    def T(self) -> int:
        return len(self.names)

    @cached_property
    def inputs(self) -> tuple[tuple[int, ...], ...]:
        out: list[list[int]] = [[] for _ in range(self.T)]
        for u, v in self.edges:
            out[v].append(u)
        return tuple(tuple(x) for x in out)

    @cached_property
    def consumers(self) -> tuple[tuple[int, ...], ...]:
        out: list[list[int]] = [[] for _ in range(self.T)]
        for u, v in self.edges:
            out[u].append(v)
        return tuple(tuple(sorted(x)) for x in out)

    @cached_property
    def last_use(self) -> tuple[int, ...]:
        """The last stage whose frontier node reads node i's output (i itself if nobody does)."""
        return tuple(max(c, default=i) for i, c in enumerate(self.consumers))

    @cached_property
    def horizon(self) -> tuple[int, ...]:
        """The last stage in which node i's output can be of use: its last reader's stage, or later when a
        reader may itself be recomputed later (then i is needed to recompute it)."""
        T = self.T
        h = list(self.last_use)
        for i in range(T - 1, -1, -1):
            for j in self.consumers[i]:
                if self.mem[j] > 0 and self.consumers[j] and self.last_stage[j] > j:
                    h[i] = max(h[i], min(h[j], self.last_stage[j]))
        return tuple(h)

    @cached_property
    def is_load(self) -> np.ndarray:
        out = np.zeros(self.T, dtype=bool)
        out[list(self.loads)] = True
        return out

    @cached_property
    def pageable(self) -> np.ndarray:
        """Outputs the schedule may page out and in: arena tensors other than loaded persistent ones (those are
        re-read from their master copy instead)."""
        return (self.mem > 0) & ~self.is_load

    @cached_property
    def written_by(self) -> dict[int, tuple[int, float, float]]:
        """Load node -> (the update node that changes it, write-back J, write-back s)."""
        return {l: (u, j, s) for (u, l), j, s in zip(self.writes, self.store_j, self.store_s, strict=True)}

    @property
    def floor_j(self) -> float:
        """Every node but the loads computed once, nothing paged: no schedule uses less energy."""
        return float(self.compute_j[~self.is_load].sum())

    @property
    def floor_s(self) -> float:
        return float(self.compute_s[~self.is_load].sum())

    def ram_home_cost(self, ram: frozenset[int] | set[int]) -> tuple[float, float]:
        """Energy and time of the write-backs of the storage-homed tensors, for a choice of RAM homes."""
        j = sum(c for (_, l), c in zip(self.writes, self.store_j, strict=True) if l not in ram)
        t = sum(c for (_, l), c in zip(self.writes, self.store_s, strict=True) if l not in ram)
        return float(j), float(t)

    def with_ram_homes(self, ram: frozenset[int] | set[int]) -> Problem:
        """The problem with the load nodes of ``ram`` homed in RAM: their tensors become static (0 arena bytes,
        nothing to compute), their bytes leave the budget, and they no longer count as loads. Heuristics solve
        this reduced problem; ``finalize`` turns their program back into one of this problem."""
        from dataclasses import replace

        ram = frozenset(ram)
        if not ram:
            return self
        bad = ram & self.storage_only
        if bad:
            raise ValueError(f"load nodes {sorted(bad)} may not be homed in RAM")
        idx = sorted(ram)
        mem = self.mem.copy()
        held = int(mem[idx].sum())
        mem[idx] = 0
        zero = [self.compute_j.copy(), self.compute_s.copy()]
        for a in zero:
            a[idx] = 0.0
        keep = [k for k, (_, l) in enumerate(self.writes) if l not in ram]
        return replace(
            self,
            mem=mem,
            compute_j=zero[0],
            compute_s=zero[1],
            budget=self.budget - held,
            loads=tuple(l for l in self.loads if l not in ram),
            writes=tuple(self.writes[k] for k in keep),
            store_j=tuple(self.store_j[k] for k in keep),
            store_s=tuple(self.store_s[k] for k in keep),
        )

    def min_budget(self) -> int:
        """No schedule can use less arena than the largest node with all its inputs resident."""
        return int(
            max(
                (self.mem[k] + sum(self.mem[u] for u in set(self.inputs[k])) for k in range(self.T)),
                default=0,
            )
        )

    def with_budget(self, budget: int) -> Problem:
        from dataclasses import replace

        return replace(self, budget=int(budget))


def stage_time(compute_s: float, transfer_s: float, overlap: bool) -> float:
    """One stage's time: compute + transfers, or with ``overlap`` the larger of the two (one bus moves the
    stage's transfers one after the other while the core computes)."""
    return max(compute_s, transfer_s) if overlap else compute_s + transfer_s


def _targets(v: object) -> tuple[str, ...]:
    """``TrainingGraph.in_place`` values: one tensor name, or a tuple of them."""
    return v if isinstance(v, tuple) else (str(v),)


def from_training(
    tg: TrainingGraph,
    cost: CostModel,
    budget: int,
    deadline_s: float | None = None,
    storage_bytes: int | None = None,
    persistent: Sequence[str] = (),
    storage_only: bool = False,
    overlap: bool = False,
) -> Problem:
    """The problem of a training graph. ``persistent``: parameters and optimizer state whose home the schedule
    chooses (each becomes a load node right before its first reader); ``storage_only``: none may stay in RAM."""
    g = tg.graph
    N = len(g.nodes)
    first_reader: dict[str, int] = {}
    for name in persistent:
        readers = g.consumers.get(name, ())
        if not readers:
            raise ValueError(f"persistent tensor {name!r} has no reader")
        first_reader[name] = min(readers)
    before: dict[int, list[str]] = {}
    for name in persistent:
        before.setdefault(first_reader[name], []).append(name)
    order: list[tuple[str, int | str]] = []
    for i, n in enumerate(g.nodes):
        for name in sorted(
            before.get(i, ()), key=lambda x: (list(n.inputs).index(x) if x in n.inputs else 99, x)
        ):
            order.append(("load", name))
        order.append(("node", i))
    T = len(order)
    pos = {key: k for k, key in enumerate(order)}
    at = {i: pos[("node", i)] for i in range(N)}
    load_at = {name: pos[("load", name)] for name in persistent}

    mem = np.zeros(T, dtype=np.int64)
    arrays = {k: np.zeros(T) for k in ("cj", "cs", "pij", "pis", "poj", "pos")}
    for i in range(N):
        k = at[i]
        mem[k] = cost.mem[i]
        for key, src in (
            ("cj", cost.compute_j),
            ("cs", cost.compute_s),
            ("pij", cost.page_in_j),
            ("pis", cost.page_in_s),
            ("poj", cost.page_out_j),
            ("pos", cost.page_out_s),
        ):
            arrays[key][k] = src[i]
    for name, k in load_at.items():
        nbytes = g.tensor(name).nbytes
        mem[k] = nbytes
        arrays["cs"][k], arrays["cj"][k] = cost.pager.page_in(nbytes)

    edges = [(at[u], at[v]) for u, v in dict.fromkeys(g.edges)]
    for name, k in load_at.items():
        edges += [(k, at[v]) for v in sorted(set(g.consumers[name]))]

    last = [T - 1] * T
    updates: list[tuple[int, tuple[int, ...]]] = []
    writes: list[tuple[int, int]] = []
    store_j: list[float] = []
    store_s: list[float] = []
    for u, tv in tg.in_place.items():
        targets = _targets(tv)
        last[at[u]] = at[u]
        readers = sorted({at[r] for t in targets for r in g.consumers[t] if r != u})
        updates.append((at[u], tuple(readers)))
        for t in targets:
            if t in load_at:
                last[load_at[t]] = at[u]
                writes.append((at[u], load_at[t]))
                ts, tj = cost.pager.page_out(g.tensor(t).nbytes)
                store_s.append(ts)
                store_j.append(tj)
    for r, u in tg.update_stage.items():
        last[at[r]] = min(last[at[r]], at[u])
    names = tuple(g.nodes[key].name if kind == "node" else f"load:{key}" for kind, key in order)  # type: ignore[index]
    outputs = tuple(g.nodes[key].output if kind == "node" else str(key) for kind, key in order)  # type: ignore[index]
    loads = tuple(sorted(load_at.values()))
    return Problem(
        names=names,
        edges=tuple(dict.fromkeys(edges)),
        mem=mem,
        compute_j=arrays["cj"],
        compute_s=arrays["cs"],
        page_in_j=arrays["pij"],
        page_in_s=arrays["pis"],
        page_out_j=arrays["poj"],
        page_out_s=arrays["pos"],
        last_stage=tuple(last),
        budget=int(budget),
        deadline_s=deadline_s,
        storage_bytes=storage_bytes,
        updates=tuple(updates),
        outputs=outputs,
        n_forward=at[tg.n_forward - 1] + 1 if tg.n_forward else 0,
        loads=loads,
        storage_only=frozenset(loads) if storage_only else frozenset(),
        writes=tuple(writes),
        store_j=tuple(store_j),
        store_s=tuple(store_s),
        ir_node=tuple(key if kind == "node" else -1 for kind, key in order),  # type: ignore[misc]
        overlap=overlap,
    )
