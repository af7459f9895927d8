"""Built-in models, built as ONNX graphs so that they take exactly the path a user's file takes.

Weights are initialised like PyTorch's defaults (uniform in +-1/sqrt(fan_in); BatchNorm and LayerNorm scales one,
shifts zero, running statistics zero and one) from a fixed seed, so builds are reproducible. Initializers carry
the names PyTorch's ``state_dict`` gives the same model (``layer1.0.conv1.weight``), and the graphs use the ops
PyTorch's exporters emit: Conv, BatchNormalization in training mode (momentum 0.9 in ONNX's convention, i.e.
PyTorch's 0.1), Relu, Clip (ReLU6), MaxPool, GlobalAveragePool, Flatten, Gemm; for the transformer MatMul with a
transposed weight plus Add, Reshape/Transpose for the heads, Softmax, LayerNormalization, GELU written out as
Div/Erf/Add/Mul/Mul, and Gather for the first token.
"""

from __future__ import annotations

import itertools
import math
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
    lr: float  # poetc train's default SGD rate: measured, see LEARNING RATES below


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

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> str:
        self.k += 1
        out = f"{op.lower()}{self.k}"
        outs = [out] + [f"{out}_{j}" for j in range(1, n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=f"{op}_{self.k}", **attrs))
        self.cur = out
        return out

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def const(self, value, dtype=np.float32) -> str:
        self.k += 1
        return self.init(f"const{self.k}", np.array(value, dtype))

    def flatten(self) -> str:
        return self.node("Flatten", [self.cur], axis=1)

    def linear(self, name: str, fan_in: int, fan_out: int, gain: float = 1.0) -> str:
        """PyTorch's default init; ``gain`` scales the weights (sqrt(6): He's uniform init for ReLU stacks)."""
        w = self.init(f"{name}.weight", gain * self.uniform((fan_out, fan_in), fan_in))
        b = self.init(f"{name}.bias", self.uniform((fan_out,), fan_in))
        return self.node("Gemm", [self.cur, w, b], alpha=1.0, beta=1.0, transB=1)

    def relu(self) -> str:
        return self.node("Relu", [self.cur])

    # ---- convolutional layers ------------------------------------------------------------------------
    def conv(
        self,
        name: str,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        pad: int = 0,
        groups: int = 1,
        bias=False,
        gain: float = 1.0,
    ) -> str:
        """`gain` scales PyTorch's default bound 1/sqrt(fan_in): sqrt(6) is He's uniform init for ReLU stacks."""
        fan_in = cin // groups * k * k
        w = gain * self.uniform((cout, cin // groups, k, k), fan_in)
        ins = [self.cur, self.init(f"{name}.weight", w)]
        if bias:
            ins.append(self.init(f"{name}.bias", self.uniform((cout,), fan_in)))
        return self.node(
            "Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=groups
        )

    def bn(self, name: str, c: int) -> str:
        ins = [
            self.cur,
            self.init(f"{name}.weight", np.ones(c, np.float32)),
            self.init(f"{name}.bias", np.zeros(c, np.float32)),
            self.init(f"{name}.running_mean", np.zeros(c, np.float32)),
            self.init(f"{name}.running_var", np.ones(c, np.float32)),
        ]
        return self.node("BatchNormalization", ins, n_out=3, epsilon=1e-5, momentum=0.9, training_mode=1)

    def relu6(self) -> str:
        return self.node("Clip", [self.cur, self.const(0.0), self.const(6.0)])

    def maxpool(self, k: int, stride: int, pad: int = 0) -> str:
        return self.node("MaxPool", [self.cur], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)

    def gap(self) -> str:
        return self.node("GlobalAveragePool", [self.cur])

    def add(self, a: str, b: str) -> str:
        return self.node("Add", [a, b])

    # ---- transformer layers (as PyTorch's exporters write them) ------------------------------------------
    def dense(self, name: str, fan_in: int, fan_out: int) -> str:
        """nn.Linear on a [batch, seq, features] input: MatMul with the transposed weight, then Add."""
        w = self.init(f"{name}.weight", self.uniform((fan_out, fan_in), fan_in))
        b = self.init(f"{name}.bias", self.uniform((fan_out,), fan_in))
        x = self.cur
        wt = self.node("Transpose", [w], perm=[1, 0])
        h = self.node("MatMul", [x, wt])
        return self.node("Add", [h, b])

    def layernorm(self, name: str, d: int) -> str:
        g = self.init(f"{name}.weight", np.ones(d, np.float32))
        b = self.init(f"{name}.bias", np.zeros(d, np.float32))
        return self.node("LayerNormalization", [self.cur, g, b], axis=-1, epsilon=1e-12)

    def gelu(self) -> str:
        x = self.cur
        d = self.node("Div", [x, self.const(math.sqrt(2.0))])
        e = self.node("Erf", [d])
        a = self.node("Add", [e, self.const(1.0)])
        m = self.node("Mul", [x, a])
        return self.node("Mul", [m, self.const(0.5)])

    def shape(self, dims: list[int]) -> str:
        return self.const(dims, np.int64)

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


def _digits16_mlp() -> onnx.ModelProto:
    """The 8x8 digits average-pooled to 4x4 (16 inputs), then 16-48x6-10: 13k parameters, 51 KB in float32,
    more than a 32 KB MKR1000 holds, so it trains there only with its parameters on storage. He's init keeps the
    signal alive through seven layers."""
    b = _Builder("digits16_mlp", (1, 8, 8), seed=5)
    b.node("AveragePool", [b.cur], kernel_shape=[2, 2], strides=[2, 2])
    b.flatten()
    widths = [16, *[48] * 6, 10]
    for i, (fi, fo) in enumerate(itertools.pairwise(widths)):
        b.linear(
            f"fc{i + 1}", fi, fo, gain=math.sqrt(6.0) if i < len(widths) - 2 else 1.0
        )  # He: 7 layers deep
        if i < len(widths) - 2:
            b.relu()
    return b.model(0, widths[-1])


def _lenet() -> onnx.ModelProto:
    """LeNet-5 for 3x32x32 (PyTorch's CIFAR-10 tutorial net): conv5-pool-conv5-pool-120-84-10."""
    b = _Builder("lenet", (3, 32, 32), seed=3)
    b.conv("conv1", 3, 6, 5, bias=True)
    b.relu()
    b.maxpool(2, 2)
    b.conv("conv2", 6, 16, 5, bias=True)
    b.relu()
    b.maxpool(2, 2)
    b.flatten()
    b.linear("fc1", 16 * 5 * 5, 120)
    b.relu()
    b.linear("fc2", 120, 84)
    b.relu()
    b.linear("fc3", 84, 10)
    return b.model(0, 10)


def _digits_cnn() -> onnx.ModelProto:
    """Five 3x3 conv-ReLU layers of 8 channels on the 8x8 digits, then a linear classifier: many activations of
    one size, so a tight budget needs recomputation or paging for most of them. He's init keeps the signal alive
    through the plain (unnormalised) stack."""
    b = _Builder("digits_cnn", (1, 8, 8), seed=4)
    cin = 1
    for i in range(5):
        b.conv(f"conv{i + 1}", cin, 8, 3, pad=1, bias=True, gain=math.sqrt(6.0))
        b.relu()
        cin = 8
    b.flatten()
    b.linear("fc", 8 * 8 * 8, 10)
    return b.model(0, 10)


def _basic_block(b: _Builder, name: str, cin: int, cout: int, stride: int, shortcut: str) -> str:
    """conv3x3-BN-ReLU-conv3x3-BN, plus a shortcut ("identity", "conv1x1": conv+BN, "conv3x3": POET's)."""
    x = b.cur
    b.conv(f"{name}.conv1", cin, cout, 3, stride, 1)
    b.bn(f"{name}.bn1", cout)
    b.relu()
    b.conv(f"{name}.conv2", cout, cout, 3, 1, 1)
    main = b.bn(f"{name}.bn2", cout)
    if shortcut == "poet":  # POET's resnet18_cifar: ReLU on the main path, a 3x3 conv + BN on every shortcut
        main = b.relu()
        b.cur = x
        b.conv(f"{name}.shortcut.0", cin, cout, 3, stride, 1)
        sc = b.bn(f"{name}.shortcut.1", cout)
    elif shortcut == "conv1x1":
        b.cur = x
        b.conv(f"{name}.shortcut.0", cin, cout, 1, stride, 0)
        sc = b.bn(f"{name}.shortcut.1", cout)
    else:
        sc = x
    b.add(main, sc)
    return b.relu()


def _resnet8() -> onnx.ModelProto:
    """MLPerf Tiny's ResNet-8 for CIFAR-10 (16-32-64 channels, one basic block per stage), PyTorch style: no
    conv bias before BatchNorm, 1x1 conv + BN shortcuts where the shape changes."""
    b = _Builder("resnet8", (3, 32, 32), seed=4)
    b.conv("conv1", 3, 16, 3, 1, 1)
    b.bn("bn1", 16)
    b.relu()
    for i, (cin, cout, s) in enumerate([(16, 16, 1), (16, 32, 2), (32, 64, 2)]):
        _basic_block(b, f"layer{i + 1}.0", cin, cout, s, "identity" if s == 1 and cin == cout else "conv1x1")
    b.gap()
    b.flatten()
    b.linear("fc", 64, 10)
    return b.model(0, 10)


def _resnet18_cifar() -> onnx.ModelProto:
    """POET's resnet18_cifar: conv3x3(3->16)+BN, six blocks (16, 16, 32/2, 32, 64/2, 64) whose main path is
    conv-BN-ReLU-conv-BN-ReLU and whose shortcut is always conv3x3+BN, add, ReLU; 8x8 average pool, linear."""
    b = _Builder("resnet18_cifar", (3, 32, 32), seed=5)
    b.conv("conv1", 3, 16, 3, 1, 1)
    b.bn("bn1", 16)
    cfg = [(16, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1)]
    for i, (cin, cout, s) in enumerate(cfg):
        _basic_block(b, f"layer{i // 2 + 1}.{i % 2}", cin, cout, s, "poet")
    b.node("AveragePool", [b.cur], kernel_shape=[8, 8], strides=[1, 1])
    b.flatten()
    b.linear("fc", 64, 10)
    return b.model(0, 10)


def _divisible(v: float, d: int = 8) -> int:
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


def _mobilenetv2_cifar(width: float = 0.35) -> onnx.ModelProto:
    """torchvision's MobileNetV2 at width 0.35 for 32x32 inputs (stride 1 in the stem and in the 24-channel stage,
    as usual for CIFAR): inverted residuals (1x1 expand-BN-ReLU6, 3x3 depthwise-BN-ReLU6, 1x1 project-BN, residual
    add when the shape allows), a 1x1 conv to 1280, global average pool, linear."""
    return _mobilenetv2("mobilenetv2_cifar", width, stem_stride=1, last=1280)


def _mobilenetv2_tiny() -> onnx.ModelProto:
    """MobileNetV2 at width 0.25 for 32x32 inputs with ImageNet's stride-2 stem (the blocks then run at 16x16 and
    below: at batch 1 its largest forward node, a 48-channel 16x16 layer with its input, needs under 100 KB) and a
    1x1 conv to 320 before the classifier. 163k parameters (635 KiB in float32): more than a 256 KB board's RAM,
    less than its 1 MB flash; the fine-tuning example (the backbone frozen in flash, the last layers trained)."""
    return _mobilenetv2("mobilenetv2_tiny", 0.25, stem_stride=2, last=320)


def _mobilenetv2(name: str, width: float, stem_stride: int, last: int) -> onnx.ModelProto:
    b = _Builder(name, (3, 32, 32), seed=6)
    cfg = [
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]
    cin = _divisible(32 * width)
    b.conv("features.0.0", 3, cin, 3, stem_stride, 1)
    b.bn("features.0.1", cin)
    b.relu6()
    idx = 1
    for t, c, n, s in cfg:
        cout = _divisible(c * width)
        for i in range(n):
            stride = s if i == 0 else 1
            x = b.cur
            name = f"features.{idx}.conv"
            hidden = cin * t
            j = 0
            if t != 1:
                b.conv(f"{name}.{j}.0", cin, hidden, 1)
                b.bn(f"{name}.{j}.1", hidden)
                b.relu6()
                j += 1
            b.conv(f"{name}.{j}.0", hidden, hidden, 3, stride, 1, groups=hidden)
            b.bn(f"{name}.{j}.1", hidden)
            b.relu6()
            b.conv(f"{name}.{j + 1}", hidden, cout, 1)
            y = b.bn(f"{name}.{j + 2}", cout)
            if stride == 1 and cin == cout:
                b.add(x, y)
            cin = cout
            idx += 1
    b.conv(f"features.{idx}.0", cin, last, 1)
    b.bn(f"features.{idx}.1", last)
    b.relu6()
    b.gap()
    b.flatten()
    b.linear("classifier.1", last, 10)
    return b.model(0, 10)


def _vgg11_cifar() -> onnx.ModelProto:
    """VGG-11 with BatchNorm for 32x32 inputs: 64-M-128-M-256-256-M-512-512-M-512-512-M, then linear 512->10."""
    b = _Builder("vgg11_cifar", (3, 32, 32), seed=7)
    cin, i = 3, 0
    for v in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]:
        if v == "M":
            b.maxpool(2, 2)
            i += 1
            continue
        b.conv(f"features.{i}", cin, int(v), 3, 1, 1, bias=True)
        b.bn(f"features.{i + 1}", int(v))
        b.relu()
        cin, i = int(v), i + 3
    b.flatten()
    b.linear("classifier", 512, 10)
    return b.model(0, 10)


TINY_BERT = {"seq": 32, "hidden": 64, "heads": 2, "layers": 2, "intermediate": 256, "classes": 2}


def _tiny_bert() -> onnx.ModelProto:
    """A 2-layer BERT encoder (hidden 64, 2 heads, FFN 256, sequence 32) on already-embedded inputs
    [batch, 32, 64]: learned position embeddings and LayerNorm, post-LN encoder layers with exact GELU, BERT's
    pooler (first token, dense, tanh) and a 2-class head."""
    c = TINY_BERT
    s, d, h = c["seq"], c["hidden"], c["heads"]
    hd = d // h
    b = _Builder("tiny_bert", (s, d), seed=8)
    pos = b.init("embeddings.position_embeddings", b.rng.standard_normal((1, s, d)).astype(np.float32) * 0.02)
    b.node("Add", ["input", pos])
    x = b.layernorm("embeddings.LayerNorm", d)
    for layer in range(c["layers"]):
        p = f"encoder.layer.{layer}"
        heads = {}
        for part, perm in (("query", [0, 2, 1, 3]), ("key", [0, 2, 3, 1]), ("value", [0, 2, 1, 3])):
            b.cur = x
            b.dense(f"{p}.attention.self.{part}", d, d)
            b.node("Reshape", [b.cur, b.shape([0, s, h, hd])])
            heads[part] = b.node("Transpose", [b.cur], perm=perm)
        scores = b.node("MatMul", [heads["query"], heads["key"]])
        b.node("Div", [scores, b.const(math.sqrt(hd))])
        probs = b.node("Softmax", [b.cur], axis=-1)
        ctx = b.node("MatMul", [probs, heads["value"]])
        b.node("Transpose", [ctx], perm=[0, 2, 1, 3])
        b.node("Reshape", [b.cur, b.shape([0, s, d])])
        attn = b.dense(f"{p}.attention.output.dense", d, d)
        b.add(attn, x)
        x = b.layernorm(f"{p}.attention.output.LayerNorm", d)
        b.dense(f"{p}.intermediate.dense", d, c["intermediate"])
        b.gelu()
        ffn = b.dense(f"{p}.output.dense", c["intermediate"], d)
        b.add(ffn, x)
        x = b.layernorm(f"{p}.output.LayerNorm", d)
    b.node("Gather", [x, b.const(0, np.int64)], axis=1)
    b.linear("pooler.dense", d, d)
    b.node("Tanh", [b.cur])
    b.linear("classifier", d, c["classes"])
    return b.model(0, c["classes"])


# LEARNING RATES: ZooEntry.lr is poetc train's default. Measured on the host (generated C, store-all schedule,
# the default batch) by benchmarks/zoo_learning_rates.py: 200 steps of SGD on the bundled digits (tiny-bert: a
# synthetic two-class task), seed 0; held-out accuracy (chance 0.1; tiny-bert 0.5) and mean loss of the last
# 20 steps. The default is the rate with the best accuracy whose loss fell, unless a smaller one is as good.
#   model                 lr:  0.01   0.02   0.05    0.1    0.2    0.4    0.8     default
#   digits-mlp                               0.838  0.916  0.961  0.964  0.953     0.4
#   digits-deep-mlp                          0.479  0.655  0.766  0.919  0.727     0.4   (loss 2.31 -> 0.15)
#   digits-cnn                               0.961  0.925  0.830  0.117  0.117     0.05  (diverges from 0.4)
#   mlp (POET's 784-10-...-10)               0.173  0.240  0.198  0.156  0.092     0.2   (lowest loss, 1.79;
#       its 10-wide layers learn slowly: after 600 steps 0.1 -> 0.741, 0.15 -> 0.716, 0.2 -> 0.758, 0.3 -> 0.228)
#   lenet                       0.106  0.175  0.426  0.549  0.234                  0.1
#   resnet8                     0.454  0.582  0.460  0.755  0.788                  0.1   (lowest loss, 1.51)
#   resnet18-cifar                     0.721  0.783  0.822                         0.1
#   tiny-bert                   0.815  0.875  0.860  0.820                         0.02
#   examples/digits-mlp.onnx (ONNX_LR)                  0.911  0.936  0.950        0.1   (safe for digits-cnn too)
#   vgg11-cifar (batch 2)       0.657  0.265  0.175  0.187  (0.005: 0.691)         0.005 (loss 2.53 -> 1.60;
#       from 0.02 up the loss rises)
#   digits16-mlp (batch 32)     0.306  0.432  0.415  0.373  (0.005: 0.111)         0.05  (loss 2.32 -> 0.90)
#   mobilenetv2-tiny (batch 1)  0.097  0.106  0.114  0.114  (0.005: 0.086)         0.005 (the only rate whose loss
#       falls, 2.43 -> 2.35: batch statistics of one sample; it is the frozen-backbone example, --train last:K)
#   mobilenetv2-cifar (batch 2) 0.189  0.248  0.270  0.173  (0.005: 0.092)         0.005 (every rate from 0.01
#       up raises the loss; 0.005 lowers it: after 600 steps 0.002 -> 0.156, 0.005 -> 0.298, loss 2.45 -> 2.12)
ZOO: dict[str, ZooEntry] = {
    "mlp": ZooEntry(
        lambda: _mlp("mlp", [784, 10, 120, 100, 200, 10, 10], (1, 28, 28), seed=1),
        batch=32,
        about="POET's 'linear' network: 784-10-120-100-200-10-10, 28x28 input",
        lr=0.2,
    ),
    "digits-mlp": ZooEntry(
        lambda: _mlp("digits_mlp", [64, 32, 10], (1, 8, 8), seed=2),
        batch=32,
        about="64-32-10 MLP for the bundled 8x8 digits",
        lr=0.4,
    ),
    "digits-deep-mlp": ZooEntry(
        lambda: _mlp("digits_deep_mlp", [64, 96, 96, 96, 10], (1, 8, 8), seed=3),
        batch=64,
        about="64-96-96-96-10 MLP for the digits: activations outweigh a small board's RAM (the demo model)",
        lr=0.4,
    ),
    "digits16-mlp": ZooEntry(
        _digits16_mlp,
        batch=32,
        about="16-48x6-10 MLP on the digits pooled to 4x4: 13k parameters (51 KB), over the MKR1000's 32 KB RAM",
        lr=0.05,
    ),
    "digits-cnn": ZooEntry(
        _digits_cnn,
        batch=8,
        about="five 3x3 conv-ReLU layers of 8 channels and a linear layer for the 8x8 digits",
        lr=0.05,
    ),
    "lenet": ZooEntry(_lenet, batch=8, about="LeNet-5 for 3x32x32 (conv5-pool-conv5-pool-120-84-10)", lr=0.1),
    "resnet8": ZooEntry(
        _resnet8, batch=4, about="MLPerf Tiny's ResNet-8 (16-32-64), 3x32x32, BatchNorm", lr=0.1
    ),
    "resnet18-cifar": ZooEntry(
        _resnet18_cifar,
        batch=4,
        about="POET's resnet18_cifar: 6 blocks 16-32-64 with conv shortcuts, 3x32x32",
        lr=0.1,
    ),
    "mobilenetv2-cifar": ZooEntry(
        _mobilenetv2_cifar,
        batch=2,
        about="MobileNetV2 width 0.35 for 3x32x32 (inverted residuals, ReLU6)",
        lr=0.005,
    ),
    "mobilenetv2-tiny": ZooEntry(
        _mobilenetv2_tiny,
        batch=1,
        about="MobileNetV2 width 0.25, 3x32x32, stride-2 stem, last conv 320: 635 KiB of parameters",
        lr=0.005,
    ),
    "vgg11-cifar": ZooEntry(
        _vgg11_cifar, batch=2, about="VGG-11 with BatchNorm for 3x32x32, 9.2M parameters", lr=0.005
    ),
    "tiny-bert": ZooEntry(
        _tiny_bert,
        batch=4,
        about="2-layer BERT encoder, hidden 64, 2 heads, sequence 32, on embedded inputs [32, 64]; 2 classes",
        lr=0.02,
    ),
}

NAMES = tuple(ZOO)


def build(name: str) -> onnx.ModelProto:
    return ZOO[name].build()


def default_batch(name: str) -> int:
    return ZOO[name].batch


ONNX_LR = 0.1  # an ONNX file's default rate: safe for the zoo's digits models (see LEARNING RATES)


def default_lr(source: str) -> float:
    """poetc train's default rate for a build's model source ("zoo:NAME" or an ONNX file's path)."""
    name = source.removeprefix("zoo:")
    return ZOO[name].lr if source.startswith("zoo:") and name in ZOO else ONNX_LR
