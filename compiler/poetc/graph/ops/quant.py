"""Dequantization of a byte input. DEQUANT_U8 (q: u8) -> y = scale * q (float32).

A model built with ``--input-u8 SCALE`` keeps its input batch as bytes in RAM (a quarter of the floats) and
this node makes the floats, an ordinary activation that a schedule may drop and recompute. The scale is fixed
at build time; with no offset the target's result is one rounding of scale * q, exactly as numpy computes it.
"""

from __future__ import annotations

import numpy as np

from .base import OpDef, numel, register

register(
    OpDef(
        name="dequant_u8",
        kernel="DEQUANT_U8",
        family="quant",
        n_inputs=(1, 1),
        infer=lambda a, ins: (ins[0].shape, "f32"),
        flops=lambda a, ins, out: numel(out),
        ref=lambda a, q: float(np.float32(a["scale"])) * np.asarray(q, np.float64),
        c_params=lambda a, ins, out: {"n": numel(out), "scale": float(a["scale"])},
    )
)
