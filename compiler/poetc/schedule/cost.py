"""Cost model: per node compute time and energy, per tensor bytes and paging time and energy.

POET's analytic model (FLOP-based) with the board's constants:
  compute:  tau_i = FLOPs_i / flop_per_s,  E_i = FLOPs_i / flop_per_j
  paging:   t = latency + bytes / bytes_per_s,  E = t * memory_power      (page-in and page-out separately)
A board with a calibrated compute model (the emulated Cortex-M boards: instructions per FLOP and per run, counted
in QEMU for each op, op and shape class, or op family; see boards.py) prices compute by instructions instead:
  compute:  tau_i = (ipf_i * FLOPs_i + ipr_i) * cycles_per_instruction / clock_hz,  E_i = tau_i * compute_power
so the prediction is in the units the target counts. A measured profile (``poetc profile``) may replace the
per-node compute figures.
Sizes are the device's: arena bytes of each node's output (0 when the output has a static home) and the bytes
every step needs outside the arena (parameters, inputs, labels, loss).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..boards import Board
from ..graph import ops
from ..graph.autodiff import TrainingGraph
from ..graph.ir import Role

PAGE_CRC_BYTES = 4  # every paged block carries a CRC32, stored after it


@dataclass(frozen=True)
class PagerCost:
    """The board's storage: a transfer of n bytes (plus its CRC) takes latency + bytes / throughput seconds at
    the memory power."""

    in_latency_s: float
    in_bytes_per_s: float
    out_latency_s: float
    out_bytes_per_s: float
    power_w: float

    def page_in(self, nbytes: int) -> tuple[float, float]:
        """(seconds, joules) to read ``nbytes`` and their CRC."""
        t = self.in_latency_s + (nbytes + PAGE_CRC_BYTES) / self.in_bytes_per_s
        return t, t * self.power_w

    def page_out(self, nbytes: int) -> tuple[float, float]:
        t = self.out_latency_s + (nbytes + PAGE_CRC_BYTES) / self.out_bytes_per_s
        return t, t * self.power_w


@dataclass(frozen=True)
class CostModel:
    flops: np.ndarray  # [T] per node
    compute_s: np.ndarray  # [T]
    compute_j: np.ndarray  # [T]
    mem: np.ndarray  # [T] arena bytes of each node's output (0: static home)
    scratch: np.ndarray  # [T] transient bytes while the node runs
    page_in_s: np.ndarray  # [T]
    page_in_j: np.ndarray
    page_out_s: np.ndarray
    page_out_j: np.ndarray
    static_bytes: int  # parameters + inputs + labels + loss + optimizer state
    param_bytes: int
    source: (
        str  # "flops" (POET's model), "calibrated" (the board's instructions per FLOP) or the profile's path
    )
    pager: PagerCost = field(default_factory=lambda: PagerCost(0.0, 1.0, 0.0, 1.0, 0.0))

    @property
    def T(self) -> int:
        return len(self.flops)

    @property
    def floor_j(self) -> float:
        """Energy of computing every node once with no paging: no schedule can do better."""
        return float(self.compute_j.sum())

    @property
    def floor_s(self) -> float:
        return float(self.compute_s.sum())

    def pageable(self) -> np.ndarray:
        return self.mem > 0


def node_flops(tg: TrainingGraph) -> list[int]:
    g = tg.graph
    out = []
    for n in g.nodes:
        op = ops.get(n.op)
        out.append(int(op.flops(n.attrs, [g.tensor(i).shape for i in n.inputs], g.tensor(n.output).shape)))
    return out


def cost_keys(tg: TrainingGraph, i: int) -> tuple[str, ...]:
    """The keys a calibrated board may price node ``i`` under, most specific first: op.class, op, then for a
    fused op its unfused part's alias.class and alias, family, default."""
    g = tg.graph
    n = g.nodes[i]
    op = ops.get(n.op)
    cls = None
    if op.cost_class is not None:
        cls = op.cost_class(n.attrs, [g.tensor(x).shape for x in n.inputs], g.tensor(n.output).shape)
    keys = []
    for name in (n.op, op.cost_alias):
        if name is not None:
            keys += [f"{name}.{cls}", name] if cls is not None else [name]
    return tuple(dict.fromkeys([*keys, op.family, "default"]))


def calibrated_instructions(tg: TrainingGraph, board: Board, flops: np.ndarray) -> np.ndarray:
    """Instructions per run of every node under the board's calibrated compute model."""
    out = np.zeros(len(flops))
    for i in range(len(flops)):
        keys = cost_keys(tg, i)
        per_flop = next(board.instructions_per_flop[k] for k in keys if k in board.instructions_per_flop)
        per_run = next(board.instructions_per_run[k] for k in keys if k in board.instructions_per_run)
        out[i] = per_flop * flops[i] + per_run
    return out


def build(
    tg: TrainingGraph, board: Board, profile: Mapping[str, float] | None = None, profile_source: str = ""
) -> CostModel:
    g = tg.graph
    flops = np.array(node_flops(tg), dtype=np.float64)
    if board.instructions_per_flop:
        instr = calibrated_instructions(tg, board, flops)
        compute_s = instr * board.cycles_per_instruction / board.clock_hz
        compute_j = compute_s * board.compute_power_w
        source = "calibrated"
    else:
        compute_s = flops / board.flop_per_s
        compute_j = flops / board.flop_per_j
        source = "flops"
    if profile:
        # measured seconds per node replace the estimate; energy scales with time at the board's power
        power = board.compute_power_w
        for i, n in enumerate(g.nodes):
            if n.name in profile:
                compute_s[i] = profile[n.name]
                compute_j[i] = profile[n.name] * power
        source = profile_source or "profile"
    mem = np.array([g.out(i).nbytes if g.out(i).in_arena else 0 for i in range(len(g.nodes))], dtype=np.int64)
    scratch = np.array(
        [
            ops.get(n.op).scratch_bytes(
                n.attrs, [g.tensor(x).shape for x in n.inputs], g.tensor(n.output).shape
            )
            for n in g.nodes
        ],
        dtype=np.int64,
    )
    paged = np.where(mem > 0, mem + PAGE_CRC_BYTES, 0).astype(np.float64)
    page_in_s = np.where(mem > 0, board.page_in_latency_s + paged / board.page_in_bytes_per_s, 0.0)
    page_out_s = np.where(mem > 0, board.page_out_latency_s + paged / board.page_out_bytes_per_s, 0.0)
    static = sum(t.nbytes for t in g.tensors.values() if not t.in_arena)
    params = sum(g.tensor(p).nbytes for p in g.params)
    return CostModel(
        flops=flops,
        compute_s=compute_s,
        compute_j=compute_j,
        mem=mem,
        scratch=scratch,
        page_in_s=page_in_s,
        page_in_j=page_in_s * board.memory_power_w,
        page_out_s=page_out_s,
        page_out_j=page_out_s * board.memory_power_w,
        static_bytes=int(static),
        param_bytes=int(params),
        source=source,
        pager=PagerCost(
            board.page_in_latency_s,
            board.page_in_bytes_per_s,
            board.page_out_latency_s,
            board.page_out_bytes_per_s,
            board.memory_power_w,
        ),
    )


__all__ = [
    "PAGE_CRC_BYTES",
    "CostModel",
    "PagerCost",
    "Role",
    "build",
    "calibrated_instructions",
    "cost_keys",
    "node_flops",
]
