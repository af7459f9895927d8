"""Profiles, the power meter's arithmetic, board sources and the Linux-class targets, without running a target:
marker framing and the host-clock fallback, the meter spec, the pager fit, profile files and their checks, the
profile threaded through pipeline.plan, the pager probe, and the aarch64 build's Makefile and launcher."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from poetc import boards, frontend, pipeline
from poetc.device import harness, meter, profile, target
from poetc.emit import codegen
from poetc.errors import PoetcError
from poetc.schedule import memplan, simulate, waits
from poetc.schedule.program import Op

COST_FIELDS = (
    "clock_hz",
    "flop_per_s",
    "flop_per_j",
    "page_in_latency_s",
    "page_in_bytes_per_s",
    "page_out_latency_s",
    "page_out_bytes_per_s",
    "memory_power_w",
)


# ---- the meter ---------------------------------------------------------------------------------------------------
def _trace(widths, amps, idle=1e-3, gap=50, marked=True, t0=100.0):
    cur, logic = [np.full(gap, idle)], [np.zeros(gap, np.uint8)]
    for w, a in zip(widths, amps, strict=True):
        cur += [np.full(w, a), np.full(gap, idle)]
        logic += [np.full(w, 1 if marked else 0, np.uint8), np.zeros(gap, np.uint8)]
    return meter.Trace(np.concatenate(cur), np.concatenate(logic), 3.0, meter.SAMPLE_HZ, t0)


def test_marker_frames_every_run():
    tr = _trace([300, 500, 200], [5e-3, 8e-3, 6e-3])
    runs = [meter.RunMark(0, 0.0, 0.0), meter.RunMark(1, 0.0, 0.0), meter.RunMark(0, 0.0, 0.0)]
    m = meter.attribute(tr, runs)
    assert m.how == "marker"
    want = [3.0 * a * w / meter.SAMPLE_HZ for w, a in ((300, 5e-3), (500, 8e-3), (200, 6e-3))]
    assert [r.joules for r in m.runs] == pytest.approx(want, rel=1e-12)
    assert m.train_j == pytest.approx([want[0], want[2]], rel=1e-12)
    assert [r.seconds for r in m.runs] == pytest.approx([3e-3, 5e-3, 2e-3])
    assert m.idle_a == pytest.approx(1e-3)
    assert json.loads(json.dumps(m.to_json()))["how"] == "marker"


def test_glitches_are_dropped_and_a_count_mismatch_falls_back_to_the_host_clock():
    tr = _trace([1, 300], [5e-3, 5e-3])  # a one-sample glitch, then a step
    assert meter.pulses(tr.logic) == [(101, 401)]
    # no marker at all: each RUN is cut out by the host's clock around it
    tr = _trace([300, 300], [4e-3, 2e-3], marked=False, t0=10.0)
    runs = [meter.RunMark(0, 10.0 + 50e-5, 10.0 + 350e-5), meter.RunMark(0, 10.0 + 400e-5, 10.0 + 700e-5)]
    m = meter.attribute(tr, runs)
    assert m.how == "host clock" and "0 pulses for 2 RUNs" in m.note
    assert [r.joules for r in m.runs] == pytest.approx([3.0 * 4e-3 * 3e-3, 3.0 * 2e-3 * 3e-3], rel=1e-9)


@pytest.mark.parametrize(
    "spec, want",
    [
        ("ppk2:/dev/ttyACM0", ("/dev/ttyACM0", 3300, "source", 0)),
        ("ppk2:/dev/ttyACM1,mv=1800,mode=ampere,bit=3", ("/dev/ttyACM1", 1800, "ampere", 3)),
    ],
)
def test_meter_spec(spec, want):
    m = meter.parse(spec)
    assert (m.port, m.mv, m.mode, m.bit) == want


@pytest.mark.parametrize(
    "spec, msg",
    [("otii:/dev/x", "expected ppk2:PORT"), ("ppk2:", "expected"), ("ppk2:/dev/x,mv=9000", "bad option")],
)
def test_meter_spec_errors(spec, msg):
    with pytest.raises(PoetcError, match=msg):
        meter.parse(spec)


def test_a_missing_meter_is_one_line():
    with pytest.raises(PoetcError, match="cannot open the PPK2"):
        meter.Ppk2Meter("/dev/does-not-exist").open()


# ---- profiles ----------------------------------------------------------------------------------------------------
def test_pager_fit_recovers_overhead_and_throughput():
    o, b = 30.0, 12.5  # ticks per instruction, ticks per byte
    train = (o * 40, 40, 0)
    probe = (o * 100 + b * 64_000, 100, 64_000)
    assert profile._pager_fit(train, probe) == pytest.approx((o, b))
    train = (o * 40 + b * 1000, 40, 1000)  # a training program that pages too
    assert profile._pager_fit(train, probe) == pytest.approx((o, b))
    assert profile._pager_fit(train, (5.0, 10, 0)) is None


@pytest.fixture(scope="module")
def digits():
    return frontend.load("digits-mlp")


def _fake_profile(model, board, scale=2.0) -> profile.Profile:
    pl = pipeline.plan(model, board)
    g = pl.tg.graph
    nodes = tuple(
        profile.NodeTiming(n.name, n.op, int(pl.cost.flops[i]), 1, 100.0, float(pl.cost.compute_s[i]) / scale,
                           float(pl.cost.compute_s[i]))
        for i, n in enumerate(g.nodes)
    )  # fmt: skip
    return profile.Profile(
        board=board.name,
        model_source=model.source,
        model_sha256=model.sha256,
        graph_fingerprint=g.fingerprint(),
        batch=g.tensor(model.input).shape[0],
        strategy="store-all",
        tick_unit="ns",
        tick_hz=10**9,
        seconds_per_tick=1e-9,
        timing="test",
        emulated_timing=False,
        steps=1,
        step_ticks=1.0,
        step_s=1e-9,
        nodes=nodes,
        pager=profile.PagerTiming(1e8, 65536, 16, "t", 3.0, False, 3e7),
        tools={"poetc": "test"},
        created="now",
    )


def test_profile_file_round_trip_and_ratios(tmp_path, digits):
    prof = _fake_profile(digits, boards.load("host"))
    path = tmp_path / "p.json"
    profile.save(prof, path)
    back = profile.load(path)
    assert back == prof
    assert back.step_ratio == pytest.approx(2.0) and back.geomean_ratio == pytest.approx(2.0)
    text = profile.table_text(back)
    assert "model/meas." in text and "step 2" in text and "pager:" in text
    (tmp_path / "bad.json").write_text('{"poetc_profile": 99}')
    with pytest.raises(PoetcError, match="not a poetc profile"):
        profile.load(tmp_path / "bad.json")


def test_a_profile_is_checked_against_board_and_model(tmp_path, digits):
    path = tmp_path / "p.json"
    profile.save(_fake_profile(digits, boards.load("host")), path)
    with pytest.raises(PoetcError, match="measured on board host, not qemu-m4"):
        profile.for_build(path, digits, boards.load("qemu-m4"))
    with pytest.raises(PoetcError, match="run poetc profile for it"):
        profile.for_build(path, frontend.load("digits-mlp", batch=8), boards.load("host"))
    assert profile.for_build(path, digits, boards.load("host")).board == "host"


def test_plan_uses_measured_seconds_and_refuses_a_partial_profile(digits):
    board = boards.load("host")
    flop = pipeline.plan(digits, board)
    prof = _fake_profile(digits, board, scale=4.0)
    pl = pipeline.plan(digits, board, profile=prof.node_seconds(), profile_source="p.json")
    assert pl.cost.source == "p.json"
    nodes = ~pl.problem.is_load  # parameter loads cost the pager's time, which a node profile does not change
    assert pl.problem.compute_s[nodes] == pytest.approx(flop.problem.compute_s[nodes] / 4.0)
    # energy follows time at the board's power
    assert pl.problem.compute_j[nodes] == pytest.approx(flop.problem.compute_j[nodes] / 4.0)
    partial = dict(list(prof.node_seconds().items())[:-1])
    with pytest.raises(PoetcError, match="no measurement for node"):
        pipeline.plan(digits, board, profile=partial, profile_source="p.json")


def test_pager_probe_pages_the_largest_forward_activation(digits):
    c = pipeline.compile_model(digits, boards.load("host"), strategy="store-all")
    c2, k = profile.with_pager_probe(c)
    assert k is not None
    probe = c2.programs[1]
    outs = [i for i in probe.instrs if i.op == Op.PAGE_OUT]
    ins = [i for i in probe.instrs if i.op == Op.PAGE_IN]
    assert len(outs) == len(ins) >= 1 and {i.node for i in outs} == {k}
    assert 2 * len(outs) * (int(c.problem.mem[k]) + 4) >= min(
        profile.PROBE_MIN_BYTES, 2 * 32 * int(c.problem.mem[k])
    )
    assert k == max((i.node for i in c.programs[1].instrs if i.op == Op.RUN), key=lambda i: c.problem.mem[i])
    simulate.replay(c2.problem, probe, budget=c2.problem.budget)
    assert k in c2.slots and c2.storage_bytes >= c.storage_bytes + int(c.problem.mem[k])
    assert c2.hash_hex != c.hash_hex and c2.programs[0] == c.programs[0]
    memplan.check(c2.plans[1])


# ---- board sources -----------------------------------------------------------------------------------------------
def test_every_timing_and_energy_constant_names_its_source():
    for b in boards.all_boards():
        fields = list(COST_FIELDS)
        if b.active_power_w:
            fields.append("active_power_w")
        if b.cycles_per_instruction != 1.0 or b.emulated:
            fields.append("cycles_per_instruction")
        for f in fields:
            assert b.sources.get(f, "").strip(), f"{b.name}: no source for {f}"
        if b.storage == "sd":
            assert "SD" in b.sources["memory_power_w"] and "mA" in b.sources["memory_power_w"]
            assert "SPI" in b.sources["page_in_bytes_per_s"]
    nrf = boards.load("nrf52840").sources["active_power_w"]
    assert "Product Specification" in nrf and "3.3 mA" in nrf and "64 MHz" in nrf


def test_linux_class_boards_are_poets_rows():
    rpi, tx2 = boards.load("rpi4"), boards.load("jetson-tx2")
    assert (rpi.flop_per_s, rpi.flop_per_j, rpi.page_in_bytes_per_s, rpi.page_out_bytes_per_s) == (
        2e9,
        4.01e7,
        45.5e6,
        24.5e6,
    )
    assert rpi.page_in_latency_s == pytest.approx(0.00509561e-3) and rpi.memory_power_w == 0.15
    assert (tx2.page_in_latency_s, tx2.page_out_latency_s) == pytest.approx((0.54e-3, 2.396e-3))
    assert (tx2.page_in_bytes_per_s, tx2.page_out_bytes_per_s, tx2.memory_power_w) == (
        108.5e6,
        94.37e6,
        0.309,
    )
    # POET has no TX2 compute entry: the file says what it estimated and from what
    assert "estimate" in tx2.sources["flop_per_s"] and "data sheet" in tx2.sources["flop_per_s"]
    assert tx2.flop_per_s / tx2.flop_per_j == pytest.approx(tx2.active_power_w, rel=1e-3)
    for b in (rpi, tx2):
        assert b.port == "host" and b.storage == "file" and not b.emulated


# ---- Linux-class targets -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, cpu", [("rpi4", "cortex-a72"), ("jetson-tx2", "cortex-a57")])
def test_linux_boards_cross_compile_the_host_port_and_run_under_qemu_user(name, cpu, monkeypatch):
    b = boards.load(name)
    t = target.for_board(b)
    assert isinstance(t, target.LinuxTarget) and t.cpu == cpu
    assert t.seconds(2_000, 10**9) == pytest.approx(2e-6)  # CLOCK_MONOTONIC ns
    mk = codegen.render_template(
        t.makefile_template, header="h", frame_max=b.frame_max_bytes, board=b, **t.template_vars(0)
    )
    assert "aarch64-linux-gnu-gcc" in mk and "-static" in mk and f"-mcpu={cpu}" in mk and "port/" in mk
    monkeypatch.setattr(target.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(target.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    assert t.exec_prefix() == ["/usr/bin/qemu-aarch64", "-cpu", cpu] and t.emulated
    monkeypatch.setattr(target.platform, "machine", lambda: "aarch64")
    assert t.exec_prefix() == [] and not t.emulated


def test_missing_qemu_user_is_one_line(monkeypatch):
    t = target.for_board(boards.load("rpi4"))
    monkeypatch.setattr(target.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(target.shutil, "which", lambda tool: None)
    with pytest.raises(PoetcError, match="qemu-aarch64 is not installed"):
        t.exec_prefix()


def test_64_bit_boards_count_8_byte_pointers(digits):
    b32 = pipeline.fixed_memory(
        pipeline.plan(digits, boards.load("qemu-m4")).tg, boards.load("qemu-m4"), 1 << 20
    )
    tg = pipeline.plan(digits, boards.load("rpi4")).tg
    b64 = pipeline.fixed_memory(tg, boards.load("rpi4"), 1 << 30)
    # loc[]'s pointers, and the transfer slots (each holds a buffer pointer: 28 B with 4-byte pointers, 48 B with 8)
    assert b64.tables - b32.tables == 4 * len(tg.graph.tensors) + waits.MAX_QUEUE * (48 - 28)


def test_timing_notes_say_when_times_are_an_emulation(monkeypatch):
    t = target.for_board(boards.load("rpi4"))
    monkeypatch.setattr(target.platform, "machine", lambda: "x86_64")
    note, emulated = profile.timing_note(t)
    assert emulated and "qemu-aarch64" in note
    note, emulated = profile.timing_note(target.for_board(boards.load("qemu-m4")))
    assert not emulated and "cycles/instruction" in note
    assert profile.tick_unit(target.for_board(boards.load("nrf52840"))) == "cycles"


def test_one_function_names_time_and_energy(monkeypatch):
    """harness.timing: QEMU's counts are counted (and emulated), a real board's cycles and the host's ns are
    counted, and qemu-aarch64's ns time the emulation: "emulated", no board time, so no energy from them."""
    monkeypatch.setattr(target.platform, "machine", lambda: "x86_64")
    cases = {
        "qemu-m4": ("counted", "instructions", True, True),
        "qemu-m0": ("counted", "instructions", True, True),
        "nrf52840": ("counted", "cycles", False, True),
        "host": ("counted", "ns", False, True),
        "rpi4": ("emulated", "ns", True, False),
        "jetson-tx2": ("emulated", "ns", True, False),
    }
    for name, want in cases.items():
        tm = harness.timing(target.for_board(boards.load(name)))
        assert (tm.label, tm.tick_unit, tm.emulated, tm.board_time) == want, name
        assert tm.to_json()["label"] == want[0]
    assert "emulated" in harness.timing(target.for_board(boards.load("qemu-m4"))).how
    monkeypatch.setattr(target.platform, "machine", lambda: "aarch64")  # on the board itself: its own time
    assert harness.timing(target.for_board(boards.load("rpi4"))).label == "counted"


def test_profile_node_ratio_is_none_without_a_measurement():
    n = profile.NodeTiming("a", "relu", 10, 1, 0.0, 0.0, 1e-6)
    assert n.ratio is None
    assert dataclasses.replace(n, seconds=2e-6).ratio == pytest.approx(0.5)
