"""Elementwise activations and scalar arithmetic; params {n, a, b}.

CLIP (x) -> min(max(x, a), b)            CLIP_BWD (y, dy) -> dy where a < y < b (hardtanh / ReLU6)
SIGMOID (x) -> 1 / (1 + e^-x)            SIGMOID_BWD (y, dy) -> dy y (1 - y)
TANH (x) -> tanh x                       TANH_BWD (y, dy) -> dy (1 - y^2)
GELU (x) -> x/2 (1 + erf(x / sqrt 2))    GELU_BWD (x, dy) -> dy (Phi(x) + x phi(x))   (PyTorch's exact GELU)
ERF (x) -> erf x                         ERF_BWD (x, dy) -> dy 2/sqrt(pi) e^(-x^2)
AFFINE (x) -> a x + b                    (its gradient is AFFINE with b = 0)
SQRT (x) -> sqrt x                       SQRT_BWD (y, dy) -> dy / (2 y)
POW (x) -> x^a                           POW_BWD (x, dy) -> dy a x^(a-1)
Backward kernels read the forward output where that suffices, so the input can be freed.
"""

from __future__ import annotations

import math

import numpy as np

from ..ir import Attrs, Node
from .base import GradBuilder, OpDef, numel, register, same_shape

FLT_MAX = float(np.finfo(np.float32).max)

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _params(a: Attrs, ins, out) -> dict:
    return {"n": numel(out), "a": float(a.get("a", 0.0)), "b": float(a.get("b", 0.0))}


def _ref_gelu(a: Attrs, x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _ref_gelu_bwd(a: Attrs, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return dy * (cdf + x * pdf)


def _from_output(bwd: str):
    def rule(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
        if not g.needs_grad(node.inputs[0]):
            return {}
        return {0: g.emit(bwd, (node.output, dy), node.attrs, node, "dx")}

    return rule


def _from_input(bwd: str):
    def rule(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
        if not g.needs_grad(node.inputs[0]):
            return {}
        return {0: g.emit(bwd, (node.inputs[0], dy), node.attrs, node, "dx")}

    return rule


def _grad_affine(g: GradBuilder, node: Node, dy: str) -> dict[int, str]:
    if not g.needs_grad(node.inputs[0]):
        return {}
    return {0: g.emit("affine", (dy,), Attrs(a=node.attrs["a"], b=0.0), node, "dx")}


def _unary(name: str, kernel: str, ref, grad=None, cost: int = 1) -> None:
    register(
        OpDef(
            name=name,
            kernel=kernel,
            family="act",
            n_inputs=(1, 1),
            infer=same_shape,
            flops=lambda a, ins, out: cost * numel(out),
            ref=ref,
            c_params=_params,
            grad=grad,
        )
    )


def _backward(name: str, kernel: str, ref, cost: int = 2) -> None:
    register(
        OpDef(
            name=name,
            kernel=kernel,
            family="act",
            n_inputs=(2, 2),
            infer=lambda a, ins: (ins[1].shape, "f32"),
            flops=lambda a, ins, out: cost * numel(out),
            ref=ref,
            c_params=_params,
        )
    )


_unary("clip", "CLIP_FWD", lambda a, x: np.minimum(np.maximum(x, a["a"]), a["b"]), _from_output("clip_bwd"))
_backward("clip_bwd", "CLIP_BWD", lambda a, y, dy: dy * ((y > a["a"]) & (y < a["b"])))
_unary("sigmoid", "SIGMOID_FWD", lambda a, x: 1.0 / (1.0 + np.exp(-x)), _from_output("sigmoid_bwd"), 4)
_backward("sigmoid_bwd", "SIGMOID_BWD", lambda a, y, dy: dy * y * (1.0 - y), 3)
_unary("tanh", "TANH_FWD", lambda a, x: np.tanh(x), _from_output("tanh_bwd"), 4)
_backward("tanh_bwd", "TANH_BWD", lambda a, y, dy: dy * (1.0 - y * y), 3)
_unary("gelu", "GELU_FWD", _ref_gelu, _from_input("gelu_bwd"), 8)
_backward("gelu_bwd", "GELU_BWD", _ref_gelu_bwd, 12)
_unary("erf", "ERF_FWD", lambda a, x: _erf(x), _from_input("erf_bwd"), 6)
_backward("erf_bwd", "ERF_BWD", lambda a, x, dy: dy * (2.0 / math.sqrt(math.pi)) * np.exp(-x * x), 5)
_unary("affine", "AFFINE", lambda a, x: a["a"] * x + a["b"], _grad_affine, 2)
_unary("sqrt", "SQRT_FWD", lambda a, x: np.sqrt(x), _from_output("sqrt_bwd"), 4)
_backward("sqrt_bwd", "SQRT_BWD", lambda a, y, dy: dy / (2.0 * y), 2)
_unary("pow", "POW_FWD", lambda a, x: np.power(x, a["a"]), _from_input("pow_bwd"), 4)
_backward("pow_bwd", "POW_BWD", lambda a, x, dy: dy * a["a"] * np.power(x, a["a"] - 1.0), 5)
