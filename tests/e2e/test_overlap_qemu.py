"""Asynchronous paging on the emulated Cortex-M4 (qemu-m4), the demo's deadline-bound case (200 KB, 1.1x): the
semihosting pager built as the late-completion test pager (-DPOET_PAGER_LATE=N: a transfer completes at its
N-th poll) trains bit for bit like the synchronous one and like the schedule made without overlap; a missing
WAIT stops the step on the target with POET_ERR_IN_FLIGHT."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import numpy as np
import pytest
from tests.e2e.test_overlap_host import _missing_wait

from poetc import boards, frontend, pipeline
from poetc.device import harness, target
from poetc.device.link import StatusError
from poetc.emit import builddir
from poetc.schedule import simulate, strategies, waits
from poetc.schedule.simulate import ScheduleError

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
        reason="needs qemu-system-arm and arm-none-eabi-gcc (scripts/setup.sh installs them)",
    ),
]

STEPS = 3


def _compile(overlap: bool):
    # what the schedule does on the target, not its optimum: at 8 s as at 40 s (docs/overlap.md) both come back
    # as the synchronous seed, 2 page-outs and -ins with 4 WAITs
    opts = strategies.SolveOptions(time_limit_s=8)
    model = frontend.load("digits-deep-mlp")
    board = boards.load("qemu-m4")
    return pipeline.compile_model(
        model, board, 200 * 1024, "poet", opts=opts, deadline="1.1x", overlap=overlap
    )


@pytest.fixture(scope="module")
def compiled():
    return _compile(True)


@pytest.fixture(scope="module")
def build(compiled, tmp_path_factory):
    out = tmp_path_factory.mktemp("ovq") / "b"
    builddir.write(compiled, out, "test", target.for_board(compiled.board))
    return out


def _late(build, tmp_path, n: int):
    work = tmp_path / f"late{n}"
    shutil.copytree(build, work)
    shutil.rmtree(work / "build", ignore_errors=True)
    subprocess.run(
        ["make", "-C", str(work), f"EXTRA_CFLAGS=-DPOET_PAGER_LATE={n}"], check=True, capture_output=True
    )
    return work


def _train(d) -> tuple[dict[str, np.ndarray], list]:
    b = builddir.open_build(d)
    tgt = target.for_board(boards.load("qemu-m4"))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(b.input_shape).astype(np.float32), rng.integers(0, 10, b.batch)
    with tgt.launch(d, timeout_s=120) as s:
        dev = harness.Device(b, s, tgt.seconds)
        dev.set_batch(x, y)
        replies = [dev.step(0.05).reply for _ in range(STEPS)]
        return dev.params(), replies


def test_late_transfers_on_qemu_m4_train_bit_for_bit(compiled, build, tmp_path):
    assert compiled.problem.overlap and compiled.programs[0].queue == 2
    assert waits.count(compiled.programs[0]) > 0
    sync, r_sync = _train(build)
    late, r_late = _train(_late(build, tmp_path, 5))
    for k in sync:
        assert np.array_equal(sync[k], late[k]), k
    a, b = r_sync[-1], r_late[-1]
    assert a.waits == b.waits == waits.count(compiled.programs[0])
    assert (a.page_ins, a.page_outs) == (b.page_ins, b.page_outs) and a.page_outs > 0
    # the same work: the late pager only adds its polling loops
    assert b.ticks >= a.ticks and b.ticks - a.ticks < 0.01 * a.ticks


def test_the_schedule_without_overlap_trains_the_same_weights(build, tmp_path):
    c = _compile(False)
    assert not c.problem.overlap
    out = tmp_path / "noov"
    builddir.write(c, out, "test", target.for_board(c.board))
    with_overlap, _ = _train(build)
    without, _ = _train(out)
    for k in with_overlap:
        assert np.array_equal(with_overlap[k], without[k]), k  # recomputing or paging changes no bit


def test_a_missing_wait_is_caught_on_qemu_m4(compiled, tmp_path):
    c = compiled
    for kind in ("reuse", "read"):
        try:
            pc, prog, plan = _missing_wait(c, kind)
            break
        except pytest.skip.Exception:
            continue
    else:
        pytest.skip("no WAIT guards a read or a reuse in this program")
    with pytest.raises(ScheduleError, match="missing WAIT"):
        simulate.replay(c.problem, prog, budget=c.problem.budget, offsets=plan.offsets)
    broken = dataclasses.replace(c, programs=(prog, c.programs[1]), plans=(plan, c.plans[1]))
    out = tmp_path / "broken"
    builddir.write(broken, out, "test", target.for_board(c.board), compile_=False)
    work = _late(out, tmp_path, 1000)
    with pytest.raises(StatusError, match="missing WAIT") as err:
        _train(work)
    assert f"instruction {pc})" in str(err.value)
