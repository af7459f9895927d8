"""Broadcasting arithmetic (numpy rules), e.g. residual adds, per-channel scales, LayerNorm written out.

BINARY (a, b) -> y = a (op) b with op in add, sub, mul, div; params: the output's shape and each input's
  strides in it (0 where broadcast), merged to at most MAX_RANK loop dimensions.
REDUCE (x[, u[, v]]) -> r: r[j] = scale * sum over the positions i of x's shape that map to j of a term:
  sum: x;  mul: x u;  div_a: x / u;  div_b: -x u / v^2.  ``out_shape`` is r's shape broadcast against x.
  It is ReduceMean / ReduceSum (sum, scale 1/count or 1) and the gradient of every BINARY: the incoming
  gradient reduced back to an operand's (broadcast) shape.
Ops: ``binary`` (attr ``op``), ``reduce`` (attrs ``mode``, ``scale``, ``out_shape``, optional ``y_shape``:
the output's shape when reduced axes are dropped, keepdims=0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..ir import Attrs, Node, Tensor
from .base import (
    GradBuilder,
    OpDef,
    Shape,
    broadcast_shape,
    broadcast_strides,
    coalesce,
    contiguous_strides,
    numel,
    pad_rank,
    register,
)

BINARY_OPS = {"add": 0, "sub": 1, "mul": 2, "div": 3}
REDUCE_MODES = {"sum": 0, "mul": 1, "div_a": 2, "div_b": 3}


def _params(code: int, scale: float, shape: Shape, *strides: Sequence[int]) -> dict:
    sh, st = coalesce(shape, *strides)
    while len(st) < 3:
        st.append((0,) * len(sh))
    return {
        "op": code,
        "rank": len(sh),
        "shape": pad_rank(sh, 1),
        "sa": pad_rank(st[0]),
        "sb": pad_rank(st[1]),
        "sc": pad_rank(st[2]),
        "scale": float(scale),
    }


# ---- binary ------------------------------------------------------------------------------------------------
def _infer_binary(a: Attrs, ins: Sequence[Tensor]) -> tuple[Shape, str]:
    if a["op"] not in BINARY_OPS:
        raise ValueError(f"unknown binary op {a['op']}")
    return broadcast_shape(ins[0].shape, ins[1].shape), "f32"


def _binary_params(a: Attrs, ins: Sequence[Shape], out: Shape) -> dict:
    return _params(
        BINARY_OPS[a["op"]], 1.0, out, broadcast_strides(ins[0], out), broadcast_strides(ins[1], out)
    )


def _ref_binary(a: Attrs, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}[a["op"]](x, y)


def _grad_binary(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    A, B = node.inputs
    op = node.attrs["op"]
    y_shape = g.tensor(node.output).shape
    out: dict[int, str] = {}

    def reduce(inputs: tuple[str, ...], mode: str, scale: float, target: str, hint: str) -> str:
        shape = g.tensor(target).shape
        if mode == "sum" and scale == 1.0 and shape == y_shape:
            return inputs[0]
        return g.emit("reduce", inputs, Attrs(mode=mode, scale=scale, out_shape=shape), node, hint)

    if g.needs_grad(A):
        if op in ("add", "sub"):
            out[0] = reduce((dy,), "sum", 1.0, A, "dA")
        elif op == "mul":
            out[0] = reduce((dy, B), "mul", 1.0, A, "dA")
        else:
            out[0] = reduce((dy, B), "div_a", 1.0, A, "dA")
    if g.needs_grad(B):
        if op == "add":
            out[1] = reduce((dy,), "sum", 1.0, B, "dB")
        elif op == "sub":
            out[1] = reduce((dy,), "sum", -1.0, B, "dB")
        elif op == "mul":
            out[1] = reduce((dy, A), "mul", 1.0, B, "dB")
        else:
            out[1] = reduce((dy, A, B), "div_b", 1.0, B, "dB")
    return out


register(
    OpDef(
        name="binary",
        kernel="BINARY",
        family="bcast",
        n_inputs=(2, 2),
        infer=_infer_binary,
        flops=lambda a, ins, out: numel(out),
        ref=_ref_binary,
        c_params=_binary_params,
        grad=_grad_binary,
    )
)


# ---- reduce ------------------------------------------------------------------------------------------------
def _infer_reduce(a: Attrs, ins: Sequence[Tensor]) -> tuple[Shape, str]:
    mode = a["mode"]
    if mode not in REDUCE_MODES:
        raise ValueError(f"unknown reduce mode {mode}")
    want = {"sum": 1, "mul": 2, "div_a": 2, "div_b": 3}[mode]
    if len(ins) != want:
        raise ValueError(f"reduce mode {mode} takes {want} inputs, got {len(ins)}")
    x = ins[0].shape
    broadcast_strides(tuple(a["out_shape"]), x)
    for t in ins[1:]:
        broadcast_strides(t.shape, x)
    y = tuple(a.get("y_shape", a["out_shape"]))
    if numel(y) != numel(tuple(a["out_shape"])):
        raise ValueError(f"reduce: y_shape {y} does not hold out_shape {a['out_shape']}")
    return y, "f32"


def _reduce_params(a: Attrs, ins: Sequence[Shape], out: Shape) -> dict:
    x = ins[0]
    strides = [broadcast_strides(tuple(a["out_shape"]), x)] + [broadcast_strides(s, x) for s in ins[1:]]
    return _params(REDUCE_MODES[a["mode"]], a.get("scale", 1.0), x, *strides)


def _ref_reduce(a: Attrs, x: np.ndarray, u: np.ndarray | None = None, v: np.ndarray | None = None):
    mode = a["mode"]
    if mode == "sum":
        t = x
    elif mode == "mul":
        t = x * u
    elif mode == "div_a":
        t = x / u
    else:
        t = -x * u / (v * v)
    t = np.broadcast_to(t, x.shape)
    target = tuple(a["out_shape"])
    padded = (1,) * (len(x.shape) - len(target)) + target
    axes = tuple(i for i, (d, o) in enumerate(zip(padded, x.shape, strict=True)) if d == 1 and o != 1)
    r = a.get("scale", 1.0) * t.sum(axis=axes, keepdims=True)
    return r.reshape(tuple(a.get("y_shape", target)))


def _grad_reduce(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    if node.attrs["mode"] != "sum" or len(node.inputs) != 1:
        raise ValueError(f"reduce mode {node.attrs['mode']} has no gradient rule (it is a backward op)")
    x = node.inputs[0]
    if not g.needs_grad(x):
        return {}
    a = Attrs(src_shape=tuple(node.attrs["out_shape"]), shape=g.tensor(x).shape, scale=node.attrs["scale"])
    return {0: g.emit("expand", (dy,), a, node, "dx")}


register(
    OpDef(
        name="reduce",
        kernel="REDUCE",
        family="bcast",
        n_inputs=(1, 3),
        infer=_infer_reduce,
        flops=lambda a, ins, out: (1 + len(ins)) * numel(ins[0]),
        ref=_ref_reduce,
        c_params=_reduce_params,
        grad=_grad_reduce,
    )
)

__all__ = ["BINARY_OPS", "REDUCE_MODES", "contiguous_strides"]
