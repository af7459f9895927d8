"""2-D convolution (NCHW, OIHW weights), with stride, zero padding (top/left/bottom/right), groups; dilation 1.

CONV2D_FWD (x, w[, b]) -> y;  CONV2D_DX (dy, w) -> dx;  CONV2D_DW (dy, x) -> dw;  CONV2D_DB (dy) -> db
(fused with their SGD step: CONV2D_DW_SGD and CONV2D_DB_SGD, in ops/optim.py).
Attributes: ``strides`` (sh, sw), ``pads`` (top, left, bottom, right), ``groups``; backward nodes also carry
``x_shape`` / ``w_shape``. Depthwise is groups == input channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..ir import Attrs, Node, Tensor
from .base import GradBuilder, OpDef, Shape, numel, register
from .linear import optim_fields


def out_hw(h: int, w: int, kh: int, kw: int, attrs: Attrs) -> tuple[int, int]:
    sh, sw = attrs["strides"]
    pt, pl, pb, pr = attrs["pads"]
    oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"convolution of a {h}x{w} input with a {kh}x{kw} kernel leaves no output")
    return oh, ow


def _check(attrs: Attrs, x: Shape, w: Shape) -> None:
    if len(x) != 4 or len(w) != 4:
        raise ValueError(f"Conv2d needs a 4-D input and weight, got {x} and {w}")
    g = attrs["groups"]
    if x[1] % g or w[0] % g or w[1] * g != x[1]:
        raise ValueError(f"weight {w} does not fit input {x} with {g} groups")


def _infer(attrs: Attrs, ins: Sequence[Tensor]) -> tuple[Shape, str]:
    x, w = ins[0].shape, ins[1].shape
    _check(attrs, x, w)
    if len(ins) > 2 and ins[2].shape != (w[0],):
        raise ValueError(f"bias of shape {ins[2].shape} does not match {w[0]} output channels")
    oh, ow = out_hw(x[2], x[3], w[2], w[3], attrs)
    return (x[0], w[0], oh, ow), "f32"


def _params(attrs: Attrs, x: Shape, w: Shape, y: Shape) -> dict:
    return {
        "n": x[0],
        "c_in": x[1],
        "h": x[2],
        "w": x[3],
        "c_out": w[0],
        "oh": y[2],
        "ow": y[3],
        "kh": w[2],
        "kw": w[3],
        "sh": attrs["strides"][0],
        "sw": attrs["strides"][1],
        "ph": attrs["pads"][0],
        "pw": attrs["pads"][1],
        "groups": attrs["groups"],
        **optim_fields(attrs),
    }


def _macs(x: Shape, w: Shape, y: Shape) -> int:
    return numel(y) * w[1] * w[2] * w[3]


# ---- numpy reference: a loop over kernel taps, each a strided window of the padded input ------------------
def _pad(x: np.ndarray, attrs: Attrs) -> np.ndarray:
    pt, pl, pb, pr = attrs["pads"]
    return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))


def _window(xp: np.ndarray, i: int, j: int, oh: int, ow: int, attrs: Attrs) -> np.ndarray:
    sh, sw = attrs["strides"]
    return xp[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]


def _grouped(a: np.ndarray, g: int) -> np.ndarray:
    """[N, C, ...] -> [N, g, C/g, ...]"""
    return a.reshape(a.shape[0], g, a.shape[1] // g, *a.shape[2:])


def _ref_fwd(attrs: Attrs, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    g = attrs["groups"]
    co, _ci, kh, kw = w.shape
    oh, ow = out_hw(x.shape[2], x.shape[3], kh, kw, attrs)
    xp = _pad(x, attrs)
    wg = w.reshape(g, co // g, *w.shape[1:])  # [g, O, I, kh, kw]
    y = np.zeros((x.shape[0], g, co // g, oh, ow))
    for i in range(kh):
        for j in range(kw):
            win = _grouped(_window(xp, i, j, oh, ow, attrs), g)  # [N, g, I, oh, ow]
            y += np.einsum("ngihw,goi->ngohw", win, wg[:, :, :, i, j])
    y = y.reshape(x.shape[0], co, oh, ow)
    if b is not None:
        y = y + b.reshape(1, co, 1, 1)
    return y


def _ref_dx(attrs: Attrs, dy: np.ndarray, w: np.ndarray) -> np.ndarray:
    g = attrs["groups"]
    n, c, h, wd = attrs["x_shape"]
    co, _ci, kh, kw = w.shape
    pt, pl, pb, pr = attrs["pads"]
    sh, sw = attrs["strides"]
    oh, ow = dy.shape[2], dy.shape[3]
    dxp = np.zeros((n, c, h + pt + pb, wd + pl + pr))
    wg = w.reshape(g, co // g, *w.shape[1:])
    dyg = _grouped(dy, g)  # [N, g, O, oh, ow]
    for i in range(kh):
        for j in range(kw):
            contrib = np.einsum("ngohw,goi->ngihw", dyg, wg[:, :, :, i, j]).reshape(n, c, oh, ow)
            dxp[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw] += contrib
    return dxp[:, :, pt : pt + h, pl : pl + wd]


def _ref_dw(attrs: Attrs, dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    g = attrs["groups"]
    co, ci, kh, kw = attrs["w_shape"]
    oh, ow = dy.shape[2], dy.shape[3]
    xp = _pad(x, attrs)
    dyg = _grouped(dy, g)
    dw = np.zeros((g, co // g, ci, kh, kw))
    for i in range(kh):
        for j in range(kw):
            win = _grouped(_window(xp, i, j, oh, ow, attrs), g)
            dw[:, :, :, i, j] = np.einsum("ngohw,ngihw->goi", dyg, win)
    return dw.reshape(co, ci, kh, kw)


def _ref_db(attrs: Attrs, dy: np.ndarray) -> np.ndarray:
    return dy.sum(axis=(0, 2, 3))


def _grad(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    x, w = node.inputs[0], node.inputs[1]
    a = node.attrs.replace(x_shape=g.tensor(x).shape, w_shape=g.tensor(w).shape)
    out: dict[int, str] = {}
    if g.needs_grad(x):
        out[0] = g.emit("conv2d_dx", (dy, w), a, node, "dx")
    if g.needs_grad(w):
        out[1] = g.emit("conv2d_dw", (dy, x), a, node, "dw")
    if len(node.inputs) > 2 and g.needs_grad(node.inputs[2]):
        out[2] = g.emit("conv2d_db", (dy,), a, node, "db")
    return out


def _cost_class(w_shape: Shape, groups: int) -> str:
    """Kernels of one shape class share their instructions per FLOP: depthwise (one input channel per group)
    runs plane by plane; the others by 4x4 tiles whose overhead per tap grows with the kernel."""
    if groups > 1 and w_shape[1] == 1:
        return "depthwise"
    return f"k{w_shape[2]}" if w_shape[2] == w_shape[3] else f"k{w_shape[2]}x{w_shape[3]}"


register(
    OpDef(
        name="conv2d",
        kernel="CONV2D_FWD",
        family="conv",
        n_inputs=(2, 3),
        infer=_infer,
        flops=lambda a, ins, out: 2 * _macs(ins[0], ins[1], out) + (numel(out) if len(ins) > 2 else 0),
        ref=_ref_fwd,
        c_params=lambda a, ins, out: _params(a, ins[0], ins[1], out),
        grad=_grad,
        cost_class=lambda a, ins, out: _cost_class(ins[1], a["groups"]),
    )
)

register(
    OpDef(
        name="conv2d_dx",
        kernel="CONV2D_DX",
        family="conv",
        n_inputs=(2, 2),
        infer=lambda a, ins: (tuple(a["x_shape"]), "f32"),
        flops=lambda a, ins, out: 2 * _macs(out, ins[1], ins[0]),
        ref=_ref_dx,
        c_params=lambda a, ins, out: _params(a, out, ins[1], ins[0]),
        cost_class=lambda a, ins, out: _cost_class(a["w_shape"], a["groups"]),
    )
)

register(
    OpDef(
        name="conv2d_dw",
        kernel="CONV2D_DW",
        family="conv",
        n_inputs=(2, 2),
        infer=lambda a, ins: (tuple(a["w_shape"]), "f32"),
        flops=lambda a, ins, out: 2 * _macs(ins[1], out, ins[0]),
        ref=_ref_dw,
        c_params=lambda a, ins, out: _params(a, ins[1], out, ins[0]),
        cost_class=lambda a, ins, out: _cost_class(a["w_shape"], a["groups"]),
    )
)

register(
    OpDef(
        name="conv2d_db",
        kernel="CONV2D_DB",
        family="conv",
        n_inputs=(1, 1),
        infer=lambda a, ins: ((a["w_shape"][0],), "f32"),
        flops=lambda a, ins, out: numel(ins[0]),
        ref=_ref_db,
        c_params=lambda a, ins, out: _params(a, a["x_shape"], a["w_shape"], ins[0]),
    )
)
