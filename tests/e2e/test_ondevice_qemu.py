"""On-device training with no host (poetc build --on-device, firmware/examples/, the C API of poet/train.h) on the
emulated Cortex-M4: the data set linked into flash, and a sensor callback filling a ring buffer; checkpoints that
survive power loss: QEMU is killed at 30+ random moments of a run (some inside checkpoint writes), restarted on
the same storage file each time, and the finished run's weights equal an uninterrupted run's bit for bit, with
never more than one checkpoint interval of steps redone."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tests.conftest import poetc

from poetc.device import checkpoint
from poetc.emit import builddir

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("qemu-system-arm", "arm-none-eabi-gcc", "make")),
        reason="needs qemu-system-arm, arm-none-eabi-gcc and make (scripts/setup.sh installs them)",
    ),
]

STEPS, EVERY, KILLS = 400, 5, 32  # 80 intervals: 32 kills (each may cost one) end well before the last step


def tiny_mlp(path: Path) -> Path:
    """64-16-10 for the 8x8 digits."""
    rng = np.random.default_rng(3)
    inits, nodes, cur = [], [helper.make_node("Flatten", ["input"], ["flat"], axis=1)], "flat"
    for i, (fi, fo) in enumerate([(64, 16), (16, 10)]):
        b = 1 / np.sqrt(fi)
        inits += [
            numpy_helper.from_array(rng.uniform(-b, b, (fo, fi)).astype(np.float32), f"fc{i}.weight"),
            numpy_helper.from_array(rng.uniform(-b, b, (fo,)).astype(np.float32), f"fc{i}.bias"),
        ]
        nodes.append(helper.make_node("Gemm", [cur, f"fc{i}.weight", f"fc{i}.bias"], [f"h{i}"], transB=1))
        cur = f"h{i}"
        if i == 0:
            nodes.append(helper.make_node("Relu", [cur], ["a0"]))
            cur = "a0"
    g = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def digits_npz(path: Path) -> Path:
    from poetc.resources import data_dir

    with np.load(data_dir() / "digits.npz") as z:
        x = (z["x"][:160] / 16.0).astype(np.float32).reshape(160, 1, 8, 8)
        y = z["y"][:160].astype(np.int64)
    np.savez(path, x=x[:128], y=y[:128], x_test=x[128:], y_test=y[128:])
    return path


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    """The tiny MLP with momentum (its buffers must be checkpointed too), on-device from a data set in flash;
    rebuilt with a slow storage and a pause per step (test knobs) so that kills land inside checkpoint writes."""
    d = tmp_path_factory.mktemp("ondev")
    out = d / "b"
    poetc(
        "build", str(tiny_mlp(d / "tiny.onnx")), "--batch", "4", "--board", "qemu-m4", "--out", str(out),
        "--strategy", "store-all", "--optimizer", "momentum:0.9", "--on-device", "--data",
        str(digits_npz(d / "d.npz")), "--on-device-steps", str(STEPS), "--checkpoint-every", str(EVERY),
        "--lr", "0.05", "--no-compile",
    )  # fmt: skip
    flags = "-DPOET_APP_STEP_DELAY=100000 -DPOET_PAGER_WRITE_DELAY=150000 -DPOET_APP_LOG_EVERY=1"
    make(out, f"EXTRA_CFLAGS={flags}")
    return out


def make(d: Path, *args: str) -> None:
    """-O0: the tests time nothing, and conv.c alone takes seconds to optimise on a loaded machine."""
    subprocess.run(["make", "-B", "-s", "-C", str(d), "OPT=-O0", *args], check=True, capture_output=True)


def qemu(elf: Path, cwd: Path) -> subprocess.Popen:
    cmd = [
        "qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor", "none", "-icount", "shift=0",
        "-semihosting-config", "enable=on,target=native", "-serial", "null", "-kernel", str(elf),
    ]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


class Boot:
    """One QEMU run of the application; its console lines (semihosting: stderr) collected as they come."""

    def __init__(self, elf: Path, cwd: Path) -> None:
        self.proc = qemu(elf, cwd)
        self.lines: list[str] = []
        self.ckpt_begun = 0  # checkpoint writes begun
        self.up = threading.Event()  # the application said whether it restored
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for ln in self.proc.stderr:
            self.lines.append(ln.rstrip("\n"))
            if ln.startswith("checkpoint begin"):
                self.ckpt_begun += 1
            if ln.startswith("poet-app:"):
                self.up.set()

    def kill(self) -> bool:
        """SIGKILL (a power cut); False if it had already finished."""
        done = self.proc.poll() is not None
        if not done:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._t.join(timeout=10)
        return not done

    def finish(self, timeout: float = 60) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # hung: never leave a QEMU behind
            self.kill()
            raise
        self._t.join(timeout=10)
        return code

    @property
    def booted(self) -> bool:
        """It got as far as restoring (or not finding) a checkpoint."""
        return any(ln.startswith("poet-app:") for ln in self.lines)

    @property
    def restored(self) -> int:
        m = next(
            (re.match(r"poet-app: restored step (\d+)", ln) for ln in self.lines if "poet-app:" in ln), None
        )
        return int(m.group(1)) if m else 0

    @property
    def valid_slots(self) -> int | None:
        m = next((re.search(r"valid slots (\d)", ln) for ln in self.lines if "valid slots" in ln), None)
        return int(m.group(1)) if m else None

    @property
    def last_step(self) -> int:
        steps = [int(m.group(1)) for ln in self.lines if (m := re.match(r"step (\d+) loss", ln))]
        return max(steps, default=self.restored)

    @property
    def in_checkpoint(self) -> bool:
        """Killed between a checkpoint's begin and its saved line."""
        state = False
        for ln in self.lines:
            if ln.startswith("checkpoint begin"):
                state = True
            elif re.match(r"checkpoint \d+ saved", ln):
                state = False
        return state


def test_kill_and_resume_bit_for_bit(build: Path, tmp_path: Path) -> None:
    elf = build / "build" / "poet.elf"
    b = builddir.open_build(build)
    t0 = time.perf_counter()
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref = Boot(elf, ref_dir)
    assert ref.finish() == 0, "\n".join(ref.lines)
    ref_s = time.perf_counter() - t0
    losses = [float(m.group(1)) for ln in ref.lines if (m := re.match(r"step \d+ loss (\S+)", ln))]
    assert len(losses) == STEPS and np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.3, ref.lines
    want = checkpoint.newest(b, ref_dir / "poet-pager.bin")
    assert want is not None and want.step == STEPS

    interval_s = ref_s / (STEPS / EVERY)  # wall time of one checkpoint interval
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    rng = random.Random(15)
    kills, in_writes, torn, redone, boots = 0, 0, 0, [], []
    prev_last = None
    while kills < KILLS:
        boot = Boot(elf, run_dir)
        mode = kills % 3
        if mode == 0:  # while QEMU boots or the application restores
            time.sleep(rng.uniform(0.0, 0.15))
        elif mode == 1:  # anywhere in the next few intervals
            boot.up.wait(timeout=10)
            time.sleep(rng.uniform(0.0, 2.5 * interval_s))
        else:  # inside the first or second checkpoint write: wait for it to begin, then cut within it
            boot.up.wait(timeout=10)
            k = rng.choice((1, 2))
            while boot.ckpt_begun < k and boot.proc.poll() is None:
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.5 * interval_s))
        killed = boot.kill()
        boots.append(boot)
        if prev_last is not None and boot.booted:  # what it restored against what the previous one reached
            assert boot.restored % EVERY == 0 and boot.restored >= prev_last - EVERY, (prev_last, boot.lines)
            redone.append(prev_last - boot.restored)
            torn += boot.valid_slots not in (None, 3) and boot.restored >= 2 * EVERY
        if not killed:
            break  # it finished before the cut
        kills += 1
        in_writes += boot.in_checkpoint
        if boot.booted:
            prev_last = boot.last_step
    final = Boot(elf, run_dir)
    assert final.finish() == 0, "\n".join(final.lines)
    if prev_last is not None:
        redone.append(prev_last - final.restored)
        assert final.restored % EVERY == 0 and final.restored >= prev_last - EVERY
    got = checkpoint.newest(b, run_dir / "poet-pager.bin")
    elapsed = time.perf_counter() - t0
    assert got is not None and got.step == STEPS and got.data_pos == want.data_pos
    diff = max(float(np.max(np.abs(got.tensors[k] - want.tensors[k]))) for k in want.tensors)
    same = all(got.tensors[k].tobytes() == want.tensors[k].tobytes() for k in want.tensors)
    print(
        f"kill-and-resume: {kills} kills ({in_writes} inside checkpoint writes, {torn} torn slots found at boot), "
        f"steps redone total {sum(redone)}, max {max(redone, default=0)} (interval {EVERY}); restored steps "
        f"{[bt.restored for bt in boots]} + {final.restored}; max weight difference {diff}; "
        f"uninterrupted run {ref_s:.2f} s, whole test {elapsed:.1f} s"
    )
    assert kills >= 30, "the run finished before 30 kills"
    assert in_writes >= 3 and torn >= 1
    assert max(redone) <= EVERY
    assert same and diff == 0.0
    assert {k for k in want.tensors} >= {"fc0.weight", "fc1.bias"} and len(want.tensors) == 8  # + momentum


def test_sensor_example_on_qemu(build: Path, tmp_path: Path) -> None:
    """The ring-buffer example (a sensor callback) in the same build: it trains, and its loss comes down."""
    d = tmp_path / "sensor"
    shutil.copytree(build, d)
    (d / "app" / "train_flash.c").unlink()
    from poetc.resources import firmware_dir

    shutil.copyfile(firmware_dir() / "examples" / "train_sensor.c", d / "app" / "train_sensor.c")
    make(d, "EXTRA_CFLAGS=-DPOET_APP_LOG_EVERY=1")
    (d / "poet-pager.bin").unlink(missing_ok=True)
    boot = Boot(d / "build" / "poet.elf", d)
    assert boot.finish() == 0, "\n".join(boot.lines)
    losses = [float(m.group(1)) for ln in boot.lines if (m := re.match(r"step \d+ loss (\S+)", ln))]
    assert len(losses) == STEPS and np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.3, boot.lines
    assert any(ln.startswith(f"done: {STEPS} steps") for ln in boot.lines)
    ck = checkpoint.newest(builddir.open_build(d), d / "poet-pager.bin")
    assert ck is not None and ck.step == STEPS and ck.data_pos == STEPS * 4  # samples the sensor delivered
