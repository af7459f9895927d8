"""Parameters on storage on the host program: the same training as in RAM, bit for bit, and a stored copy that
does not match its CRC stops the step instead of training on wrong weights."""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import poetc

from poetc import boards
from poetc.device import harness, target
from poetc.emit import builddir


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    d = tmp_path_factory.mktemp("homes")
    out = {}
    for mode in ("ram", "storage"):
        out[mode] = d / mode
        poetc("build", "digits-mlp", "--board", "host", "--params", mode, "--out", str(out[mode]))
    return out


def test_storage_homed_parameters_train_bit_for_bit_like_ram_ones(builds, tmp_path):
    dumps = {}
    for mode, d in builds.items():
        dumps[mode] = tmp_path / f"{mode}.npz"
        poetc("train", str(d), "--steps", "12", "--lr", "0.1", "--dump", str(dumps[mode]))
    a, b = np.load(dumps["ram"]), np.load(dumps["storage"])
    finals = [k for k in a.files if k.startswith("final/")]
    assert finals and set(finals) == {k for k in b.files if k.startswith("final/")}
    for k in [*finals, "loss", *[k for k in a.files if k.startswith("grad/")]]:
        assert np.array_equal(a[k], b[k]), k  # same kernels, same arithmetic: paging changes no bit
    assert not np.array_equal(a["final/fc1.weight"], a["param/fc1.weight"])  # it did train
    sj = builddir.open_build(builds["storage"]).doc
    homes = {t["name"]: t["home"] for t in sj["tensors"]}
    assert {homes[p] for p in sj["params"]} == {"storage"}


def test_a_corrupt_master_copy_is_a_checksum_error(builds):
    b = builddir.open_build(builds["storage"])
    tgt = target.HostTarget(boards.load("host"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal(b.input_shape).astype(np.float32)
    y = rng.integers(0, 10, b.batch)
    # the first data write is the reset's copy of the first parameter onto storage
    with tgt.launch(b.dir, pager="file", extra_args=["--corrupt-page-write", "0"]) as s:
        dev = harness.Device(b, s)
        with pytest.raises(Exception, match="CRC"):
            dev.params()  # reading it back checks the stored CRC on the host too
        dev.set_batch(x, y)
        with pytest.raises(Exception, match="checksum"):
            dev.step(0.1)
    with tgt.launch(b.dir, pager="file") as s:
        dev = harness.Device(b, s)
        dev.set_batch(x, y)
        r = dev.step(0.1).reply
        assert r.loads >= 4 and r.stores == 4 and np.isfinite(dev.step(0.1).loss)


def test_a_storage_that_keeps_old_data_is_caught(builds):
    """A device that acknowledges writes but keeps the old bytes: the stored copies still carry valid CRCs of
    their bytes, but of an older write number, so the next page-in (and the host's read) refuses them."""
    b = builddir.open_build(builds["storage"])
    tgt = target.HostTarget(boards.load("host"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal(b.input_shape).astype(np.float32)
    y = rng.integers(0, 10, b.batch)
    n = len(
        b.doc["params"]
    )  # the reset writes each master copy once; the first step's write-backs are dropped
    with tgt.launch(b.dir, pager="file", extra_args=["--drop-page-writes", str(n)]) as s:
        dev = harness.Device(b, s)
        dev.set_batch(x, y)
        assert dev.step(0.1).reply.stores == n  # "written"
        with pytest.raises(Exception, match="fails its CRC"):
            dev.params()
        with pytest.raises(Exception, match="checksum"):
            dev.step(0.1)
