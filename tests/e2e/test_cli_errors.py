"""Bad input: one line on stderr naming what and where, exit code 2, no traceback, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tests.conftest import poetc


def _expect_error(*args: str, match: str, cwd: Path | None = None) -> str:
    r = poetc(*args, check=False, cwd=cwd)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "Traceback" not in r.stderr and len(err.splitlines()) == 1, err
    assert err.startswith("poetc: error: ")
    assert match in err, err
    return err


def _onnx(path: Path, nodes, inits, out="y"):
    g = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [4, 3])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    onnx.save(helper.make_model(g), str(path))
    return path


@pytest.fixture
def good_onnx(tmp_path):
    return _onnx(
        tmp_path / "good.onnx",
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        {"w": np.ones((3, 6), np.float32), "b": np.zeros(3, np.float32)},
    )


def test_missing_malformed_unreadable_model(tmp_path):
    out = tmp_path / "o"
    _expect_error(
        "build",
        str(tmp_path / "missing.onnx"),
        "--board",
        "host",
        "--out",
        str(out),
        match="missing.onnx: no such file",
    )
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x12\x34 not an onnx model \xff" * 10)
    _expect_error("build", str(bad), "--board", "host", "--out", str(out), match="bad.onnx: not a valid ONNX")
    d = tmp_path / "adir.onnx"
    d.mkdir()
    _expect_error("build", str(d), "--board", "host", "--out", str(out), match="adir.onnx: cannot read")
    assert not out.exists()


def test_unsupported_op_named(tmp_path):
    p = _onnx(
        tmp_path / "u.onnx",
        [
            helper.make_node("Softsign", ["x"], ["s"], name="weird"),
            helper.make_node("Gemm", ["s", "w"], ["y"], transB=1),
        ],
        {"w": np.ones((3, 6), np.float32)},
    )
    err = _expect_error(
        "build", str(p), "--board", "host", "--out", str(tmp_path / "o"), match="weird (Softsign)"
    )
    assert "supported:" in err and "Gemm" in err
    assert not (tmp_path / "o").exists()


def test_no_parameters_and_no_output(tmp_path):
    p = _onnx(tmp_path / "np.onnx", [helper.make_node("Relu", ["x"], ["y"])], {})
    _expect_error(
        "build", str(p), "--board", "host", "--out", str(tmp_path / "o"), match="no trainable parameters"
    )
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
        [],
    )
    q = tmp_path / "noout.onnx"
    onnx.save(helper.make_model(g), str(q))
    _expect_error("build", str(q), "--board", "host", "--out", str(tmp_path / "o"), match="no output")


def test_unknown_board_and_zoo(tmp_path, good_onnx):
    _expect_error(
        "build",
        str(good_onnx),
        "--board",
        "pdp11",
        "--out",
        str(tmp_path / "o"),
        match="unknown board 'pdp11'",
    )
    _expect_error(
        "build",
        "resnet1000",
        "--board",
        "host",
        "--out",
        str(tmp_path / "o"),
        match="not a zoo model (zoo: mlp, digits-mlp",
    )


def test_out_dir_with_foreign_files_is_refused(tmp_path, good_onnx):
    out = tmp_path / "o"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    _expect_error("build", str(good_onnx), "--board", "host", "--out", str(out), match="thesis.tex")
    assert (out / "thesis.tex").read_text() == "precious" and len(list(out.iterdir())) == 1
    # an earlier poetc build is replaced without complaint
    out2 = tmp_path / "o2"
    poetc("build", str(good_onnx), "--board", "host", "--out", str(out2))
    # (compiled once: its binary is among what is replaced; compiling again would prove nothing more)
    poetc("build", str(good_onnx), "--board", "host", "--out", str(out2), "--no-compile")
    (out2 / "notes.txt").write_text("mine")
    _expect_error("build", str(good_onnx), "--board", "host", "--out", str(out2), match="notes.txt")


def test_bad_data(tmp_path, good_onnx):
    out = tmp_path / "o"
    # not compiled: the data are checked before the board is; were they not, these would fail on the missing binary
    poetc("build", str(good_onnx), "--board", "host", "--out", str(out), "--no-compile")
    np.savez(tmp_path / "shape.npz", x=np.zeros((10, 5), np.float32), y=np.zeros(10, np.int64))
    _expect_error(
        "train",
        str(out),
        "--steps",
        "1",
        "--data",
        str(tmp_path / "shape.npz"),
        match="'x' has shape [10, 5], expected [N, 6]",
    )
    np.savez(tmp_path / "lab.npz", x=np.zeros((10, 6), np.float32), y=np.array([0, 1, 2, 3] + [0] * 6))
    _expect_error(
        "train",
        str(out),
        "--steps",
        "1",
        "--data",
        str(tmp_path / "lab.npz"),
        match="y[3] = 3 is out of range for 3 classes",
    )
    np.savez(tmp_path / "noy.npz", x=np.zeros((10, 6), np.float32))
    _expect_error(
        "train", str(out), "--steps", "1", "--data", str(tmp_path / "noy.npz"), match="no matching 'y'"
    )
    _expect_error(
        "train", str(out), "--steps", "1", "--data", str(tmp_path / "none.npz"), match="no such file"
    )
    _expect_error("train", str(out), "--steps", "1", "--batch", "7", match="built for batch 4")
    _expect_error("train", str(tmp_path), "--steps", "1", match="not a poetc build directory")
    # the bundled digits cannot feed a 6-feature, 3-class model
    _expect_error("train", str(out), "--steps", "1", match="the bundled digits have 10 classes")
    assert not (out / "runs").exists()  # no run was kept


def test_data_whose_samples_differ_in_unit_dims_is_accepted_and_runs_are_kept(tmp_path, good_onnx):
    out = tmp_path / "o"
    poetc("build", str(good_onnx), "--board", "host", "--out", str(out))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((10, 1, 6, 1), np.float32), y=rng.integers(0, 3, 10))  # for [6]
    for _ in range(2):
        poetc("train", str(out), "--steps", "2", "--lr", "0.1", "--data", str(tmp_path / "d.npz"))
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["1", "2"]  # the second run kept the first
    r = poetc("export", str(out), "--onnx", str(tmp_path / "t.onnx"), "--run", "1")
    assert "run 1 (" in r.stdout and "2 steps, lr 0.1" in r.stdout
    _expect_error("export", str(out), "--onnx", str(tmp_path / "t.onnx"), "--run", "3", match="runs: 1, 2")
    np.savez(
        tmp_path / "d2.npz", x=rng.random((10, 2, 3), np.float32), y=rng.integers(0, 3, 10)
    )  # 6, not [6]
    _expect_error(
        "train",
        str(out),
        "--data",
        str(tmp_path / "d2.npz"),
        match="'x' has shape [10, 2, 3], expected [N, 6]",
    )


def test_bad_numbers(tmp_path, good_onnx):
    _expect_error(
        "build",
        str(good_onnx),
        "--board",
        "host",
        "--out",
        str(tmp_path / "o"),
        "--ram",
        "lots",
        match="bad byte size 'lots'",
    )
    _expect_error(
        "build",
        str(good_onnx),
        "--board",
        "host",
        "--out",
        str(tmp_path / "o"),
        "--batch",
        "0",
        match="--batch must be positive",
    )
    _expect_error("build", str(good_onnx), match="the following arguments are required: --board")


def test_ram_budget_too_small_names_the_smallest(tmp_path):
    err = _expect_error(
        "build", "digits-mlp", "--board", "host", "--out", str(tmp_path / "o"), "--ram", "20K", match="budget"
    )
    assert not (tmp_path / "o").exists()
    assert "bytes" in err


def test_boards_table():
    r = poetc("boards")
    assert "nrf52840" in r.stdout and "256.0 KiB" in r.stdout and "mkr1000" in r.stdout


def test_bad_training_options(tmp_path, good_onnx):
    """--train, --bn, --optimizer and --weight-decay: one line naming the option and the value (nothing built)."""
    out = tmp_path / "o"
    base = ("build", str(good_onnx), "--board", "host", "--out", str(out), "--no-compile")
    _expect_error(*base, "--train", "w,bb", match="no parameter 'bb'")
    _expect_error(*base, "--train", "ww", match="close: w")
    _expect_error(*base, "--train", "last:3", match="from 1 to 1")
    _expect_error(*base, "--optimizer", "adam", match="--optimizer 'adam'")
    _expect_error(*base, "--optimizer", "momentum:2", match="momentum 2.0 must be in (0, 1)")
    _expect_error(*base, "--weight-decay", "-1", match="weight decay -1.0")
    _expect_error(*base, "--bn", "eval", match="--bn")
    assert not out.exists()


def test_build_writes_to_its_default_directory(tmp_path, good_onnx):
    r = poetc("build", str(good_onnx), "--board", "host", "--no-compile", cwd=tmp_path)
    out = tmp_path / "build" / "good-host"
    assert (out / "poetc.json").is_file() and "wrote build/good-host" in r.stdout


def test_port_is_for_real_boards(tmp_path, good_onnx):
    out = tmp_path / "o"
    poetc("build", str(good_onnx), "--board", "host", "--out", str(out), "--no-compile")
    for cmd in ("train", "verify"):
        _expect_error(
            cmd, str(out), "--port", "/dev/ttyACM0", match="--port names a real board's serial device"
        )


def test_non_finite_numbers_are_one_line_errors(tmp_path, good_onnx):
    """NaN and infinity: in the model's weights, --ram, --deadline and a board file (issue 15)."""
    out = tmp_path / "o"
    for v in (np.nan, np.inf):
        w = np.ones((3, 6), np.float32)
        w[1, 4] = v
        p = _onnx(tmp_path / "nan.onnx", [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], {"w": w})
        _expect_error("build", str(p), "--board", "host", "--out", str(out),
                      match="initializer 'w' holds 1 NaN or infinite values (as float32), the first at [1, 4]")  # fmt: skip
    base = ("build", str(good_onnx), "--board", "host", "--out", str(out), "--no-compile")
    for v in ("nan", "inf", "1e999"):
        _expect_error(*base, "--ram", v, match=f"bad byte size {v!r}: must be a positive, finite number")
    _expect_error(*base, "--deadline", "nanx", match="bad deadline 'nanx': must be a positive, finite number")
    _expect_error(*base, "--deadline", "infs", match="bad deadline 'infs'")
    board = tmp_path / "nanboard.toml"
    from poetc.resources import boards_dir

    text = (boards_dir() / "host.toml").read_text()
    import re

    board.write_text(
        re.sub(r"(?m)^flop_per_s\s*=.*$", "flop_per_s = nan", text).replace(
            'name = "host"', 'name = "nanboard"'
        )
    )
    _expect_error("build", str(good_onnx), "--board", str(board), "--out", str(out), "--no-compile",
                  match="field 'flop_per_s' must be a non-negative, finite number, got nan")  # fmt: skip
    assert not out.exists()


def test_bad_seed_and_damaged_data_files(tmp_path, good_onnx):
    out = tmp_path / "o"
    poetc("build", str(good_onnx), "--board", "host", "--out", str(out))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((10, 6), np.float32), y=rng.integers(0, 3, 10))
    d = str(tmp_path / "d.npz")
    _expect_error(
        "train", str(out), "--seed=-1", "--data", d, match="--seed: -1 must be a non-negative integer"
    )
    raw = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(raw[: len(raw) // 2])
    _expect_error(
        "train", str(out), "--data", str(tmp_path / "t.npz"), match="t.npz: not a readable .npz file"
    )
    np.savez(tmp_path / "obj.npz", x=np.array([object()] * 10, dtype=object), y=np.zeros(10))
    _expect_error(
        "train", str(out), "--data", str(tmp_path / "obj.npz"), match="obj.npz: not a plain numeric .npz"
    )
    assert not (out / "runs").exists()


def test_damaged_build_directory_and_trained_weights(tmp_path, good_onnx):
    import shutil

    out = tmp_path / "o"
    poetc("build", str(good_onnx), "--board", "host", "--out", str(out))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((10, 6), np.float32), y=rng.integers(0, 3, 10))
    d = str(tmp_path / "d.npz")
    # an unwritable --dump is refused before training, not after
    _expect_error("train", str(out), "--data", d, "--dump", str(tmp_path / "no" / "x.npz"),
                  match="--dump " + str(tmp_path / "no" / "x.npz") + ": folder")  # fmt: skip
    assert not (out / "runs").exists()
    poetc("train", str(out), "--steps", "2", "--data", d)
    _expect_error("export", str(out), "--onnx", str(tmp_path / "no" / "t.onnx"), match="t.onnx: folder")
    assert not list(tmp_path.glob("**/.t.onnx.tmp"))
    trained = out / "runs" / "1" / "trained.npz"
    good = trained.read_bytes()
    trained.write_bytes(good[: len(good) // 3])
    _expect_error(
        "export", str(out), "--onnx", str(tmp_path / "t.onnx"), match="trained.npz: damaged trained weights"
    )
    assert not (tmp_path / "t.onnx").exists()
    # a damaged binary and manifest
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    exe = next((bad / "build").glob("poet_host*"))
    exe.write_bytes(b"\x00garbage" * 10)
    _expect_error("train", str(bad), "--steps", "1", "--data", d, match="cannot run")
    for text in ('{"poetc_version": ', "[1, 2]", "\udcff"):
        (bad / "poetc.json").write_bytes(text.encode("utf-8", "surrogateescape"))
        _expect_error("train", str(bad), "--steps", "1", "--data", d, match="poetc.json: ")
