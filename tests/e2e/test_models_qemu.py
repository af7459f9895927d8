"""The model-coverage kernels on the emulated Cortex-M4F (qemu-m4, arm-none-eabi-gcc -O2, hard float): PyTorch
CNN and transformer models train and verify against the float64 reference, one of them under a RAM budget that
needs the scheduler to recompute activations (BatchNorm statistics and all)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from tests.conftest import poetc

from poetc.emit import builddir

torch = pytest.importorskip("torch")
from tests.e2e.test_pytorch_models_host import SmallCNN, SmallTransformer, _export, _randomised  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
    reason="needs qemu-system-arm and arm-none-eabi-gcc",
)

CASES = [
    # name, model, example shape, opset, build options
    ("cnn-recompute", SmallCNN, (4, 3, 8, 8), 17, ["--ram", "70000", "--strategy", "greedy"]),
    ("transformer", SmallTransformer, (2, 5, 16), 13, ["--strategy", "store-all"]),
]


@pytest.mark.parametrize("name, cls, shape, opset, opts", CASES, ids=[c[0] for c in CASES])
def test_model_trains_and_verifies_on_qemu_m4(tmp_path, name, cls, shape, opset, opts):
    torch.manual_seed(0)
    path = tmp_path / "m.onnx"
    _export(_randomised(cls(), 1), torch.randn(*shape), path, False, opset)
    out = tmp_path / "b"
    poetc("build", str(path), "--board", "qemu-m4", "--out", str(out), *opts)
    b = builddir.open_build(out)
    if name.endswith("recompute"):
        sched = json.loads((out / "schedule.json").read_text())
        assert sched["recomputes"] > 0, sched
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(
        data,
        x=rng.standard_normal((16, *b.input_shape[1:])).astype(np.float32),
        y=rng.integers(0, b.classes, 16),
    )
    r = poetc("train", str(out), "--steps", "3", "--lr", "0.05", "--data", str(data), "--eval-every", "0")
    assert "loss" in r.stdout
    r = poetc("verify", str(out), "--data", str(data))
    assert "PASS" in r.stdout, r.stdout
