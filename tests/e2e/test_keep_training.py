"""The host never throws training away: Ctrl-C and SIGTERM stop at a step boundary with the weights saved, a target
error keeps the last checkpoint, --resume continues bit for bit, export names (and refuses) an unfinished latest
run, a build directory is used by one command at a time, and SIGTERM leaves no temporary files behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import poetc

from poetc import cli
from poetc.device import harness
from poetc.emit import builddir
from poetc.errors import TargetError

STEPS = 300


def _main(*args: str) -> tuple[int, str, str]:
    """poetc in this process (quicker than a child): exit code, stdout, stderr."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def build(host_digits8) -> Path:
    return host_digits8


@pytest.fixture(scope="module")
def reference(build) -> dict[str, np.ndarray]:
    """The weights of an uninterrupted run of STEPS steps."""
    assert _main("train", str(build), "--steps", str(STEPS), "--eval-every", "0")[0] == 0
    b = builddir.open_build(build)
    return b.load_trained(b.runs()[-1])


def _record(build: Path, run: int) -> dict:
    return json.loads((build / "runs" / str(run) / "train.json").read_text())


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


def _train_until(build: Path, step: int, sig: int, env: dict | None = None) -> subprocess.CompletedProcess:
    """poetc train in a child process, sent ``sig`` once it has printed step ``step``."""
    p = subprocess.Popen(
        [sys.executable, "-m", "poetc.cli", "train", str(build), "--steps", str(STEPS), "--eval-every", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert p.stdout is not None
    out = []
    for line in p.stdout:
        out.append(line)
        if line.split()[:1] == [str(step)]:
            p.send_signal(sig)
            break
    rest, err = p.communicate(timeout=60)
    return subprocess.CompletedProcess(p.args, p.returncode, "".join(out) + rest, err)


def test_ctrl_c_saves_the_steps_done_and_resume_ends_bit_for_bit(build, reference):
    r = _train_until(build, 60, signal.SIGINT)
    assert r.returncode == 130, r.stderr
    b = builddir.open_build(build)
    run = b.runs()[-1]
    rec = _record(build, run)
    assert rec["status"] == "interrupted" and 60 <= rec["steps"] < STEPS and rec["steps_planned"] == STEPS
    assert f"after {rec['steps']} of {STEPS} steps: weights saved in run {run}" in r.stderr
    assert "Traceback" not in r.stderr
    saved = b.load_trained(run)
    assert not _same(saved, reference)
    # export does not quietly take an unfinished run; --run names it and exports it
    onnx_out = build.parent / "m.onnx"
    code, _, err = _main("export", str(build), "--onnx", str(onnx_out))
    assert code == 2 and f"the latest run {run}" in err and "did not complete" in err
    assert not onnx_out.exists()
    code, out, _ = _main("export", str(build), "--onnx", str(onnx_out), "--run", str(run))
    assert code == 0 and f"interrupted after {rec['steps']} of {STEPS} steps" in out and onnx_out.is_file()
    # resume: the rest of the steps, in the same data order, from the saved weights
    code, out, _ = _main("train", str(build), "--resume", "--eval-every", "0")
    assert code == 0 and f"resuming from run {run}" in out
    b = builddir.open_build(build)
    done = b.runs()[-1]
    rec2 = _record(build, done)
    assert (
        rec2["status"] == "complete"
        and rec2["steps"] == STEPS
        and rec2["steps_this_run"] == STEPS - rec["steps"]
    )
    assert _same(b.load_trained(done), reference)


def test_a_target_error_keeps_the_last_checkpoint(build, reference, monkeypatch, capsys):
    real = harness.Device.step
    calls = {"n": 0}

    def dies(self, lr, capture=False):
        calls["n"] += 1
        if calls["n"] == 47:
            raise TargetError("target: the target process died from signal SIGKILL")
        return real(self, lr, capture)

    monkeypatch.setattr(harness.Device, "step", dies)
    code = cli.main(["train", str(build), "--steps", str(STEPS), "--eval-every", "0", "--save-every", "20"])
    err = capsys.readouterr().err
    assert code == 3, err
    b = builddir.open_build(build)
    run = b.runs()[-1]
    rec = _record(build, run)
    assert rec["status"] == "failed" and rec["steps"] == 40 and "SIGKILL" in rec["error"]
    assert f"the weights of step 40 are saved in run {run}" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(harness.Device, "step", real)
    assert cli.main(["train", str(build), "--resume", str(run), "--eval-every", "0"]) == 0
    assert _same(builddir.open_build(build).load_trained(), reference)


def test_a_build_directory_is_used_by_one_command_at_a_time(build):
    with builddir.locked(build, "train"):  # as another process would hold it (flock: per open file)
        r = poetc("train", str(build), "--steps", "1", check=False)  # a real second process
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert f"in use by another poetc train (PID {os.getpid()})" in r.stderr
        for cmd in (["export", str(build), "--onnx", str(build.parent / "x.onnx")], ["verify", str(build)]):
            code, _, err = _main(*cmd)
            assert code == 2 and f"(PID {os.getpid()})" in err, err
    # a stale lock (its holder died: the file is there, nobody holds it) is taken over
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    builddir.lock_path(build).write_text(f"{dead.stdout.strip()} train\n")
    assert _main("train", str(build), "--steps", "2", "--eval-every", "0")[0] == 0
    assert not builddir.lock_path(build).exists()


def test_sigterm_saves_and_leaves_no_temporary_files(build, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = _train_until(build, 30, signal.SIGTERM, env={"TMPDIR": str(tmp)})
    assert r.returncode == 143, r.stderr
    assert "stopped by SIGTERM" in r.stderr and "Traceback" not in r.stderr
    rec = _record(build, builddir.open_build(build).runs()[-1])
    assert rec["status"] == "interrupted" and rec["steps"] >= 30
    assert list(tmp.iterdir()) == []  # the pager directory went with the target
    assert not builddir.lock_path(build).exists()
    assert not list(build.glob("runs/*/.*tmp*"))


def test_sigterm_during_a_build_leaves_neither_its_temporary_directory_nor_its_lock(tmp_path):
    out = tmp_path / "b"
    p = subprocess.Popen(
        [sys.executable, "-m", "poetc.cli", "build", "digits-mlp", "--board", "host", "--out", str(out),
         "--strategy", "store-all"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stdout is not None
    for line in p.stdout:
        if "compiling for" in line:  # the temporary directory exists and the compiler runs
            assert list(tmp_path.glob(".b.poetc-tmp-*"))
            p.send_signal(signal.SIGTERM)
            break
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143 and "stopped by SIGTERM" in err and "Traceback" not in err, err
    assert sorted(e.name for e in tmp_path.iterdir()) == []  # no build, no temporary directory, no lock
