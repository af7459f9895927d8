"""A scheduling problem: the DAG, sizes, costs and budgets that every strategy sees (and nothing else).

Built from a training graph and its cost model, or directly (benchmark graphs shaped like POET's). Node t is
computed for the first time in stage t. Sizes are arena bytes (0: the output has a static home and is never
scheduled). ``last_stage[i]`` is the last stage in which node i may run (in-place updates run only in their
own stage; readers of an updated tensor not after the update's stage).
"""

from __future__ import annotations

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
    deadline_s: float | None = None  # compute + paging time of one step
    storage_bytes: int | None = None  # pager capacity (None: unlimited)
    page_overhead: int = 4  # storage bytes added to each paged tensor (its CRC)
    # in-place updates: (update node, nodes that read the updated tensor); the update runs exactly once and
    # none of its readers may run after it
    updates: tuple[tuple[int, tuple[int, ...]], ...] = ()
    outputs: tuple[str, ...] = ()  # output tensor names, for messages (default: the node names)
    n_forward: int = 0  # nodes[:n_forward] are the forward pass (0: unknown)

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

    @property
    def floor_j(self) -> float:
        return float(self.compute_j.sum())

    @property
    def floor_s(self) -> float:
        return float(self.compute_s.sum())

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


def from_training(
    tg: TrainingGraph,
    cost: CostModel,
    budget: int,
    deadline_s: float | None = None,
    storage_bytes: int | None = None,
) -> Problem:
    g = tg.graph
    T = len(g.nodes)
    last = [T - 1] * T
    for u in tg.in_place:
        last[u] = u
    for r, u in tg.update_stage.items():
        last[r] = min(last[r], u)
    updates = tuple(
        (u, tuple(sorted({r for t in ts for r in g.consumers[t] if r != u}))) for u, ts in tg.in_place.items()
    )
    p = Problem(
        names=tuple(n.name for n in g.nodes),
        edges=tuple(dict.fromkeys(g.edges)),
        mem=cost.mem.copy(),
        compute_j=cost.compute_j.copy(),
        compute_s=cost.compute_s.copy(),
        page_in_j=cost.page_in_j.copy(),
        page_in_s=cost.page_in_s.copy(),
        page_out_j=cost.page_out_j.copy(),
        page_out_s=cost.page_out_s.copy(),
        last_stage=tuple(last),
        budget=int(budget),
        deadline_s=deadline_s,
        storage_bytes=storage_bytes,
        updates=updates,
        outputs=tuple(n.output for n in g.nodes),
        n_forward=tg.n_forward,
    )
    return p
