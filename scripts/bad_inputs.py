"""The table of bad inputs (issue 15's "what was seen", tried as a hostile user would) and what poetc now answers:
exit code and the first line it prints on stderr (or the note it prints, for a model that ends in Softmax).

    python scripts/bad_inputs.py            # builds a tiny model for the host board in a temporary folder

Every case runs poetc's command line in this process (a traceback would show as one); a case whose answer is a
traceback or an exit code 0 where an error is due is marked. Takes about a minute (two host builds)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from poetc import cli
from poetc.emit import builddir

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> tuple[int | str, str]:
    """(exit code | 'TRACEBACK', the first line of stderr, or of stdout's notes)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(args))
    except BaseException as e:
        return "TRACEBACK", f"{type(e).__name__}: {e}".splitlines()[0] + " | " + traceback.format_exc(
            limit=-1
        )
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    if not lines:
        lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("note:")] or [
            "(nothing on stderr)"
        ]
    return code, lines[-1] if code != 0 else lines[0]


def _gemm(path: Path, w: np.ndarray, softmax: bool = False) -> Path:
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["z" if softmax else "y"], transB=1)]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["y"], axis=-1))
    g = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(3, np.float32), "b")],
    )
    onnx.save(helper.make_model(g), str(path))
    return path


def cases(d: Path) -> list[tuple[str, Callable[[], tuple[int | str, str]], int]]:
    """(what, how, the exit code due)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 6)).astype(np.float32)
    good = _gemm(d / "good.onnx", w)
    nan_w = w.copy()
    nan_w[1, 2] = np.nan
    bad_onnx = _gemm(d / "nan.onnx", nan_w)
    soft = _gemm(d / "softmax.onnx", w, softmax=True)
    b = d / "b"
    assert run("build", str(good), "--board", "host", "--out", str(b), "--strategy", "store-all")[0] == 0
    np.savez(d / "d.npz", x=rng.standard_normal((16, 6)).astype(np.float32), y=rng.integers(0, 3, 16))
    data = str(d / "d.npz")
    raw = (d / "d.npz").read_bytes()
    (d / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    np.savez(d / "obj.npz", x=np.array([object()] * 16, dtype=object), y=np.zeros(16))
    big = rng.standard_normal((16, 6))
    big[3, 4] = 1e39
    np.savez(d / "big.npz", x=big, y=np.zeros(16, np.int64))
    board = (ROOT / "boards" / "host.toml").read_text().replace("flop_per_s = 2.0e9", "flop_per_s = nan")
    (d / "nan.toml").write_text(board)
    foreign = d / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")

    def damaged(edit: Callable[[Path], None]) -> str:
        bad = d / f"bad{len(list(d.glob('bad*')))}"
        shutil.copytree(b, bad)
        edit(bad)
        return str(bad)

    def manifest_edit(p: Path) -> None:
        doc = json.loads((p / "poetc.json").read_text())
        doc["batch"] = 5
        (p / "poetc.json").write_text(json.dumps(doc))

    def binary_garbage(p: Path) -> None:
        (p / "build" / "poet_host").write_bytes(b"\x00garbage" * 10)

    def image_weights(p: Path) -> None:
        exe = p / "build" / "poet_host"
        blob = bytearray(exe.read_bytes())
        at = blob.find(w.tobytes())
        blob[at + 4 * 7 + 3] ^= 0x40
        exe.write_bytes(bytes(blob))

    def locked() -> tuple[int | str, str]:
        with builddir.locked(b, "train"):
            return run("train", str(b), "--steps", "1", "--data", data)

    def trained_damaged() -> tuple[int | str, str]:
        t = b / "runs" / "1" / "trained.npz"
        keep = t.read_bytes()
        t.write_bytes(keep[: len(keep) // 3])
        try:
            return run("export", str(b), "--onnx", str(d / "t.onnx"), "--run", "1")
        finally:
            t.write_bytes(keep)

    def interrupted_latest() -> tuple[int | str, str]:
        n, rd = b.joinpath("runs").resolve(), None
        rd = n / str(max(int(e.name) for e in n.iterdir()) + 1)
        shutil.copytree(n / "1", rd)
        rec = json.loads((rd / "train.json").read_text())
        rec.update(status="interrupted", steps=1, steps_planned=5, error="interrupted (Ctrl-C)")
        (rd / "train.json").write_text(json.dumps(rec))
        try:
            return run("export", str(b), "--onnx", str(d / "t.onnx"))
        finally:
            shutil.rmtree(rd)

    t = ("train", str(b), "--steps", "2", "--data", data)
    return [
        ("NaN weight in the ONNX model", lambda: run("build", str(bad_onnx), "--board", "host"), 2),
        ("--ram nan", lambda: run("build", str(good), "--board", "host", "--ram", "nan"), 2),
        ("--ram inf", lambda: run("build", str(good), "--board", "host", "--ram", "inf"), 2),
        ("--deadline nanx", lambda: run("build", str(good), "--board", "host", "--deadline", "nanx"), 2),
        ("NaN in a board file", lambda: run("build", str(good), "--board", str(d / "nan.toml")), 2),
        ("--seed=-1", lambda: run(*t, "--seed=-1"), 2),
        ("--lr nan", lambda: run(*t, "--lr", "nan"), 2),
        ("--steps -1", lambda: run("train", str(b), "--steps", "-1", "--data", data), 2),
        ("truncated --data file", lambda: run("train", str(b), "--data", str(d / "trunc.npz")), 2),
        ("object-array --data file", lambda: run("train", str(b), "--data", str(d / "obj.npz")), 2),
        ("--data overflowing float32 (1e39)", lambda: run("train", str(b), "--data", str(d / "big.npz")), 2),
        ("unwritable --dump (before training)", lambda: run(*t, "--dump", str(d / "no" / "x.npz")), 2),
        ("a good run (for the export cases)", lambda: run(*t), 0),
        ("unwritable --onnx", lambda: run("export", str(b), "--onnx", str(d / "no" / "t.onnx")), 2),
        ("corrupt trained.npz", trained_damaged, 2),
        ("export when the latest run was interrupted", interrupted_latest, 2),
        (
            "--resume with no saved run",
            lambda: run("train", damaged(lambda p: shutil.rmtree(p / "runs")), "--resume"),
            2,
        ),
        ("manifest edited (checksum)", lambda: run(*t[:1], damaged(manifest_edit), *t[2:]), 2),
        (
            "manifest not JSON",
            lambda: run(*t[:1], damaged(lambda p: (p / "poetc.json").write_text("[1, 2")), *t[2:]),
            2,
        ),
        ("damaged binary", lambda: run(*t[:1], damaged(binary_garbage), *t[2:]), 2),
        (
            "corrupted initial weights in the image: verify",
            lambda: run("verify", damaged(image_weights), "--data", data),
            2,
        ),
        ("a second command on a build directory in use", locked, 2),
        (
            "build into a folder poetc did not write",
            lambda: run("build", str(good), "--board", "host", "--out", str(foreign)),
            2,
        ),
        (
            "a model ending in Softmax (a note, then it builds)",
            lambda: run(
                "build", str(soft), "--board", "host", "--out", str(d / "soft"), "--strategy", "store-all"
            ),
            0,
        ),
    ]


def main() -> int:
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    rows = []
    with tempfile.TemporaryDirectory(prefix="poetc-bad-") as tmp:
        for what, how, due in cases(Path(tmp)):
            code, line = how()
            line = line.replace(tmp, "$TMP")
            mark = "" if code == due else f"  <-- expected exit {due}"
            rows.append((what, str(code), line + mark))
    w0 = max(len(r[0]) for r in rows)
    print(f"{'bad input':<{w0}}  exit  what poetc says")
    print(f"{'-' * w0}  ----  {'-' * 40}")
    for what, code, line in rows:
        print(f"{what:<{w0}}  {code:>4}  {line}")
    return 0 if all("<--" not in r[2] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
