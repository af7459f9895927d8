"""Byte inputs (--input-u8): the batch is held as uint8 and dequantized on the target by a recomputable node."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from tests.conftest import poetc

from poetc.errors import PoetcError
from poetc.frontend import quantize


def test_to_u8_round_trip_and_errors():
    q = np.arange(256, dtype=np.uint8)
    x = quantize.from_u8(q, 1 / 16)
    np.testing.assert_array_equal(quantize.to_u8(x, 1 / 16), q)
    with pytest.raises(PoetcError, match=r"not 0\.0625 times a byte"):
        quantize.to_u8(np.array([0.01], np.float32), 1 / 16)
    with pytest.raises(PoetcError, match=r"not 0\.0625 times a byte"):
        quantize.to_u8(np.array([16.0625 * 16], np.float32), 1 / 16)


def test_host_byte_input_matches_float_input(tmp_path):
    """The same model and batch, with a float input and with a byte input: identical first-step gradients,
    the dump's x is the float batch either way, and the static RAM shrinks by 3/4 of the batch."""
    runs = {}
    for tag, extra in (("f32", []), ("u8", ["--input-u8", "0.0625"])):
        out = tmp_path / tag
        poetc("build", "digits-mlp", "--board", "host", "--out", str(out), *extra)
        poetc(
            "train",
            str(out),
            "--steps",
            "2",
            "--lr",
            "0.1",
            "--dump",
            str(tmp_path / f"{tag}.npz"),
            "--eval-every",
            "0",
        )
        runs[tag] = (np.load(tmp_path / f"{tag}.npz"), json.loads((out / "poetc.json").read_text()))
        assert "PASS" in poetc("verify", str(out)).stdout
    (a, ma), (b, mb) = runs["f32"], runs["u8"]
    assert mb["input_u8_scale"] == 0.0625 and ma["input_u8_scale"] is None
    np.testing.assert_array_equal(a["x"], b["x"])
    for k in a.files:
        if k.startswith(("grad/", "final/")) or k == "loss":
            np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-7)
    batch_bytes = int(np.prod(ma["input_shape"])) * 4
    assert ma["memory"]["inputs, labels, loss"] - mb["memory"]["inputs, labels, loss"] == batch_bytes * 3 // 4


@pytest.mark.qemu
@pytest.mark.skipif(
    not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
    reason="needs qemu-system-arm and arm-none-eabi-gcc (scripts/setup.sh installs them)",
)
def test_digits_mlp_trains_on_qemu_m0_in_16k_only_by_recomputing(tmp_path):
    """The zoo's digits MLP on the 16 KB Cortex-M0 at batch 8: store-all does not fit, the POET schedule does
    (it recomputes the dequantized input), it learns, and its first step matches the host reference."""
    args = ["digits-mlp", "--board", "qemu-m0", "--batch", "8", "--input-u8", "0.0625"]
    r = poetc("build", *args, "--out", str(tmp_path / "sa"), "--strategy", "store-all", check=False)
    assert r.returncode == 2 and "16384" in r.stderr and "Traceback" not in r.stderr
    out = tmp_path / "poet"
    poetc("build", *args, "--out", str(out))
    sj = json.loads((out / "schedule.json").read_text())
    man = json.loads((out / "poetc.json").read_text())
    assert sj["recomputes"] + sj["page_outs"] > 0 and man["memory"]["total"] <= 16384
    r = poetc("train", str(out), "--steps", "60", "--lr", "0.1", "--eval-every", "0")
    import re

    first, last = (float(v) for v in re.search(r"^loss ([\d.]+) -> ([\d.]+)", r.stdout, re.M).groups())
    assert last < 0.85 * first, r.stdout
    assert "PASS" in poetc("verify", str(out)).stdout
