"""Rectified linear unit. RELU (x) -> y; RELU_BWD (y, dy) -> dx = dy * (y > 0).

The backward reads the forward output rather than its input, so x can be freed once y exists.
"""

from __future__ import annotations

import numpy as np

from ..ir import Attrs, Node
from .base import GradBuilder, OpDef, numel, register, same_shape


def _grad(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    if not g.needs_grad(node.inputs[0]):
        return {}
    return {0: g.emit("relu_bwd", (node.output, dy), Attrs(), node, "dx")}


def _eltwise(a: Attrs, ins, out) -> dict:
    return {"n": numel(out)}


register(
    OpDef(
        name="relu",
        kernel="RELU_FWD",
        family="eltwise",
        n_inputs=(1, 1),
        infer=same_shape,
        flops=lambda a, ins, out: numel(out),
        ref=lambda a, x: np.maximum(x, 0.0),
        c_params=_eltwise,
        grad=_grad,
    )
)

register(
    OpDef(
        name="relu_bwd",
        kernel="RELU_BWD",
        family="eltwise",
        n_inputs=(2, 2),
        infer=same_shape,
        flops=lambda a, ins, out: numel(out),
        ref=lambda a, y, dy: dy * (y > 0),
        c_params=_eltwise,
    )
)
