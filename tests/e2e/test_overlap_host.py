"""Asynchronous paging on the host program: transfers that complete late (the host port's test pager,
``--pager-late N``: a transfer completes at its N-th poll, reads show 0xFF until then, writes copy the RAM
bytes only then) train bit for bit like transfers that complete at once, including transfers waited for in
another order than they started; a purposely missing WAIT is rejected by the replay simulator and stops the
step on the target (POET_ERR_IN_FLIGHT) instead of training on bytes that have not arrived."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from poetc import boards, frontend, pipeline
from poetc.device import harness, target
from poetc.device.link import StatusError
from poetc.emit import builddir, cheaders
from poetc.schedule import simulate, strategies, waits
from poetc.schedule.program import TRANSFERS, Op
from poetc.schedule.simulate import ScheduleError

STEPS = 4


@pytest.fixture(scope="module")
def compiled():
    # 200 KB: the deep MLP pages activations and keeps some parameters on storage (LOAD/STORE)
    board = boards.load("host")
    opts = strategies.SolveOptions(time_limit_s=20)
    return pipeline.compile_model(frontend.load("digits-deep-mlp"), board, 200 * 1024, "poet", opts=opts)


@pytest.fixture(scope="module")
def build(compiled, tmp_path_factory):
    out = tmp_path_factory.mktemp("overlap") / "b"
    builddir.write(compiled, out, "test", target.for_board(compiled.board))
    return builddir.open_build(out)


def _batch(b):
    rng = np.random.default_rng(0)
    return rng.standard_normal(b.input_shape).astype(np.float32), rng.integers(0, 10, b.batch)


def _train(b, extra: list[str]) -> tuple[dict[str, np.ndarray], list]:
    tgt = target.HostTarget(boards.load("host"))
    x, y = _batch(b)
    with tgt.launch(b.dir, pager="file", extra_args=extra) as s:
        dev = harness.Device(b, s)
        dev.set_batch(x, y)
        replies = [dev.step(0.05).reply for _ in range(STEPS)]
        return dev.params(), replies


def test_the_program_waits_out_of_order(compiled):
    train = compiled.programs[0]
    assert train.queue == 4 and waits.count(train) > 0
    # some transfer is waited for before one that started earlier (completion order != start order)
    started, waited = [], []
    for ins in train.instrs:
        if ins.op in TRANSFERS:
            started.append(ins.node)
        elif ins.op == Op.WAIT:
            waited.append(ins.node)
    assert sorted(started) == sorted(waited)  # every transfer is waited for once
    assert started != waited
    r = compiled.replays[0]
    assert r.waits == len(waited) and r.event_time_s >= r.time_s - 1e-12


@pytest.mark.parametrize("late", [1, 3, 1000])
def test_late_transfers_train_bit_for_bit(compiled, build, late):
    sync, sync_replies = _train(build, [])
    got, replies = _train(build, ["--pager-late", str(late)])
    for k in sync:
        assert np.array_equal(sync[k], got[k]), k  # the same bytes arrive, only later
    r, r0 = replies[-1], sync_replies[-1]
    assert r.waits == r0.waits == waits.count(compiled.programs[0])
    assert r.page_outs + r.stores > 0 and r.page_ins + r.loads > 0
    assert (r.page_ins, r.page_outs, r.loads, r.stores) == (r0.page_ins, r0.page_outs, r0.loads, r0.stores)


def _missing_wait(c, kind: str) -> tuple[int, object, object]:
    """The train program and plan without the first WAIT that guards ``kind``: "read" (a kernel reads a tensor
    being paged in or loaded) or "reuse" (bytes a page-out still reads are overwritten)."""
    prog, plan = c.programs[0], c.plans[0]
    started: dict[int, Op] = {}
    for pc, ins in enumerate(prog.instrs):
        if ins.op in TRANSFERS:
            started[ins.node] = ins.op
        if ins.op != Op.WAIT:
            continue
        op = started.pop(ins.node)
        nxt = prog.instrs[pc + 1]
        reads = op in (Op.PAGE_IN, Op.LOAD) and nxt.op in (Op.RUN, Op.RECOMPUTE)
        reuse = op in (Op.PAGE_OUT, Op.STORE) and nxt.op in (Op.RUN, Op.RECOMPUTE, Op.PAGE_IN, Op.LOAD)
        if (kind == "read" and reads) or (kind == "reuse" and reuse):
            p2, m2 = waits.drop(prog, plan, pc)
            return pc, p2, m2
    pytest.skip(f"no WAIT guarding a {kind} in this program")


@pytest.mark.parametrize("kind", ["read", "reuse"])
def test_a_missing_wait_is_caught_by_the_simulator_and_on_the_target(compiled, kind, tmp_path):
    c = compiled
    pc, prog, plan = _missing_wait(c, kind)
    with pytest.raises(ScheduleError, match="missing WAIT") as e:
        simulate.replay(c.problem, prog, budget=c.problem.budget, offsets=plan.offsets)
    assert e.value.pc == pc  # the instruction that needed the wait is named
    broken = dataclasses.replace(c, programs=(prog, c.programs[1]), plans=(plan, c.plans[1]))
    out = tmp_path / "broken"
    builddir.write(broken, out, "test", target.for_board(c.board))
    b = builddir.open_build(out)
    tgt = target.HostTarget(boards.load("host"))
    x, y = _batch(b)
    with tgt.launch(b.dir, pager="file", extra_args=["--pager-late", "1000"]) as s:
        dev = harness.Device(b, s)
        dev.set_batch(x, y)
        with pytest.raises(StatusError, match="missing WAIT") as err:
            dev.step(0.05)
        assert cheaders.statuses()[err.value.status][0] == "ERR_IN_FLIGHT"
        assert f"instruction {pc})" in str(err.value)
