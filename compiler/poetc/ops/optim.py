"""Optimizer steps, applied in place as soon as a parameter's gradient is complete.

SGD (w, g) -> w -= lr * g.
The learning rate is a runtime value (sent with each step), so one build serves any schedule of rates.
Outputs are zero-byte update tokens: the parameter itself is the storage.
"""

from __future__ import annotations

import numpy as np

from ..ir import Attrs
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
