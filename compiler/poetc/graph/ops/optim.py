"""Optimizer steps, applied in place as soon as a parameter's gradient is complete.

SGD (w, g) -> w -= lr * g.
The learning rate is a runtime value (sent with each step), so one build serves any schedule of rates.
Outputs are zero-byte update tokens: the parameter itself is the storage.
"""

from __future__ import annotations

import numpy as np

from ..ir import Attrs
from . import linear
from .base import OpDef, numel, register


def ref_sgd(a: Attrs, w: np.ndarray, g: np.ndarray, lr: float) -> np.ndarray:
    return w - lr * g


register(
    OpDef(
        name="sgd",
        kernel="SGD",
        family="sgd",
        n_inputs=(2, 2),
        infer=lambda a, ins: (ins[0].shape, "f32"),
        flops=lambda a, ins, out: 2 * numel(ins[0]),
        ref=ref_sgd,
        c_params=lambda a, ins, out: {"n": numel(ins[0])},
        in_place=0,
    )
)


# ---- fused weight gradient + SGD ----------------------------------------------------------------------------
# LINEAR_DW_SGD (dy, x, W) and BIAS_GRAD_SGD (dy, b) compute a parameter's gradient a few values at a time and
# apply it at once, so no gradient buffer is ever allocated (on a microcontroller the largest layer's dW can
# be as large as all the activations together). autodiff.fuse_updates rewrites linear_dw + sgd and
# bias_grad + sgd into them. Their outputs are update tokens; gradient capture (dumps, verify) streams the
# chunks as the kernel produces them.


register(
    OpDef(
        name="linear_dw_sgd",
        kernel="LINEAR_DW_SGD",
        family="linear",
        n_inputs=(3, 3),
        infer=lambda a, ins: (ins[2].shape, "f32"),
        flops=lambda a, ins, out: 2 * numel(ins[1]) * ins[0][-1] + 2 * numel(ins[2]),
        ref=lambda a, dy, x, w, lr: w - lr * linear._ref_dw(a, dy, x),
        c_params=lambda a, ins, out: linear._params(a, ins, out, ins[1], ins[2]),
        in_place=2,
        step_grad=lambda a, dy, x, w: linear._ref_dw(a, dy, x),
    )
)

register(
    OpDef(
        name="bias_grad_sgd",
        kernel="BIAS_GRAD_SGD",
        family="linear",
        n_inputs=(2, 2),
        infer=lambda a, ins: (ins[1].shape, "f32"),
        flops=lambda a, ins, out: numel(ins[0]) + 2 * numel(ins[1]),
        ref=lambda a, dy, b, lr: b - lr * linear._ref_db(a, dy),
        c_params=lambda a, ins, out: {
            "m": numel(ins[0]) // a["n"],
            "k": 0,
            "n": a["n"],
            "trans_w": 0,
            "alpha": 1.0,
            "beta": float(a.get("beta", 1.0)),
        },
        in_place=1,
        step_grad=lambda a, dy, b: linear._ref_db(a, dy),
    )
)
