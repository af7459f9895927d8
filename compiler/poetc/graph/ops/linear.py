"""Fully connected layer: y = alpha * x W' + beta * b, with W' = W^T (ONNX Gemm transB=1) or W (MatMul).

x is viewed as [M, K] with K the weight's input size and M = numel(x) / K (a Flatten before Gemm is free).
Kernels: LINEAR_FWD (x, W[, b]) -> y; LINEAR_DX (dy, W) -> dx; LINEAR_DW (dy, x) -> dW; BIAS_GRAD (dy) -> db.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..ir import Attrs, Node, Tensor
from .base import GradBuilder, OpDef, Shape, numel, register


def _kn(attrs: Attrs, w: Shape) -> tuple[int, int]:
    """(K, N) from the weight's shape."""
    if len(w) != 2:
        raise ValueError(f"weight must be 2-D, got shape {w}")
    return (w[1], w[0]) if attrs["trans_w"] else (w[0], w[1])


def _mkn(attrs: Attrs, x: Shape, w: Shape) -> tuple[int, int, int]:
    k, n = _kn(attrs, w)
    if numel(x) % k:
        raise ValueError(f"input of shape {x} does not flatten to rows of {k} (the weight's input size)")
    return numel(x) // k, k, n


def _params(attrs: Attrs, ins: Sequence[Shape], out: Shape, x: Shape, w: Shape) -> dict:
    m, k, n = _mkn(attrs, x, w)
    return {
        "m": m,
        "k": k,
        "n": n,
        "trans_w": int(bool(attrs["trans_w"])),
        "alpha": float(attrs.get("alpha", 1.0)),
        "beta": float(attrs.get("beta", 1.0)),
        **optim_fields(attrs),
    }


def optim_fields(attrs: Attrs) -> dict:
    """The optimizer's fields of a params struct (poet_linear_params, poet_sgd_params): momentum and weight decay
    of an update node, 0 for every other node (and for plain SGD)."""
    return {
        "momentum": float(attrs.get("momentum", 0.0)),
        "weight_decay": float(attrs.get("weight_decay", 0.0)),
    }


def bias_params(attrs: Attrs, dy: Shape) -> dict:
    """BIAS_GRAD(_SGD): dy viewed as [m, n]."""
    return {
        "m": numel(dy) // attrs["n"],
        "k": 0,
        "n": attrs["n"],
        "trans_w": 0,
        "alpha": 1.0,
        "beta": float(attrs.get("beta", 1.0)),
        **optim_fields(attrs),
    }


def _infer_fwd(attrs: Attrs, ins: Sequence[Tensor]) -> tuple[Shape, str]:
    x, w = ins[0].shape, ins[1].shape
    m, _k, n = _mkn(attrs, x, w)
    if len(ins) > 2 and ins[2].shape not in ((n,), (1, n)):
        raise ValueError(f"bias of shape {ins[2].shape} does not match {n} outputs")
    return _out_shape(attrs, x, m, n), "f32"


def _out_shape(attrs: Attrs, x: Shape, m: int, n: int) -> Shape:
    """Gemm-style (flatten) gives [M, N]; MatMul-style keeps the leading dims of x."""
    return (m, n) if attrs["flatten"] else (*x[:-1], n)


def _w_eff(attrs: Attrs, w: np.ndarray) -> np.ndarray:
    """The weight as a [K, N] matrix."""
    return w.T if attrs["trans_w"] else w


def _ref_fwd(attrs: Attrs, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    m, k, n = _mkn(attrs, x.shape, w.shape)
    y = attrs.get("alpha", 1.0) * (x.reshape(m, k) @ _w_eff(attrs, w))
    if b is not None:
        y = y + attrs.get("beta", 1.0) * b.reshape(1, n)
    return y.reshape(_out_shape(attrs, x.shape, m, n))


def _grad(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    x, w = node.inputs[0], node.inputs[1]
    a = node.attrs.replace(x_shape=g.tensor(x).shape)
    out: dict[int, str] = {}
    # input gradient first: it reads W, which the optimizer overwrites as soon as dW is complete
    if g.needs_grad(x):
        out[0] = g.emit("linear_dx", (dy, w), a, node, "dx")
    if g.needs_grad(w):
        out[1] = g.emit("linear_dw", (dy, x), a, node, "dw")
    if len(node.inputs) > 2 and g.needs_grad(node.inputs[2]):
        out[2] = g.emit(
            "bias_grad",
            (dy,),
            a.replace(n=g.tensor(node.inputs[2]).numel, b_shape=g.tensor(node.inputs[2]).shape),
            node,
            "db",
        )
    return out


def _ref_dx(attrs: Attrs, dy: np.ndarray, w: np.ndarray) -> np.ndarray:
    _k, n = _kn(attrs, w.shape)
    dx = attrs.get("alpha", 1.0) * (dy.reshape(-1, n) @ _w_eff(attrs, w).T)
    return dx.reshape(attrs["x_shape"])


def _ref_dw(attrs: Attrs, dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    n = dy.shape[-1]
    x2 = x.reshape(dy.size // n, -1)
    g = attrs.get("alpha", 1.0) * (x2.T @ dy.reshape(-1, n))  # [K, N]
    return g.T if attrs["trans_w"] else g


def _ref_db(attrs: Attrs, dy: np.ndarray) -> np.ndarray:
    n = attrs["n"]
    return (attrs.get("beta", 1.0) * dy.reshape(-1, n).sum(axis=0)).reshape(attrs["b_shape"])


register(
    OpDef(
        name="linear",
        kernel="LINEAR_FWD",
        family="linear",
        n_inputs=(2, 3),
        infer=_infer_fwd,
        flops=lambda a, ins, out: 2 * numel(ins[0]) * _kn(a, ins[1])[1] + (numel(out) if len(ins) > 2 else 0),
        ref=_ref_fwd,
        c_params=lambda a, ins, out: _params(a, ins, out, ins[0], ins[1]),
        grad=_grad,
    )
)

register(
    OpDef(
        name="linear_dx",
        kernel="LINEAR_DX",
        family="linear",
        n_inputs=(2, 2),
        infer=lambda a, ins: (tuple(a["x_shape"]), "f32"),
        flops=lambda a, ins, out: 2 * numel(out) * _kn(a, ins[1])[1],
        ref=_ref_dx,
        c_params=lambda a, ins, out: _params(a, ins, out, out, ins[1]),
    )
)

register(
    OpDef(
        name="linear_dw",
        kernel="LINEAR_DW",
        family="linear",
        n_inputs=(2, 2),
        infer=lambda a, ins: (
            (
                (ins[0].shape[-1], numel(ins[1].shape) * ins[0].shape[-1] // numel(ins[0].shape))
                if a["trans_w"]
                else (numel(ins[1].shape) * ins[0].shape[-1] // numel(ins[0].shape), ins[0].shape[-1])
            ),
            "f32",
        ),
        flops=lambda a, ins, out: 2 * numel(ins[1]) * ins[0][-1],
        ref=_ref_dw,
        c_params=lambda a, ins, out: _params(a, ins, out, ins[1], out),
    )
)

register(
    OpDef(
        name="bias_grad",
        kernel="BIAS_GRAD",
        family="linear",
        n_inputs=(1, 1),
        infer=lambda a, ins: (tuple(a["b_shape"]), "f32"),
        flops=lambda a, ins, out: numel(ins[0]),
        ref=_ref_db,
        c_params=lambda a, ins, out: bias_params(a, ins[0]),
    )
)
