"""The wheel carries the runtime, templates, boards, firmware and data (a non-editable install works)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_contains_shared_files(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (whl,) = tmp_path.glob("poetc-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for want in (
        "poetc/cli.py",
        "poetc/_share/runtime_c/src/interp.c",
        "poetc/_share/runtime_c/include/poet/poet.h",
        "poetc/_share/templates/model.c.j2",
        "poetc/_share/templates/report.html.j2",
        "poetc/_share/boards/nrf52840.toml",
        "poetc/_share/firmware/host/port_host.c",
        "poetc/data/digits.npz",
    ):
        assert want in names, want
    meta = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(whl).read(meta).decode()
    assert "Requires-Python: >=3.11" in text and "torch" not in text.split("Provides-Extra: dev")[0]
