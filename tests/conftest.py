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
