"""Byte inputs: keep the input batch as uint8 in RAM and dequantize it with a node of the graph.

``u8_input(model, scale)`` turns the float input into an activation computed by a DEQUANT_U8 node from a new
uint8 input tensor ``<input>:u8`` (y = scale * q). The batch then costs a quarter of its float size in static
RAM, and the float copy can be dropped and recomputed by the schedule like any activation. Data must be
exactly representable (x == float32(scale) * q for uint8 q); the bundled digits are, with scale 1/16.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import PoetcError
from ..graph.ir import Attrs, Graph, Model, Node, Role, Tensor

SUFFIX = ":u8"


def u8_input(model: Model, scale: float) -> Model:
    if not (scale > 0 and np.isfinite(scale)):
        raise PoetcError(f"--input-u8: the scale must be a positive number, got {scale}")
    g = model.graph
    src = model.input
    t = g.tensor(src)
    q = src + SUFFIX
    tensors = dict(g.tensors)
    tensors[q] = Tensor(q, t.shape, Role.INPUT, "u8")
    tensors[src] = Tensor(src, t.shape, Role.ACTIVATION, "f32")
    node = Node(
        "dequantize_input", "dequant_u8", (q,), src, Attrs(scale=float(np.float32(scale))), origin="input"
    )
    inputs = tuple(q if i == src else i for i in g.inputs)
    graph = Graph(g.name, tensors, (node, *g.nodes), inputs, g.outputs)
    return replace(model, graph=graph, input=q)


def to_u8(x: np.ndarray, scale: float) -> np.ndarray:
    """The bytes q with float32(scale) * q == x, or an error naming the first value that does not fit."""
    s = np.float32(scale)
    x = np.asarray(x, np.float32)
    q = np.round(x / s)
    ok = (q >= 0) & (q <= 255) & (s * q.astype(np.float32) == x)
    if not ok.all():
        bad = int(np.flatnonzero(~ok.reshape(-1))[0])
        raise PoetcError(
            f"input value {float(x.reshape(-1)[bad])!r} (element {bad}) is not {s} times a byte; "
            f"rebuild without --input-u8 or with a scale that fits the data"
        )
    return q.astype(np.uint8)


def from_u8(q: np.ndarray, scale: float) -> np.ndarray:
    return np.float32(scale) * np.asarray(q).astype(np.float32)
