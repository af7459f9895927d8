"""The calibrated compute model of the emulated boards: validated board data, the keys a node is priced under,
and cost.build pricing nodes by instructions (counted units) where POET's flat FLOP rate was."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from poetc import boards, frontend
from poetc.errors import PoetcError
from poetc.graph import autodiff
from poetc.schedule import cost


@pytest.mark.parametrize("name", ["qemu-m4", "qemu-m0"])
def test_emulated_boards_are_calibrated_with_sources(name):
    b = boards.load(name)
    assert b.instructions_per_flop and b.instructions_per_run
    assert "default" in b.instructions_per_flop and "default" in b.instructions_per_run
    assert "cost_calibration.py --measure" in b.sources["instructions_per_flop"]
    for real in ("nrf52840", "mkr1000"):
        assert not boards.load(real).instructions_per_flop  # real boards keep POET's flat rate


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.replace("\ndefault = ", "\nnot_default = ", 1), "needs a 'default' entry"),
        (
            lambda s: s.replace("[instructions_per_flop]\n", '[instructions_per_flop]\n"Bad Key" = 1\n'),
            "'Bad Key'",
        ),
        (
            lambda s: s.replace("[instructions_per_flop]\n", "[instructions_per_flop]\nnew_op = -1\n"),
            "non-negative",
        ),
        (lambda s: s.replace("[instructions_per_run]", "[ignored_table]"), "unknown field 'ignored_table'"),
    ],
)
def test_bad_calibration_names_file_and_table(tmp_path: Path, edit, message):
    src = (boards.boards_dir() / "qemu-m4.toml").read_text()
    p = tmp_path / "qemu-m4.toml"
    p.write_text(edit(src))
    with pytest.raises(PoetcError) as e:
        boards.load_file(p)
    assert str(p) in str(e.value) and message in str(e.value)


def test_conv_nodes_are_priced_by_shape_class():
    tg = autodiff.build_training_graph(frontend.load("mobilenetv2-cifar", batch=1))
    # the weight gradients are fused into their SGD steps; priced as the unfused gradient kernel's shape class
    keys = {cost.cost_keys(tg, i) for i, n in enumerate(tg.graph.nodes) if n.op == "conv2d_dw_sgd"}
    for cls in ("depthwise", "k1"):
        assert (
            f"conv2d_dw_sgd.{cls}",
            "conv2d_dw_sgd",
            f"conv2d_dw.{cls}",
            "conv2d_dw",
            "conv",
            "default",
        ) in keys
    dx = {cost.cost_keys(tg, i) for i, n in enumerate(tg.graph.nodes) if n.op == "conv2d_dx"}
    assert ("conv2d_dx.depthwise", "conv2d_dx", "conv", "default") in dx
    relu = next(i for i, n in enumerate(tg.graph.nodes) if n.op == "relu" or n.op == "clip")
    assert cost.cost_keys(tg, relu)[-1] == "default" and len(cost.cost_keys(tg, relu)) == 3


def test_calibrated_boards_price_nodes_in_instructions():
    b = boards.load("qemu-m4")
    tg = autodiff.build_training_graph(frontend.load("digits-cnn"))
    cm = cost.build(tg, b)
    assert cm.source == "calibrated"
    for i, n in enumerate(tg.graph.nodes):
        k = cost.cost_keys(tg, i)
        ipf = next(b.instructions_per_flop[x] for x in k if x in b.instructions_per_flop)
        ipr = next(b.instructions_per_run[x] for x in k if x in b.instructions_per_run)
        s = (ipf * cm.flops[i] + ipr) * b.cycles_per_instruction / b.clock_hz
        assert cm.compute_s[i] == pytest.approx(s), n.name
        assert cm.compute_j[i] == pytest.approx(s * b.active_power_w), n.name
    # without the tables the same board is POET's flat FLOP model again
    flat = cost.build(tg, dataclasses.replace(b, instructions_per_flop={}, instructions_per_run={}))
    assert flat.source == "flops" and np.allclose(flat.compute_s, flat.flops / b.flop_per_s)
    # and the two disagree on this CNN by several times (what the calibration corrects)
    assert flat.floor_j > 2 * cm.floor_j
