"""Batched matrix product of two tensors (activations or parameters): y = alpha op(A) op(B).

A is [..., M, K] ([..., K, M] when ``ta``), B is [..., K, N] ([..., N, K] when ``tb``). The batch dimensions
must be equal, or one side's must hold a single matrix (it is then broadcast, stride 0). Kernel: MATMUL (a, b)
-> y with params {batch, m, k, n, ta, tb, sa, sb, so, alpha}: sa/sb/so are the batch strides in elements;
so = 0 sums the batch into one [m, n] output (the gradient of a broadcast operand). ``out_shape`` (gradient
nodes) gives the output's shape. Weight matrices (a 2-D parameter on the right) use the linear op instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..ir import Attrs, Node, Tensor
from .base import GradBuilder, OpDef, Shape, numel, register


def dims(a: Attrs, sa_: Shape, sb_: Shape) -> tuple[int, int, int, int, int, int, Shape]:
    """(batch, m, k, n, sa, sb, batch shape of the product)."""
    if len(sa_) < 2 or len(sb_) < 2:
        raise ValueError(f"MatMul needs operands of rank >= 2, got {sa_} and {sb_}")
    m, k = (sa_[-1], sa_[-2]) if a["ta"] else (sa_[-2], sa_[-1])
    k2, n = (sb_[-1], sb_[-2]) if a["tb"] else (sb_[-2], sb_[-1])
    if k != k2:
        raise ValueError(f"MatMul of {sa_} and {sb_}: inner sizes {k} and {k2} differ")
    ba, bb = sa_[:-2], sb_[:-2]
    rank = max(len(ba), len(bb))
    pa, pb = (1,) * (rank - len(ba)) + ba, (1,) * (rank - len(bb)) + bb
    na, nb = numel(ba), numel(bb)
    if pa == pb:
        return na, m, k, n, m * k, k * n, pa
    if nb == 1:
        return na, m, k, n, m * k, 0, pa
    if na == 1:
        return nb, m, k, n, 0, k * n, pb
    raise ValueError(f"MatMul of {sa_} and {sb_}: batch dimensions differ (only one side may broadcast)")


def _infer(a: Attrs, ins: Sequence[Tensor]) -> tuple[Shape, str]:
    batch, m, _k, n, _sa, _sb, bshape = dims(a, ins[0].shape, ins[1].shape)
    if "out_shape" in a:
        out = tuple(a["out_shape"])
        if numel(out) not in (batch * m * n, m * n):
            raise ValueError(f"MatMul output shape {out} does not hold {batch} x [{m}, {n}]")
        return out, "f32"
    return (*bshape, m, n), "f32"


def _params(a: Attrs, ins: Sequence[Shape], out: Shape) -> dict:
    batch, m, k, n, sa, sb, _ = dims(a, ins[0], ins[1])
    return {
        "batch": batch,
        "m": m,
        "k": k,
        "n": n,
        "ta": int(bool(a["ta"])),
        "tb": int(bool(a["tb"])),
        "sa": sa,
        "sb": sb,
        "so": m * n if numel(out) == batch * m * n else 0,
        "alpha": float(a.get("alpha", 1.0)),
    }


def _ref(a: Attrs, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    batch, m, k, n, sa, sb, bshape = dims(a, x.shape, y.shape)
    A = x.reshape(-1, *x.shape[-2:])
    B = y.reshape(-1, *y.shape[-2:])
    if a["ta"]:
        A = A.transpose(0, 2, 1)
    if a["tb"]:
        B = B.transpose(0, 2, 1)
    if sa == 0:
        A = np.broadcast_to(A, (batch, m, k))
    if sb == 0:
        B = np.broadcast_to(B, (batch, k, n))
    C = a.get("alpha", 1.0) * (A @ B)
    out = tuple(a["out_shape"]) if "out_shape" in a else (*bshape, m, n)
    if numel(out) != C.size:
        C = C.sum(axis=0)
    return C.reshape(out)


def _grad(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    A, B = node.inputs
    ta, tb = bool(node.attrs["ta"]), bool(node.attrs["tb"])
    alpha = node.attrs.get("alpha", 1.0)
    out: dict[int, str] = {}
    if g.needs_grad(A):
        shape = g.tensor(A).shape
        if not ta:
            out[0] = g.emit(
                "matmul", (dy, B), Attrs(ta=False, tb=not tb, alpha=alpha, out_shape=shape), node, "dA"
            )
        else:
            out[0] = g.emit(
                "matmul", (B, dy), Attrs(ta=tb, tb=True, alpha=alpha, out_shape=shape), node, "dA"
            )
    if g.needs_grad(B):
        shape = g.tensor(B).shape
        if not tb:
            out[1] = g.emit(
                "matmul", (A, dy), Attrs(ta=not ta, tb=False, alpha=alpha, out_shape=shape), node, "dB"
            )
        else:
            out[1] = g.emit(
                "matmul", (dy, A), Attrs(ta=True, tb=ta, alpha=alpha, out_shape=shape), node, "dB"
            )
    return out


def _flops(a: Attrs, ins: Sequence[Shape], out: Shape) -> int:
    batch, m, k, n, *_ = dims(a, ins[0], ins[1])
    return 2 * batch * m * k * n


register(
    OpDef(
        name="matmul",
        kernel="MATMUL",
        family="matmul",
        n_inputs=(2, 2),
        infer=_infer,
        flops=_flops,
        ref=_ref,
        c_params=_params,
        grad=_grad,
    )
)
