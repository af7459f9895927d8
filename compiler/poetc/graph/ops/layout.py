"""Data movement: transpose, reshape, slice, expand (broadcast), concat; all copies into a new tensor.

STRIDED (x) -> y: y[i] = scale * x[base + sum_k i_k stride_k] over y's shape (a strided view of x);
SCATTER (x) -> y: its adjoint: y = 0, then y[base + sum_k i_k stride_k] += scale * x[i] over x's shape;
  params {rank, shape[MAX_RANK], stride[MAX_RANK], base, scale, n_src, n_dst} (the loop shape is merged to at
  most MAX_RANK dimensions).
CONCAT (x0..x3) -> y along an axis: params {outer, n_in, part[4]}, part = axis extent * inner size.
Ops: ``transpose`` (perm), ``reshape`` (shape), ``slice`` (starts, steps, shape: per axis), ``slice_bwd``
(the same and x_shape), ``expand`` (src_shape, shape, scale), ``concat`` (axis). A concat of more than four
tensors is a chain of concats (the frontend builds it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..ir import Attrs, Node, Tensor
from .base import (
    GradBuilder,
    OpDef,
    Shape,
    broadcast_strides,
    coalesce,
    contiguous_strides,
    numel,
    pad_rank,
    register,
)

MAX_CONCAT = 4  # poet_concat_params.part and the CONCAT kernel's inputs


def _view(shape: Shape, strides: Sequence[int], base: int, scale: float, n_src: int, n_dst: int) -> dict:
    sh, (st,) = coalesce(shape, strides)
    return {
        "rank": len(sh),
        "shape": pad_rank(sh, 1),
        "stride": pad_rank(st),
        "base": base,
        "scale": float(scale),
        "n_src": n_src,
        "n_dst": n_dst,
    }


def _copy_flops(a, ins, out) -> int:
    return numel(out)


# ---- transpose ---------------------------------------------------------------------------------------------
def _perm(a: Attrs, x: Shape) -> tuple[int, ...]:
    perm = tuple(a["perm"])
    if sorted(perm) != list(range(len(x))):
        raise ValueError(f"perm {perm} is not a permutation of the {len(x)} axes of {x}")
    return perm


def _transpose_params(a: Attrs, ins: Sequence[Shape], out: Shape) -> dict:
    x = ins[0]
    st = contiguous_strides(x)
    perm = _perm(a, x)
    return _view(out, [st[p] for p in perm], 0, 1.0, numel(x), numel(out))


def _grad_transpose(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    if not g.needs_grad(node.inputs[0]):
        return {}
    perm = tuple(node.attrs["perm"])
    inv = tuple(int(i) for i in np.argsort(perm))
    return {0: g.emit("transpose", (dy,), Attrs(perm=inv), node, "dx")}


register(
    OpDef(
        name="transpose",
        kernel="STRIDED",
        family="layout",
        n_inputs=(1, 1),
        infer=lambda a, ins: (tuple(ins[0].shape[p] for p in _perm(a, ins[0].shape)), ins[0].dtype),
        flops=_copy_flops,
        ref=lambda a, x: np.transpose(x, tuple(a["perm"])),
        c_params=_transpose_params,
        grad=_grad_transpose,
    )
)


# ---- reshape -----------------------------------------------------------------------------------------------
def _infer_reshape(a: Attrs, ins: Sequence[Tensor]) -> tuple[Shape, str]:
    shape = tuple(a["shape"])
    if numel(shape) != ins[0].numel:
        raise ValueError(f"cannot reshape {ins[0].shape} to {shape}")
    return shape, ins[0].dtype


def _grad_reshape(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    x = node.inputs[0]
    if not g.needs_grad(x):
        return {}
    return {0: g.emit("reshape", (dy,), Attrs(shape=g.tensor(x).shape), node, "dx")}


register(
    OpDef(
        name="reshape",
        kernel="STRIDED",
        family="layout",
        n_inputs=(1, 1),
        infer=_infer_reshape,
        flops=_copy_flops,
        ref=lambda a, x: x.reshape(tuple(a["shape"])),
        c_params=lambda a, ins, out: _view((numel(out),), (1,), 0, 1.0, numel(ins[0]), numel(out)),
        grad=_grad_reshape,
    )
)


# ---- slice -------------------------------------------------------------------------------------------------
def _slice_view(a: Attrs, x: Shape) -> tuple[Shape, list[int], int]:
    starts, steps, shape = tuple(a["starts"]), tuple(a["steps"]), tuple(a["shape"])
    if not len(starts) == len(steps) == len(shape) == len(x):
        raise ValueError(f"slice of {x}: starts/steps/shape must give every axis")
    st = contiguous_strides(x)
    for d, s0, k, n in zip(x, starts, steps, shape, strict=True):
        if k < 1 or s0 < 0 or (n > 0 and s0 + (n - 1) * k >= d):
            raise ValueError(
                f"slice of {x} with starts {starts}, steps {steps}, shape {shape} is out of range"
            )
    base = sum(s0 * s for s0, s in zip(starts, st, strict=True))
    return shape, [s * k for s, k in zip(st, steps, strict=True)], base


def _ref_slice(a: Attrs, x: np.ndarray) -> np.ndarray:
    idx = tuple(
        slice(s0, s0 + (n - 1) * k + 1, k)
        for s0, k, n in zip(a["starts"], a["steps"], a["shape"], strict=True)
    )
    return x[idx]


def _ref_slice_bwd(a: Attrs, dy: np.ndarray) -> np.ndarray:
    dx = np.zeros(tuple(a["x_shape"]))
    idx = tuple(
        slice(s0, s0 + (n - 1) * k + 1, k)
        for s0, k, n in zip(a["starts"], a["steps"], a["shape"], strict=True)
    )
    dx[idx] += dy.reshape(tuple(a["shape"]))
    return dx


def _grad_slice(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    x = node.inputs[0]
    if not g.needs_grad(x):
        return {}
    return {0: g.emit("slice_bwd", (dy,), node.attrs.replace(x_shape=g.tensor(x).shape), node, "dx")}


def _slice_params(a: Attrs, x: Shape) -> dict:
    shape, strides, base = _slice_view(a, x)
    return _view(shape, strides, base, 1.0, numel(x), numel(shape))


register(
    OpDef(
        name="slice",
        kernel="STRIDED",
        family="layout",
        n_inputs=(1, 1),
        infer=lambda a, ins: (_slice_view(a, ins[0].shape)[0], ins[0].dtype),
        flops=_copy_flops,
        ref=_ref_slice,
        c_params=lambda a, ins, out: _slice_params(a, ins[0]),
        grad=_grad_slice,
    )
)

register(
    OpDef(
        name="slice_bwd",
        kernel="SCATTER",
        family="layout",
        n_inputs=(1, 1),
        infer=lambda a, ins: (tuple(a["x_shape"]), "f32"),
        flops=lambda a, ins, out: numel(out),
        ref=_ref_slice_bwd,
        c_params=lambda a, ins, out: {
            **_slice_params(a, out),
            "n_src": numel(ins[0]),
            "n_dst": numel(out),
        },
    )
)


# ---- expand (broadcast copy) ---------------------------------------------------------------------------------
def _infer_expand(a: Attrs, ins: Sequence[Tensor]) -> tuple[Shape, str]:
    src = tuple(a["src_shape"])
    if numel(src) != ins[0].numel:
        raise ValueError(f"expand: input {ins[0].shape} is not of shape {src}")
    broadcast_strides(src, tuple(a["shape"]))
    return tuple(a["shape"]), "f32"


def _grad_expand(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    x = node.inputs[0]
    if not g.needs_grad(x):
        return {}
    a = Attrs(
        mode="sum",
        scale=node.attrs.get("scale", 1.0),
        out_shape=tuple(node.attrs["src_shape"]),
        y_shape=g.tensor(x).shape,
    )
    return {0: g.emit("reduce", (dy,), a, node, "dx")}


register(
    OpDef(
        name="expand",
        kernel="STRIDED",
        family="layout",
        n_inputs=(1, 1),
        infer=_infer_expand,
        flops=_copy_flops,
        ref=lambda a, x: (
            a.get("scale", 1.0) * np.broadcast_to(x.reshape(tuple(a["src_shape"])), tuple(a["shape"])).copy()
        ),
        c_params=lambda a, ins, out: _view(
            out,
            broadcast_strides(tuple(a["src_shape"]), out),
            0,
            a.get("scale", 1.0),
            numel(ins[0]),
            numel(out),
        ),
        grad=_grad_expand,
    )
)


# ---- concat ------------------------------------------------------------------------------------------------
def _infer_concat(a: Attrs, ins: Sequence[Tensor]) -> tuple[Shape, str]:
    ax = a["axis"]
    first = ins[0].shape
    if not 0 <= ax < len(first):
        raise ValueError(f"concat axis {ax} out of range for {first}")
    for t in ins[1:]:
        if len(t.shape) != len(first) or any(
            d != e for k, (d, e) in enumerate(zip(t.shape, first, strict=True)) if k != ax
        ):
            raise ValueError(f"concat along axis {ax} of shapes {[t.shape for t in ins]}")
    return (*first[:ax], sum(t.shape[ax] for t in ins), *first[ax + 1 :]), ins[0].dtype


def _concat_params(a: Attrs, ins: Sequence[Shape], out: Shape) -> dict:
    ax = a["axis"]
    inner = numel(out[ax + 1 :])
    parts = [s[ax] * inner for s in ins]
    return {"outer": numel(out[:ax]), "n_in": len(ins), "part": tuple(parts) + (0,) * (MAX_CONCAT - len(ins))}


def _grad_concat(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    ax = node.attrs["axis"]
    y = g.tensor(node.output).shape
    out: dict[int, str] = {}
    off = 0
    for i, x in enumerate(node.inputs):
        xs = g.tensor(x).shape
        if g.needs_grad(x):
            starts = tuple(off if k == ax else 0 for k in range(len(y)))
            a = Attrs(starts=starts, steps=(1,) * len(y), shape=xs)
            out[i] = g.emit("slice", (dy,), a, node, f"d{i}")
        off += xs[ax]
    return out


register(
    OpDef(
        name="concat",
        kernel="CONCAT",
        family="concat",
        n_inputs=(1, MAX_CONCAT),
        infer=_infer_concat,
        flops=_copy_flops,
        ref=lambda a, *xs: np.concatenate(xs, axis=a["axis"]),
        c_params=_concat_params,
        grad=_grad_concat,
    )
)
