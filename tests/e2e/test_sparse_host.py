"""Sparse update with momentum on the host (and once on qemu-m4), through the CLI: build with --train/--optimizer/--weight-decay, train
with --dump, verify and export.

ResNet-8 with three trained layers (the stem convolution, one convolution in the middle, the classifier) and
everything else frozen, so every BatchNorm runs on its running statistics (BN_FROZEN, and BN_FROZEN_DX where a
trained layer lies below), with SGD + momentum 0.9 + weight decay: frozen parameters and running statistics are
bit for bit unchanged after five steps, the trained ones follow the float64 reference trajectory to float32
tolerance, verify passes and export leaves the frozen initializers exactly as they were.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import onnx
import pytest
from tests.conftest import poetc
from tests.trajectory import check_trajectory

from poetc.emit import builddir

TRAIN = "conv1.weight,layer2.0.conv2.weight,fc.weight"
LR, STEPS, BATCH = 0.1, 5, 2


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("sparse")
    out = d / "build"
    proc = poetc(
        "build", "resnet8", "--board", "host", "--out", str(out), "--batch", str(BATCH), "--strategy", "store-all",
        "--train", TRAIN, "--optimizer", "momentum:0.9", "--weight-decay", "1e-3",
    )  # fmt: skip
    assert "training 10288 parameters (3 tensors), 67754 frozen (26 tensors)" in proc.stdout
    rng = np.random.default_rng(11)
    np.savez(d / "d.npz", x=rng.standard_normal((6, 3, 32, 32)).astype(np.float32), y=rng.integers(0, 10, 6))
    return d, builddir.open_build(out)


def test_manifest_records_the_training_options(built):
    _d, b = built
    t = b.doc["training"]
    assert t["train"] == TRAIN and t["bn"] == "frozen"
    assert t["optimizer"] == {"kind": "momentum", "momentum": 0.9, "weight_decay": 1e-3}
    assert set(t["trainable"]) == set(TRAIN.split(",")) and len(t["frozen"]) == 26
    assert set(t["opt_state"]) == set(t["trainable"])
    assert {x["name"]: x["role"] for x in b.doc["tensors"]}[t["opt_state"]["fc.weight"]] == "opt_state"
    assert set(b.doc["params"]) == set(t["trainable"]) | set(t["frozen"])  # every parameter, as before
    ops = {n["op"] for n in b.doc["nodes"]}
    assert {"bn_frozen", "bn_frozen_dx"} <= ops and not {"bn_stats", "bn_running"} & ops


def test_frozen_unchanged_and_trained_follow_the_reference(built):
    d, b = built
    run = d / "run.npz"
    poetc(
        "train", str(b.dir), "--steps", str(STEPS), "--lr", str(LR), "--data", str(d / "d.npz"),
        "--dump", str(run), "--eval-every", "0",
    )  # fmt: skip
    z = np.load(run)
    t = b.doc["training"]
    for p in t["frozen"]:
        assert z[f"final/{p}"].tobytes() == z[f"param/{p}"].tobytes(), p
        assert f"grad/{p}" not in z.files
    for s in b.doc["state"]:  # every BatchNorm is frozen: no running-statistics update
        assert z[f"final/{s}"].tobytes() == z[f"state/{s}"].tobytes(), s
    check_trajectory(b, z, d / "d.npz", STEPS, LR, list(t["trainable"]), loss_rtol=1e-5)


def test_verify_passes_and_export_keeps_frozen_initializers(built):
    d, b = built
    proc = poetc("verify", str(b.dir))
    assert "frozen parameters: 26 of 26 unchanged" in proc.stdout and "PASS" in proc.stdout
    poetc(
        "train", str(b.dir), "--steps", "2", "--lr", str(LR), "--data", str(d / "d.npz"), "--eval-every", "0"
    )
    out = d / "trained.onnx"
    poetc("export", str(b.dir), "--onnx", str(out))
    before = {i.name: i for i in onnx.load(str(b.dir / "model.onnx")).graph.initializer}
    after = {i.name: i for i in onnx.load(str(out)).graph.initializer}
    t = b.doc["training"]
    for name in [*t["frozen"], *b.doc["state"]]:
        assert after[name].SerializeToString() == before[name].SerializeToString(), name
    for name in t["trainable"]:
        assert after[name].SerializeToString() != before[name].SerializeToString(), name


needs_qemu = pytest.mark.skipif(
    not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
    reason="needs qemu-system-arm and arm-none-eabi-gcc (scripts/setup.sh installs them)",
)


@pytest.mark.qemu
@needs_qemu
def test_fine_tuning_with_momentum_verifies_on_qemu_m4(tmp_path):
    """The same kernels built for the Cortex-M4F (FMA contraction, hard float): the last two layers of digits-cnn
    with momentum and weight decay; verify passes (gradients, and frozen parameters unchanged) and it learns."""
    out = tmp_path / "ft"
    poetc(
        "build", "digits-cnn", "--board", "qemu-m4", "--out", str(out), "--train", "last:2",
        "--optimizer", "momentum", "--weight-decay", "1e-4",
    )  # fmt: skip
    proc = poetc("verify", str(out))
    assert "frozen parameters: 8 of 8 unchanged" in proc.stdout and "PASS" in proc.stdout
    proc = poetc("train", str(out), "--steps", "30", "--lr", "0.05", "--eval-every", "0")
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", proc.stdout).groups())
    assert last < first
