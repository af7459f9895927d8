"""Softmax cross-entropy over integer labels, mean over the batch.

SOFTMAX_XENT (logits [M, C], labels [M] i32) -> loss (scalar, static);
SOFTMAX_XENT_BWD (logits, labels) -> dlogits = (softmax(logits) - onehot(labels)) / M.
The backward recomputes the softmax from the logits (cheap), so no probability tensor has to be kept.
"""

from __future__ import annotations

import numpy as np

from ..ir import Attrs, Tensor
from .base import OpDef, Shape, numel, register


def _mc(logits: Shape) -> tuple[int, int]:
    if len(logits) < 1 or numel(logits) == 0:
        raise ValueError(f"logits of shape {logits} are empty")
    c = logits[-1]
    return numel(logits) // c, c


def _check(a: Attrs, ins: list[Tensor]) -> None:
    m, _ = _mc(ins[0].shape)
    if ins[1].dtype != "i32" or ins[1].numel != m:
        raise ValueError(f"labels must be {m} int32 values, got {ins[1].shape} {ins[1].dtype}")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _ref_fwd(a: Attrs, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    m, c = _mc(logits.shape)
    lp = _log_softmax(logits.reshape(m, c))
    return np.asarray(-lp[np.arange(m), labels.reshape(m).astype(np.int64)].mean())


def _ref_bwd(a: Attrs, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    m, c = _mc(logits.shape)
    p = np.exp(_log_softmax(logits.reshape(m, c)))
    p[np.arange(m), labels.reshape(m).astype(np.int64)] -= 1.0
    return (p / m).reshape(logits.shape)


def _infer_fwd(a: Attrs, ins: list[Tensor]) -> tuple[Shape, str]:
    _check(a, ins)
    return (), "f32"


def _infer_bwd(a: Attrs, ins: list[Tensor]) -> tuple[Shape, str]:
    _check(a, ins)
    return ins[0].shape, "f32"


def _params(a: Attrs, ins, out) -> dict:
    m, c = _mc(ins[0])
    return {"m": m, "c": c}


register(
    OpDef(
        name="softmax_xent",
        kernel="SOFTMAX_XENT_FWD",
        family="xent",
        n_inputs=(2, 2),
        infer=_infer_fwd,
        flops=lambda a, ins, out: 4 * numel(ins[0]),
        ref=_ref_fwd,
        c_params=_params,
    )
)

register(
    OpDef(
        name="softmax_xent_bwd",
        kernel="SOFTMAX_XENT_BWD",
        family="xent",
        n_inputs=(2, 2),
        infer=_infer_bwd,
        flops=lambda a, ins, out: 4 * numel(ins[0]),
        ref=_ref_bwd,
        c_params=_params,
    )
)
