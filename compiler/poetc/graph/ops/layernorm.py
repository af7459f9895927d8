"""Layer normalisation over the trailing axes from ``axis`` on: x viewed as [m, d].

LN_FWD (x, gamma[, beta]) -> y = (x - mean) r gamma + beta,  r = 1 / sqrt(var + eps) (per row, biased var);
LN_DX (dy, x, gamma) -> dx = r / d (d g - sum g - xhat sum(g xhat)),  g = dy gamma;
LN_DGAMMA (dy, x) -> sum over rows of dy xhat;  dbeta is BIAS_GRAD (linear family): the column sums of dy.
Row statistics are recomputed by each kernel (two passes over a row), so no statistics tensor is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..ir import Attrs, Node, Tensor
from .base import GradBuilder, OpDef, Shape, numel, register


def rows(a: Attrs, x: Shape) -> tuple[int, int]:
    ax = a["axis"]
    if not 0 <= ax < len(x):
        raise ValueError(f"LayerNormalization axis {ax} out of range for shape {x}")
    return numel(x[:ax]), numel(x[ax:])


def _params(a: Attrs, x: Shape) -> dict:
    m, d = rows(a, x)
    return {"m": m, "d": d, "eps": float(a.get("eps", 1e-5))}


def _xhat(a: Attrs, x: np.ndarray) -> np.ndarray:
    m, d = rows(a, x.shape)
    x2 = x.reshape(m, d)
    mean = x2.mean(axis=1, keepdims=True)
    var = x2.var(axis=1, keepdims=True)
    return (x2 - mean) / np.sqrt(var + a.get("eps", 1e-5))


def _ref(a: Attrs, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray | None = None) -> np.ndarray:
    y = _xhat(a, x) * gamma.reshape(1, -1)
    if beta is not None:
        y = y + beta.reshape(1, -1)
    return y.reshape(x.shape)


def _ref_dx(a: Attrs, dy: np.ndarray, x: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    m, d = rows(a, x.shape)
    x2 = x.reshape(m, d)
    r = 1.0 / np.sqrt(x2.var(axis=1, keepdims=True) + a.get("eps", 1e-5))
    xh = _xhat(a, x)
    gg = dy.reshape(m, d) * gamma.reshape(1, d)
    dx = r / d * (d * gg - gg.sum(axis=1, keepdims=True) - xh * (gg * xh).sum(axis=1, keepdims=True))
    return dx.reshape(x.shape)


def _ref_dgamma(a: Attrs, dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    m, d = rows(a, x.shape)
    return (dy.reshape(m, d) * _xhat(a, x)).sum(axis=0).reshape(a["g_shape"])


def _infer(a: Attrs, ins: Sequence[Tensor]) -> tuple[Shape, str]:
    _m, d = rows(a, ins[0].shape)
    for t in ins[1:]:
        if t.numel != d:
            raise ValueError(f"{t.name} of shape {t.shape} does not match the normalised size {d}")
    return ins[0].shape, "f32"


def _grad(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    x, gamma = node.inputs[0], node.inputs[1]
    a = node.attrs.replace(g_shape=g.tensor(gamma).shape)
    out: dict[int, str] = {}
    if g.needs_grad(x):
        out[0] = g.emit("ln_dx", (dy, x, gamma), a, node, "dx")
    if g.needs_grad(gamma):
        out[1] = g.emit("ln_dgamma", (dy, x), a, node, "dgamma")
    if len(node.inputs) > 2 and g.needs_grad(node.inputs[2]):
        b = g.tensor(node.inputs[2])
        out[2] = g.emit("bias_grad", (dy,), Attrs(n=b.numel, b_shape=b.shape, beta=1.0), node, "dbeta")
    return out


register(
    OpDef(
        name="layernorm",
        kernel="LN_FWD",
        family="ln",
        n_inputs=(2, 3),
        infer=_infer,
        flops=lambda a, ins, out: 8 * numel(out),
        ref=_ref,
        c_params=lambda a, ins, out: _params(a, ins[0]),
        grad=_grad,
    )
)

register(
    OpDef(
        name="ln_dx",
        kernel="LN_DX",
        family="ln",
        n_inputs=(3, 3),
        infer=lambda a, ins: (ins[1].shape, "f32"),
        flops=lambda a, ins, out: 12 * numel(out),
        ref=_ref_dx,
        c_params=lambda a, ins, out: _params(a, ins[1]),
    )
)

register(
    OpDef(
        name="ln_dgamma",
        kernel="LN_DGAMMA",
        family="ln",
        n_inputs=(2, 2),
        infer=lambda a, ins: (tuple(a["g_shape"]), "f32"),
        flops=lambda a, ins, out: 8 * numel(ins[1]),
        ref=_ref_dgamma,
        c_params=lambda a, ins, out: _params(a, ins[1]),
    )
)
