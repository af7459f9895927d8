"""Built-in models, built as ONNX graphs so that they take exactly the path a user's file takes.

Weights are initialised like PyTorch's defaults (uniform in +-1/sqrt(fan_in)) from a fixed seed, so builds are
reproducible.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class ZooEntry:
    build: Callable[[], onnx.ModelProto]
    batch: int
    about: str


class _Builder:
    def __init__(self, name: str, in_shape: tuple[int, ...], seed: int) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.in_shape = in_shape
        self.cur = "input"
        self.k = 0

    def uniform(self, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        bound = 1.0 / np.sqrt(fan_in)
        return self.rng.uniform(-bound, bound, size=shape).astype(np.float32)

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        self.k += 1
        out = f"{op.lower()}{self.k}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.k}", **attrs))
        self.cur = out
        return out

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def flatten(self) -> str:
        return self.node("Flatten", [self.cur], axis=1)

    def linear(self, name: str, fan_in: int, fan_out: int) -> str:
        w = self.init(f"{name}.weight", self.uniform((fan_out, fan_in), fan_in))
        b = self.init(f"{name}.bias", self.uniform((fan_out,), fan_in))
        return self.node("Gemm", [self.cur, w, b], alpha=1.0, beta=1.0, transB=1)

    def relu(self) -> str:
        return self.node("Relu", [self.cur])

    def model(self, batch: int, out_dim: int) -> onnx.ModelProto:
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *self.in_shape])
        out = helper.make_tensor_value_info(self.cur, TensorProto.FLOAT, ["batch", out_dim])
        graph = helper.make_graph(self.nodes, self.name, [inp], [out], self.inits)
        m = helper.make_model(graph, producer_name="poetc-zoo", opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def _mlp(name: str, widths: list[int], in_shape: tuple[int, ...], seed: int) -> onnx.ModelProto:
    b = _Builder(name, in_shape, seed)
    b.flatten()
    for i, (fi, fo) in enumerate(itertools.pairwise(widths)):
        b.linear(f"fc{i + 1}", fi, fo)
        if i < len(widths) - 2:
            b.relu()
    return b.model(0, widths[-1])


ZOO: dict[str, ZooEntry] = {
    "mlp": ZooEntry(
        lambda: _mlp("mlp", [784, 10, 120, 100, 200, 10, 10], (1, 28, 28), seed=1),
        batch=32,
        about="POET's 'linear' network: 784-10-120-100-200-10-10, 28x28 input",
    ),
    "digits-mlp": ZooEntry(
        lambda: _mlp("digits_mlp", [64, 32, 10], (1, 8, 8), seed=2),
        batch=32,
        about="64-32-10 MLP for the bundled 8x8 digits",
    ),
}

NAMES = tuple(ZOO)


def build(name: str) -> onnx.ModelProto:
    return ZOO[name].build()


def default_batch(name: str) -> int:
    return ZOO[name].batch
