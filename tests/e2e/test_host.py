"""End to end on the host: build, train over the link, dump, verify, export, and the link's robustness."""

from __future__ import annotations

import copy
import itertools
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import export_torch, poetc

from poetc.boards import load as load_board
from poetc.device import harness, link, target
from poetc.emit import builddir
from poetc.graph import reference

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "digits"
    poetc("build", "digits-mlp", "--board", "host", "--out", str(out))
    return out


def _mlp(widths, seed):
    torch.manual_seed(seed)
    layers = [torch.nn.Flatten()]
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize(
    "widths, in_shape, dynamo", [((20, 13, 7, 5), (4, 5), False), ((9, 31, 4), (9,), True)]
)
def test_pytorch_mlp_step_matches_pytorch(tmp_path, widths, in_shape, dynamo):
    net = _mlp(widths, seed=sum(widths))
    batch = 6
    onnx_path = export_torch(net, torch.randn(batch, *in_shape), tmp_path / "m.onnx", dynamo=dynamo)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, *in_shape)).astype(np.float32)
    y = rng.integers(0, widths[-1], 40)
    np.savez(tmp_path / "my.npz", x=x, y=y)
    out = tmp_path / "build"
    poetc("build", str(onnx_path), "--board", "host", "--out", str(out))
    steps = 3
    poetc(
        "train",
        str(out),
        "--steps",
        str(steps),
        "--lr",
        "0.2",
        "--data",
        str(tmp_path / "my.npz"),
        "--dump",
        str(tmp_path / "run.npz"),
        "--eval-every",
        "0",
    )
    d = np.load(tmp_path / "run.npz")
    assert d["x"].shape == (batch, *in_shape) and d["y"].shape == (batch,) and d["loss"].shape == (steps,)
    assert float(d["lr"]) == pytest.approx(0.2)
    names = [k for k, _ in net.named_parameters()]
    # PyTorch in float64 from the dumped initial parameters and first batch
    ref = copy.deepcopy(net).double()
    with torch.no_grad():
        for k, p in ref.named_parameters():
            p.copy_(torch.from_numpy(d[f"param/{k}"].astype(np.float64)))
    loss = torch.nn.functional.cross_entropy(
        ref(torch.from_numpy(d["x"].astype(np.float64))), torch.from_numpy(d["y"])
    )
    loss.backward()
    assert abs(float(d["loss"][0]) - loss.item()) <= 1e-4 * abs(loss.item())
    for k, p in ref.named_parameters():
        assert k in names
        assert reference.max_rel_error(d[f"grad/{k}"], p.grad.numpy()) <= 1e-4, k
    # after one step with the same lr, the weights must equal SGD's
    if steps == 1:
        for k, p in ref.named_parameters():
            want = d[f"param/{k}"] - 0.2 * p.grad.numpy()
            assert reference.max_rel_error(d[f"final/{k}"], want) <= 1e-4


def test_one_step_updated_weights_match_pytorch(tmp_path):
    net = _mlp((10, 6, 3), seed=5)
    onnx_path = export_torch(net, torch.randn(4, 10), tmp_path / "m.onnx")
    rng = np.random.default_rng(9)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((8, 10)).astype(np.float32), y=rng.integers(0, 3, 8))
    out = tmp_path / "b"
    poetc("build", str(onnx_path), "--board", "host", "--out", str(out))
    poetc(
        "train",
        str(out),
        "--steps",
        "1",
        "--lr",
        "0.5",
        "--data",
        str(tmp_path / "d.npz"),
        "--dump",
        str(tmp_path / "r.npz"),
    )
    d = np.load(tmp_path / "r.npz")
    ref = copy.deepcopy(net).double()
    with torch.no_grad():
        for k, p in ref.named_parameters():
            p.copy_(torch.from_numpy(d[f"param/{k}"].astype(np.float64)))
    torch.nn.functional.cross_entropy(
        ref(torch.from_numpy(d["x"].astype(np.float64))), torch.from_numpy(d["y"])
    ).backward()
    for k, p in ref.named_parameters():
        want = d[f"param/{k}"] - 0.5 * p.grad.numpy()
        assert reference.max_rel_error(d[f"final/{k}"], want) <= 1e-4, k


def test_digits_demo_learns_and_exports(digits, tmp_path):
    r = poetc("train", str(digits), "--steps", "150", "--lr", "0.1", "--eval-every", "50")
    lines = [c for c in (ln.split() for ln in r.stdout.splitlines()) if c and c[0].isdigit()]
    accs = [float(c[2]) for c in lines if len(c) == 4]
    losses = [float(c[1]) for c in lines]
    assert losses[-1] < 0.6 * losses[0]
    assert accs[-1] > 0.8 and accs[-1] > accs[0] + 0.3
    # export: the exported model computes what the device computes
    poetc("export", str(digits), "--onnx", str(tmp_path / "trained.onnx"))
    b = builddir.open_build(digits)
    _model, tg = harness.training_graph_of(b)
    from poetc import frontend

    exported = frontend.load(tmp_path / "trained.onnx", batch=b.batch)
    trained = b.load_trained()
    for k in trained:
        np.testing.assert_array_equal(exported.params[k], trained[k])
    x = np.random.default_rng(0).random(b.input_shape).astype(np.float32)
    with target.for_board(load_board("host")).launch(digits) as s:
        dev = harness.Device(b, s)
        for k, v in trained.items():
            dev.write_f32(dev.pids[k], v)
        got = dev.infer(x)
    want = reference.forward(tg, exported.params, x)
    assert reference.max_rel_error(got, want) <= 1e-5


def test_verify_pass_and_fail_exit_codes(digits):
    r = poetc("verify", str(digits))
    assert "PASS" in r.stdout and "worst relative gradient error" in r.stdout
    worst = float(r.stdout.split("worst relative gradient error ")[1].split()[0])
    assert worst <= 1e-4
    r = poetc("verify", str(digits), "--tol", "0", check=False)
    assert r.returncode == 1 and "FAIL" in r.stdout


def _session(build: Path, pager: str = "file") -> target.Session:
    return target.for_board(load_board("host")).launch(build, timeout_s=10, pager=pager)


def test_link_rejects_corrupt_and_oversized_frames(digits):
    with _session(digits) as s:
        lk = s.link
        info = lk.info()
        # corrupt CRC: error reply, the frame's contents are not used
        frame = bytearray(link.encode_frame(bytes([link.CMD_EXIT, 1, 7])))
        frame[-1] ^= 0xFF
        lk.send_raw(bytes(frame))
        reply = lk.read_frame(5)
        assert reply[0] == link.CMD_BAD_FRAME and reply[2] == 7  # POET_ERR_CRC
        # oversized length: error reply without reading the body
        lk.send_raw(b"\xa5\x5a" + struct.pack("<H", info.frame_max + 1) + b"\x00" * 16)
        reply = lk.read_frame(5)
        assert reply[0] == link.CMD_BAD_FRAME and reply[2] == 8  # POET_ERR_OVERSIZE
        # garbage, then a good request still works
        lk.send_raw(bytes(range(200)))
        assert lk.echo(b"still alive") == b"still alive"
        # bad requests get a status, never a crash
        with pytest.raises(link.StatusError, match="ERR_RANGE"):
            lk.read(9999, 4)
        with pytest.raises(link.StatusError, match="ERR_READONLY"):
            lk.write(builddir.open_build(digits).ids["loss"], b"\0\0\0\0")
        with pytest.raises(link.StatusError, match="ERR_UNKNOWN_CMD"):
            lk.check("bogus", 0x33)
        assert s.proc.poll() is None
        assert lk.info().hash_hex == info.hash_hex


def test_link_over_a_pty(digits):
    """The program speaks on one end of a pty; the harness opens the other end as a serial device."""
    import pty
    import tty

    import serial

    b = builddir.open_build(digits)
    exe = target.HostTarget(load_board("host")).binary(digits)
    master, slave = pty.openpty()
    tty.setraw(slave)
    dev_path = os.ttyname(slave)
    proc = subprocess.Popen(
        [str(exe), "--stdio", "--pager-ram"],
        stdin=master,
        stdout=master,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    os.close(master)
    try:
        ser = serial.serial_for_url(dev_path, timeout=0.2)
        os.close(slave)
        lk = link.Link(ser, timeout_s=10)
        assert lk.info().hash_hex == b.doc["hash"]
        assert lk.echo(bytes(range(100))) == bytes(range(100))
        lk.exit()
        ser.close()
        assert proc.wait(5) == 0
    finally:
        target.stop_process(proc, 1)


def _children_running(exe: Path) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.readlink(d / "exe") == str(exe.resolve()):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def test_no_orphans_on_success_failure_and_ctrl_c(digits, tmp_path):
    exe = target.HostTarget(load_board("host")).binary(digits)
    assert not _children_running(exe)
    poetc("train", str(digits), "--steps", "2", "--eval-every", "0")
    assert not _children_running(exe)
    # failure inside a session: the process is killed
    with pytest.raises(RuntimeError), _session(digits) as s:
        pid = s.proc.pid
        raise RuntimeError("boom")
    assert not Path(f"/proc/{pid}").exists() or not _children_running(exe)
    # Ctrl-C during training
    p = subprocess.Popen(
        [sys.executable, "-m", "poetc.cli", "train", str(digits), "--steps", "100000", "--eval-every", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 20
    while time.time() < deadline and not _children_running(exe):
        time.sleep(0.05)
    assert _children_running(exe)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 130 and b"interrupted" in err and b"Traceback" not in err
    time.sleep(0.3)
    assert not _children_running(exe)


def test_target_crash_is_reported_as_such(digits):
    s = _session(digits)
    try:
        os.kill(s.proc.pid, signal.SIGSEGV)
        s.proc.wait(5)
        from poetc.errors import TargetError

        with pytest.raises(TargetError, match="SIGSEGV"):
            s.link.info()
    finally:
        s.close(graceful=False)


def test_sanitizer_build_trains_clean(tmp_path):
    # 110 KB keeps a parameter on storage: every step LOADs and STOREs it through the host port's worker thread
    work = tmp_path / "asan"
    poetc("build", "digits-mlp", "--board", "host", "--ram", "110K", "--time-limit", "3", "--out", str(work),
          "--no-compile")  # fmt: skip
    # -O0: as instrumented, and GCC instruments conv.c at -O2 about ten times slower
    subprocess.run(["make", "-C", str(work), "SAN=asan", "OPT=-O0"], check=True, capture_output=True)
    b = builddir.open_build(work)
    with _session(work, pager="ram") as s:
        dev = harness.Device(b, s)
        rng = np.random.default_rng(0)
        for _ in range(3):
            dev.set_batch(rng.random(b.input_shape).astype(np.float32), rng.integers(0, 10, b.batch))
            out = dev.step(0.1, capture=True)
            assert np.isfinite(out.loss) and len(out.grads) == 4
            assert out.reply.loads > 0 and out.reply.stores > 0 and out.reply.waits > 0
        dev.infer(rng.random(b.input_shape).astype(np.float32))
        proc = s.proc
    assert proc.wait(5) == 0
    err = proc.stderr.read().decode() if proc.stderr and not proc.stderr.closed else ""
    assert "runtime error" not in err and "AddressSanitizer" not in err


def test_objects_do_not_depend_on_the_build_directory(digits, tmp_path):
    """Each source compiles to its own object, through $(CCACHE) (not the link); an object compiled in another
    directory is the same bytes (-fdebug-prefix-map), which is what lets ccache share the runtime's objects."""
    obj = Path("build/obj/runtime/src/crc32.o")
    work = tmp_path / "elsewhere"
    shutil.copytree(digits, work)
    shutil.rmtree(work / "build")
    subprocess.run(["make", "-C", str(work), "CCACHE=", str(obj)], check=True, capture_output=True)
    built = (work / obj).read_bytes()
    assert built == (digits / obj).read_bytes()
    assert str(work).encode() not in built and str(digits).encode() not in built
    dry = subprocess.run(
        ["make", "-n", "-B", "-C", str(work), "CCACHE=/opt/fake/ccache"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    compiles = [ln for ln in dry if " -c " in ln]
    assert len(compiles) >= 10 and all(ln.startswith("/opt/fake/ccache ") for ln in compiles)
    (link_line,) = [ln for ln in dry if "-o build/poet_host" in ln]
    assert "ccache" not in link_line and "build/obj/runtime/src/crc32.o" in link_line
    # build/obj/flags: the build renamed into place is up to date; other flags recompile every object
    assert subprocess.run(["make", "-q", "-C", str(digits)], capture_output=True).returncode == 0
    dry = subprocess.run(
        ["make", "-n", "-C", str(work), "OPT=-O1"], check=True, capture_output=True, text=True
    )
    compiles = [ln for ln in dry.stdout.splitlines() if " -c " in ln]
    assert len(compiles) >= 10 and all(" -O1 " in ln for ln in compiles)
