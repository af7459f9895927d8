"""Every zoo model: one full training step of the generated C on the host against PyTorch in float64.

``poetc build`` (host), ``poetc train --steps 1 --dump``; then the PyTorch twin of the model (tests/zoo_torch.py)
is loaded with the dumped initial parameters and running statistics, runs the same batch in train mode, and
its loss, gradients, SGD-updated weights and updated running statistics must match the device's within 1e-4
relative (tensors that are analytically zero, like the gradient of a bias before BatchNorm or a running mean
of a zero-mean channel, are judged at 1% of the model's largest value of their kind).
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import poetc

from poetc.emit import builddir
from poetc.graph import reference

torch = pytest.importorskip("torch")
from tests.zoo_torch import twin  # noqa: E402

F = torch.nn.functional
LR = 0.1

# (zoo name, batch): small batches keep the host step and the build quick; BatchNorm still sees > 1 value
CASES = [
    ("digits-cnn", 4),
    ("lenet", 4),
    ("resnet8", 2),
    ("resnet18-cifar", 2),
    ("mobilenetv2-cifar", 2),
    ("vgg11-cifar", 1),
    ("tiny-bert", 2),
]


def one_step_errors(
    tmp_path,
    name: str,
    batch: int,
    board: str = "host",
    build_args: tuple[str, ...] = ("--strategy", "store-all"),
) -> dict[str, float]:
    """One training step of ``name`` built for ``board`` against its PyTorch twin: relative errors by tensor."""
    out = tmp_path / "build"
    poetc("build", name, "--board", board, "--out", str(out), "--batch", str(batch), *build_args)
    b = builddir.open_build(out)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4 * batch, *b.input_shape[1:])).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=rng.integers(0, b.classes, len(x)))
    run = tmp_path / "run.npz"
    poetc(
        "train", str(out), "--steps", "1", "--lr", str(LR), "--data", str(tmp_path / "d.npz"),
        "--dump", str(run), "--eval-every", "0",
    )  # fmt: skip
    d = np.load(run)
    params, state = b.doc["params"], b.doc["state"]
    init = {p: d[f"param/{p}"] for p in params} | {s: d[f"state/{s}"] for s in state}
    net = twin(name, {k: v.astype(np.float64) for k, v in init.items()})
    loss = F.cross_entropy(net(torch.from_numpy(d["x"].astype(np.float64))), torch.from_numpy(d["y"]))
    loss.backward()
    named = dict(net.named_parameters())
    grads = {p: named[p].grad.numpy() for p in params}
    floor = reference.grad_floor(grads)
    err = {"loss": abs(float(d["loss"][0]) - loss.item()) / abs(loss.item())}
    for p in params:
        err[f"grad/{p}"] = reference.max_rel_error(d[f"grad/{p}"], grads[p], floor)
        # the weights after one SGD step: judged on the step itself (lr * grad), as poetc verify does
        err[f"step/{p}"] = reference.max_rel_error(init[p] - d[f"final/{p}"], LR * grads[p], LR * floor)
    buffers = net.state_dict()
    sfloor = 1e-2 * max((float(np.abs(buffers[s].numpy()).max()) for s in state), default=0.0)
    for s in state:
        err[f"state/{s}"] = reference.max_rel_error(d[f"final/{s}"], buffers[s].numpy(), sfloor)
    return err


@pytest.mark.parametrize("name, batch", CASES, ids=[c[0] for c in CASES])
def test_zoo_one_training_step_matches_pytorch(tmp_path, name, batch):
    err = one_step_errors(tmp_path, name, batch)
    worst = max(err, key=lambda k: err[k])
    print(f"{name}: worst relative error {err[worst]:.2e} ({worst}) over {len(err)} tensors")
    assert err[worst] <= 1e-4, (worst, err[worst])
