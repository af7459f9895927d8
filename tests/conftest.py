"""Shared fixtures: PyTorch-exported models, built host programs, tool availability."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def poetc(
    *args: str, cwd: Path | None = None, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run the real console entry point as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "poetc.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"poetc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def python_alone(tmp: Path) -> tuple[str, dict[str, str]]:
    """(python, env): this Python run from a folder with nothing beside it and an empty PATH, importing what this
    one imports; a tool poetc looks for on PATH or beside its Python (PlatformIO's pio) is then not found."""
    d = tmp / "python-alone"
    d.mkdir(parents=True, exist_ok=True)
    exe = d / "python3"
    if not exe.exists():
        exe.symlink_to(os.path.realpath(sys.executable))
    env = {
        **os.environ,
        "PATH": str(d),
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "PYTHONWARNINGS": "ignore",
    }
    env.pop("VIRTUAL_ENV", None)
    return str(exe), env


def export_torch(module, example, path: Path, dynamo: bool = False) -> Path:
    import torch

    module.eval()
    kw = {"dynamo": dynamo}
    if not dynamo:
        kw["input_names"] = ["input"]
    torch.onnx.export(module, (example,), str(path), **kw)
    return path


@pytest.fixture(scope="session")
def torch_mod():
    return pytest.importorskip("torch")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def host_digits8(tmp_path_factory) -> Path:
    """digits-mlp built for the host board at batch 8 (store-all: no solve), shared by the tests that train it."""
    out = tmp_path_factory.mktemp("host-digits8") / "b"
    poetc(
        "build", "digits-mlp", "--board", "host", "--out", str(out), "--batch", "8", "--strategy", "store-all"
    )
    return out


# ---- longest files first -------------------------------------------------------------------------------------------
# CI runs the suite on 2 xdist workers, a test file at a time (``--dist loadfile``: a file's module fixtures are built
# once), in collection order; a long file that starts last makes one worker finish minutes after the other.
# tests/durations.txt lists the slow tests with their measured seconds (scripts/update_durations.py writes it from a
# run's ``--durations=0`` report): files are collected in decreasing order of their listed seconds, each file's
# tests in their own order; files with nothing listed keep their order after them.


def _durations() -> dict[str, float]:
    path = Path(__file__).with_name("durations.txt")
    out: dict[str, float] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            seconds, _, nodeid = line.strip().partition(" ")
            if nodeid and not line.startswith("#"):
                out[nodeid] = float(seconds)
    return out


def pytest_collection_modifyitems(config, items):
    known = _durations()
    per_file: dict[str, float] = {}
    for item in items:
        f = item.nodeid.partition("::")[0]
        per_file[f] = per_file.get(f, 0.0) + known.get(item.nodeid, 0.0)
    items.sort(key=lambda item: -per_file[item.nodeid.partition("::")[0]])  # stable
