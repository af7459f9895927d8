"""The intermediate representation: immutable tensors, nodes and graphs.

A ``Graph`` is a list of nodes in topological order. Every node produces exactly one tensor, so a node and its
output are interchangeable for scheduling (as in Checkmate and POET: stage t computes node t). Tensors carry a
``Role`` that decides where they live on the device:

- static roles (input, label, param, state, opt_state, loss, update) have a fixed home outside the arena;
- arena roles (activation, grad) are placed by the memory planner and may be dropped, recomputed or paged.

Nodes may carry ``after``: control dependencies (node names) that order without reading data, used to keep an
in-place parameter update after every reader of the old value.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx


class Role(StrEnum):
    INPUT = "input"  # data fed per step by the harness
    LABEL = "label"  # integer class labels fed per step
    PARAM = "param"  # parameter: updated in place by its optimizer node, or only read when frozen
    STATE = "state"  # model state exported with the parameters (BatchNorm running statistics)
    OPT_STATE = "opt_state"  # optimizer state (a momentum buffer): zero at start, updated only by its step
    LOSS = "loss"  # scalar loss, read by the harness after a step
    UPDATE = "update"  # zero-byte token produced by an in-place update node
    ACTIVATION = "activation"  # forward intermediate, lives in the arena
    GRAD = "grad"  # backward intermediate (input or weight gradient), lives in the arena


STATIC_ROLES = frozenset(
    {Role.INPUT, Role.LABEL, Role.PARAM, Role.STATE, Role.OPT_STATE, Role.LOSS, Role.UPDATE}
)

SOURCE_ROLES = frozenset(
    {Role.INPUT, Role.LABEL, Role.PARAM, Role.STATE, Role.OPT_STATE}
)  # exist before any node

DTYPE_BYTES = {"f32": 4, "i32": 4, "u8": 1}


class Attrs(Mapping[str, Any]):
    """A small hashable, immutable mapping for node attributes (values: int, float, str, bool, tuples)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None, **kw: Any) -> None:
        merged = dict(items or {})
        merged.update(kw)
        self._items = tuple(sorted((k, _freeze(v)) for k, v in merged.items()))

    def __getitem__(self, key: str) -> Any:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Attrs) and self._items == other._items

    def __repr__(self) -> str:
        return "Attrs(" + ", ".join(f"{k}={v!r}" for k, v in self._items) + ")"

    def replace(self, **kw: Any) -> Attrs:
        return Attrs(dict(self._items), **kw)


def _freeze(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return tuple(_freeze(x) for x in v)
    return v


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    role: Role
    dtype: str = "f32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"tensor {self.name}: unknown dtype {self.dtype}")
        if any((not isinstance(d, int)) or d < 0 for d in self.shape):
            raise ValueError(f"tensor {self.name}: bad shape {self.shape}")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes this tensor occupies on the device (0 for update tokens)."""
        if self.role == Role.UPDATE:
            return 0
        return self.numel * DTYPE_BYTES[self.dtype]

    @property
    def in_arena(self) -> bool:
        return self.role not in STATIC_ROLES


@dataclass(frozen=True)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    output: str
    attrs: Attrs = field(default_factory=Attrs)
    after: tuple[str, ...] = ()
    phase: str = "forward"  # forward | loss | backward | update
    origin: str = ""  # the forward node (or ONNX node) this one derives from, for reports


@dataclass(frozen=True)
class Graph:
    """Nodes in topological order plus every tensor they touch."""

    name: str
    tensors: Mapping[str, Tensor]
    nodes: tuple[Node, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensors", _FrozenDict(self.tensors))
        self.validate()

    def __hash__(self) -> int:
        return hash((self.name, self.nodes, self.inputs, self.outputs))

    def validate(self) -> None:
        """Check topological order, single producers and that every referenced tensor exists."""
        seen_nodes: set[str] = set()
        produced: set[str] = {n for n, t in self.tensors.items() if t.role in SOURCE_ROLES}
        producers: dict[str, str] = {}
        for node in self.nodes:
            if node.name in seen_nodes:
                raise ValueError(f"graph {self.name}: duplicate node name {node.name}")
            for name in (*node.inputs, node.output):
                if name not in self.tensors:
                    raise ValueError(f"graph {self.name}: node {node.name} references unknown tensor {name}")
            for name in node.inputs:
                if name not in produced:
                    raise ValueError(
                        f"graph {self.name}: node {node.name} reads {name} before it is produced"
                    )
            for dep in node.after:
                if dep not in seen_nodes:
                    raise ValueError(f"graph {self.name}: node {node.name} must follow unknown node {dep}")
            if node.output in producers:
                raise ValueError(
                    f"graph {self.name}: tensor {node.output} produced by {producers[node.output]} and {node.name}"
                )
            producers[node.output] = node.name
            produced.add(node.output)
            seen_nodes.add(node.name)

    # ---- derived views -------------------------------------------------------------------------------
    @cached_property
    def node_index(self) -> Mapping[str, int]:
        return _FrozenDict({n.name: i for i, n in enumerate(self.nodes)})

    @cached_property
    def producer(self) -> Mapping[str, int]:
        """Tensor name -> index of the node that produces it."""
        return _FrozenDict({n.output: i for i, n in enumerate(self.nodes)})

    @cached_property
    def consumers(self) -> Mapping[str, tuple[int, ...]]:
        """Tensor name -> indices of nodes that read it, in order."""
        out: dict[str, list[int]] = {name: [] for name in self.tensors}
        for i, n in enumerate(self.nodes):
            for name in dict.fromkeys(n.inputs):
                out[name].append(i)
        return _FrozenDict({k: tuple(v) for k, v in out.items()})

    @cached_property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """Data edges (u, v) between nodes: v reads the output of u."""
        es = []
        for v, n in enumerate(self.nodes):
            for name in dict.fromkeys(n.inputs):
                u = self.producer.get(name)
                if u is not None:
                    es.append((u, v))
        return tuple(es)

    def tensor(self, name: str) -> Tensor:
        return self.tensors[name]

    def out(self, i: int) -> Tensor:
        return self.tensors[self.nodes[i].output]

    def by_role(self, role: Role) -> tuple[Tensor, ...]:
        return tuple(t for t in self.tensors.values() if t.role == role)

    @cached_property
    def params(self) -> tuple[str, ...]:
        return tuple(n for n, t in self.tensors.items() if t.role == Role.PARAM)

    def fingerprint(self) -> str:
        """A short stable hash of structure and shapes (not of parameter values)."""
        doc = {
            "tensors": sorted((t.name, t.shape, t.role.value, t.dtype) for t in self.tensors.values()),
            "nodes": [(n.name, n.op, n.inputs, n.output, list(n.attrs.items()), n.after) for n in self.nodes],
        }
        return hashlib.sha256(json.dumps(doc, default=str).encode()).hexdigest()[:16]


class _FrozenDict(dict):
    """A dict that refuses mutation after construction (cheap immutability for IR mappings)."""

    def _refuse(self, *a: Any, **k: Any) -> None:
        raise TypeError("IR mappings are immutable")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self.items()))


@dataclass(frozen=True)
class Model:
    """A forward graph with its parameter values and where it came from."""

    graph: Graph
    params: dict[str, np.ndarray] = field(hash=False)  # ONNX initializer name -> float32 array
    onnx_model: onnx.ModelProto = field(hash=False, repr=False)
    source: str  # file path or "zoo:<name>"
    sha256: str
    input: str  # the data input tensor
    logits: str  # the graph output fed to the loss
    state: dict[str, np.ndarray] = field(default_factory=dict, hash=False)  # running statistics, by name
    train_flag: str | None = None  # the training-flag input tensor (models with BatchNormalization)
    notes: tuple[str, ...] = ()  # what the import changed that the user should know (a folded final Softmax)


TRAIN_FLAG = "poet:training"
