"""The README's set-up line, verbatim, on a clean clone with the system Python (Debian's externally managed
/usr/bin/python3, PEP 668): scripts/setup.sh makes .venv from it and installs poetc (non-editable, as a user gets
it) with PlatformIO, SCons and ppk2-api; the demo runs; ``poetc boards`` runs from what it installed; a second
run with nothing changed skips pip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")


def setup_line() -> str:
    """The README's install-and-demo command (the fenced sh line that runs scripts/setup.sh)."""
    text = (ROOT / "README.md").read_text()
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.splitlines():
            if line.startswith("scripts/setup.sh"):
                return line
    raise AssertionError("README.md has no scripts/setup.sh line")


def test_the_readme_installs_then_runs_the_demo():
    line = setup_line()
    assert "&&" in line and "poetc demo" in line.partition("&&")[2]


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not SYSTEM_PYTHON.is_file(), reason="needs Debian's system Python at /usr/bin/python3")
@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout"
)
def test_setup_on_a_clean_clone_with_the_system_python(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    # nothing of the Python running these tests may leak in: its venv, its PYTHONPATH
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not Path(p, "activate").is_file()
    )
    env["PYTHON"] = str(SYSTEM_PYTHON)

    def run(cmd: str, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
        t0 = time.perf_counter()
        r = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", cmd],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        took = time.perf_counter() - t0
        assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
        return r, took

    r, first = run(setup_line(), 1500)
    assert "PASS" in r.stdout  # the demo's gradient check
    cfg = (clone / ".venv" / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in cfg, cfg  # made from the system Python
    r, _ = run(".venv/bin/poetc boards", 60)
    assert "nrf52840" in r.stdout and "qemu-m4" in r.stdout
    # the base install flashes, meters and runs fleets (Flower); poetc is installed, not imported from the clone
    r, _ = run(
        ".venv/bin/python -c 'import platformio, ppk2_api, SCons, flwr, poetc; print(poetc.__file__)'", 60
    )
    assert "/.venv/lib/" in r.stdout and (clone / ".venv" / "bin" / "pio").is_file()
    r, second = run("scripts/setup.sh", 300)
    assert "up to date" in r.stdout and second < 30, (second, r.stdout)
    print(f"setup + demo {first:.0f} s; setup again {second:.1f} s")
