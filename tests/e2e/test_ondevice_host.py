"""On-device training on the host port (poetc build --on-device sensor): the example application through the C API
(poet/train.h) under ASan/UBSan, a restart that resumes from its checkpoint, and what a damaged image or a
diverging update gets: a corrupted initial value or kernel table is refused at boot (the image's checksums),
an update that makes a parameter infinite stops the run (the update kernels' finiteness flag)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import poetc
from tests.e2e.test_ondevice_qemu import digits_npz, tiny_mlp

from poetc.device import checkpoint
from poetc.emit import builddir

pytestmark = pytest.mark.skipif(
    not shutil.which("make") or not shutil.which("cc"), reason="needs make and cc"
)

STEPS, EVERY = 40, 10


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ondev-host")
    out = d / "b"
    poetc(
        "build", str(tiny_mlp(d / "tiny.onnx")), "--batch", "4", "--board", "host", "--out", str(out),
        "--strategy", "store-all", "--optimizer", "momentum:0.9", "--on-device", "sensor", "--data",
        str(digits_npz(d / "d.npz")), "--on-device-steps", str(STEPS), "--checkpoint-every", str(EVERY),
        "--lr", "0.05", "--no-compile",
    )  # fmt: skip
    make(out, "SAN=asan", "EXTRA_CFLAGS=-DPOET_APP_LOG_EVERY=1")  # -O0 (make): the tests need no speed
    return out


def make(d: Path, *args: str) -> None:
    subprocess.run(["make", "-B", "-s", "-C", str(d), "OPT=-O0", *args], check=True, capture_output=True)


def run(exe: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "POET_PAGER_FILE": str(cwd / "pager.bin")}
    return subprocess.run([str(exe)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def copy(build: Path, tmp: Path, name: str) -> Path:
    d = tmp / name
    shutil.copytree(build, d)
    return d


def test_sensor_example_trains_and_resumes_under_sanitizers(build: Path, tmp_path: Path) -> None:
    """The ring-buffer example (a sensor callback): the loss comes down, the last checkpoint holds the run's step,
    data position and tensors, and a restart resumes from it."""
    d = build
    exe = d / "build" / "poet_host"  # built with ASan and UBSan
    r = run(exe, tmp_path)
    assert r.returncode == 0 and not r.stderr, r.stdout + r.stderr
    losses = [
        float(m.group(1)) for ln in r.stdout.splitlines() if (m := re.match(r"step \d+ loss (\S+)", ln))
    ]
    assert len(losses) == STEPS and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, r.stdout
    assert "no checkpoint, starting at step 0" in r.stdout and f"done: {STEPS} steps" in r.stdout
    b = builddir.open_build(d)
    ck = checkpoint.newest(b, tmp_path / "pager.bin")
    assert ck is not None and ck.step == STEPS and ck.data_pos == 4 * STEPS and ck.seq == STEPS // EVERY
    w0 = np.asarray(ck.tensors["fc0.weight"])
    assert np.all(np.isfinite(w0)) and set(ck.tensors) == {t["name"] for t in b.doc["checkpoint"]["tensors"]}
    again = run(exe, tmp_path)  # a restart resumes: nothing left to do
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"restored step {STEPS}" in again.stdout and not re.search(r"^step \d+", again.stdout, re.M)


def test_corrupted_initial_value_is_refused(build: Path, tmp_path: Path) -> None:
    """One flipped bit in the image's copy of a weight: the boot check refuses to train (exit 4, one line)."""
    from poetc import frontend

    exe = build / "build" / "poet_host"
    model = frontend.load(build / "model.onnx", batch=4)
    raw = exe.read_bytes()
    needle = np.asarray(model.params["fc0.weight"], "<f4").reshape(-1)[:8].tobytes()
    at = raw.find(needle)
    assert at >= 0 and raw.find(needle, at + 1) < 0
    bad = tmp_path / "poet_host"
    bad.write_bytes(raw[: at + 5] + bytes([raw[at + 5] ^ 0x04]) + raw[at + 6 :])
    bad.chmod(0o755)
    r = run(bad, tmp_path)
    assert r.returncode == 4, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and "cannot train on this image" in lines[0] and "checksum" in lines[0]
    assert not (tmp_path / "pager.bin").exists() or not (tmp_path / "pager.bin").stat().st_size
    assert run(exe, tmp_path).returncode == 0  # the intact image trains


def test_corrupted_kernel_table_is_refused(build: Path, tmp_path: Path) -> None:
    d = copy(build, tmp_path, "tables")
    src = (d / "model.c").read_text()
    edited = re.sub(r"\.alpha = 1\.0f", ".alpha = 2.0f", src, count=1)
    assert edited != src
    (d / "model.c").write_text(edited)
    make(d)
    r = run(d / "build" / "poet_host", tmp_path)
    assert r.returncode == 4 and "checksum" in r.stdout, r.stdout + r.stderr


def test_nonfinite_update_stops_the_run(build: Path, tmp_path: Path) -> None:
    """A learning rate that overflows the weights: the first step fails on its updates (not on the loss, which
    is computed before them), and no checkpoint is written."""
    d = copy(build, tmp_path, "lr")
    make(d, "EXTRA_CFLAGS=-DPOET_APP_LR=3e38f")
    r = run(d / "build" / "poet_host", tmp_path)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "training step failed: an update made a parameter NaN or infinite" in r.stdout
    assert checkpoint.newest(builddir.open_build(d), tmp_path / "pager.bin") is None


ARDUINO_STUB = """#pragma once
#include <stddef.h>
#include <stdint.h>
struct StubSerial {
    void begin(unsigned long) {}
    size_t print(const char *) { return 0; }
    size_t print(unsigned long) { return 0; }
    size_t print(double, int = 2) { return 0; }
    size_t println(const char *) { return 0; }
    size_t println(unsigned long) { return 0; }
    size_t println(double, int = 2) { return 0; }
};
extern StubSerial Serial;
unsigned long micros(void);
void delay(unsigned long);
"""

ARDUINO_MAIN = """#include "Arduino.h"
StubSerial Serial;
unsigned long micros(void) { return 0; }
void delay(unsigned long) {}
void setup();
void loop();
int main() { setup(); for (;;) loop(); }
"""

ARDUINO_CPUS = {  # the boards' cores as Arduino's cores compile for them
    "nrf52840": ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"],
    "mkr1000": ["-mcpu=cortex-m0plus", "-mthumb", "-mfloat-abi=soft"],
}


@pytest.mark.skipif(not shutil.which("arm-none-eabi-gcc"), reason="needs arm-none-eabi-gcc")
@pytest.mark.parametrize("board", sorted(ARDUINO_CPUS))
def test_arduino_library_compiles_for_the_boards(build: Path, tmp_path: Path, board: str) -> None:
    """poetc export --arduino: the library's sources with the cross compiler as Arduino's cores would (C as gnu11,
    the sketch as C++ against a stub Arduino.h: the core itself cannot be fetched here), -Wall -Wextra -Werror,
    then linked with the sketch so that nothing the runtime needs is missing."""
    lib = tmp_path / "Poet_tiny"
    r = poetc("export", str(build), "--arduino", str(lib))
    assert "Arduino library Poet_tiny" in r.stdout
    props = dict(
        ln.split("=", 1) for ln in (lib / "library.properties").read_text().splitlines() if "=" in ln
    )
    assert props["name"] == "Poet_tiny" and props["includes"] == "PoetTrain.h"
    ino = (lib / "examples" / "Train" / "Train.ino").read_text()
    assert "poet_train_step_" in ino and "poet_checkpoint_save" in ino and "poet_run" not in ino
    assert not (lib / "src" / "runtime" / "link.c").exists()
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "Arduino.h").write_text(ARDUINO_STUB)
    (stub / "main.cpp").write_text(ARDUINO_MAIN)
    cpu, objs = ARDUINO_CPUS[board], []
    warn = ["-Os", "-Wall", "-Wextra", "-Werror", "-ffunction-sections", "-fdata-sections"]
    for c in sorted((lib / "src").rglob("*.c")):
        objs.append(tmp_path / f"{c.stem}.o")
        subprocess.run(
            [
                "arm-none-eabi-gcc",
                *cpu,
                "-std=gnu11",
                *warn,
                "-I",
                str(lib / "src"),
                "-c",
                str(c),
                "-o",
                str(objs[-1]),
            ],
            check=True,
        )
    cxx = shutil.which("arm-none-eabi-g++")
    if cxx is None:
        pytest.skip("arm-none-eabi-g++ is missing: the library's C sources compiled, the sketch not")
    for src, name in ((lib / "examples" / "Train" / "Train.ino", "sketch.o"), (stub / "main.cpp", "main.o")):
        objs.append(tmp_path / name)
        subprocess.run(
            [cxx, *cpu, "-std=gnu++11", *warn, "-fno-exceptions", "-fno-rtti", "-I", str(stub), "-I", str(lib / "src"),
             "-x", "c++", "-c", str(src), "-o", str(objs[-1])],
            check=True,
        )  # fmt: skip
    link = subprocess.run(
        ["arm-none-eabi-gcc", *cpu, "--specs=nosys.specs", "-Wl,--gc-sections", *map(str, objs), "-lm",
         "-o", str(tmp_path / "sketch.elf")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert link.returncode == 0 and "undefined reference" not in link.stderr, link.stderr


def test_storage_homed_parameters_resume_bit_for_bit(tmp_path: Path) -> None:
    """Every parameter and momentum buffer homed on storage (--params storage): a checkpoint reads their master
    copies (checked against their own CRCs) and a restore rewrites and seals them; a run cut off after step 23
    (checkpoint at 20) and resumed ends with the weights of an uninterrupted run, bit for bit."""
    out = tmp_path / "b"
    poetc(
        "build", str(tiny_mlp(tmp_path / "tiny.onnx")), "--batch", "4", "--board", "host", "--out", str(out),
        "--strategy", "store-all", "--params", "storage", "--optimizer", "momentum:0.9", "--on-device", "flash",
        "--data", str(digits_npz(tmp_path / "d.npz")), "--on-device-steps", str(STEPS), "--checkpoint-every",
        str(EVERY), "--lr", "0.05", "--no-compile",
    )  # fmt: skip
    b = builddir.open_build(out)
    assert {b.tensor(t["name"])["home"] for t in b.doc["checkpoint"]["tensors"]} == {"storage"}
    cut = copy(out, tmp_path, "cut")
    make(cut, "EXTRA_CFLAGS=-DPOET_APP_STOP_AT=23")
    make(out)
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir()
    run_dir.mkdir()
    assert run(out / "build" / "poet_host", ref_dir).returncode == 0
    r = run(cut / "build" / "poet_host", run_dir)
    assert r.returncode == 9 and "step 20" in r.stdout and "checkpoint 2 saved at step 20" in r.stdout, (
        r.stdout
    )
    r = run(out / "build" / "poet_host", run_dir)
    assert r.returncode == 0 and "restored step 20" in r.stdout, r.stdout + r.stderr
    want = checkpoint.newest(b, ref_dir / "pager.bin")
    got = checkpoint.newest(b, run_dir / "pager.bin")
    assert want is not None and got is not None and want.step == got.step == STEPS
    assert all(got.tensors[k].tobytes() == want.tensors[k].tobytes() for k in want.tensors)
    from poetc import frontend

    init = np.asarray(frontend.load(out / "model.onnx", batch=4).params["fc0.weight"], np.float32)
    assert not np.array_equal(want.tensors["fc0.weight"], init)  # it trained
