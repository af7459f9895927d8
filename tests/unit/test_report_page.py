"""The report's small helpers: units for axes and tables, train.json read in one place, the headline, and the
template (autoescaped, StrictUndefined)."""

from __future__ import annotations

import jinja2
import pytest

from poetc import boards
from poetc.report import page
from poetc.report.plots import EnergyBar
from poetc.report.units import byte_unit, count, energy_unit, model_name, percent, share, watts


def test_units_pick_the_unit_the_tables_use():
    assert energy_unit(1.796e-3) == ("mJ", 1e3)
    assert energy_unit(880.4e-6) == ("uJ", 1e6)
    assert energy_unit(2.5) == ("J", 1.0)
    assert energy_unit(0.0) == ("nJ", 1e9)
    assert byte_unit(1023) == ("B", 1)
    assert byte_unit(226 * 1024) == ("KiB", 1024)
    assert byte_unit(2.6 * 1024**2) == ("MiB", 1024**2)
    assert byte_unit(4 * 1024**3) == ("GiB", 1024**3)


def test_small_formatters():
    assert share(106196, 67108864) == "0.16%" and share(5.3, 100) == "5.3%" and share(52, 100) == "52%"
    assert share(1, 0) == "-"
    assert count(1, "page-out") == "1 page-out" and count(0, "page-in") == "0 page-ins"
    assert count(12000, "recomputation") == "12,000 recomputations"
    assert percent(0.30084) == "30.1%"
    assert watts(49.875) == "49.9 W" and watts(0.15) == "150 mW" and watts(2e-5) == "20 uW"
    assert model_name("zoo:digits-mlp") == "digits-mlp" and model_name("/a/b/net.onnx") == "net.onnx"


def test_schedule_values_for_people():
    assert page.cell_text("energy_j", 0.0008804) == "880.400 uJ"
    assert page.cell_text("time_s", 1.7653e-05) == "17.7 us"
    assert page.cell_text("peak_ram_bytes", 106196) == "103.7 KiB (106,196 B)"
    assert page.cell_text("recomputes", 12000) == "12,000"
    assert page.cell_text("gap", None) == "-" and page.cell_text("strategy", "poet") == "poet"
    assert page.data_value(0.1 + 0.2) == "0.30000000000000004" and page.data_value(None) == ""
    assert page.error_text(2.0, 1.0) == "+100.0%" and page.error_text(1.0, 0.0) == "-"


TRAIN = {
    "tick_unit": "instructions",
    "captured_steps": [1],
    "step_seconds": [9.0, 0.25, 0.35],
    "evals": [[1, 0.125], [3, 0.5]],
    "energy_per_step": {"compute_j": 3e-3, "page_in_j": 1e-4, "page_out_j": 2e-4, "total_j": 3.3e-3},
    "metered": {"how": "marker", "runs": [[0, 9.0, 0, 0], [1, 7.0, 0, 0], [0, 4e-3, 0, 0], [0, 6e-3, 0, 0]]},
}


def test_run_figures_read_train_json():
    run = page.run_figures(TRAIN, boards.load("qemu-m4"))
    assert run.counted == EnergyBar("counted", 3e-3, 1e-4, 2e-4, pytest.approx(3.3e-3))
    assert run.metered_j == pytest.approx(
        5e-3
    )  # training RUNs (program 0) but step 1, which streamed gradients
    assert run.metered_how == "marker" and run.emulated  # QEMU counts instructions
    assert run.step_s == pytest.approx(0.3) and run.evals == [(1, 0.125), (3, 0.5)]
    host = page.run_figures({"tick_unit": "ticks", "loss": [1.0]}, boards.load("host"))
    assert host.counted is None and host.metered_j is None and not host.emulated and host.evals == []
    assert (
        page.run_figures({**TRAIN, "tick_unit": "ticks", "emulated": False}, boards.load("qemu-m4")).emulated
        is False
    )


SCHED = {"peak_ram_bytes": 106196, "ram_budget_bytes": 204800, "energy_j": 2e-3, "strategy": "poet",
         "status": "optimal", "recomputes": 2, "page_outs": 1, "page_ins": 1, "time_s": 0.25}  # fmt: skip


def test_headline():
    pred = EnergyBar("predicted", 2e-3, 0.0, 0.0, 2e-3)
    tiles = {
        t.id: t for t in page.headline(SCHED, pred, page.run_figures(TRAIN, boards.load("qemu-m4")), 0.1)
    }
    assert (tiles["hl-ram"].value, tiles["hl-ram"].lines) == ("103.7 KiB", ["of 200.0 KiB RAM budget (52%)"])
    e = tiles["hl-energy"]
    assert e.value == "2.000 mJ" and e.lines == [
        "predicted",
        "3.300 mJ counted (emulated)",
        "5.000 mJ metered",
    ]
    assert e.data == {"predicted": "0.002", "counted": repr(3e-3 + 1e-4 + 2e-4), "metered": repr(0.005)}
    assert tiles["hl-accuracy"].value == "12.5% \u2192 50.0%"
    assert tiles["hl-accuracy"].lines == ["after step 1 \u2192 after step 3, learning rate 0.1"]
    assert tiles["hl-schedule"].lines == ["2 recomputations, 1 page-out, 1 page-in",
                                          "250.00 ms per step predicted, 300.00 ms counted (emulated)"]  # fmt: skip
    bare = {t.id: t for t in page.headline(SCHED, pred, None, None)}
    assert bare["hl-energy"].lines == ["predicted"] and bare["hl-accuracy"].value == "-"


def _ctx(**over):
    ctx = dict(
        title="net on host", subject="batch 1", build_hash="00", build_dir="b", version="0", written="now",
        command="poetc build", notes=[], headline=[], model_rows=[], memory_rows=[], schedule_rows=[],
        consistent=None, energy_rows=[], node_table=None, figures={},
    )  # fmt: skip
    ctx.update(over)
    return ctx


def test_template_escapes_and_refuses_missing_values():
    html = page.render(**_ctx(command='poetc build "<script>alert(1)</script>"', notes=["a < b & c"]))
    assert html.startswith("<!DOCTYPE html>")
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "note: a &lt; b &amp; c" in html
    ctx = _ctx()
    del ctx["subject"]
    with pytest.raises(jinja2.UndefinedError):
        page.render(**ctx)
