"""2-D pooling over NCHW (any rank >= 3: the last two axes are pooled, the leading ones are batched).

MAXPOOL_FWD (x) -> y;  MAXPOOL_BWD (x, dy) -> dx: the gradient goes to the first maximum of each window in
row-major order (as PyTorch), recomputed from x, so no index tensor has to be kept.
AVGPOOL_FWD (x) -> y;  AVGPOOL_BWD (dy) -> dx. ``count_include_pad`` chooses the divisor: the window size, or
the number of non-padding elements in the window. Attributes: ``kernel`` (kh, kw), ``strides``, ``pads``
(top, left, bottom, right); floor output sizes (no ceil mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..ir import Attrs, Node, Tensor
from .base import GradBuilder, OpDef, Shape, numel, register


def _out(attrs: Attrs, x: Shape) -> Shape:
    if len(x) < 3:
        raise ValueError(f"pooling needs an input of rank >= 3, got {x}")
    kh, kw = attrs["kernel"]
    sh, sw = attrs["strides"]
    pt, pl, pb, pr = attrs["pads"]
    if pt >= kh or pb >= kh or pl >= kw or pr >= kw:
        raise ValueError(f"pads {attrs['pads']} must be smaller than the kernel {attrs['kernel']}")
    oh, ow = (x[-2] + pt + pb - kh) // sh + 1, (x[-1] + pl + pr - kw) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"pooling a {x[-2]}x{x[-1]} input with a {kh}x{kw} window leaves no output")
    return (*x[:-2], oh, ow)


def _infer(attrs: Attrs, ins: Sequence[Tensor]) -> tuple[Shape, str]:
    return _out(attrs, ins[0].shape), "f32"


def _params(attrs: Attrs, x: Shape, y: Shape) -> dict:
    return {
        "nc": numel(x[:-2]),
        "h": x[-2],
        "w": x[-1],
        "oh": y[-2],
        "ow": y[-1],
        "kh": attrs["kernel"][0],
        "kw": attrs["kernel"][1],
        "sh": attrs["strides"][0],
        "sw": attrs["strides"][1],
        "ph": attrs["pads"][0],
        "pw": attrs["pads"][1],
        "count_pad": int(bool(attrs.get("count_include_pad", False))),
    }


def _windows(attrs: Attrs, x: np.ndarray, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """[..., oh, ow, kh*kw] windows of the padded input (row-major taps), and the padded input."""
    kh, kw = attrs["kernel"]
    sh, sw = attrs["strides"]
    pt, pl, pb, pr = attrs["pads"]
    oh, ow = _out(attrs, x.shape)[-2:]
    pad = [(0, 0)] * (x.ndim - 2) + [(pt, pb), (pl, pr)]
    xp = np.pad(x, pad, constant_values=fill)
    taps = [
        xp[..., i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]
    return np.stack(taps, axis=-1), xp


def _scatter(attrs: Attrs, x_shape: Shape, per_tap: np.ndarray) -> np.ndarray:
    """Adjoint of _windows: add per_tap [..., oh, ow, kh*kw] back onto the (unpadded) input positions."""
    kh, kw = attrs["kernel"]
    sh, sw = attrs["strides"]
    pt, pl, pb, pr = attrs["pads"]
    oh, ow = per_tap.shape[-3], per_tap.shape[-2]
    h, w = x_shape[-2], x_shape[-1]
    dxp = np.zeros((*x_shape[:-2], h + pt + pb, w + pl + pr))
    for t in range(kh * kw):
        i, j = divmod(t, kw)
        dxp[..., i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw] += per_tap[..., t]
    return dxp[..., pt : pt + h, pl : pl + w]


def _ref_max(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    win, _ = _windows(attrs, x, -np.inf)
    return win.max(axis=-1)


def _ref_max_bwd(attrs: Attrs, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    win, _ = _windows(attrs, x, -np.inf)
    first = win.argmax(axis=-1)  # numpy returns the first maximum: PyTorch's choice too
    onehot = np.eye(win.shape[-1])[first]
    return _scatter(attrs, x.shape, onehot * dy[..., None])


def _divisor(attrs: Attrs, x_shape: Shape) -> np.ndarray:
    kh, kw = attrs["kernel"]
    if attrs.get("count_include_pad", False):
        return np.full(_out(attrs, x_shape)[-2:], float(kh * kw))
    ones = np.ones((1, *x_shape[-2:]))
    win, _ = _windows(attrs, ones, 0.0)
    return win.sum(axis=-1)[0]


def _ref_avg(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    win, _ = _windows(attrs, x, 0.0)
    return win.sum(axis=-1) / _divisor(attrs, x.shape)


def _ref_avg_bwd(attrs: Attrs, dy: np.ndarray) -> np.ndarray:
    x_shape = tuple(attrs["x_shape"])
    kh, kw = attrs["kernel"]
    per = np.repeat((dy / _divisor(attrs, x_shape))[..., None], kh * kw, axis=-1)
    return _scatter(attrs, x_shape, per)


def _grad_max(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    if not g.needs_grad(node.inputs[0]):
        return {}
    return {0: g.emit("maxpool_bwd", (node.inputs[0], dy), node.attrs, node, "dx")}


def _grad_avg(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    x = node.inputs[0]
    if not g.needs_grad(x):
        return {}
    return {0: g.emit("avgpool_bwd", (dy,), node.attrs.replace(x_shape=g.tensor(x).shape), node, "dx")}


def _window_flops(attrs: Attrs, out: Shape) -> int:
    return 2 * attrs["kernel"][0] * attrs["kernel"][1] * numel(out)


register(
    OpDef(
        name="maxpool",
        kernel="MAXPOOL_FWD",
        family="pool",
        n_inputs=(1, 1),
        infer=_infer,
        flops=lambda a, ins, out: _window_flops(a, out),
        ref=_ref_max,
        c_params=lambda a, ins, out: _params(a, ins[0], out),
        grad=_grad_max,
    )
)

register(
    OpDef(
        name="maxpool_bwd",
        kernel="MAXPOOL_BWD",
        family="pool",
        n_inputs=(2, 2),
        infer=lambda a, ins: (ins[0].shape, "f32"),
        flops=lambda a, ins, out: _window_flops(a, ins[1]),
        ref=_ref_max_bwd,
        c_params=lambda a, ins, out: _params(a, ins[0], ins[1]),
    )
)

register(
    OpDef(
        name="avgpool",
        kernel="AVGPOOL_FWD",
        family="pool",
        n_inputs=(1, 1),
        infer=_infer,
        flops=lambda a, ins, out: _window_flops(a, out),
        ref=_ref_avg,
        c_params=lambda a, ins, out: _params(a, ins[0], out),
        grad=_grad_avg,
    )
)

register(
    OpDef(
        name="avgpool_bwd",
        kernel="AVGPOOL_BWD",
        family="pool",
        n_inputs=(1, 1),
        infer=lambda a, ins: (tuple(a["x_shape"]), "f32"),
        flops=lambda a, ins, out: _window_flops(a, ins[0]),
        ref=_ref_avg_bwd,
        c_params=lambda a, ins, out: _params(a, out, ins[0]),
    )
)
