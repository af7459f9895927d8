"""Fuzzing the target's frame parser and command handlers (runtime_c/src/link.c) under AddressSanitizer and
UndefinedBehaviorSanitizer: tests/c/fuzz_link.c, a random structured driver (GCC has no libFuzzer), for a bounded
time against a real model's tables. Any crash, sanitizer report or malformed reply frame fails the test."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from poetc.resources import runtime_dir

HERE = Path(__file__).resolve().parent
SECONDS = float(os.environ.get("POETC_FUZZ_SECONDS", "8"))

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a host C compiler (cc)")


def test_the_frame_parser_survives_random_structured_input(host_digits8, tmp_path):
    exe = tmp_path / "fuzz_link"
    rt = runtime_dir()
    subprocess.run(
        ["cc", "-std=c99", "-O0", "-g", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-DPOET_FRAME_MAX=256",
         f"-I{rt / 'include'}", f"-I{host_digits8}", str(host_digits8 / "model.c"),
         *sorted(str(p) for p in (rt / "src").glob("*.c")), str(HERE / "fuzz_link.c"), "-lm", "-o", str(exe)],
        check=True,
    )  # fmt: skip
    seed = os.environ.get("POETC_FUZZ_SEED", "1")
    r = subprocess.run([str(exe), str(SECONDS), seed], capture_output=True, text=True, timeout=SECONDS + 60)
    assert r.returncode == 0, f"seed {seed}:\n{r.stdout}\n{r.stderr[-4000:]}"
    print(r.stdout.strip())
    m = re.search(r"fuzz_link: (\d+) cases, (\d+) bytes in, (\d+) bytes of replies, (\d+) EXITs", r.stdout)
    assert m and int(m.group(1)) > 1000 and int(m.group(3)) > 0 and int(m.group(4)) > 0, r.stdout
