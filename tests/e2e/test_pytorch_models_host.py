"""Models a user writes in PyTorch and exports (not zoo models): they compile, train and verify with no code
change, with both exporters, and one training step of the generated C matches PyTorch; trained weights and
BatchNorm running statistics go back into the ONNX, which then computes what the device's inference computes.

Every parameter and buffer is randomised before export so that each ONNX initializer can be matched to its
PyTorch tensor by value (the exporters rename and transpose some: onnx::MatMul_12, val_3).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import onnx
import pytest
from tests.conftest import poetc

from poetc.boards import load as load_board
from poetc.device import harness, target
from poetc.emit import builddir
from poetc.graph import reference

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional
LR = 0.1


class SmallCNN(nn.Module):
    """Conv-BN-ReLU6, a depthwise block with a squeeze-excite gate (sigmoid, broadcast multiply), a residual,
    max and average pooling, a 1x1 conv with bias, flatten, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.se = nn.Conv2d(8, 8, 1)
        self.pw = nn.Conv2d(8, 12, 1)
        self.bn2 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12 * 2 * 2, 5)

    def forward(self, x):
        x = F.relu6(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.dw(x)))
        y = y * torch.sigmoid(self.se(F.adaptive_avg_pool2d(y, 1)))
        x = F.max_pool2d(x + y, 2)
        x = F.relu(self.bn2(self.pw(x)))
        x = F.avg_pool2d(x, 2)
        return self.fc(x.flatten(1))


class SmallTransformer(nn.Module):
    """One attention layer written by hand: q/k/v linears, heads by view/transpose, scaled softmax, LayerNorm,
    a GELU FFN whose two halves (torch.chunk: Split) are concatenated back, mean pooling, tanh, linear."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.h = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        b, s, d = x.shape

        def heads(t):
            return t.view(b, s, self.h, d // self.h).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.h), dim=-1)
        x = self.ln1(x + self.o((a @ v).transpose(1, 2).reshape(b, s, d)))
        f1, f2 = torch.chunk(F.gelu(self.ff1(x)), 2, dim=-1)
        x = self.ln2(x + self.ff2(torch.cat([f2, f1], dim=-1)))
        return self.head(torch.tanh(x.mean(dim=1)))


def _randomised(net: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            r = torch.rand(t.shape, generator=g) * 0.8 + 0.2 if "running_var" in name else None
            t.copy_(r if r is not None else t + 0.1 * torch.randn(t.shape, generator=g))
    return net


def _export(net, example, path, dynamo: bool | str, opset: int) -> nn.Module:
    """Export a copy of ``net``; return that copy, whose running statistics are the exported ones (the legacy
    exporter runs the model once in training mode, which moves them)."""
    net = copy.deepcopy(net)
    if dynamo:
        # optimize=False keeps BatchNormalization (the default optimizer folds it into the convolution) and
        # keeps every parameter's name (it also merges initializers that happen to be equal)
        optimize = dynamo == "optimize"
        torch.onnx.export(net.eval(), (example,), str(path), dynamo=True, optimize=optimize)
    else:
        net.train()
        torch.onnx.export(
            net, (example,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
            training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
        )  # fmt: skip
    return net.train()


def _match(onnx_path, net: nn.Module) -> dict[str, tuple[str, bool]]:
    """ONNX initializer -> (PyTorch state_dict name, transposed), by value."""
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    out = {}
    for init in onnx.load(str(onnx_path)).graph.initializer:
        a = onnx.numpy_helper.to_array(init)
        if a.dtype != np.float32 or a.size < 2:
            continue
        for k, v in sd.items():
            if v.shape == a.shape and np.array_equal(v, a):
                out[init.name] = (k, False)
                break
            if v.ndim == 2 and v.T.shape == a.shape and np.array_equal(v.T, a):
                out[init.name] = (k, True)
                break
    return out


CASES = [
    ("cnn-legacy-opset13", SmallCNN, (6, 3, 8, 8), False, 13),
    ("cnn-legacy-opset17", SmallCNN, (6, 3, 8, 8), False, 17),
    ("cnn-dynamo", SmallCNN, (6, 3, 8, 8), True, 18),
    ("transformer-legacy-opset13", SmallTransformer, (3, 5, 16), False, 13),
    ("transformer-legacy-opset17", SmallTransformer, (3, 5, 16), False, 17),
    ("transformer-dynamo", SmallTransformer, (3, 5, 16), True, 18),
    ("transformer-dynamo-optimized", SmallTransformer, (3, 5, 16), "optimize", 18),
]


@pytest.mark.parametrize("case, cls, shape, dynamo, opset", CASES, ids=[c[0] for c in CASES])
def test_exported_model_trains_and_matches_pytorch(tmp_path, case, cls, shape, dynamo, opset):
    torch.manual_seed(0)
    net = _randomised(cls(), seed=len(case))
    path = tmp_path / "m.onnx"
    net = _export(net, torch.randn(*shape), path, dynamo, opset)
    names = _match(path, net)
    out = tmp_path / "b"
    poetc("build", str(path), "--board", "host", "--out", str(out), "--strategy", "store-all")
    b = builddir.open_build(out)
    assert set(b.doc["params"]) | set(b.doc["state"]) <= set(names), "every trained tensor maps to PyTorch"
    rng = np.random.default_rng(1)
    classes = b.classes
    np.savez(
        tmp_path / "d.npz", x=rng.standard_normal((4 * shape[0], *shape[1:])).astype(np.float32),
        y=rng.integers(0, classes, 4 * shape[0]),
    )  # fmt: skip
    poetc(
        "train", str(out), "--steps", "1", "--lr", str(LR), "--data", str(tmp_path / "d.npz"),
        "--dump", str(tmp_path / "r.npz"), "--eval-every", "0",
    )  # fmt: skip
    d = np.load(tmp_path / "r.npz")
    ref = copy.deepcopy(net).double().train()
    sd = ref.state_dict()
    with torch.no_grad():
        for kind in ("param", "state"):
            for onnx_name in b.doc["params" if kind == "param" else "state"]:
                k, tr = names[onnx_name]
                v = d[f"{kind}/{onnx_name}"].astype(np.float64)
                sd[k].copy_(torch.from_numpy(v.T if tr else v))
    loss = F.cross_entropy(ref(torch.from_numpy(d["x"].astype(np.float64))), torch.from_numpy(d["y"]))
    loss.backward()
    assert abs(float(d["loss"][0]) - loss.item()) <= 1e-4 * abs(loss.item())
    named = dict(ref.named_parameters())
    grads = {}
    for onnx_name in b.doc["params"]:
        k, tr = names[onnx_name]
        g = named[k].grad.numpy()
        grads[onnx_name] = g.T if tr else g
    floor = reference.grad_floor(grads)
    for p, g in grads.items():
        assert reference.max_rel_error(d[f"grad/{p}"], g, floor) <= 1e-4, p
    buffers = ref.state_dict()
    for s in b.doc["state"]:
        k, _ = names[s]
        assert reference.max_rel_error(d[f"final/{s}"], buffers[k].numpy(), 1e-2) <= 1e-4, s
    # and poetc's own check of the device against the float64 reference
    r = poetc("verify", str(out), "--data", str(tmp_path / "d.npz"))
    assert "PASS" in r.stdout


def test_export_writes_running_statistics_and_matches_device_inference(tmp_path):
    """Train a BatchNorm model a few steps, export: the ONNX holds the trained weights and running statistics,
    its BatchNormalization nodes are in inference mode, and it computes what the device's inference program
    computes (PyTorch eval() semantics), checked with ONNX's reference evaluator and with PyTorch."""
    from onnx.reference import ReferenceEvaluator

    torch.manual_seed(0)
    net = _randomised(SmallCNN(), seed=3)
    path = tmp_path / "m.onnx"
    net = _export(net, torch.randn(6, 3, 8, 8), path, dynamo=False, opset=17)
    names = _match(path, net)
    out = tmp_path / "b"
    poetc("build", str(path), "--board", "host", "--out", str(out), "--strategy", "store-all")
    rng = np.random.default_rng(2)
    np.savez(
        tmp_path / "d.npz", x=rng.standard_normal((48, 3, 8, 8)).astype(np.float32), y=rng.integers(0, 5, 48)
    )
    poetc(
        "train",
        str(out),
        "--steps",
        "6",
        "--lr",
        "0.05",
        "--data",
        str(tmp_path / "d.npz"),
        "--eval-every",
        "0",
    )
    exported = tmp_path / "trained.onnx"
    r = poetc("export", str(out), "--onnx", str(exported))
    assert "running statistics" in r.stdout
    b = builddir.open_build(out)
    trained = b.load_trained()
    assert set(trained) == set(b.doc["params"]) | set(b.doc["state"])
    proto = onnx.load(str(exported))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for k, v in trained.items():
        np.testing.assert_array_equal(inits[k], v)
    initial = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    assert all(not np.array_equal(initial[s], trained[s]) for s in b.doc["state"]), "running stats moved"
    for n in proto.graph.node:
        if n.op_type == "BatchNormalization":
            assert len(n.output) == 1 and all(a.name != "training_mode" or a.i == 0 for a in n.attribute)
    onnx.checker.check_model(proto)
    # the device's inference program, with the trained values loaded
    x = rng.standard_normal(b.input_shape).astype(np.float32)
    with target.for_board(load_board("host")).launch(out) as s:
        dev = harness.Device(b, s)
        for k, v in trained.items():
            dev.write_f32(dev.build.tensor(k)["id"], v)
        got = dev.infer(x)
    (want_onnx,) = ReferenceEvaluator(proto).run(None, {"input": x})
    assert reference.max_rel_error(got, want_onnx) <= 1e-4
    ev = copy.deepcopy(net).double().eval()
    sd = ev.state_dict()
    with torch.no_grad():
        for onnx_name, v in trained.items():
            k, tr = names[onnx_name]
            sd[k].copy_(torch.from_numpy(v.T if tr else v).double())
        want_torch = ev(torch.from_numpy(x).double()).numpy()
    assert reference.max_rel_error(got, want_torch) <= 1e-4
    # the numpy reference's inference agrees too
    _model, tg = harness.training_graph_of(b)
    assert reference.max_rel_error(got, reference.forward(tg, trained, x)) <= 1e-4
