"""What every op provides, and the registry that holds them.

An ``OpDef`` is one IR op (one C kernel): shape inference, FLOPs, numpy float64 reference, the fields of its C
params struct and, for differentiable forward ops, the gradient rule that emits backward nodes. One op family
(linear, relu, ...) lives in one file of this package and registers its ops on import. See
``docs/adding-an-op.md`` for the checklist.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from ..ir import Attrs, Node, Tensor

Shape = tuple[int, ...]


class GradBuilder(Protocol):
    """What a gradient rule may ask of the autodiff pass."""

    def needs_grad(self, tensor: str) -> bool: ...

    def tensor(self, name: str) -> Tensor: ...

    def emit(self, op: str, inputs: Sequence[str], attrs: Attrs, origin: Node, hint: str) -> str:
        """Append a backward node and return the name of its (gradient) output tensor."""
        ...


class StateUpdate(NamedTuple):
    """An in-place update of a static state tensor (BatchNorm running statistics) that a forward node asks for.

    ``op`` must be an in-place op whose only ``in_place`` input is ``inputs[0]``, the state tensor; autodiff emits
    it once per step, right after the forward node's gradient nodes, ordered after every reader of the state."""

    op: str
    inputs: tuple[str, ...]
    attrs: Attrs
    hint: str


# A gradient rule returns, for each input index that needs a gradient, the name of the tensor holding it.
GradRule = Callable[[GradBuilder, Node, str], dict[int, str]]
# A state rule lists the in-place state updates one training step makes for a forward node.
StateRule = Callable[[GradBuilder, Node], list[StateUpdate]]


@dataclass(frozen=True)
class OpDef:
    name: str  # IR op name
    kernel: str  # C kernel id without prefix, e.g. "LINEAR_FWD" -> POET_K_LINEAR_FWD
    family: str  # C params struct: poet_<family>_params
    n_inputs: tuple[int, int]  # (min, max) number of inputs
    infer: Callable[[Attrs, Sequence[Tensor]], tuple[Shape, str]]  # -> (shape, dtype)
    flops: Callable[[Attrs, Sequence[Shape], Shape], int]
    ref: Callable[..., np.ndarray]  # ref(attrs, *inputs) -> output, float64
    c_params: Callable[[Attrs, Sequence[Shape], Shape], dict[str, Any]]
    grad: GradRule | None = None
    # indices of the inputs this op updates in place (optimizer steps: the parameter, then its momentum buffer
    # when the node has one; running statistics). An index past a node's inputs is an optional input it lacks.
    # ``ref(attrs, *inputs, lr)`` of such an op returns the new values of those present, in this order.
    in_place: tuple[int, ...] = ()
    state: StateRule | None = None  # forward ops that update state tensors once per training step
    # for in-place optimizer steps: the raw gradient the step applies (before weight decay and momentum), from
    # the node's inputs (the host reference reports it; plain SGD reads it from its second input)
    step_grad: Callable[..., np.ndarray] | None = None
    scratch_bytes: Callable[[Attrs, Sequence[Shape], Shape], int] = lambda a, i, o: 0
    # a finer cost key than the op for kernels whose instructions per FLOP depend on the shape (conv: "k3",
    # "k5", "depthwise"): a board's calibrated compute model may price "op.class" apart (schedule/cost.py)
    cost_class: Callable[[Attrs, Sequence[Shape], Shape], str] | None = None
    # a fused op's unfused part whose calibration prices it when the board has none of its own (conv2d_dw_sgd:
    # conv2d_dw; the optimizer step adds a few instructions per weight, next to the MACs)
    cost_alias: str | None = None

    def updated(self, inputs: Sequence[str]) -> tuple[str, ...]:
        """The tensors a node of this op with ``inputs`` updates in place (empty for ordinary ops)."""
        return tuple(inputs[k] for k in self.in_place if k < len(inputs))


REGISTRY: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    if op.name in REGISTRY:
        raise ValueError(f"op {op.name} registered twice")
    REGISTRY[op.name] = op
    return op


def get(name: str) -> OpDef:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no op named {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def same_shape(attrs: Attrs, ins: Sequence[Tensor]) -> tuple[Shape, str]:
    return ins[0].shape, ins[0].dtype


def numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# ---- strided views (transpose, slice, expand, broadcasting): shared by several families ----------------------
MAX_RANK = 6  # POET_MAX_RANK in runtime_c/include/poet/kernels.h


def contiguous_strides(shape: Shape) -> tuple[int, ...]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return tuple(reversed(out))


def broadcast_strides(shape: Shape, out: Shape) -> tuple[int, ...]:
    """Strides (in elements) that read a contiguous tensor of ``shape`` broadcast to ``out`` (numpy rules)."""
    if len(shape) > len(out):
        raise ValueError(f"cannot broadcast {shape} to {out}")
    padded = (1,) * (len(out) - len(shape)) + tuple(shape)
    st = contiguous_strides(padded)
    res = []
    for d, o, s in zip(padded, out, st, strict=True):
        if d == o:
            res.append(s if d != 1 else 0)
        elif d == 1:
            res.append(0)
        else:
            raise ValueError(f"cannot broadcast {shape} to {out}")
    return tuple(res)


def broadcast_shape(a: Shape, b: Shape) -> Shape:
    n = max(len(a), len(b))
    pa, pb = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(pa, pb, strict=True):
        if x != y and 1 not in (x, y):
            raise ValueError(f"shapes {a} and {b} do not broadcast")
        out.append(max(x, y) if min(x, y) != 0 else 0)
    return tuple(out)


def coalesce(shape: Shape, *strides: Sequence[int]) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """Drop size-1 dimensions and merge neighbours that are contiguous in every stride set, so that a loop
    over ``shape`` reading at the given strides needs as few dimensions as possible (at most MAX_RANK)."""
    dims = [(d, [s[k] for s in strides]) for k, d in enumerate(shape) if d != 1]
    merged: list[tuple[int, list[int]]] = []
    for d, st in dims:
        if merged:
            pd, pst = merged[-1]
            if all(ps == s * d for ps, s in zip(pst, st, strict=True)):
                merged[-1] = (pd * d, st)
                continue
        merged.append((d, st))
    if not merged:
        merged = [(1, [0 for _ in strides])]
    if len(merged) > MAX_RANK:
        raise ValueError(f"a strided loop over {shape} needs {len(merged)} dimensions (at most {MAX_RANK})")
    out_shape = tuple(d for d, _ in merged)
    out_strides = [tuple(st[k] for _, st in merged) for k in range(len(strides))]
    return out_shape, out_strides


def pad_rank(values: Sequence[int], fill: int = 0) -> tuple[int, ...]:
    """A C array field of MAX_RANK entries."""
    return tuple(values) + (fill,) * (MAX_RANK - len(values))
