"""The model-coverage kernels under AddressSanitizer and UndefinedBehaviorSanitizer, in whole training steps and
inference: convolutions (grouped, depthwise), BatchNorm (batch and running statistics), pooling, every activation,
broadcasting arithmetic, reductions, LayerNorm (fused and written out), batched matmul, softmax, transpose, reshape,
slice, concat, SGD with momentum and weight decay."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from tests.conftest import poetc

from poetc.boards import load as load_board
from poetc.device import harness, target
from poetc.emit import builddir

torch = pytest.importorskip("torch")
from tests.e2e.test_pytorch_models_host import SmallCNN, SmallTransformer, _export, _randomised  # noqa: E402

# a sparse update with momentum: frozen BatchNorms on running statistics (BN_FROZEN, and BN_FROZEN_DX above the
# trained stem), the fused updates with a momentum buffer and weight decay: CONV2D_DW_SGD (the stem's weight),
# CONV2D_DB_SGD (the gate's bias), LINEAR_DW_SGD (fc); the gradients captured (their sink paths) every step
SPARSE = ["--train", "stem.weight,se.bias,fc.weight", "--optimizer", "momentum", "--weight-decay", "0.01"]
MODELS = [
    ("cnn", SmallCNN, (4, 3, 8, 8), 17, []),
    ("cnn-sparse-momentum", SmallCNN, (4, 3, 8, 8), 17, SPARSE),
    ("transformer-opset13", SmallTransformer, (2, 5, 16), 13, []),
    ("transformer-opset17", SmallTransformer, (2, 5, 16), 17, []),
]


@pytest.mark.parametrize("name, cls, shape, opset, args", MODELS, ids=[m[0] for m in MODELS])
def test_sanitized_training_and_inference(tmp_path, name, cls, shape, opset, args):
    torch.manual_seed(0)
    path = tmp_path / "m.onnx"
    _export(_randomised(cls(), 1), torch.randn(*shape), path, False, opset)
    out = tmp_path / "b"
    poetc(
        "build",
        str(path),
        "--board",
        "host",
        "--out",
        str(out),
        "--strategy",
        "store-all",
        "--no-compile",
        *args,
    )
    shutil.rmtree(out / "build", ignore_errors=True)
    # -O0: the sanitizers check the same code at any level, and conv.c's specialised loops take GCC ten times longer
    # to instrument at -O2 (about 27 s of CPU against 3)
    subprocess.run(["make", "-C", str(out), "SAN=asan", "OPT=-O0"], check=True, capture_output=True)
    b = builddir.open_build(out)
    trainable = b.doc["training"]["trainable"]
    assert len(trainable) == (3 if args else len(b.doc["params"]))
    if args:
        assert {"bn_frozen", "bn_frozen_dx"} <= {n["op"] for n in b.doc["nodes"]}
    rng = np.random.default_rng(0)
    with target.for_board(load_board("host")).launch(out, timeout_s=60, pager="ram") as s:
        dev = harness.Device(b, s)
        for _ in range(2):
            dev.set_batch(
                rng.standard_normal(b.input_shape).astype(np.float32), rng.integers(0, b.classes, b.batch)
            )
            step = dev.step(0.05, capture=True)
            assert np.isfinite(step.loss) and sorted(step.grads) == sorted(trainable)
        assert np.all(np.isfinite(dev.infer(rng.standard_normal(b.input_shape).astype(np.float32))))
        proc = s.proc
    assert proc.wait(10) == 0
    err = proc.stderr.read().decode() if proc.stderr and not proc.stderr.closed else ""
    assert "runtime error" not in err and "AddressSanitizer" not in err, err[-2000:]


def test_the_kernel_tests_pass_under_asan_and_ubsan():
    """The op kernel tests (randomized convolution shapes among them, in both the default and the ARMv6-M
    configuration) with the kernels built under AddressSanitizer and UndefinedBehaviorSanitizer."""
    import os
    import sys
    from pathlib import Path

    libs = [
        subprocess.run(["gcc", f"-print-file-name={n}"], capture_output=True, text=True).stdout.strip()
        for n in ("libasan.so", "libubsan.so")
    ]
    if not all(Path(lib).is_file() for lib in libs):
        pytest.skip("gcc's libasan/libubsan are not installed")
    env = {
        **os.environ,
        "LD_PRELOAD": ":".join(libs),
        "ASAN_OPTIONS": "detect_leaks=0",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        "POETC_KERNEL_CFLAGS": "-O0 -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer",
    }
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "tests/c/test_kernels_ops.py",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert r.returncode == 0 and " passed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    assert "runtime error" not in r.stdout + r.stderr and "AddressSanitizer" not in r.stdout + r.stderr
