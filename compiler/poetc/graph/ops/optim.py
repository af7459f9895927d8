"""Optimizer steps, applied in place as soon as a parameter's gradient is complete.

PyTorch's SGD (torch.optim.SGD with dampening 0, no Nesterov), for a raw gradient g:
  g' = g + weight_decay * w;   plain:  w -= lr * g';   momentum:  v = momentum * v + g',  w -= lr * v.
SGD (w, g[, v]): the momentum buffer v is an optional input (a static tensor of the parameter's shape, zero
before the first step, updated in place with w). Momentum and weight decay are build-time constants (node
attributes, 0 when absent: plain SGD's node carries neither); the learning rate is a runtime value (sent with
each step), so one build serves any schedule of rates.
Outputs are zero-byte update tokens: the parameter (and its buffer) is the storage.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..ir import Attrs
from . import conv, linear
from .base import OpDef, Shape, numel, register


def ref_step(
    a: Attrs, w: np.ndarray, g: np.ndarray, v: np.ndarray | None, lr: float
) -> tuple[np.ndarray, ...]:
    """The step of a parameter ``w`` with raw gradient ``g``: (new w,) or (new w, new v) with a buffer."""
    wd = float(a.get("weight_decay", 0.0))
    d = g + wd * w if wd else g
    if v is None:
        return (w - lr * d,)
    v = float(a.get("momentum", 0.0)) * v + d
    return (w - lr * v, v)


def _split(rest: Sequence) -> tuple[np.ndarray | None, float]:
    """The optional buffer and lr from the end of an in-place reference's arguments."""
    return (rest[0] if len(rest) == 2 else None), rest[-1]


def step_flops(a: Attrs, n: int) -> int:
    """The update's FLOPs on n values: w -= lr g (2), + weight decay (2), + the momentum buffer (2)."""
    return 2 * n * (1 + bool(a.get("weight_decay", 0.0)) + bool(a.get("momentum", 0.0)))


def _infer_step(k: int, kv: int):
    """The output token has the parameter's shape (input k); a momentum buffer (input kv) must have it too."""

    def infer(a: Attrs, ins) -> tuple[Shape, str]:
        if len(ins) > kv and ins[kv].shape != ins[k].shape:
            raise ValueError(f"momentum buffer of shape {ins[kv].shape} for a parameter of {ins[k].shape}")
        return ins[k].shape, "f32"

    return infer


def _ref_sgd(a: Attrs, w: np.ndarray, g: np.ndarray, *rest) -> tuple[np.ndarray, ...]:
    v, lr = _split(rest)
    return ref_step(a, w, g, v, lr)


register(
    OpDef(
        name="sgd",
        kernel="SGD",
        family="sgd",
        n_inputs=(2, 3),
        infer=_infer_step(0, 2),
        flops=lambda a, ins, out: step_flops(a, numel(ins[0])),
        ref=_ref_sgd,
        c_params=lambda a, ins, out: {"n": numel(ins[0]), **linear.optim_fields(a)},
        in_place=(0, 2),
    )
)


# ---- fused weight gradient + SGD ----------------------------------------------------------------------------
# LINEAR_DW_SGD (dy, x, W[, V]) and BIAS_GRAD_SGD (dy, b[, V]), CONV2D_DW_SGD (dy, x, W[, V]) and CONV2D_DB_SGD
# (dy, b[, V]) compute a parameter's gradient a few values at a time and apply it at once, so no gradient buffer
# is ever allocated (on a microcontroller the largest layer's dW can be as large as all the activations together:
# ResNet-8's 64 x 64 x 3 x 3 convolutions have 147 KB of weights). autodiff's fusion rewrites linear_dw + sgd,
# bias_grad + sgd, conv2d_dw + sgd and conv2d_db + sgd into them. Their outputs are update tokens; gradient
# capture (dumps, verify) streams the raw gradient's chunks, in the parameter's memory order, as the kernel
# produces them. Their attributes are the gradient op's and the step's (momentum, weight decay).
def _ref_dw_sgd(a: Attrs, dy: np.ndarray, x: np.ndarray, w: np.ndarray, *rest) -> tuple[np.ndarray, ...]:
    v, lr = _split(rest)
    return ref_step(a, w, linear._ref_dw(a, dy, x), v, lr)


def _ref_db_sgd(a: Attrs, dy: np.ndarray, b: np.ndarray, *rest) -> tuple[np.ndarray, ...]:
    v, lr = _split(rest)
    return ref_step(a, b, linear._ref_db(a, dy), v, lr)


register(
    OpDef(
        name="linear_dw_sgd",
        kernel="LINEAR_DW_SGD",
        family="linear",
        n_inputs=(3, 4),
        infer=_infer_step(2, 3),
        flops=lambda a, ins, out: 2 * numel(ins[1]) * ins[0][-1] + step_flops(a, numel(ins[2])),
        ref=_ref_dw_sgd,
        c_params=lambda a, ins, out: linear._params(a, ins, out, ins[1], ins[2]),
        in_place=(2, 3),
        step_grad=lambda a, dy, x, w, *v: linear._ref_dw(a, dy, x),
    )
)

register(
    OpDef(
        name="bias_grad_sgd",
        kernel="BIAS_GRAD_SGD",
        family="linear",
        n_inputs=(2, 3),
        infer=_infer_step(1, 2),
        flops=lambda a, ins, out: numel(ins[0]) + step_flops(a, numel(ins[1])),
        ref=_ref_db_sgd,
        c_params=lambda a, ins, out: linear.bias_params(a, ins[0]),
        in_place=(1, 2),
        step_grad=lambda a, dy, b, *v: linear._ref_db(a, dy),
    )
)


def _ref_conv_dw_sgd(a: Attrs, dy: np.ndarray, x: np.ndarray, w: np.ndarray, *rest) -> tuple[np.ndarray, ...]:
    v, lr = _split(rest)
    return ref_step(a, w, conv._ref_dw(a, dy, x), v, lr)


def _ref_conv_db_sgd(a: Attrs, dy: np.ndarray, b: np.ndarray, *rest) -> tuple[np.ndarray, ...]:
    v, lr = _split(rest)
    return ref_step(a, b, conv._ref_db(a, dy), v, lr)


register(
    OpDef(
        name="conv2d_dw_sgd",
        kernel="CONV2D_DW_SGD",
        family="conv",
        n_inputs=(3, 4),
        infer=_infer_step(2, 3),
        flops=lambda a, ins, out: 2 * conv._macs(ins[1], ins[2], ins[0]) + step_flops(a, numel(ins[2])),
        ref=_ref_conv_dw_sgd,
        c_params=lambda a, ins, out: conv._params(a, ins[1], ins[2], ins[0]),
        in_place=(2, 3),
        step_grad=lambda a, dy, x, w, *v: conv._ref_dw(a, dy, x),
        cost_class=lambda a, ins, out: conv._cost_class(a["w_shape"], a["groups"]),
        cost_alias="conv2d_dw",
    )
)

register(
    OpDef(
        name="conv2d_db_sgd",
        kernel="CONV2D_DB_SGD",
        family="conv",
        n_inputs=(2, 3),
        infer=_infer_step(1, 2),
        flops=lambda a, ins, out: numel(ins[0]) + step_flops(a, numel(ins[1])),
        ref=_ref_conv_db_sgd,
        c_params=lambda a, ins, out: conv._params(a, a["x_shape"], a["w_shape"], ins[0]),
        in_place=(1, 2),
        step_grad=lambda a, dy, b, *v: conv._ref_db(a, dy),
        cost_alias="conv2d_db",
    )
)
