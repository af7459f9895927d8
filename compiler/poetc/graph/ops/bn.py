"""Batch normalisation over [N, C, ...] (statistics per channel over the batch and spatial positions).

Training uses the batch's statistics, inference the running ones (PyTorch's train() / eval()):
  BN_STATS (x, running_mean, running_var, training_flag) -> stats [2, C]: rows (mean, biased variance) of the
           batch when the flag is non-zero (the train program), else the running statistics (inference);
  BN_APPLY (x, stats, gamma, beta) -> y = (x - mean) / sqrt(var + eps) * gamma + beta.
Backward (batch statistics; the gradient through the statistics is folded into dx):
  BN_DX (dy, x, stats, gamma) -> dx = gamma r / M (M dy - sum dy - xhat sum(dy xhat)),  r = 1/sqrt(var + eps);
  BN_DGAMMA (dy, x, stats) -> sum(dy xhat);   BN_DBETA (dy) -> sum(dy)   (per channel).
A frozen BatchNorm (scale and bias not trained, ``--bn frozen``) uses its running statistics in training too, as
PyTorch's eval() does: no batch statistics, no running-statistics update, and no training flag:
  BN_FROZEN (x, running_mean, running_var, gamma, beta) -> y, BN_APPLY's arithmetic with the running statistics;
  BN_FROZEN_DX (dy, running_var, gamma) -> dx = dy gamma / sqrt(var + eps).
Running statistics, once per training step, in place (like an optimizer step):
  BN_RUNNING (state, stats): state = (1 - momentum) state + momentum * stat, with the unbiased variance
  (M / (M - 1) times the batch's) for running_var, as PyTorch does. ``momentum`` is PyTorch's (ONNX's is
  1 - momentum).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..ir import Attrs, Node, Tensor
from .base import GradBuilder, OpDef, Shape, StateUpdate, numel, register


def _nchw(x: Shape) -> tuple[int, int, int]:
    if len(x) < 2:
        raise ValueError(f"BatchNormalization needs an input of rank >= 2, got {x}")
    return x[0], x[1], numel(x[2:])


def _params(a: Attrs, x: Shape) -> dict:
    n, c, hw = _nchw(x)
    m = n * hw
    return {
        "n": n,
        "c": c,
        "hw": hw,
        "eps": float(a.get("eps", 1e-5)),
        "momentum": float(a.get("momentum", 0.1)),
        "unbias": float(m) / float(m - 1) if m > 1 else 1.0,
        "which": int(a.get("which", 0)),
    }


def _axes(x: np.ndarray) -> tuple[int, ...]:
    return (0, *range(2, x.ndim))


def _bc(v: np.ndarray, ndim: int) -> np.ndarray:
    """A per-channel vector broadcast against [N, C, ...]."""
    return v.reshape(1, -1, *([1] * (ndim - 2)))


def _xhat(a: Attrs, x: np.ndarray, stats: np.ndarray) -> np.ndarray:
    mean, var = stats[0], stats[1]
    return (x - _bc(mean, x.ndim)) / np.sqrt(_bc(var, x.ndim) + a.get("eps", 1e-5))


def _ref_stats(a: Attrs, x: np.ndarray, rm: np.ndarray, rv: np.ndarray, flag: np.ndarray) -> np.ndarray:
    if float(np.asarray(flag).reshape(-1)[0]) != 0.0:
        return np.stack([x.mean(axis=_axes(x)), x.var(axis=_axes(x))])
    return np.stack([rm.reshape(-1), rv.reshape(-1)])


def _ref_apply(a: Attrs, x: np.ndarray, stats: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    return _xhat(a, x, stats) * _bc(gamma, x.ndim) + _bc(beta, x.ndim)


def _ref_dx(a: Attrs, dy: np.ndarray, x: np.ndarray, stats: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    ax = _axes(x)
    m = x.size // x.shape[1]
    xh = _xhat(a, x, stats)
    r = 1.0 / np.sqrt(stats[1] + a.get("eps", 1e-5))
    s1 = _bc(dy.sum(axis=ax), x.ndim)
    s2 = _bc((dy * xh).sum(axis=ax), x.ndim)
    return _bc(gamma * r / m, x.ndim) * (m * dy - s1 - xh * s2)


def _ref_running(a: Attrs, state: np.ndarray, stats: np.ndarray, lr: float = 0.0) -> tuple[np.ndarray]:
    mom = a.get("momentum", 0.1)
    if a["which"] == 0:
        stat = stats[0]
    else:
        stat = stats[1] * _params(a, tuple(a["x_shape"]))["unbias"]
    return ((1.0 - mom) * state + mom * stat.reshape(state.shape),)


def _ref_frozen(
    a: Attrs, x: np.ndarray, rm: np.ndarray, rv: np.ndarray, gamma: np.ndarray, beta: np.ndarray
) -> np.ndarray:
    return _ref_apply(a, x, np.stack([rm.reshape(-1), rv.reshape(-1)]), gamma, beta)


def _ref_frozen_dx(a: Attrs, dy: np.ndarray, rv: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    return dy * _bc(gamma.reshape(-1) / np.sqrt(rv.reshape(-1) + a.get("eps", 1e-5)), dy.ndim)


def _grad_apply(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    x, stats, gamma, beta = node.inputs
    out: dict[int, str] = {}
    if g.needs_grad(x):
        out[0] = g.emit("bn_dx", (dy, x, stats, gamma), node.attrs, node, "dx")
    if g.needs_grad(gamma):
        out[2] = g.emit("bn_dgamma", (dy, x, stats), node.attrs, node, "dgamma")
    if g.needs_grad(beta):
        out[3] = g.emit("bn_dbeta", (dy,), node.attrs, node, "dbeta")
    return out


def _grad_frozen(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    x, _rm, rv, gamma, beta = node.inputs
    if g.needs_grad(gamma) or g.needs_grad(beta):
        raise ValueError(f"node {node.name}: a BatchNorm with running statistics has frozen scale and bias")
    return {0: g.emit("bn_frozen_dx", (dy, rv, gamma), node.attrs, node, "dx")} if g.needs_grad(x) else {}


def _state_stats(g: GradBuilder, node: Node) -> list[StateUpdate]:
    x, rm, rv, _flag = node.inputs
    a = node.attrs.replace(x_shape=g.tensor(x).shape)
    return [
        StateUpdate("bn_running", (rm, node.output), a.replace(which=0), "running_mean"),
        StateUpdate("bn_running", (rv, node.output), a.replace(which=1), "running_var"),
    ]


def _infer_stats(a: Attrs, ins: Sequence[Tensor]) -> tuple[Shape, str]:
    _n, c, _hw = _nchw(ins[0].shape)
    for t in ins[1:3]:
        if t.numel != c:
            raise ValueError(f"running statistic {t.name} has {t.numel} values for {c} channels")
    if ins[3].numel != 1:
        raise ValueError("the training flag must be one value")
    return (2, c), "f32"


def _infer_apply(a: Attrs, ins: Sequence[Tensor]) -> tuple[Shape, str]:
    _n, c, _hw = _nchw(ins[0].shape)
    if ins[1].shape != (2, c):
        raise ValueError(f"statistics of shape {ins[1].shape}, expected {(2, c)}")
    for t in ins[2:]:
        if t.numel != c:
            raise ValueError(f"{t.name} has {t.numel} values for {c} channels")
    return ins[0].shape, "f32"


register(
    OpDef(
        name="bn_stats",
        kernel="BN_STATS",
        family="bn",
        n_inputs=(4, 4),
        infer=_infer_stats,
        flops=lambda a, ins, out: 3 * numel(ins[0]),
        ref=_ref_stats,
        c_params=lambda a, ins, out: _params(a, ins[0]),
        state=_state_stats,
    )
)

register(
    OpDef(
        name="bn_apply",
        kernel="BN_APPLY",
        family="bn",
        n_inputs=(4, 4),
        infer=_infer_apply,
        flops=lambda a, ins, out: 2 * numel(out),
        ref=_ref_apply,
        c_params=lambda a, ins, out: _params(a, ins[0]),
        grad=_grad_apply,
    )
)

register(
    OpDef(
        name="bn_dx",
        kernel="BN_DX",
        family="bn",
        n_inputs=(4, 4),
        infer=lambda a, ins: (ins[1].shape, "f32"),
        flops=lambda a, ins, out: 6 * numel(out),
        ref=_ref_dx,
        c_params=lambda a, ins, out: _params(a, ins[1]),
    )
)

register(
    OpDef(
        name="bn_dgamma",
        kernel="BN_DGAMMA",
        family="bn",
        n_inputs=(3, 3),
        infer=lambda a, ins: ((_nchw(ins[1].shape)[1],), "f32"),
        flops=lambda a, ins, out: 3 * numel(ins[0]),
        ref=lambda a, dy, x, stats: (dy * _xhat(a, x, stats)).sum(axis=_axes(x)),
        c_params=lambda a, ins, out: _params(a, ins[1]),
    )
)

register(
    OpDef(
        name="bn_dbeta",
        kernel="BN_DBETA",
        family="bn",
        n_inputs=(1, 1),
        infer=lambda a, ins: ((_nchw(ins[0].shape)[1],), "f32"),
        flops=lambda a, ins, out: numel(ins[0]),
        ref=lambda a, dy: dy.sum(axis=_axes(dy)),
        c_params=lambda a, ins, out: _params(a, ins[0]),
    )
)

register(
    OpDef(
        name="bn_running",
        kernel="BN_RUNNING",
        family="bn",
        n_inputs=(2, 2),
        infer=lambda a, ins: (ins[0].shape, "f32"),
        flops=lambda a, ins, out: 3 * numel(ins[0]),
        ref=_ref_running,
        c_params=lambda a, ins, out: _params(a, tuple(a["x_shape"])),
        in_place=(0,),
    )
)


def _infer_frozen(a: Attrs, ins: Sequence[Tensor]) -> tuple[Shape, str]:
    _n, c, _hw = _nchw(ins[0].shape)
    for t in ins[1:]:
        if t.numel != c:
            raise ValueError(f"{t.name} has {t.numel} values for {c} channels")
    return ins[0].shape, "f32"


register(
    OpDef(
        name="bn_frozen",
        kernel="BN_FROZEN",
        family="bn",
        n_inputs=(5, 5),
        infer=_infer_frozen,
        flops=lambda a, ins, out: 2 * numel(out),
        ref=_ref_frozen,
        c_params=lambda a, ins, out: _params(a, ins[0]),
        grad=_grad_frozen,
    )
)

register(
    OpDef(
        name="bn_frozen_dx",
        kernel="BN_FROZEN_DX",
        family="bn",
        n_inputs=(3, 3),
        infer=lambda a, ins: (ins[0].shape, "f32"),
        flops=lambda a, ins, out: numel(out),
        ref=_ref_frozen_dx,
        c_params=lambda a, ins, out: _params(a, ins[0]),
    )
)
