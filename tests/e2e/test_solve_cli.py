"""poetc solve / build / sweep from the command line: JSON fields, schedule.json, plots, errors."""

from __future__ import annotations

import json

import pytest
from tests.conftest import poetc

from poetc.schedule import strategies

MLP = ["mlp", "--board", "nrf52840", "--batch", "8"]  # POET's linear network on the nRF52840
FIELDS = (
    "status",
    "strategy",
    "energy_j",
    "compute_energy_j",
    "paging_energy_j",
    "time_s",
    "peak_ram_bytes",
    "arena_bytes",
    "recomputes",
    "page_outs",
    "page_ins",
    "solve_s",
    "gap",
)


def test_solve_json_and_plots(tmp_path):
    # nothing here rests on the MILP's optimum (226K is below the store-all peak: every schedule that fits
    # recomputes or pages), so a short limit does
    r = poetc(
        "solve", *MLP, "--ram", "226K", "--json", "--plot", str(tmp_path / "plots"), "--time-limit", "5"
    )
    doc = json.loads(r.stdout)
    for f in FIELDS:
        assert f in doc, f
    assert doc["strategy"] == "poet" and doc["status"] in ("optimal", "feasible")
    assert doc["peak_ram_bytes"] <= 226 * 1024 and doc["recomputes"] + doc["page_outs"] > 0
    assert doc["energy_j"] == pytest.approx(doc["compute_energy_j"] + doc["paging_energy_j"])
    for name in ("schedule-poet.png", "ram-poet.png"):
        png = tmp_path / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_solve_compare_table_and_json(tmp_path):
    # POET starts from every heuristic's schedule (strategies._candidates), so it is never above one, however
    # short its limit; the MILP baselines (remat-only, paging-only) get the same limit and may find what POET's
    # larger MILP did not: against them POET's proven bound must hold (its gap allows the difference)
    r = poetc("solve", *MLP, "--ram", "226K", "--compare", "--json", "--time-limit", "5")
    rows = json.loads(r.stdout)
    assert [x["strategy"] for x in rows] == [
        "poet",
        "store-all",
        "remat-only",
        "paging-only",
        "chen-sqrt",
        "greedy",
    ]
    poet = rows[0]
    assert poet["feasible"] and any(x["feasible"] and x["strategy"] in strategies.HEURISTICS for x in rows), (
        rows
    )
    for x in rows[1:]:
        if x["feasible"]:
            allow = (
                0.0 if x["strategy"] in strategies.HEURISTICS else (poet["gap"] or 0) * poet["extra_energy_j"]
            )
            assert poet["energy_j"] <= x["energy_j"] * (1 + 1e-6) + allow, (x["strategy"], poet, x)
    # the table (the JSON run above checked the figures): a short limit does
    r = poetc("solve", *MLP, "--ram", "226K", "--compare", "--time-limit", "1")
    assert "strategy" in r.stdout and "remat-only" in r.stdout and "floor energy" in r.stdout


def test_build_writes_schedule_json_within_budget(tmp_path):
    out = tmp_path / "b"
    # the schedule's fields, the budget and that the program recomputes or pages: no optimum needed
    poetc("build", *MLP, "--ram", "226K", "--out", str(out), "--no-compile", "--time-limit", "5")
    doc = json.loads((out / "schedule.json").read_text())
    for f in FIELDS:
        assert f in doc
    man = json.loads((out / "poetc.json").read_text())
    assert man["memory"]["total"] <= 226 * 1024
    assert (
        "POET_OP_RECOMPUTE" in (out / "model.c").read_text()
        or "POET_OP_PAGE_OUT" in (out / "model.c").read_text()
    )


def test_infeasible_budget_is_one_line_with_smallest(tmp_path):
    r = poetc("build", *MLP, "--ram", "100K", "--out", str(tmp_path / "o"), "--time-limit", "20", check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "smallest" in err
    assert not (tmp_path / "o").exists()


def test_bad_scheduling_options(tmp_path):
    for args, msg in (
        (["--strategy", "magic"], "unknown strategy 'magic'"),
        (["--deadline", "soon"], "bad deadline"),
        (["--solver", "NOPE"], "solver NOPE is not installed"),
        (["--gap", "2"], "--gap must be"),
    ):
        r = poetc("solve", *MLP, *args, check=False)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def test_deadline_too_tight_is_infeasible():
    # with transfers that stop the core (--no-overlap), a deadline of one computation of every node leaves no time
    # for paging or recomputation (overlapping transfers could still page behind the computation)
    r = poetc(
        "solve", *MLP, "--ram", "226K", "--deadline", "1.0001x", "--no-overlap", "--json", "--time-limit", "20",
        check=False,
    )  # fmt: skip
    doc = json.loads(r.stdout)
    assert not doc["feasible"] and r.returncode == 1


def test_export_graph_and_solve_it(tmp_path):
    """poetc solve MODEL --export-graph writes the problem; poetc solve --graph solves it to the same energy,
    with the short JSON fields (extra_j, bound_j, floor_j); --ram and --deadline override the file's."""
    g = tmp_path / "mlp.json"
    args = ["--strategy", "greedy", "--json"]
    r = poetc("solve", *MLP, "--ram", "232K", "--deadline", "1.5x", "--export-graph", str(g), *args)
    a = json.loads(r.stdout)
    b = json.loads(poetc("solve", "--graph", str(g), *args).stdout)
    assert a["status"] == b["status"] == "heuristic"
    assert a["extra_j"] > 0 and abs(a["extra_j"] - b["extra_j"]) <= 1e-12 * a["extra_j"]
    assert a["floor_j"] == b["floor_j"] == json.loads(g.read_text())["floor_j"]
    bad = poetc("solve", "--graph", str(tmp_path / "none.json"), check=False)
    assert bad.returncode == 2 and "none.json: no such file" in bad.stderr and "Traceback" not in bad.stderr


def test_compact_formulation_on_a_graph_file(tmp_path):
    """poetc solve --graph F --formulation compact: POET's linear network at 60% of its store-all peak is
    proven optimal (its bound from the relaxed model, not trivially zero), within the time-limit promise, and
    solve --graph does not import the frontend (onnx) on its way."""
    import os
    import subprocess
    import sys
    import time

    from poetc import boards
    from poetc.schedule import graphfile, poetgraphs, strategies

    p = poetgraphs.build("linear", boards.load("nrf52840"))
    g = tmp_path / "linear.json"
    graphfile.write(p.with_budget(int(0.6 * strategies.store_all_peak(p))), g)
    t0 = time.perf_counter()
    r = poetc("solve", "--graph", str(g), "--formulation", "compact", "--time-limit", "8", "--json")
    wall = time.perf_counter() - t0
    d = json.loads(r.stdout)
    assert d["status"] == "optimal" and d["extra_j"] > 0
    assert 0 < d["bound_j"] <= d["extra_j"] * (1 + 1e-9)
    assert wall <= 8 * 1.1 + 2
    code = "import sys, poetc.cli; sys.exit('onnx' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ}).returncode == 0
