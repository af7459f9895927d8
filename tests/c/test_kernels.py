"""The C kernels, compiled as a shared library, against the numpy reference (relative error <= 1e-5)."""

from __future__ import annotations

import ctypes
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.c.conftest import build_kernel_lib

from poetc.graph.ir import Attrs
from poetc.graph.ops import get
from poetc.graph.reference import max_rel_error


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> ctypes.CDLL:
    return build_kernel_lib(tmp_path_factory.mktemp("k"), "poetk")


class Linear(ctypes.Structure):
    _fields_ = [
        ("m", ctypes.c_uint32),
        ("k", ctypes.c_uint32),
        ("n", ctypes.c_uint32),
        ("trans_w", ctypes.c_uint32),
        ("alpha", ctypes.c_float),
        ("beta", ctypes.c_float),
        ("momentum", ctypes.c_float),
        ("weight_decay", ctypes.c_float),
    ]


class N(ctypes.Structure):
    _fields_ = [("n", ctypes.c_uint32)]


class Sgd(ctypes.Structure):
    _fields_ = [("n", ctypes.c_uint32), ("momentum", ctypes.c_float), ("weight_decay", ctypes.c_float)]


class MC(ctypes.Structure):
    _fields_ = [("m", ctypes.c_uint32), ("c", ctypes.c_uint32)]


def f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.c_void_p)


def call(lib, name, params, *arrays) -> int:
    fn = getattr(lib, name)
    return fn(ctypes.byref(params), *[ptr(a) if isinstance(a, np.ndarray) else a for a in arrays])


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(1, 9),
    k=st.integers(1, 33),
    n=st.integers(1, 17),
    trans=st.booleans(),
    alpha=st.sampled_from([1.0, 0.5]),
    beta=st.sampled_from([1.0, -2.0]),
)
def test_linear_kernels(lib, m, k, n, trans, alpha, beta):
    rng = np.random.default_rng(m + 7 * k + 31 * n)
    x, dy = f32(rng.standard_normal((m, k))), f32(rng.standard_normal((m, n)))
    w = f32(rng.standard_normal((n, k) if trans else (k, n)))
    b = f32(rng.standard_normal(n))
    p = Linear(m, k, n, int(trans), alpha, beta)
    a = Attrs(trans_w=trans, alpha=alpha, beta=beta, flatten=True, x_shape=(m, k), n=n, b_shape=(n,))
    y = np.zeros((m, n), np.float32)
    assert call(lib, "poet_linear_fwd_f32", p, x, w, b, y) == 0
    assert max_rel_error(y, get("linear").ref(a, x.astype(float), w.astype(float), b.astype(float))) < 1e-5
    dx = np.zeros((m, k), np.float32)
    assert call(lib, "poet_linear_dx_f32", p, dy, w, dx) == 0
    assert max_rel_error(dx, get("linear_dx").ref(a, dy.astype(float), w.astype(float))) < 1e-5
    dw = np.zeros_like(w)
    assert call(lib, "poet_linear_dw_f32", p, dy, x, dw) == 0
    assert max_rel_error(dw, get("linear_dw").ref(a, dy.astype(float), x.astype(float))) < 1e-5
    db = np.zeros(n, np.float32)
    assert call(lib, "poet_bias_grad_f32", p, dy, db) == 0
    assert max_rel_error(db, get("bias_grad").ref(a, dy.astype(float))) < 1e-5


def test_linear_without_bias_and_null_checks(lib):
    x, w = f32(np.ones((2, 3))), f32(np.ones((4, 3)))
    y = np.zeros((2, 4), np.float32)
    p = Linear(2, 3, 4, 1, 1.0, 1.0)
    assert call(lib, "poet_linear_fwd_f32", p, x, w, None, y) == 0
    np.testing.assert_array_equal(y, 3.0)
    assert call(lib, "poet_linear_fwd_f32", p, None, w, None, y) == 2  # POET_ERR_ARG


def test_eltwise_and_sgd(lib):
    rng = np.random.default_rng(0)
    x, dy = f32(rng.standard_normal(37)), f32(rng.standard_normal(37))
    y, dx, s = (np.zeros(37, np.float32) for _ in range(3))
    p = N(37)
    assert call(lib, "poet_relu_fwd_f32", p, x, y) == 0
    np.testing.assert_array_equal(y, get("relu").ref(Attrs(), x))
    assert call(lib, "poet_relu_bwd_f32", p, y, dy, dx) == 0
    np.testing.assert_array_equal(dx, get("relu_bwd").ref(Attrs(), y, dy))
    assert call(lib, "poet_add_f32", p, x, dy, s) == 0
    np.testing.assert_array_equal(s, x + dy)
    w = x.copy()
    lib.poet_sgd_f32.argtypes = [ctypes.c_void_p, ctypes.c_float] + [ctypes.c_void_p] * 3
    sp = Sgd(37)
    assert lib.poet_sgd_f32(ctypes.addressof(sp), ctypes.c_float(0.25), ptr(dy), ptr(w), None) == 0
    np.testing.assert_allclose(w, x - np.float32(0.25) * dy, rtol=1e-6)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 12), c=st.integers(2, 20))
def test_softmax_xent(lib, m, c):
    rng = np.random.default_rng(m * 50 + c)
    z = f32(rng.standard_normal((m, c)) * 4)
    y = rng.integers(0, c, m).astype(np.int32)
    loss = np.zeros(1, np.float32)
    p = MC(m, c)
    assert call(lib, "poet_softmax_xent_fwd_f32", p, z, y, loss) == 0
    assert max_rel_error(loss[0], get("softmax_xent").ref(Attrs(), z.astype(float), y)) < 1e-5
    dz = np.zeros_like(z)
    assert call(lib, "poet_softmax_xent_bwd_f32", p, z, y, dz) == 0
    assert max_rel_error(dz, get("softmax_xent_bwd").ref(Attrs(), z.astype(float), y)) < 1e-5


def test_label_out_of_range_is_an_error(lib):
    z = f32(np.zeros((2, 3)))
    y = np.array([0, 3], np.int32)
    assert call(lib, "poet_softmax_xent_fwd_f32", MC(2, 3), z, y, np.zeros(1, np.float32)) == 2


def test_crc32_matches_zlib(lib):
    lib.poet_crc32.restype = ctypes.c_uint32
    lib.poet_crc32.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
    for data in (b"", b"a", b"123456789", bytes(range(256)) * 3):
        buf = ctypes.create_string_buffer(data, len(data))
        assert lib.poet_crc32(0, buf, len(data)) == zlib.crc32(data)


def test_status_strings_cover_the_enum(lib):
    lib.poet_status_str.restype = ctypes.c_char_p
    from poetc.emit import cheaders

    for code, (_, text) in cheaders.statuses().items():
        assert lib.poet_status_str(code).decode() == text


SINK = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_float), ctypes.c_uint32
)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 9),
    k=st.integers(1, 70),
    n=st.integers(1, 40),
    trans=st.booleans(),
    alpha=st.sampled_from([1.0, 0.5]),
    beta=st.sampled_from([1.0, -2.0]),
)
def test_fused_weight_gradient_sgd(lib, m, k, n, trans, alpha, beta):
    """LINEAR_DW_SGD / BIAS_GRAD_SGD apply exactly the reference's gradient, and the sink sees all of it in
    order, chunk by chunk, before it is applied."""
    rng = np.random.default_rng(m + 3 * k + 17 * n)
    x, dy = f32(rng.standard_normal((m, k))), f32(rng.standard_normal((m, n)))
    w = f32(rng.standard_normal((n, k) if trans else (k, n)))
    b = f32(rng.standard_normal(n))
    p = Linear(m, k, n, int(trans), alpha, beta)
    a = Attrs(trans_w=trans, alpha=alpha, beta=beta, flatten=True, x_shape=(m, k), n=n, b_shape=(n,))
    lr = 0.125
    for name, args, param, want_g in (
        ("poet_linear_dw_sgd_f32", (dy, x), w, get("linear_dw").ref(a, dy.astype(float), x.astype(float))),
        ("poet_bias_grad_sgd_f32", (dy,), b, get("bias_grad").ref(a, dy.astype(float))),
    ):
        seen: list[tuple[int, np.ndarray]] = []
        before = param.copy()

        def sink(ctx, off, g, cnt, seen=seen):
            seen.append((off, np.ctypeslib.as_array(g, shape=(cnt,)).copy()))

        cb = SINK(sink)
        fn = getattr(lib, name)
        fn.argtypes = (
            [ctypes.c_void_p, ctypes.c_float] + [ctypes.c_void_p] * (len(args) + 2) + [SINK, ctypes.c_void_p]
        )
        assert fn(ctypes.addressof(p), lr, *[ptr(v) for v in args], ptr(param), None, cb, None) == 0
        offs = [o for o, _ in seen]
        assert offs == sorted(offs) and offs[0] == 0
        got = np.concatenate([g for _, g in seen]).reshape(want_g.shape)
        assert max_rel_error(got, want_g) < 1e-5
        # the updated parameter against the float64 update (comparing before - param with lr * g instead would
        # judge float32 cancellation: a tiny update of a unit-sized weight is a few ulps of the weight), at the
        # scale of the weights before the step (a single bias that the step brings near zero is judged by the
        # ulps of its terms, not of the difference)
        want = before.astype(np.float64) - lr * want_g
        assert max_rel_error(param, want, float(np.abs(before).max())) < 1e-6
        # without a sink: the same update
        again = before.copy()
        fn.argtypes = [*fn.argtypes[:-2], ctypes.c_void_p, ctypes.c_void_p]
        assert fn(ctypes.addressof(p), lr, *[ptr(v) for v in args], ptr(again), None, None, None) == 0
        np.testing.assert_array_equal(again, param)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("bad_at", [None, 0, 5, 37])
def test_update_kernels_flag_nonfinite_parameters(lib, momentum, bad_at):
    """The finiteness flag (step.h): set by SGD and the fused linear update (4x4 blocks, edges, chunked path with a
    sink) when a weight they wrote became infinite, and only then."""
    flag = ctypes.c_int.in_dll(lib, "poet_update_nonfinite")
    rng = np.random.default_rng(7)
    m, k, n = 3, 9, 6  # 9 x 6: full 4x4 blocks and both edges
    x, dy = f32(rng.standard_normal((m, k))), f32(rng.standard_normal((m, n)))
    if bad_at is not None:  # a huge gradient in one weight's sum: w - lr g overflows to -inf there
        dy[0, bad_at % n] = 3e38
        x[0, bad_at % k] = 3e38
    lr = 1.0
    for use_sink in (False, True):
        w, v = f32(rng.standard_normal((k, n))), f32(np.zeros((k, n)))
        p = Linear(m, k, n, 0, 1.0, 1.0, momentum, 0.0)
        fn = lib.poet_linear_dw_sgd_f32
        fn.argtypes = [ctypes.c_void_p, ctypes.c_float] + [ctypes.c_void_p] * 4 + [SINK, ctypes.c_void_p]
        sink = SINK(lambda ctx, off, g, cnt: None)
        flag.value = 0
        assert fn(ctypes.addressof(p), lr, ptr(dy), ptr(x), ptr(w), ptr(v) if momentum else None,
                  sink if use_sink else SINK(), None) == 0  # fmt: skip
        assert flag.value == int(not np.all(np.isfinite(w))) == int(bad_at is not None), (use_sink, bad_at)
    g = f32(rng.standard_normal(40))
    if bad_at is not None:
        g[bad_at] = np.inf
    w, v = f32(rng.standard_normal(40)), f32(np.zeros(40))
    flag.value = 0
    lib.poet_sgd_f32.argtypes = [ctypes.c_void_p, ctypes.c_float] + [ctypes.c_void_p] * 3
    sgd = Sgd(40, momentum, 0.0)
    assert lib.poet_sgd_f32(ctypes.addressof(sgd), 0.5, ptr(g), ptr(w), ptr(v) if momentum else None) == 0
    assert flag.value == int(bad_at is not None)
