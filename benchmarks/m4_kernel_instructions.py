"""Executed instructions per multiply-accumulate of the linear and conv kernels on the Cortex-M4F (qemu-m4),
counted exactly by QEMU (-icount: the firmware's per-node ticks are instructions, to SysTick's 40-instruction
resolution), on layer shapes of the zoo.

Each case is a small ONNX model built around one layer of a zoo model's shape, with a layer in front so that the
input gradient is computed too, compiled for qemu-m4 (arm-none-eabi-gcc -O2, hard float), trained one step; the
per-node instruction counts of the layer's forward, input-gradient and weight-gradient nodes are divided by the
layer's MACs. Reference points on this core (GCC 12 -O2): a naive matmul loop about 6.2 instructions per MAC,
CMSIS-DSP's arm_mat_mult_f32 about 5.0, a naive 3x3 conv forward about 17, a 4x4 register-blocked kernel 1.75.

    python benchmarks/m4_kernel_instructions.py [--cases lenet.fc2,...] [--optimizers sgd,momentum] [--no-unfused]

``--optimizers`` measures the weight gradient once per optimizer (``poetc build --optimizer``; with
``--weight-decay``): the weight gradient fused with plain SGD, or with the momentum buffer's update (a linear
layer's LINEAR_DW_SGD, a convolution's CONV2D_DW_SGD). For convolutions the same layer is also built unfused
(autodiff's conv fusion switched off: CONV2D_DW into a dW buffer, then an SGD node), and the table gives the
unfused dW alone, the unfused dW plus its SGD node, and the fused kernel, all per MAC of the weight gradient.
The builds use qemu-m4 with its RAM raised to 2 MB (QEMU's mps2-an386 has 4 MB): unfused, ResNet-8's 64-channel
layer needs W + dW = 295 KB, over the nRF52840's 256 KB (the reason for the fusion); instruction counts do not
depend on the RAM size.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from poetc import boards, frontend, pipeline
from poetc.device import harness, target
from poetc.emit import builddir
from poetc.fmt import table
from poetc.graph import autodiff
from poetc.graph.options import TrainingOptions, parse_optimizer

# name: (kind, batch, shape) -- linear: (m rows per sample, k, n); conv: (cin, cout, k, stride, pad, groups, h, w)
CASES = {
    "lenet.fc2": ("linear", 8, (1, 120, 84)),
    "tiny-bert.attention.dense": ("linear", 1, (32, 64, 64)),
    "lenet.conv2": ("conv", 2, (6, 16, 5, 1, 0, 1, 14, 14)),
    "resnet8.layer1.conv2": ("conv", 1, (16, 16, 3, 1, 1, 1, 32, 32)),
    "resnet8.layer2.conv2": ("conv", 1, (32, 32, 3, 1, 1, 1, 16, 16)),
    "resnet8.layer3.conv2": ("conv", 1, (64, 64, 3, 1, 1, 1, 8, 8)),
    "mobilenetv2.expand-1x1": ("conv", 1, (16, 96, 1, 1, 0, 1, 8, 8)),
    "mobilenetv2.depthwise": ("conv", 1, (96, 96, 3, 1, 1, 96, 8, 8)),
    # depthwise 3x3 (groups = channels), stride 1 and 2 (MobileNet-style blocks; sizes within the 256 KB RAM)
    "depthwise.16ch-16x16": ("conv", 2, (16, 16, 3, 1, 1, 16, 16, 16)),
    "depthwise.32ch-16x16": ("conv", 1, (32, 32, 3, 1, 1, 32, 16, 16)),
    "depthwise.8ch-32x32": ("conv", 1, (8, 8, 3, 1, 1, 8, 32, 32)),
    "depthwise.8ch-32x32.stride2": ("conv", 2, (8, 8, 3, 2, 1, 8, 32, 32)),
    "depthwise.32ch-16x16.stride2": ("conv", 2, (32, 32, 3, 2, 1, 32, 16, 16)),
    # first layers: few input channels (grayscale, RGB), stride 1 and 2
    "digits_cnn.conv1": ("conv", 4, (1, 8, 3, 1, 1, 1, 8, 8)),
    "digits_cnn.conv2": ("conv", 4, (8, 8, 3, 1, 1, 1, 8, 8)),
    "resnet8.conv1": ("conv", 1, (3, 16, 3, 1, 1, 1, 32, 32)),
    "rgb-stem.stride2": ("conv", 1, (3, 16, 3, 2, 1, 1, 32, 32)),
    "lenet.conv1": ("conv", 1, (3, 6, 5, 1, 0, 1, 32, 32)),
}


def _model(kind: str, batch: int, shape: tuple[int, ...]) -> tuple[onnx.ModelProto, int]:
    """The test model and the layer's multiply-accumulates."""
    rng = np.random.default_rng(0)

    def init(name, *s):
        return numpy_helper.from_array(rng.uniform(-0.1, 0.1, s).astype(np.float32), name)

    if kind == "linear":
        m, k, n = shape
        in_shape = [batch, m, k] if m > 1 else [batch, k]
        nodes = [
            helper.make_node("Mul", ["x", "s"], ["x2"]),  # a parameter in front: the layer's dx is needed
            helper.make_node("MatMul", ["x2", "w"], ["y"]),
            helper.make_node("ReduceMean", ["y"], ["p"], axes=[1], keepdims=0) if m > 1 else None,
            helper.make_node("Gemm", ["p" if m > 1 else "y", "h"], ["out"], transB=1),
        ]
        inits = [init("s", k), init("w", k, n), init("h", 2, n)]
        macs = batch * m * k * n
    else:
        cin, cout, kk, st, pad, g, h, w = shape
        in_shape = [batch, cin, h, w]
        nodes = [
            helper.make_node("Mul", ["x", "s"], ["x2"]),
            helper.make_node(
                "Conv", ["x2", "w"], ["y"], kernel_shape=[kk, kk], strides=[st, st], pads=[pad] * 4, group=g
            ),
            helper.make_node("GlobalAveragePool", ["y"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("Gemm", ["f", "h"], ["out"], transB=1),
        ]
        inits = [init("s", cin, 1, 1), init("w", cout, cin // g, kk, kk), init("h", 2, cout)]
        oh = (h + 2 * pad - kk) // st + 1
        ow = (w + 2 * pad - kk) // st + 1
        macs = batch * cout * oh * ow * (cin // g) * kk * kk
    g_ = helper.make_graph(
        [n for n in nodes if n is not None],
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 2])],
        inits,
    )
    return helper.make_model(g_, opset_imports=[helper.make_opsetid("", 17)]), macs


# the conv fusion switched off (the unfused comparison): autodiff's map of gradient ops to fused update ops
UNFUSED_CONV = {k: v for k, v in autodiff.FUSED.items() if not k.startswith("conv2d")}


def measure(
    name: str, work: Path, training: TrainingOptions = TrainingOptions(), fused: bool = True
) -> dict[str, float]:
    """Instructions per MAC of the layer's nodes: fwd, dx, dw (unfused dW), sgd (its update node), dw+sgd (fused)."""
    kind, batch, shape = CASES[name]
    proto, macs = _model(kind, batch, shape)
    model = frontend.from_onnx(proto, f"bench:{name}", batch)
    board = dataclasses.replace(boards.load("qemu-m4"), ram_bytes=2 << 20)
    with mock.patch.dict(autodiff.FUSED, {} if fused else UNFUSED_CONV, clear=not fused):
        c = pipeline.compile_model(
            model,
            board,
            strategy="store-all",
            command="benchmarks/m4_kernel_instructions.py",
            training=training,
        )
    out = work / f"{name}-{training.optimizer.kind}-{'fused' if fused else 'unfused'}"
    tgt = target.for_board(board)
    builddir.write(c, out, "benchmarks/m4_kernel_instructions.py", tgt)
    b = builddir.open_build(out)
    rng = np.random.default_rng(1)
    with tgt.launch(out, timeout_s=300) as s:
        dev = harness.Device(b, s)
        dev.set_batch(rng.standard_normal(b.input_shape).astype(np.float32), rng.integers(0, 2, batch))
        dev.step(0.01)
        ticks = dev.node_ticks()
    layer = "MatMul" if kind == "linear" else "Conv"
    want = {"linear": "fwd", "linear_dx": "dx", "linear_dw": "dw", "conv2d": "fwd", "conv2d_dx": "dx"}
    want |= {"conv2d_dw": "dw", "sgd": "sgd"}
    want |= {
        "linear_dw_sgd": "dw+sgd",
        "conv2d_dw_sgd": "dw+sgd",
    }  # a weight gradient fused into its SGD step
    res = {}
    for i, n in enumerate(b.doc["nodes"]):
        if n["name"].startswith(layer) and n["op"] in want:
            if n["op"] == "sgd" and not n["name"].endswith(":update:w"):
                continue  # only the layer's weight update
            res[want[n["op"]]] = ticks[i] / macs
    res["macs"] = macs
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--optimizers", default="sgd", help="comma-separated: sgd, momentum, momentum:0.8")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--no-unfused", action="store_true", help="skip the unfused conv builds")
    a = ap.parse_args()
    if not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")):
        raise SystemExit("needs qemu-system-arm and arm-none-eabi-gcc")
    opts = [TrainingOptions(optimizer=parse_optimizer(o, a.weight_decay)) for o in a.optimizers.split(",")]
    rows = []
    nan = float("nan")
    with tempfile.TemporaryDirectory() as d:
        for name in a.cases.split(","):
            row = None
            conv = CASES[name][0] == "conv"
            for t in opts:
                r = measure(name, Path(d), t)
                if row is None:
                    row = [
                        name,
                        CASES[name][0],
                        f"{r['macs']:,}",
                        f"{r['fwd']:.2f}",
                        f"{r['dx']:.2f}" if "dx" in r else "-",  # a 1-channel x's scale folds to a constant
                    ]
                fused = r.get("dw+sgd", r.get("dw", nan))
                line = f"  {name} [{t.optimizer}]: fwd {row[3]}, dx {row[4]}, dw+sgd fused {fused:.3f}"
                if conv and not a.no_unfused:
                    u = measure(name, Path(d), t, fused=False)
                    dw, both = u.get("dw", nan), u.get("dw", nan) + u.get("sgd", nan)
                    row += [f"{dw:.3f}", f"{both:.3f}", f"{fused:.3f}", f"{fused / dw:.3f}"]
                    line += f", unfused dw {dw:.3f} (+ sgd {both:.3f}): fused / unfused dw {fused / dw:.3f}"
                else:
                    row += ["-", "-", f"{fused:.3f}", "-"]
                print(line + " instructions/MAC", flush=True)
            rows.append(row)
    heads = []
    for t in opts:
        o = str(t.optimizer)
        heads += [f"dw ({o}) unfused", "+ sgd node", "fused", "fused/dw"]
    print(
        table(
            ["layer", "kernel", "MACs", "fwd instr/MAC", "dx instr/MAC", *heads],
            rows,
            "llrrr" + "rrrr" * len(opts),
        )
    )


if __name__ == "__main__":
    main()
