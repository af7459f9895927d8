"""Training under RAM budgets on the host program: recomputation and paging really run, and change nothing.

These are about activations: the parameters stay in RAM (``--params ram``), so that a tight budget must be
met by recomputing and paging activations (tests/e2e/test_param_homes_host.py covers parameters on storage).

A host board with the nRF52840's cost constants (so that recomputing and paging are both worth it) runs a
six-layer MLP exported from PyTorch at two tight budgets, the smallest feasible one and a third of the way from
it to the store-all peak (POET at the peak is the store-all schedule, the reference). The gradients and updated
weights of every run must equal the store-all run's (relative error <= 1e-6) and PyTorch's (<= 1e-4), the
tight budgets must really recompute and page, and the arena must fit. The schedules' optimality is not the
point: short solves (at 3 s the MLP's schedules are those of 20 s solves: pages at the smallest budget,
recomputes and pages at the other).
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import export_torch, poetc

from poetc import boards, frontend, pipeline
from poetc.device import harness, target
from poetc.emit import builddir
from poetc.graph import reference
from poetc.schedule import strategies

torch = pytest.importorskip("torch")

WIDTHS = [48, 64, 64, 64, 64, 64, 10]
BATCH = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("budgets")
    torch.manual_seed(11)
    layers = [torch.nn.Flatten()]
    for i, (a, b) in enumerate(itertools.pairwise(WIDTHS)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(WIDTHS) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    onnx_path = export_torch(net, torch.randn(BATCH, WIDTHS[0]), d / "deep.onnx")
    board_file = _hostm4(d)
    rng = np.random.default_rng(5)
    np.savez(
        d / "data.npz",
        x=rng.standard_normal((96, WIDTHS[0])).astype(np.float32),
        y=rng.integers(0, WIDTHS[-1], 96),
    )
    return d, net, onnx_path, board_file, _budgets(onnx_path, board_file)


def _hostm4(d: Path) -> Path:
    """A host board costed like the nRF52840 (so both recomputation and paging pay off somewhere)."""
    host, sources = (boards.boards_dir() / "host.toml").read_text().split("[sources]")
    m4 = boards.load("nrf52840")
    for f in (
        "flop_per_s",
        "flop_per_j",
        "page_in_latency_s",
        "page_in_bytes_per_s",
        "page_out_latency_s",
        "page_out_bytes_per_s",
        "memory_power_w",
    ):
        host = "\n".join(
            f"{f} = {getattr(m4, f)!r}" if ln.startswith(f"{f} =") else ln for ln in host.splitlines()
        )
    host = host.replace('name = "host"', 'name = "hostm4"') + "\n[sources]" + sources
    board_file = d / "hostm4.toml"
    board_file.write_text(host + "\n")
    return board_file


def _budgets(onnx_path: Path, board_file: Path, **kw) -> list[int]:
    """RAM budgets: the smallest feasible one, a third of the way to the store-all peak, and the peak."""
    pl = pipeline.plan(frontend.load(onnx_path, **kw), boards.load(str(board_file)), params="ram")
    lo, _ = strategies.smallest_budget(pl.problem, "poet", strategies.SolveOptions(time_limit_s=30))
    peak = strategies.store_all_peak(pl.problem)  # everything in RAM, nothing recomputed or paged
    return [pl.fixed.fixed + lo + k * (peak - lo) // 3 for k in (0, 1, 3)]


def _build_and_train(d: Path, onnx_path: Path, board_file: Path, ram: int, tag: str, strategy: str = "poet"):
    out = d / f"b-{tag}"
    poetc(
        "build",
        str(onnx_path),
        "--board",
        str(board_file),
        "--out",
        str(out),
        "--ram",
        str(ram),
        "--strategy",
        strategy,
        "--time-limit",
        "3",  # these tests check what runs, not the schedule's optimum: any schedule the replay passes does
        "--params",
        "ram",
    )
    dump = d / f"run-{tag}.npz"
    poetc(
        "train",
        str(out),
        "--steps",
        "2",
        "--lr",
        "0.1",
        "--data",
        str(d / "data.npz"),
        "--dump",
        str(dump),
        "--eval-every",
        "0",
    )
    return out, json.loads((out / "schedule.json").read_text()), np.load(dump)


@pytest.mark.slow
def test_tight_budgets_equal_store_all_and_pytorch(setup):
    d, net, onnx_path, board_file, budgets = setup
    _, s_ref, ref = _build_and_train(d, onnx_path, board_file, budgets[-1], "store", "store-all")
    assert s_ref["recomputes"] == 0 and s_ref["page_outs"] == 0
    recomputed = paged = False
    for k, ram in enumerate(budgets[:-1]):
        out, sj, run = _build_and_train(d, onnx_path, board_file, ram, f"poet{k}")
        assert sj["peak_ram_bytes"] <= ram
        assert json.loads((out / "poetc.json").read_text())["memory"]["total"] <= ram
        recomputed |= sj["recomputes"] > 0
        paged |= sj["page_outs"] > 0 and sj["page_ins"] > 0
        np.testing.assert_array_equal(run["x"], ref["x"])
        np.testing.assert_allclose(run["loss"], ref["loss"], rtol=1e-6)
        for key in ref.files:
            if key.startswith(("grad/", "final/")):
                assert reference.max_rel_error(run[key], ref[key]) <= 1e-6, (ram, key)
    assert recomputed and paged, "the tight budgets neither recomputed nor paged"
    # and all of them agree with PyTorch (first step's gradients)
    tref = copy.deepcopy(net).double()
    with torch.no_grad():
        for name, p in tref.named_parameters():
            p.copy_(torch.from_numpy(ref[f"param/{name}"].astype(np.float64)))
    torch.nn.functional.cross_entropy(
        tref(torch.from_numpy(ref["x"].astype(np.float64))), torch.from_numpy(ref["y"])
    ).backward()
    for name, p in tref.named_parameters():
        assert reference.max_rel_error(ref[f"grad/{name}"], p.grad.numpy()) <= 1e-4


@pytest.mark.slow
def test_corrupt_page_is_an_error_not_a_wrong_gradient(setup):
    d, _net, onnx_path, board_file, budgets = setup
    out = d / "b-corrupt"
    poetc(
        "build",
        str(onnx_path),
        "--board",
        str(board_file),
        "--out",
        str(out),
        "--ram",
        str(budgets[0]),
        "--strategy",
        "paging-only",  # this test is about the pager's checksums: a schedule that surely pages
        "--time-limit",
        "5",
    )
    sj = json.loads((out / "schedule.json").read_text())
    assert sj["page_outs"] > 0
    b = builddir.open_build(out)
    tgt = target.HostTarget(boards.load(str(board_file)))
    rng = np.random.default_rng(0)
    x = rng.standard_normal(b.input_shape).astype(np.float32)
    y = rng.integers(0, WIDTHS[-1], BATCH)
    for pager in ("file", "ram"):
        with tgt.launch(out, pager=pager, extra_args=["--corrupt-page-write", "0"]) as s:
            dev = harness.Device(b, s)
            dev.set_batch(x, y)
            with pytest.raises(Exception, match="checksum"):
                dev.step(0.1)
        # the same build without the fault trains fine with this backend
        with tgt.launch(out, pager=pager) as s:
            dev = harness.Device(b, s)
            dev.set_batch(x, y)
            out_ok = dev.step(0.1)
            assert np.isfinite(out_ok.loss) and out_ok.reply.page_ins > 0


class _SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.b1 = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.b1(self.c1(x))), 2)
        return self.fc(torch.relu(self.c2(x)).mean(dim=(2, 3)))


@pytest.mark.slow
def test_cnn_at_tight_budgets_equals_store_all_and_pytorch(tmp_path):
    """The same contract for a CNN (conv, BatchNorm in training mode, max-pooling, global pooling)."""
    torch.manual_seed(3)
    net = _SmallCNN().train()
    onnx_path = tmp_path / "cnn.onnx"
    torch.onnx.export(
        net,
        (torch.randn(4, 1, 8, 8),),
        str(onnx_path),
        dynamo=False,
        input_names=["input"],
        training=torch.onnx.TrainingMode.TRAINING,
        do_constant_folding=False,
    )
    board_file = _hostm4(tmp_path)
    rng = np.random.default_rng(2)
    np.savez(
        tmp_path / "data.npz",
        x=rng.standard_normal((32, 1, 8, 8)).astype(np.float32),
        y=rng.integers(0, 10, 32),
    )
    budgets = _budgets(onnx_path, board_file)
    _, s_ref, ref = _build_and_train(tmp_path, onnx_path, board_file, budgets[-1], "store", "store-all")
    assert s_ref["recomputes"] == 0 and s_ref["page_outs"] == 0
    recomputed = paged = False
    for k, ram in enumerate(budgets[:-1]):
        out, sj, run = _build_and_train(tmp_path, onnx_path, board_file, ram, f"poet{k}")
        assert json.loads((out / "poetc.json").read_text())["memory"]["total"] <= ram
        recomputed |= sj["recomputes"] > 0
        paged |= sj["page_outs"] > 0
        for key in ref.files:
            if key.startswith(("grad/", "final/")) or key == "loss":
                assert reference.max_rel_error(run[key], ref[key]) <= 1e-6, (ram, key)
    assert recomputed or paged, "the tight budgets neither recomputed nor paged"
    tref = copy.deepcopy(net).double().train()
    with torch.no_grad():
        for name, p in tref.named_parameters():
            p.copy_(torch.from_numpy(ref[f"param/{name}"].astype(np.float64)))
    torch.nn.functional.cross_entropy(
        tref(torch.from_numpy(ref["x"].astype(np.float64))), torch.from_numpy(ref["y"])
    ).backward()
    scale = max(float(np.abs(p.grad.numpy()).max()) for p in tref.parameters())
    for name, p in tref.named_parameters():
        err = np.abs(ref[f"grad/{name}"] - p.grad.numpy()).max() / max(
            np.abs(p.grad.numpy()).max(), 0.01 * scale
        )
        assert err <= 1e-4, name
