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

from poetc import data
from poetc.device import harness
from poetc.emit import builddir
from poetc.graph import reference

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
    _model, tg = harness.training_graph_of(b)
    ds = data.load_npz(d / "d.npz", b.input_shape[1:], b.classes)
    it = harness.batches(ds, b.batch, 0)
    carry = {p: z[f"param/{p}"] for p in b.doc["params"]} | {s: z[f"state/{s}"] for s in b.doc["state"]}
    init = dict(carry)
    for s in range(STEPS):
        x, y = next(it)
        r = reference.train_step(tg, carry, x, y, LR)
        carry = r.carry
        assert abs(float(z["loss"][s]) - r.loss) <= 1e-4 * abs(r.loss), s
        if s == 0:
            np.testing.assert_array_equal(z["x"], x)
            floor = reference.grad_floor(r.grads)
            for p in b.doc["params"]:
                assert reference.max_rel_error(z[f"grad/{p}"], r.grads[p], floor) <= 1e-4, p
    for p in b.doc["params"]:  # judged on the distance travelled, as the sparse-update check does
        err = reference.max_rel_error(z[f"final/{p}"] - init[p], carry[p] - init[p])
        assert err <= 1e-4, (p, err)
        assert np.abs(carry[p] - init[p]).max() > 0, p


def test_verify_passes(built):
    _d, b = built
    proc = poetc("verify", str(b.dir))
    assert "PASS" in proc.stdout
