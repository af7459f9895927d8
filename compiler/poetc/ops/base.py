"""What every op provides, and the registry that holds them.

An ``OpDef`` is one IR op (one C kernel): shape inference, FLOPs, numpy float64 reference, the fields of its C
params struct and, for differentiable forward ops, the gradient rule that emits backward nodes. One op family
(linear, relu, ...) lives in one file of this package and registers its ops on import. See
``docs/adding-an-op.md`` for the checklist.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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


# A gradient rule returns, for each input index that needs a gradient, the name of the tensor holding it.
GradRule = Callable[[GradBuilder, Node, str], dict[int, str]]


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
    in_place: int | None = None  # index of the input this op updates in place (optimizer steps)
    scratch_bytes: Callable[[Attrs, Sequence[Shape], Shape], int] = lambda a, i, o: 0


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
