"""A dumped training run (``poetc train --dump``) against the float64 host reference over the same batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from poetc import data
from poetc.device import harness
from poetc.emit.builddir import BuildInfo
from poetc.graph import reference


def check_trajectory(
    b: BuildInfo,
    z: np.lib.npyio.NpzFile,
    data_path: Path,
    steps: int,
    lr: float,
    trainable: list[str],
    loss_rtol: float,
) -> None:
    """Every step's loss within ``loss_rtol``, step 1's gradients of ``trainable`` within 1e-4 (judged at the
    gradients' floor), and the distance each trainable parameter travelled within 1e-4 of the reference's
    (harness.batches with the training's seed 0 replays the batches)."""
    _model, tg = harness.training_graph_of(b)
    ds = data.load_npz(data_path, b.input_shape[1:], b.classes)
    it = harness.batches(ds, b.batch, 0)
    carry = {p: z[f"param/{p}"] for p in b.doc["params"]} | {s: z[f"state/{s}"] for s in b.doc["state"]}
    init = dict(carry)
    for s in range(steps):
        x, y = next(it)
        r = reference.train_step(tg, carry, x, y, lr)
        carry = r.carry
        assert abs(float(z["loss"][s]) - r.loss) <= loss_rtol * abs(r.loss), s
        if s == 0:
            np.testing.assert_array_equal(z["x"], x)
            floor = reference.grad_floor(r.grads)
            for p in trainable:
                assert reference.max_rel_error(z[f"grad/{p}"], r.grads[p], floor) <= 1e-4, p
    for p in trainable:  # judged on the distance travelled
        err = reference.max_rel_error(z[f"final/{p}"] - init[p], carry[p] - init[p])
        assert err <= 1e-4, (p, err)
        assert np.abs(carry[p] - init[p]).max() > 0, p
