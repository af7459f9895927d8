"""ResNet-8 trained whole with momentum and weight decay on the host, through the CLI: every convolution's weight
gradient is computed inside its update (CONV2D_DW_SGD: no dW buffer), and the run follows the float64 reference.

``poetc build resnet8 --optimizer momentum --weight-decay``, ``poetc train --steps 5 --dump``: step 1's captured
gradients (streamed chunk by chunk by the fused kernels) match the reference's, the loss of every step and the
distance every parameter travelled over five steps match the reference trajectory (momentum buffers carried), and
``poetc verify`` passes.
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import poetc
from tests.trajectory import check_trajectory

from poetc.emit import builddir

LR, STEPS, BATCH = 0.05, 5, 2


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("convsgd")
    out = d / "build"
    poetc(
        "build", "resnet8", "--board", "host", "--out", str(out), "--batch", str(BATCH), "--strategy", "store-all",
        "--optimizer", "momentum:0.9", "--weight-decay", "1e-3",
    )  # fmt: skip
    rng = np.random.default_rng(5)
    np.savez(d / "d.npz", x=rng.standard_normal((8, 3, 32, 32)).astype(np.float32), y=rng.integers(0, 10, 8))
    return d, builddir.open_build(out)


def test_every_convolution_update_is_fused(built):
    _d, b = built
    ops = [n["op"] for n in b.doc["nodes"]]
    assert ops.count("conv2d_dw_sgd") == 9 and "conv2d_dw" not in ops
    t = b.doc["training"]
    assert set(t["opt_state"]) == set(t["trainable"]) == set(b.doc["params"])


def test_momentum_trajectory_matches_the_reference(built):
    d, b = built
    run = d / "run.npz"
    poetc(
        "train", str(b.dir), "--steps", str(STEPS), "--lr", str(LR), "--data", str(d / "d.npz"),
        "--dump", str(run), "--eval-every", "0",
    )  # fmt: skip
    z = np.load(run)
    check_trajectory(b, z, d / "d.npz", STEPS, LR, list(b.doc["params"]), loss_rtol=1e-4)


def test_verify_passes(built):
    _d, b = built
    proc = poetc("verify", str(b.dir))
    assert "PASS" in proc.stdout
