"""Training over a serial line that corrupts, drops and duplicates 1% of its bytes, both ways, ends with the weights
of a clean run, bit for bit: corrupted frames are retried, lost bytes recovered by time, chunks shrink."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.noisy_pty import NoisyHostTarget

from poetc import data
from poetc.boards import load as load_board
from poetc.device import harness
from poetc.emit import builddir

STEPS = 15


@pytest.fixture(scope="module")
def build(host_digits8) -> Path:
    return host_digits8


def _run(build: Path, rate: float):
    b = builddir.open_build(build)
    tgt = NoisyHostTarget(load_board("host"), rate, seed=11)
    ds = data.digits_for(b.input_shape[1:], b.classes)
    log, final = harness.train(b, tgt, ds, STEPS, 0.4, seed=3, timeout_s=60)
    return log, final, tgt.lines[0].faults


def test_training_over_a_noisy_line_ends_with_the_clean_weights(build):
    clean_log, clean, clean_faults = _run(build, 0.0)
    assert clean_faults.total == 0 and clean_log.link_retried == 0
    log, got, faults = _run(build, 0.01)
    print(
        f"\nnoise: {faults.bytes} bytes, {faults.corrupted} corrupted, {faults.dropped} dropped, "
        f"{faults.duplicated} duplicated; {log.link_retried} retries after corrupted frames, "
        f"{log.link_resent} resends after silence, {log.link_stale} late replies dropped"
    )
    assert faults.corrupted and faults.dropped and faults.duplicated
    assert 0.005 < faults.total / faults.bytes < 0.02
    assert log.link_retried > 0 and log.link_resent > 0
    assert log.loss == clean_log.loss
    for k in clean:
        assert got[k].tobytes() == clean[k].tobytes(), k
