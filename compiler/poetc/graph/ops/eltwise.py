"""Elementwise arithmetic. ADD (a, b) -> a + b, same shapes (sums gradients where a tensor fans out)."""

from __future__ import annotations

from ..ir import Attrs, Node
from .base import GradBuilder, OpDef, numel, register


def _infer_add(a: Attrs, ins):
    if ins[0].shape != ins[1].shape:
        raise ValueError(f"add of shapes {ins[0].shape} and {ins[1].shape} (broadcasting is not supported)")
    return ins[0].shape, "f32"


def _grad_add(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    return {i: dy for i, name in enumerate(node.inputs) if g.needs_grad(name)}


register(
    OpDef(
        name="add",
        kernel="ADD",
        family="eltwise",
        n_inputs=(2, 2),
        infer=_infer_add,
        flops=lambda a, ins, out: numel(out),
        ref=lambda a, x, y: x + y,
        c_params=lambda a, ins, out: {"n": numel(out)},
        grad=_grad_add,
    )
)
