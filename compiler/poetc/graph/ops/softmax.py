"""Softmax along one axis, viewing the input as [outer, n, inner] (``axis``: the softmax axis, normalised).

SOFTMAX_FWD (x) -> y;  SOFTMAX_BWD (y, dy) -> dx = y (dy - sum(dy y)) along the axis.
ONNX before opset 13 meant "flatten from axis on": the frontend passes ``coerce_2d`` for that.
"""

from __future__ import annotations

import numpy as np

from ..ir import Attrs, Node
from .base import GradBuilder, OpDef, Shape, numel, register, same_shape


def split(a: Attrs, x: Shape) -> tuple[int, int, int]:
    ax = a["axis"]
    if not 0 <= ax < len(x):
        raise ValueError(f"softmax axis {ax} out of range for shape {x}")
    if a.get("coerce_2d", False):
        return numel(x[:ax]), numel(x[ax:]), 1
    return numel(x[:ax]), x[ax], numel(x[ax + 1 :])


def _params(a: Attrs, x: Shape) -> dict:
    outer, n, inner = split(a, x)
    return {"outer": outer, "n": n, "inner": inner}


def _ref(a: Attrs, x: np.ndarray) -> np.ndarray:
    outer, n, inner = split(a, x.shape)
    z = x.reshape(outer, n, inner)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).reshape(x.shape)


def _ref_bwd(a: Attrs, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    outer, n, inner = split(a, y.shape)
    y3, d3 = y.reshape(outer, n, inner), dy.reshape(outer, n, inner)
    return (y3 * (d3 - (d3 * y3).sum(axis=1, keepdims=True))).reshape(y.shape)


def _grad(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    if not g.needs_grad(node.inputs[0]):
        return {}
    return {0: g.emit("softmax_bwd", (node.output, dy), node.attrs, node, "dx")}


register(
    OpDef(
        name="softmax",
        kernel="SOFTMAX_FWD",
        family="softmax",
        n_inputs=(1, 1),
        infer=same_shape,
        flops=lambda a, ins, out: 5 * numel(out),
        ref=_ref,
        c_params=lambda a, ins, out: _params(a, ins[0]),
        grad=_grad,
    )
)

register(
    OpDef(
        name="softmax_bwd",
        kernel="SOFTMAX_BWD",
        family="softmax",
        n_inputs=(2, 2),
        infer=same_shape,
        flops=lambda a, ins, out: 4 * numel(out),
        ref=_ref_bwd,
        c_params=lambda a, ins, out: _params(a, ins[0]),
    )
)
