"""End to end on emulated Cortex-M boards (QEMU): build with arm-none-eabi-gcc, train and verify over the UART
served on a loopback port, the dump contract, energy and per-node instruction counts, paging through
semihosting, memory budgets at link time, faults and hangs, and no QEMU left behind."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tests.conftest import poetc

from poetc import boards
from poetc.device import harness, target
from poetc.emit import builddir
from poetc.errors import PoetcError, TargetError
from poetc.graph import reference

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("qemu-system-arm", "arm-none-eabi-gcc", "make")),
        reason="needs qemu-system-arm, arm-none-eabi-gcc and make (scripts/setup.sh installs them)",
    ),
]


def mlp_onnx(path: Path, widths: tuple[int, ...], gain: float = 1.0, seed: int = 3) -> Path:
    """A Flatten-Gemm-Relu-...-Gemm MLP for the 8x8 digits, as ONNX; weights uniform in +-gain/sqrt(fan_in)
    (gain 1: PyTorch's default; about 2.45: He's, which keeps a deep narrow net trainable)."""
    rng = np.random.default_rng(seed)
    inits, cur = [], "flat"
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1, name="flatten")]
    for i, (fi, fo) in enumerate(itertools.pairwise(widths)):
        b = gain / np.sqrt(fi)
        w, bias = f"fc{i + 1}.weight", f"fc{i + 1}.bias"
        inits += [
            numpy_helper.from_array(rng.uniform(-b, b, (fo, fi)).astype(np.float32), w),
            numpy_helper.from_array(rng.uniform(-b, b, (fo,)).astype(np.float32), bias),
        ]
        nodes.append(helper.make_node("Gemm", [cur, w, bias], [f"h{i}"], transB=1, name=f"fc{i + 1}"))
        cur = f"h{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [cur], [f"a{i}"], name=f"relu{i + 1}"))
            cur = f"a{i}"
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["batch", widths[-1]])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def small_mlp(path: Path) -> Path:
    """64-16-10 for the 8x8 digits (the zoo's digits-mlp has 32 hidden units: its parameters and their
    gradients alone need 17 KB, more than qemu-m0's 16 KB)."""
    return mlp_onnx(path, (64, 16, 10))


@pytest.fixture(scope="module")
def m4_digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q") / "m4"
    r = poetc("build", "digits-mlp", "--board", "qemu-m4", "--out", str(out))
    assert "image: flash" in r.stdout and "RAM" in r.stdout
    return out


@pytest.fixture(scope="module")
def m0_small(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("q")
    out = d / "m0"
    poetc("build", str(small_mlp(d / "small.onnx")), "--board", "qemu-m0", "--out", str(out), "--batch", "8")
    return out


def _qemu_pids(elf: Path) -> list[int]:
    """QEMU processes running this image."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and b"qemu-system-arm" in cmd[0] and str(elf).encode() in cmd:
            pids.append(int(d.name))
    return pids


def _table_rows(stdout: str) -> list[list[str]]:
    return [c for c in (ln.split() for ln in stdout.splitlines()) if c and c[0].isdigit()]


# ---- training, verification, dump ---------------------------------------------------------------------------
def test_digits_mlp_trains_on_qemu_m4_with_energy_and_node_ticks(m4_digits):
    r = poetc(
        "train", str(m4_digits), "--steps", "50", "--lr", "0.2", "--eval-every", "25", "--profile-nodes"
    )
    rows = [c for c in _table_rows(r.stdout) if len(c) in (3, 4) and "." in c[1]]
    losses = [float(c[1]) for c in rows]
    assert len(losses) >= 3 and losses[-1] < 0.9 * losses[0], r.stdout
    m = re.search(r"loss ([\d.]+) -> ([\d.]+)", r.stdout)
    assert m and float(m.group(2)) < 0.9 * float(m.group(1))
    # board time: instructions x cycles per instruction / 64 MHz, tens of ms (not QEMU's 1 ns per instruction)
    ms = float(re.search(r"([\d.]+) ms per step on the target", r.stdout).group(1))
    assert 5 < ms < 500
    # energy per step, counted from the instructions QEMU counted (an emulated run), beside the prediction
    counted = re.search(r"^counted\s+([\d.]+) (\w?J).*emulated", r.stdout, re.M)
    predicted = re.search(r"^predicted\s+([\d.]+) (\w?J)", r.stdout, re.M)
    assert counted and predicted, r.stdout
    instr = int(re.search(r"counted: ([\d,]+) instructions per step", r.stdout).group(1).replace(",", ""))
    assert 100_000 < instr < 50_000_000
    # per-node instruction counts of the last step: every node ran, and they add up to about the step
    prof = [c for c in _table_rows(r.stdout) if len(c) == 9 and c[-1].endswith("%")]  # "14.32 ms": 2 cells
    assert len(prof) == len(json.loads((m4_digits / "poetc.json").read_text())["nodes"])
    assert all(c[3] == "1" for c in prof)  # store-all: every node runs once
    counts = [int(c[4].replace(",", "")) for c in prof]
    # each node is counted to a SysTick tick (40 instructions), so the sum may exceed the step a little
    assert all(n > 0 for n in counts) and 0.9 * instr < sum(counts) <= instr * 1.01 + 40 * len(counts)


def test_first_step_gradients_match_the_host_reference_on_qemu_m4(m4_digits):
    r = poetc("verify", str(m4_digits))
    assert "PASS" in r.stdout
    worst = float(r.stdout.split("worst relative gradient error ")[1].split()[0])
    assert worst <= 1e-4


@pytest.mark.parametrize("which", ["m4", "m0"])
def test_dump_contract_on_qemu(request, tmp_path, which):
    """The same contract as on the host: x, y, loss, lr, param/, grad/, final/ by ONNX initializer name."""
    build = request.getfixturevalue("m4_digits" if which == "m4" else "m0_small")
    dump = tmp_path / "run.npz"
    poetc("train", str(build), "--steps", "1", "--lr", "0.5", "--eval-every", "0", "--dump", str(dump))
    d = np.load(dump)
    b = builddir.open_build(build)
    params = b.doc["params"]
    assert set(d.files) == {"x", "y", "loss", "lr"} | {
        f"{k}/{p}" for k in ("param", "grad", "final") for p in params
    }
    assert d["x"].shape == b.input_shape and d["y"].shape == (b.batch,) and d["loss"].shape == (1,)
    assert float(d["lr"]) == pytest.approx(0.5)
    _model, tg = harness.training_graph_of(b)
    ref = reference.train_step(tg, {p: d[f"param/{p}"] for p in params}, d["x"], d["y"], 0.5)
    assert abs(float(d["loss"][0]) - ref.loss) <= 1e-4 * abs(ref.loss)
    for p in params:
        assert reference.max_rel_error(d[f"grad/{p}"], ref.grads[p]) <= 1e-4, p
        assert reference.max_rel_error(d[f"final/{p}"], d[f"param/{p}"] - 0.5 * ref.grads[p]) <= 1e-4, p


def test_mlp_trains_on_qemu_m0_within_16k(m0_small):
    b = builddir.open_build(m0_small)
    size = target.image_size(m0_small / "build" / "poet.elf", boards.load("qemu-m0"))
    assert size.ram <= 16 * 1024 and size.ram <= b.doc["memory"]["total"]
    r = poetc("train", str(m0_small), "--steps", "60", "--lr", "0.3", "--eval-every", "0")
    m = re.search(r"loss ([\d.]+) -> ([\d.]+)", r.stdout)
    assert m and float(m.group(2)) < 0.85 * float(m.group(1)), r.stdout
    assert "instructions per step x 1.4 cycles/instruction / 48 MHz" in r.stdout


def _instructions_per_step(build: Path) -> int:
    r = poetc("train", str(build), "--steps", "3", "--lr", "0.1", "--eval-every", "0")
    return int(re.search(r"counted: ([\d,]+) instructions per step", r.stdout).group(1).replace(",", ""))


# the demo's deep MLP at batch 16: store-all needs 145.5 KiB; at 140 KB POET recomputes, paging-only pages
DEEP16 = ["digits-deep-mlp", "--board", "qemu-m4", "--batch", "16"]


def test_recomputation_under_a_tight_budget_on_qemu_m4(tmp_path):
    """digits-deep-mlp (batch 16) under 140 KB: the schedule recomputes; the firmware runs RECOMPUTE, counts the
    extra instructions against the store-all build, and the first step still matches the reference."""
    full, out = tmp_path / "store-all", tmp_path / "remat"
    poetc("build", *DEEP16, "--out", str(full), "--strategy", "store-all")
    poetc("build", *DEEP16, "--out", str(out), "--ram", "140K")
    sched = builddir.open_build(out).doc["schedule"]
    assert sched["recomputes"] > 0, sched
    size = target.image_size(out / "build" / "poet.elf", boards.load("qemu-m4"))
    assert size.ram <= 140 * 1024
    assert _instructions_per_step(out) > _instructions_per_step(full)
    assert "PASS" in poetc("verify", str(out)).stdout


def test_deep_mlp_must_page_to_fit_qemu_m0_and_still_learns(tmp_path):
    """A 6-layer digits MLP at batch 16 on qemu-m0: store-all does not fit 16 KB, a schedule that pages does;
    it trains with the pager on a host file through semihosting, and its first step matches the reference."""
    onnx_path = mlp_onnx(tmp_path / "deep.onnx", (64, 12, 12, 12, 12, 12, 10), gain=2.45)
    args = ["build", str(onnx_path), "--board", "qemu-m0", "--batch", "16"]
    r = poetc(*args, "--out", str(tmp_path / "sa"), "--strategy", "store-all", check=False)
    assert r.returncode == 2 and "16384" in r.stderr
    out = tmp_path / "pg"
    poetc(*args, "--out", str(out), "--strategy", "paging-only")
    size = target.image_size(out / "build" / "poet.elf", boards.load("qemu-m0"))
    assert size.ram <= 16 * 1024
    # 40 steps: the loss falls to 0.64 of the first step's (0.50 after 80) on the host twin of this run
    r = poetc("train", str(out), "--steps", "40", "--lr", "0.1", "--eval-every", "0")
    m = re.search(r"loss ([\d.]+) -> ([\d.]+)", r.stdout)
    assert m and float(m.group(2)) < 0.75 * float(m.group(1)), r.stdout
    m = re.search(r"paging per step: (\d+) page-ins \(([^)]+)\), (\d+) page-outs", r.stdout)
    assert m and int(m.group(1)) > 0 and int(m.group(3)) > 0, r.stdout
    assert "PASS" in poetc("verify", str(out)).stdout


@pytest.mark.parametrize("fixture", ["m4_digits", "m0_small"])
def test_ram_accounting_is_an_honest_upper_bound(request, fixture):
    """poetc's RAM table (parameters, batch, tables, link and port buffers, stack, arena) against the linker:
    never below what the image uses, and within the port allowance above it."""
    build = request.getfixturevalue(fixture)
    b = builddir.open_build(build)
    board = boards.load(b.doc["board"])
    size = target.image_size(build / "build" / "poet.elf", board)
    total = b.doc["memory"]["total"]
    assert total - board.port_ram_bytes <= size.ram <= total
    assert size.stack == board.stack_bytes


def test_paging_through_semihosting_with_a_scheduler_that_pages(tmp_path):
    """A schedule that pages (the paging-only strategy at a budget store-all does not fit), trained and verified
    in QEMU: PAGE_OUT/PAGE_IN go through the semihosting pager file and the gradients still match."""
    out = tmp_path / "pg"
    poetc("build", *DEEP16, "--out", str(out), "--ram", "140K", "--strategy", "paging-only")
    sched = builddir.open_build(out).doc["schedule"]
    assert sched["page_outs"] > 0, sched
    r = poetc("train", str(out), "--steps", "3", "--lr", "0.1", "--eval-every", "0")
    m = re.search(r"paging per step: (\d+) page-ins \(([^)]+)\), (\d+) page-outs", r.stdout)
    assert m and int(m.group(1)) > 0 and int(m.group(3)) > 0, r.stdout
    assert re.search(r"^counted\s+\S+ \w?J\s+[1-9]", r.stdout, re.M)  # non-zero paging energy
    assert "PASS" in poetc("verify", str(out)).stdout


# ---- memory budgets -----------------------------------------------------------------------------------------
def test_a_model_over_the_ram_fails_the_build_with_the_smallest_budget(tmp_path):
    """Activations over what is left of qemu-m0's 16 KB: one line, the budget and the smallest that fits."""
    onnx_path = small_mlp(tmp_path / "s.onnx")
    out = tmp_path / "big"
    r = poetc("build", str(onnx_path), "--board", "qemu-m0", "--out", str(out), "--batch", "32", check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    err = r.stderr.strip()
    m = re.search(r"smallest[^\n]*?(\d{5,}) bytes", err)
    assert len(err.splitlines()) == 1 and "16384" in err and m and int(m.group(1)) > 16384, err
    assert not out.exists()


def test_link_time_overflow_names_the_bytes_and_the_budget_that_fits(tmp_path):
    """The linker is the last word: memory.ld sized below what the image needs (as when a board file's RAM
    and the program disagree) fails with ld's overflow turned into one line with the budget that fits."""
    d = tmp_path / "b"
    onnx_path = small_mlp(tmp_path / "s.onnx")
    poetc("build", str(onnx_path), "--board", "qemu-m0", "--out", str(d), "--batch", "8", "--no-compile")
    mem = d / "memory.ld"
    mem.write_text(re.sub(r"POET_RAM_BYTES = \d+;", "POET_RAM_BYTES = 8192;", mem.read_text()))
    small = dataclasses.replace(boards.load("qemu-m0"), ram_bytes=8192)
    with pytest.raises(PoetcError) as e:
        target.QemuTarget(small).build(d)
    msg = str(e.value)
    m = re.search(
        r"RAM overflowed by (\d+) bytes.*smallest RAM budget that fits this build is (\d+) bytes", msg
    )
    assert m and int(m.group(2)) == 8192 + int(m.group(1)) and "\n" not in msg, msg


def test_flash_overflow_from_a_board_file(tmp_path):
    src = (boards.boards_dir() / "qemu-m0.toml").read_text()
    tiny = tmp_path / "tinyflash.toml"
    tiny.write_text(
        src.replace('name = "qemu-m0"', 'name = "tinyflash"').replace(
            "flash_bytes = 262_144", "flash_bytes = 8192"
        )
    )
    r = poetc("build", str(small_mlp(tmp_path / "s.onnx")), "--board", str(tiny), "--out", str(tmp_path / "o"), "--batch", "4", check=False)  # fmt: skip
    assert r.returncode == 2
    assert re.search(
        r"FLASH overflowed by \d+ bytes.*smallest FLASH budget that fits this build is \d+", r.stderr
    )


# ---- faults, hangs, orphans ---------------------------------------------------------------------------------
def _variant(build: Path, tmp_path: Path, flag: str) -> Path:
    work = tmp_path / f"variant{flag}"
    shutil.copytree(build, work)
    shutil.rmtree(work / "build")
    subprocess.run(
        ["make", "-C", str(work), f"EXTRA_CFLAGS=-DPOET_FAULT_TEST={flag}"], check=True, capture_output=True
    )
    return work


def test_a_hardfault_is_reported_as_such(m4_digits, tmp_path):
    work = _variant(m4_digits, tmp_path, "1")
    b = builddir.open_build(work)
    tgt = target.for_board(boards.load("qemu-m4"))
    with tgt.launch(work, timeout_s=20) as s:
        dev = harness.Device(b, s, tgt.seconds)
        dev.set_batch(np.zeros(b.input_shape, np.float32), np.zeros(b.batch, np.int64))
        with pytest.raises(TargetError, match=r"HardFault at pc=0x[0-9a-f]+.*cfsr="):
            dev.step(0.1)
        assert s.proc.poll() == target.FAULT_EXIT
    assert not _qemu_pids(work / "build" / "poet.elf")


def test_a_hung_firmware_is_a_timeout_not_a_protocol_error(m4_digits, tmp_path):
    work = _variant(m4_digits, tmp_path, "2")
    b = builddir.open_build(work)
    elf = work / "build" / "poet.elf"
    tgt = target.for_board(boards.load("qemu-m4"))
    t0 = time.monotonic()
    with pytest.raises(TargetError, match=r"target timed out \(hung\?\)"), tgt.launch(work, timeout_s=4) as s:
        dev = harness.Device(b, s, tgt.seconds)
        dev.set_batch(np.zeros(b.input_shape, np.float32), np.zeros(b.batch, np.int64))
        dev.step(0.1)
    assert time.monotonic() - t0 < 15
    assert not _qemu_pids(elf)


def test_no_orphan_qemu_on_success_failure_and_ctrl_c(m0_small):
    elf = (m0_small / "build" / "poet.elf").resolve()
    assert not _qemu_pids(elf)
    poetc("train", str(m0_small), "--steps", "2", "--eval-every", "0")
    assert not _qemu_pids(elf)
    tgt = target.for_board(boards.load("qemu-m0"))
    with pytest.raises(RuntimeError), tgt.launch(m0_small, timeout_s=10) as s:
        assert _qemu_pids(elf) == [s.proc.pid]
        raise RuntimeError("boom")
    assert not _qemu_pids(elf)
    p = subprocess.Popen(
        [sys.executable, "-m", "poetc.cli", "train", str(m0_small), "--steps", "100000", "--eval-every", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    deadline = time.time() + 30
    while time.time() < deadline and not _qemu_pids(elf):
        time.sleep(0.05)
    assert _qemu_pids(elf)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130 and b"interrupted" in err and b"Traceback" not in err
    time.sleep(0.3)
    assert not _qemu_pids(elf)


def test_parallel_sessions_get_their_own_ports(m0_small):
    tgt = target.for_board(boards.load("qemu-m0"))
    with tgt.launch(m0_small, timeout_s=10) as a, tgt.launch(m0_small, timeout_s=10) as b:
        assert a.url != b.url
        assert a.link.echo(b"a") == b"a" and b.link.echo(b"b") == b"b"


def test_instruction_counts_are_deterministic_to_the_systick_resolution(m0_small):
    """-icount shift=0: the same step on the same batch counts the same instructions, up to one SysTick tick
    (62.5 instructions on the microbit's 16 MHz SysTick)."""
    b = builddir.open_build(m0_small)
    tgt = target.for_board(boards.load("qemu-m0"))
    x = np.random.default_rng(0).random(b.input_shape).astype(np.float32)
    y = np.arange(b.batch) % 10
    counts = []
    for _ in range(2):
        with tgt.launch(m0_small, timeout_s=10) as s:
            dev = harness.Device(b, s, tgt.seconds)
            for _ in range(2):
                dev.link.reset()
                dev.set_batch(x, y)
                counts.append(dev.step(0.1).ticks)
    assert max(counts) - min(counts) <= 63, counts
