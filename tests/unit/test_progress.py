"""Progress display: plain lines (no control characters) when stdout is not a terminal, nothing when quiet, and
the CLI's rendering of the solver's progress records."""

from __future__ import annotations

import time

from poetc import cli, progress
from poetc.schedule import milp, strategies


def test_not_a_terminal_gets_occasional_plain_lines(capsys):
    d = progress.Display(every_s=0.05)
    assert not d.live  # pytest's captured stdout is not a terminal
    with d.task("scheduling", total=60, unit="s", clock=True) as t:
        t.update(info="best 5.034 mJ extra, bound 4.900 mJ, gap 2.7%")
        time.sleep(1.3)  # the clock ticks once a second when plain
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines and all(s.startswith("  scheduling: ") and " of 60 s; best 5.034 mJ" in s for s in lines)
    assert "\x1b" not in out and "\r" not in out


def test_counted_task_says_how_long_is_left(capsys):
    d = progress.Display(every_s=0.0)
    with d.task("sweep", total=None, unit="solves") as t:
        t.update(done=0, total=4)
        time.sleep(0.05)
        t.update(done=1)
    out = capsys.readouterr().out
    assert "sweep: 1/4 solves, about " in out and " s left" in out


def test_quiet_and_plain_false_print_nothing(capsys):
    for d, plain in (
        (progress.Display(quiet=True, every_s=0.0), True),
        (progress.Display(every_s=0.0), False),
    ):
        with d.task("training", total=10, unit="steps", plain=plain) as t:
            for s in range(1, 11):
                t.update(done=s)
        with d.task("scheduling", total=1, unit="s", clock=True, plain=plain) as t:
            t.update(info="x")
            time.sleep(1.1)
    assert capsys.readouterr().out == ""


def test_cli_renders_solver_records():
    task, watch = cli._solving("solving poet", strategies.SolveOptions(time_limit_s=30))
    watch(milp.Progress(0.5, None, None, 30, ""))
    assert task.info == "no schedule yet"
    watch(milp.Progress(1.0, None, 1e-3, 30, "HIGHS"))
    assert task.info == "no schedule yet, bound 1.000 mJ"
    watch(milp.Progress(2.0, 5.034e-3, 4.9e-3, 30, "greedy"))
    assert task.info == "gap 2.7%, best 5.034 mJ extra (greedy), bound 4.900 mJ"
    assert task.total == 30 and task.clock
