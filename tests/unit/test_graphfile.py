"""Scheduling problems as data (schedule/graphfile.py, docs/graph-format.md): a model's problem written and read
back is the same problem, POET-shaped files read, and bad files fail with one line naming the field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from poetc import boards, frontend, pipeline
from poetc.errors import PoetcError
from poetc.schedule import graphfile, poetgraphs, program, simulate, strategies

FIELDS = (
    "names edges last_stage budget deadline_s storage_bytes page_overhead updates outputs n_forward loads "
    "storage_only writes store_j store_s"
).split()
ARRAYS = "mem compute_j compute_s page_in_j page_in_s page_out_j page_out_s".split()


def same(p, q) -> None:
    for k in FIELDS:
        assert getattr(p, k) == getattr(q, k), k
    for k in ARRAYS:
        np.testing.assert_array_equal(getattr(p, k), getattr(q, k), err_msg=k)


def test_model_problem_round_trip(tmp_path):
    """mlp with parameter homes (load nodes, write-backs, in-place updates) and a deadline survives the file,
    and a schedule replays to the same energy on both."""
    pl = pipeline.plan(frontend.load("mlp", batch=8), boards.load("nrf52840"), 232 * 1024, "1.5x")
    p = pl.problem
    assert p.loads and p.writes and p.updates and p.deadline_s  # the optional keys are exercised
    f = tmp_path / "mlp.json"
    graphfile.write(p, f, model="mlp")
    q = graphfile.read(f)
    same(p, q)
    s = strategies.run("chen-sqrt", p.with_budget(10**9))
    assert s.ok
    assert simulate.replay(q, s.program).energy_j == simulate.replay(p, s.program).energy_j
    r = graphfile.read(f, budget=1000, deadline_s=2.0)
    assert (r.budget, r.deadline_s) == (1000, 2.0)


def test_poet_shaped_file_reads(tmp_path):
    """A file with only the keys of POET's benchmark graphs (no format tag, extra descriptive keys)."""
    p = poetgraphs.build("linear", boards.load("nrf52840"), batch=1)
    d = graphfile.to_dict(p)
    for k in ("format", "page_overhead_bytes", "last_stage"):
        d.pop(k, None)
    d |= {"source": "test", "notes": "x", "store_all_peak_bytes": 1}
    q = graphfile.from_dict(json.loads(json.dumps(d)))
    assert q.last_stage == (p.T - 1,) * p.T  # POET may recompute its input (at no cost)
    assert q.budget == p.budget and q.T == 27
    assert strategies.run("store-all", q.with_budget(10**9)).ok
    assert program.store_all(q).R.shape == (27, 27)


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d.pop("mem_bytes"), "mem_bytes"),
        (lambda d: d["compute_j"].__setitem__(3, -1.0), "compute_j"),
        (lambda d: d["edges"].append([5, 2]), "edges"),
        (lambda d: d["edges"].append([0, 99]), "edges"),
        (lambda d: d.__setitem__("budget_bytes", "big"), "budget_bytes"),
        (lambda d: d.__setitem__("format", "other/9"), "format"),
        (lambda d: d.__setitem__("loads", [3, 1]), "loads"),
    ],
)
def test_bad_fields_name_themselves(tmp_path, edit, field):
    d = graphfile.to_dict(poetgraphs.build("linear", boards.load("nrf52840"), batch=1))
    edit(d)
    f = tmp_path / "g.json"
    f.write_text(json.dumps(d))
    with pytest.raises(PoetcError, match=f"g.json: field '{field}'"):
        graphfile.read(f)
