"""Every command in README.md runs as written, in order, from a copy of the checkout.

The commands are the lines of README.md's fenced ``sh`` blocks. Skipped, each with its reason: lines whose comment
says ``needs a board`` (a physical board or power meter), ``scripts/setup.sh`` (tests/e2e/test_setup.py runs that
line verbatim on a clean clone with the system Python) and ``scripts/test.sh`` (the command that runs this test).
The copy gets a ``.venv`` whose ``poetc`` is the one under test, so ``. .venv/bin/activate`` and
``.venv/bin/poetc`` work as they do after set-up. Each line runs in its own ``bash -e -o pipefail``, after the
``.``/``source`` lines before it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HARDWARE = "needs a board"


def readme_commands(text: str) -> list[str]:
    """The command lines of the fenced ``sh`` blocks, in order (blank lines and whole-line comments left out)."""
    out: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                out.append(line.strip())
    return out


def skip_reason(line: str) -> str | None:
    if HARDWARE in line.partition("#")[2]:
        return "needs a board"
    if "scripts/setup.sh" in line:
        return "tests/e2e/test_setup.py runs it on a clean clone"
    if "scripts/test.sh" in line:
        return "the command that runs this test"
    return None


def test_readme_commands_are_found_and_marked():
    lines = readme_commands((ROOT / "README.md").read_text())
    assert any(ln.startswith("poetc build") for ln in lines) and any(
        ln.startswith("poetc train") for ln in lines
    )
    assert [ln for ln in lines if "scripts/" in ln and skip_reason(ln) is None] == []
    # a line that needs hardware says so in its comment, so that this test skips it rather than fails
    for ln in lines:
        if "--meter" in ln or re.search(r"poetc flash build/n\b", ln):
            assert skip_reason(ln) == "needs a board", ln


def _checkout_copy(dest: Path) -> None:
    """The checkout's files as a fresh clone would have them (git's list, with uncommitted edits), no build output."""
    r = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=False)
    if r.returncode == 0 and r.stdout:
        for name in r.stdout.decode().split("\0"):
            src = ROOT / name
            if name and src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
    else:  # not a git checkout (an sdist): the folders the README uses
        for name in ("examples", "README.md"):
            src = ROOT / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / name)


def _venv_for_this_poetc(dest: Path) -> None:
    """A .venv whose poetc is the one under test (this Python, its PYTHONPATH): what set-up leaves behind."""
    bindir = dest / ".venv" / "bin"
    bindir.mkdir(parents=True)
    poetc = bindir / "poetc"
    poetc.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m poetc.cli "$@"\n')
    poetc.chmod(0o755)
    (bindir / "activate").write_text(
        f'VIRTUAL_ENV={shlex.quote(str(dest / ".venv"))}\nexport VIRTUAL_ENV\nPATH="$VIRTUAL_ENV/bin:$PATH"\n'
        "export PATH\n"
    )


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.timeout(2400)
@pytest.mark.skipif(
    not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
    reason="the README's commands build for QEMU boards (scripts/setup.sh installs the tools)",
)
def test_every_readme_command_runs_verbatim(tmp_path):
    lines = readme_commands((ROOT / "README.md").read_text())
    work = tmp_path / "checkout"
    work.mkdir()
    _checkout_copy(work)
    _venv_for_this_poetc(work)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "POETC_SERIAL": ""}
    sourced: list[str] = []
    ran, skipped = [], []
    outputs: dict[str, str] = {}
    for line in lines:
        reason = skip_reason(line)
        if reason:
            skipped.append(f"{line}  [{reason}]")
            continue
        script = "\n".join([*sourced, line])
        t0 = time.perf_counter()
        r = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
            stdin=subprocess.DEVNULL,
        )
        took = time.perf_counter() - t0
        assert r.returncode == 0, (
            f"README line failed (exit {r.returncode}, {took:.0f} s):\n  {line}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
        )
        assert "Traceback" not in r.stderr, f"{line}\n{r.stderr}"
        ran.append(f"{took:6.1f} s  {line}")
        outputs[line] = r.stdout
        if line.startswith((". ", "source ")):
            sourced.append(line)
    print("\n".join(["README commands:", *ran, "skipped:", *skipped]))
    assert len(ran) >= 15
    # what the lines promise: kept runs (the dump run, then the 200-step run), the export, the report
    runs = sorted(int(p.name) for p in (work / "build" / "m" / "runs").iterdir())
    assert runs == [1, 2] and (work / "trained.onnx").is_file() and (work / "run.npz").is_file()
    assert (work / "build" / "p" / "report.html").is_file() and (work / "sweep" / "sweep.json").is_file()
    # the README's 200-step run learns at the model's default rate (issue 11: 0.05 left it at 0.39)
    (long_run,) = [ln for ln in outputs if ln.startswith("poetc train build/m --steps 200")]
    acc = re.search(r"accuracy ([\d.]+) -> ([\d.]+)", outputs[long_run])
    assert acc and float(acc.group(2)) > 0.85, outputs[long_run]
