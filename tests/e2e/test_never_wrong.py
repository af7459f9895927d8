"""A wrong result is never reported as success: non-finite trained weights, data that overflows float32 and an
image whose initial weights were corrupted are one-line errors, and nothing is written for them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tests.conftest import poetc

from poetc import cli
from poetc.boards import load as load_board
from poetc.device import harness, target

W = np.random.default_rng(42).standard_normal((3, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("nw")
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])],
        [numpy_helper.from_array(W, "w"), numpy_helper.from_array(np.zeros(3, np.float32), "b")],
    )
    onnx.save(helper.make_model(g), str(d / "m.onnx"))
    rng = np.random.default_rng(0)
    np.savez(d / "d.npz", x=rng.standard_normal((16, 6)).astype(np.float32), y=rng.integers(0, 3, 16))
    poetc("build", str(d / "m.onnx"), "--board", "host", "--out", str(d / "b"))
    return d


def _one_line(r, match: str, code: int = 2) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and match in err, err


def test_non_finite_trained_weights_are_an_error_and_nothing_is_written(build, monkeypatch, capsys):
    out = build / "b"
    real = harness.Device.params

    def diverged(self):
        p = real(self)
        p["w"] = p["w"].copy()
        p["w"][1, 2] = np.nan
        return p

    monkeypatch.setattr(harness.Device, "params", diverged)
    dump = build / "dump.npz"
    code = cli.main(["train", str(out), "--steps", "2", "--lr", "0.1", "--data", str(build / "d.npz"),
                     "--dump", str(dump)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "w holds 1 NaN or infinite values after 2 training steps" in err, err
    assert not list(out.glob("runs/*/*.npz")) and not dump.exists()  # no weights, no dump
    # the failed run is on record, so that export does not quietly take an earlier run's weights instead
    monkeypatch.setattr(harness.Device, "params", real)
    code = cli.main(["export", str(out), "--onnx", str(build / "t.onnx")])
    assert code == 2 and "failed and kept no weights" in capsys.readouterr().err


def test_lr_must_be_finite(build):
    for lr in ("inf", "nan"):
        _one_line(poetc("train", str(build / "b"), "--lr", lr, "--data", str(build / "d.npz"), check=False),
                  "--lr must be positive and finite")  # fmt: skip


def test_data_that_overflows_float32_is_refused_before_the_cast(build):
    x = np.random.default_rng(1).standard_normal((16, 6))
    x[3, 4] = 1e39  # finite in float64, infinite as float32
    np.savez(build / "big.npz", x=x, y=np.zeros(16, np.int64))
    runs = sorted((build / "b").glob("runs/*"))
    r = poetc("train", str(build / "b"), "--steps", "1", "--data", str(build / "big.npz"), check=False)
    _one_line(r, "big.npz: 'x' holds values that overflow float32 (largest magnitude 1e+39")
    assert sorted((build / "b").glob("runs/*")) == runs  # no run


def test_verify_takes_its_reference_from_the_build_and_catches_a_corrupted_image(build, tmp_path):
    assert "PASS" in poetc("verify", str(build / "b"), "--data", str(build / "d.npz")).stdout
    bad = tmp_path / "bad"
    shutil.copytree(build / "b", bad)
    exe = target.HostTarget(load_board("host")).binary(bad)
    blob = bytearray(exe.read_bytes())
    at = blob.find(W.tobytes())
    assert at >= 0 and blob.find(W.tobytes(), at + 1) < 0  # the initial weights, once, in the image
    blob[at + 4 * 7 + 3] ^= 0x40  # w[1, 1]: another float
    exe.write_bytes(bytes(blob))
    r = poetc("verify", str(bad), "--data", str(build / "d.npz"), check=False)
    # the image's own checksum of its initial values refuses it at boot, before verify compares any value
    _one_line(
        r,
        "the build's image is damaged (poet-host: the image is corrupted: the image's model tables or initial",
        code=2,
    )


def test_an_edited_manifest_fails_its_checksum(build, tmp_path):
    import json

    bad = tmp_path / "edited"
    shutil.copytree(build / "b", bad)
    doc = json.loads((bad / "poetc.json").read_text())
    doc["batch"] = doc["batch"] + 1  # still valid JSON with every key: only the checksum tells
    (bad / "poetc.json").write_text(json.dumps(doc, indent=1))
    runs = sorted(bad.glob("runs/*"))
    r = poetc("train", str(bad), "--steps", "1", "--data", str(build / "d.npz"), check=False)
    _one_line(r, "poetc.json: damaged manifest: its checksum does not match its contents")
    assert sorted(bad.glob("runs/*")) == runs  # no run
