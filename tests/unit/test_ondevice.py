"""On-device training's build-time pieces: the checkpoint layout, its flash wear and the compile-time refusal of
a run that would wear the internal flash out, the data tables, the options' checks."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from poetc import boards
from poetc.data import Dataset
from poetc.emit import ondevice
from poetc.emit.codegen import CKPT_HEADER_BYTES, CheckpointLayout
from poetc.errors import PoetcError


def _ds(n: int = 12, u8: bool = True) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 17, (n, 1, 2, 2)).astype(np.float32) / (16.0 if u8 else 7.0)
    return Dataset(x, rng.integers(0, 3, n), None, None, "t")


def test_checkpoint_wear_on_a_flash_pager_board():
    b = boards.load("nrf52840")
    ck = CheckpointLayout(8192, 8192, 4096, (("w", 8192 - CKPT_HEADER_BYTES - 4),))
    w = ondevice.checkpoint_wear(b, ck, every=20)
    assert w["erases_per_step"] == 1 / 40 and w["pages_per_slot"] == 2
    assert w["max_steps"] == b.flash_endurance_cycles * 40
    assert ondevice.checkpoint_wear(boards.load("qemu-m4"), ck, 20)["max_steps"] is None


@pytest.mark.skipif(not shutil.which("cc"), reason="needs a C compiler")
def test_a_run_longer_than_the_flash_allows_does_not_compile_with_the_flash_pager(tmp_path):
    od = ondevice.OnDevice("flash", _ds(), steps=500_000, lr=0.1, checkpoint_every=1)
    wear = {"max_steps": 20_000}
    (tmp_path / "app_config.h").write_text(ondevice.config_header(od, 4, wear, "test"))
    (tmp_path / "t.c").write_text('#include "app_config.h"\nint main(void) { return (int)POET_APP_STEPS; }\n')
    cc = ["cc", "-fsyntax-only", "-I", str(tmp_path), str(tmp_path / "t.c")]
    assert subprocess.run(cc, capture_output=True).returncode == 0  # the SD card pager: fine
    r = subprocess.run([*cc, "-DPOET_PAGER_FLASH=1"], capture_output=True, text=True)
    assert r.returncode != 0 and "wear the internal flash out" in r.stderr


def test_data_tables_bytes_when_exact_else_floats():
    od = ondevice.OnDevice("flash", _ds(), steps=10, lr=0.1, checkpoint_every=5)
    files = ondevice.data_files(od, 4, (1, 2, 2), 3, None, "t")
    assert (
        "#define POET_DATA_U8 1" in files["data.h"] and "#define POET_DATA_SCALE 0.0625f" in files["data.h"]
    )
    assert "const uint8_t poet_data_x[48]" in files["data.c"]
    od = ondevice.OnDevice("flash", _ds(u8=False), steps=10, lr=0.1, checkpoint_every=5)
    files = ondevice.data_files(od, 4, (1, 2, 2), 3, None, "t")
    assert "#define POET_DATA_U8 0" in files["data.h"] and "const float poet_data_x[48]" in files["data.c"]


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"steps": 0}, "--on-device-steps must be >= 1"),
        ({"checkpoint_every": 0}, "--checkpoint-every must be >= 1"),
        ({"lr": float("nan")}, "--lr must be positive and finite"),
        ({"kind": "sd"}, "--on-device sd: expected one of flash, sensor"),
    ],
)
def test_bad_options_are_one_line_errors(kw, msg):
    args = {"kind": "flash", "data": _ds(), "steps": 10, "lr": 0.1, "checkpoint_every": 5, **kw}
    with pytest.raises(PoetcError, match=msg):
        ondevice.OnDevice(**args)


def test_too_few_samples_for_a_batch():
    od = ondevice.OnDevice("flash", _ds(n=3), steps=10, lr=0.1, checkpoint_every=5)
    with pytest.raises(PoetcError, match="3 samples, fewer than the batch size 4"):
        ondevice.data_files(od, 4, (1, 2, 2), 3, None, "t")
