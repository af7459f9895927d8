"""Benchmark graphs shaped like POET's: one node per layer, a loss, and a mirrored chain of gradient nodes.

POET (Patil et al., ICML 2022) plans on these graphs with an analytic FLOP cost model. They are not training
graphs poetc builds code for (poetc's real graphs separate input and weight gradients and add optimizer
updates); they exist so that solvers and formulations can be compared on the graphs POET reports:

    linear          784-10-120-100-200-10-10 MLP             T = 27
    vgg16_cifar     VGG-16 on 32x32 inputs                   T = 81
    resnet18_cifar  ResNet-18 (CIFAR stem) on 32x32 inputs   T = 133
    convchain       74 conv+relu pairs (a stress graph)       T = 303

Costs follow POET: FLOPs linear 2(in+1)out + out, conv 2 k^2 numel(in) C_out + numel(out), batchnorm 2 numel,
relu/add/flatten numel, pooling 2 k^2 numel(out), a gradient node twice its forward node; time and energy from
a board's FLOP/s and FLOP/J; a tensor's bytes are its elements x 4; paging from the board's SD-card figures.
A gradient node reads the gradient of every consumer of its layer, the layer's input(s) and, for relu, pooling
and batchnorm, the layer's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..boards import Board
from .problem import Problem
from .program import lower, store_all
from .simulate import replay


@dataclass
class _Layer:
    name: str
    kind: str
    out: tuple[int, ...]  # per-sample output shape
    flops: float  # per sample
    inputs: list[int]


class _Net:
    def __init__(self, in_shape: tuple[int, ...]) -> None:
        self.layers: list[_Layer] = [_Layer("input", "input", in_shape, 0.0, [])]

    def add(
        self, name: str, kind: str, out: tuple[int, ...], flops: float, inputs: list[int] | None = None
    ) -> int:
        self.layers.append(
            _Layer(name, kind, out, flops, inputs if inputs is not None else [len(self.layers) - 1])
        )
        return len(self.layers) - 1

    def shape(self, i: int = -1) -> tuple[int, ...]:
        return self.layers[i].out

    def conv(self, name: str, c_out: int, k: int = 3, stride: int = 1, src: int | None = None) -> int:
        src = len(self.layers) - 1 if src is None else src
        c, h, w = self.layers[src].out
        out = (c_out, h // stride, w // stride)
        return self.add(name, "conv", out, 2 * k * k * c * h * w * c_out / stride**2 + np.prod(out), [src])

    def bn(self, name: str) -> int:
        return self.add(name, "bn", self.shape(), 2 * np.prod(self.shape()))

    def relu(self, name: str, src: int | None = None) -> int:
        src = len(self.layers) - 1 if src is None else src
        return self.add(name, "relu", self.layers[src].out, np.prod(self.layers[src].out), [src])

    def pool(self, name: str, k: int = 2) -> int:
        c, h, w = self.shape()
        out = (c, h // k, w // k)
        return self.add(name, "pool", out, 2 * k * k * np.prod(out))

    def linear(self, name: str, n_out: int) -> int:
        n_in = int(np.prod(self.shape()))
        return self.add(name, "linear", (n_out,), 2 * (n_in + 1) * n_out + n_out)

    def flatten(self, name: str) -> int:
        n = int(np.prod(self.shape()))
        return self.add(name, "flatten", (n,), n)

    def residual(self, name: str, a: int, b: int) -> int:
        return self.add(name, "add", self.layers[a].out, np.prod(self.layers[a].out), [a, b])


def _linear() -> _Net:
    net = _Net((784,))
    widths = [10, 120, 100, 200, 10, 10]
    for i, w in enumerate(widths):
        net.linear(f"fc{i + 1}", w)
        net.relu(f"relu{i + 1}")
    return net


def _vgg16() -> _Net:
    net = _Net((3, 32, 32))
    cfg = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
    k = 0
    for b, block in enumerate(cfg):
        for c in block:
            k += 1
            net.conv(f"conv{k}", c)
            net.relu(f"relu{k}")
        net.pool(f"pool{b + 1}")
    net.flatten("flatten")
    net.linear("fc1", 512)
    net.relu("relu_fc1")
    net.add("dropout1", "relu", net.shape(), np.prod(net.shape()))
    net.linear("fc2", 512)
    net.relu("relu_fc2")
    net.add("dropout2", "relu", net.shape(), np.prod(net.shape()))
    net.linear("fc3", 10)
    return net


def _resnet18() -> _Net:
    net = _Net((3, 32, 32))
    net.conv("conv1", 64)
    net.bn("bn1")
    x = net.relu("relu1")
    c_in = 64
    for stage, c in enumerate([64, 128, 256, 512]):
        for blk in range(2):
            stride = 2 if stage > 0 and blk == 0 else 1
            name = f"l{stage + 1}.{blk}"
            net.conv(f"{name}.conv1", c, stride=stride, src=x)
            net.bn(f"{name}.bn1")
            net.relu(f"{name}.relu1")
            net.conv(f"{name}.conv2", c)
            y = net.bn(f"{name}.bn2")
            short = x
            if stride != 1 or c != c_in:
                short = net.conv(f"{name}.down", c, k=1, stride=stride, src=x)
            s = net.residual(f"{name}.add", y, short)
            x = net.relu(f"{name}.relu2", src=s)
            c_in = c
    c, h, w = net.shape()
    net.add("avgpool", "pool", (c,), 2 * h * w * c)
    net.flatten("flatten")
    net.linear("fc", 10)
    return net


def _convchain(n: int = 74) -> _Net:
    """A stress graph, not POET's: n conv+relu pairs on 16x16x16 maps (T = 4 n + 7; 303 for n = 74), for the
    time-limit promise on graphs of ResNet-50 size."""
    net = _Net((3, 16, 16))
    for i in range(n):
        net.conv(f"conv{i + 1}", 16)
        net.relu(f"relu{i + 1}")
    net.flatten("flatten")
    net.linear("fc", 10)
    return net


NETS = {"linear": _linear, "vgg16_cifar": _vgg16, "resnet18_cifar": _resnet18, "convchain": _convchain}


def build(
    name: str, board: Board, batch: int = 32, ram_fraction: float = 0.6, deadline_factor: float | None = 1.5
) -> Problem:
    """A POET-shaped problem with RAM at ``ram_fraction`` of its store-all peak."""
    net = NETS[name]()
    layers = net.layers
    F = len(layers)
    consumers: list[list[int]] = [[] for _ in range(F)]
    for i, l in enumerate(layers):
        for u in l.inputs:
            consumers[u].append(i)
    names = [l.name for l in layers] + ["loss"]
    elems = [batch * int(np.prod(l.out)) for l in layers] + [batch]
    flops = [batch * float(l.flops) for l in layers] + [batch * 4.0 * float(np.prod(layers[-1].out))]
    edges = [(u, i) for i, l in enumerate(layers) for u in l.inputs] + [(F - 1, F)]
    # gradient nodes in reverse: grad(i) has the shape of i's output (gradient w.r.t. the layer's output)
    grad = {}
    for i in range(F - 1, -1, -1):
        g = len(names)
        grad[i] = g
        names.append(f"grad:{layers[i].name}")
        elems.append(elems[i])
        flops.append(2.0 * flops[i] if i else float(elems[i]))
        srcs = [grad[c] for c in consumers[i]] or [F]
        reads = set(srcs) | set(layers[i].inputs)
        if layers[i].kind in ("relu", "pool", "bn"):
            reads.add(i)
        edges += [(u, g) for u in sorted(reads)]
    T = len(names)
    mem = np.array(elems, dtype=np.int64) * 4
    f = np.array(flops)
    paged = mem + 4
    page_in_s = board.page_in_latency_s + paged / board.page_in_bytes_per_s
    page_out_s = board.page_out_latency_s + paged / board.page_out_bytes_per_s
    p = Problem(
        names=tuple(names),
        edges=tuple(edges),
        mem=mem,
        compute_j=f / board.flop_per_j,
        compute_s=f / board.flop_per_s,
        page_in_j=page_in_s * board.memory_power_w,
        page_in_s=page_in_s,
        page_out_j=page_out_s * board.memory_power_w,
        page_out_s=page_out_s,
        last_stage=(0, *[T - 1] * (T - 1)),  # the input is data: it can be kept or paged, not recomputed
        budget=int(mem.sum()),
        deadline_s=None,
        storage_bytes=None,
        n_forward=F,
    )
    peak = replay(p, lower(p, store_all(p))).peak_bytes
    deadline = None if deadline_factor is None else deadline_factor * p.floor_s
    from dataclasses import replace

    return replace(p, budget=int(ram_fraction * peak), deadline_s=deadline)
