"""A real Flower deployment on loopback: a SuperLink, two ``poetc fleet --connect`` SuperNodes (host boards, one
shard each) and ``flwr run`` of ``examples/fleet-app``. The ServerApp reports every round, each SuperNode's board
trains every round, the final weights are written, and leaving (SIGTERM) takes the SuperNodes down with it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import ROOT, poetc

pytest.importorskip("flwr")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("flower-superlink"), reason="needs flwr's flower-superlink on PATH"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(
        f"no {text!r} in {path} after {timeout_s} s:\n{path.read_text(errors='replace')[-3000:]}"
    )


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_two_supernodes_join_a_superlink_and_train(tmp_path):
    port = _free_port()
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "poetc"\n\n[superlink.poetc]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {**os.environ, "FLWR_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    build = tmp_path / "build"
    poetc("build", "digits-mlp", "--board", "host", "--strategy", "store-all", "--out", str(build))
    procs: list[subprocess.Popen] = []
    try:
        link_log = tmp_path / "superlink.log"
        link = subprocess.Popen(
            [shutil.which("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
             "--disable-runtime-dependency-installation"],
            cwd=tmp_path, env=env, stdout=link_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        procs.append(link)
        _wait_for(link_log, "Uvicorn running", link, 60)
        nodes, logs = [], []
        for k in range(2):
            log = tmp_path / f"node{k}.log"
            cmd = [sys.executable, "-m", "poetc.cli", "fleet", str(build), "--connect", f"127.0.0.1:{port}"]
            cmd += ["--clients", "2", "--shard", str(k)]
            p = subprocess.Popen(
                cmd,
                cwd=tmp_path,
                env=env,
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            procs.append(p)
            nodes.append(p)
            logs.append(log)
        for p, log in zip(nodes, logs, strict=True):
            _wait_for(log, "as a Flower SuperNode", p, 60)
        run = subprocess.run(
            [shutil.which("flwr"), "run", str(ROOT / "examples" / "fleet-app"), "poetc", "--stream",
             "--run-config", "rounds=2 min-clients=2"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        out = re.sub(r"\x1b\[[0-9;]*m", "", run.stdout + run.stderr)  # Flower colours its log
        assert run.returncode == 0, out[-4000:]
        # the ServerApp's per-round lines in Flower's log: round, held-out accuracy, held-out loss, ...
        rounds = re.findall(r"INFO\s*:\s+(\d)\s+(0\.\d{3})\s+(\d\.\d{4})\s", out)
        assert [r[0] for r in rounds] == ["0", "1", "2"], out[-4000:]
        assert float(rounds[-1][2]) < float(rounds[0][2])  # the held-out loss falls
        assert (tmp_path / "poetc-fleet-server" / "trained.npz").is_file()
        for p, log in zip(nodes, logs, strict=True):
            _wait_for(log, "round 2: 1 local steps", p, 30)
        for p in nodes:  # leaving: SIGTERM, and the SuperNode goes with the process
            _stop(p)
            assert p.returncode == 0
        assert "leaving the federation" in logs[0].read_text()
    finally:
        for p in reversed(procs):
            _stop(p)
