"""Every C kernel against the numpy reference, node by node, on the training graphs of small models.

A model's training step is run by the float64 reference; then every node (forward, backward, updates) is run
again by its C kernel, called through ctypes with the reference's own inputs rounded to float32, and its output
is compared with the reference's (relative error <= 1e-5 of the tensor's scale). The params structs are built
from the header: each op's ``c_params`` must name exactly the fields of its family's C struct.
"""

from __future__ import annotations

import ctypes
import re
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.c.conftest import SMALL_STACK_DEFINES, build_kernel_lib
from tests.unit.test_ops_torch import rnd, run

from poetc.emit import cheaders
from poetc.graph.ir import TRAIN_FLAG, Attrs
from poetc.graph.ops import get
from poetc.graph.options import parse_optimizer
from poetc.graph.reference import max_rel_error
from poetc.resources import runtime_dir

TOL = 1e-5
SETTINGS = settings(max_examples=12, deadline=None)


@pytest.fixture(scope="module", params=["default", "small-stack"])
def lib(request, tmp_path_factory) -> ctypes.CDLL:
    """Every test runs on the kernels as built for most boards and as built for ARMv6-M's small stacks (where the
    conv paths with stack buffers are off or limited to 3x3 kernels)."""
    defines = SMALL_STACK_DEFINES if request.param == "small-stack" else ()
    return build_kernel_lib(tmp_path_factory.mktemp("k"), f"poetops_{request.param}", defines)


# ---- the header, parsed: params structs and kernel prototypes ------------------------------------------------
def _header() -> str:
    text = (runtime_dir() / "include" / "poet" / "kernels.h").read_text()
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


@cache
def structs() -> dict[str, type[ctypes.Structure]]:
    text = _header()
    rank = int(re.search(r"#define POET_MAX_RANK (\d+)", text).group(1))
    out = {}
    for body, fam in re.findall(r"typedef struct \{(.*?)\} poet_(\w+)_params;", text, re.S):
        fields = []
        for decl in body.split(";"):
            decl = decl.strip()
            if not decl:
                continue
            ctype, names = decl.split(None, 1)
            base = {"uint32_t": ctypes.c_uint32, "float": ctypes.c_float}[ctype]
            for name in (n.strip() for n in names.split(",")):
                m = re.fullmatch(r"(\w+)\[(\w+)\]", name)
                if m:
                    n = rank if m.group(2) == "POET_MAX_RANK" else int(m.group(2))
                    fields.append((m.group(1), base * n))
                else:
                    fields.append((name, base))
        out[fam] = type(f"poet_{fam}_params", (ctypes.Structure,), {"_fields_": fields})
    return out


@cache
def prototypes() -> dict[str, list[str]]:
    """Kernel function -> its parameter declarations."""
    return {
        name: [a.strip() for a in args.split(",")]
        for name, args in re.findall(r"poet_status (poet_\w+_f32)\((.*?)\);", _header(), re.S)
    }


def n_args() -> dict[str, int]:
    """Kernel function -> number of arguments after the params pointer."""
    return {k: len(v) - 1 for k, v in prototypes().items()}


def _struct(family: str, fields: dict) -> ctypes.Structure:
    cls = structs()[family]
    names = [f for f, _ in cls._fields_]
    assert sorted(fields) == sorted(names), f"{family}: c_params {sorted(fields)} vs C struct {sorted(names)}"
    s = cls()
    for k, v in fields.items():
        if isinstance(v, tuple):
            getattr(s, k)[:] = list(v)
        else:
            setattr(s, k, v)
    return s


def _c_array(a: np.ndarray, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int32 if dtype == "i32" else np.float32)


def replay(lib, tg, values: dict[str, np.ndarray], lr: float = 0.0) -> None:
    """Run every node of the training graph in C on the reference's inputs; compare with its outputs."""
    g = tg.graph
    kinfo = cheaders.kernels()
    before = dict(values)
    for node in g.nodes:
        op = get(node.op)
        fam = kinfo[op.kernel].family
        shapes = [g.tensor(x).shape for x in node.inputs]
        params = _struct(fam, op.c_params(node.attrs, shapes, g.tensor(node.output).shape))
        fn_name = f"poet_{op.kernel.lower()}_f32"
        fn = getattr(lib, fn_name)
        ins = [_c_array(values[x], g.tensor(x).dtype) for x in node.inputs]
        updated = [k for k in op.in_place if k < len(node.inputs)]
        if updated:  # in place: the updated tensors are the prototype's non-const pointers, in in_place order
            targets = [ins[k].copy() for k in updated]
            others = iter(a for k, a in enumerate(ins) if k not in updated)
            nonconst = iter(targets)
            args = []
            for decl in prototypes()[fn_name][1:]:
                if decl == "float lr":
                    args.append(ctypes.c_float(lr))
                elif decl.startswith("const "):
                    args.append(_ptr(next(others)))
                elif decl.startswith("float *"):  # an optional input the node lacks (a momentum buffer): NULL
                    t = next(nonconst, None)
                    args.append(None if t is None else _ptr(t))
                else:  # an optional hook and its context
                    args.append(None)
            status = fn(ctypes.byref(params), *args)
            assert status == 0, f"{node.name}: status {status}"
            want = op.ref(node.attrs, *[before[x] for x in node.inputs], lr)
            assert len(want) == len(targets), node.name
            # a momentum buffer holds gradient-sized values: a sum whose terms cancel is judged against the mass
            # of its inputs, as outputs are below
            mass = max(float(np.abs(values[x]).sum()) for x in node.inputs) / max(1, targets[0].size)
            for j, (k, got, w) in enumerate(zip(updated, targets, want, strict=True)):
                assert max_rel_error(got, w, mass if j else 0.0) <= TOL, f"{node.name}: {node.inputs[k]}"
            continue
        t_out = g.tensor(node.output)
        out = np.zeros(max(1, t_out.numel), np.int32 if t_out.dtype == "i32" else np.float32)
        slots = n_args()[fn_name] - 1
        args = [_ptr(a) for a in ins] + [None] * (slots - len(ins))
        status = fn(ctypes.byref(params), *args, _ptr(out))
        assert status == 0, f"{node.name} ({node.op}): status {status}"
        want = np.asarray(values[node.output], np.float64)
        # a sum whose terms cancel (dbeta of a BatchNorm followed by a linear layer and another BatchNorm is
        # analytically zero) is judged against the size of its terms: the inputs' mass per output element
        floor = max(float(np.abs(values[x]).sum()) for x in node.inputs) / max(1, t_out.numel)
        err = max_rel_error(out[: t_out.numel].reshape(want.shape), want, floor)
        assert err <= TOL, f"{node.name} ({node.op}): relative error {err:.2e}"


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.c_void_p)


def check_c(lib, nodes, params, state=None, lr=0.05, **build):
    # lr 0: parameters keep their values; state (and a momentum buffer) is updated
    tg, r, _labels = run(nodes, params, state, **build)
    replay(lib, tg, {**r.values, **(state or {})}, lr)
    return tg


# ---- the cases: each op and its gradient rule's kernels ---------------------------------------------------
@SETTINGS
@given(
    n=st.integers(1, 2),
    g=st.sampled_from([1, 2, 4]),
    ci=st.integers(1, 2),
    co=st.integers(1, 2),
    k=st.sampled_from([(1, 1), (3, 3), (2, 3), (5, 5)]),
    s=st.sampled_from([(1, 1), (2, 2), (3, 1)]),
    pads=st.tuples(*[st.integers(0, 2)] * 4),
    hw=st.tuples(st.integers(5, 9), st.integers(5, 9)),
    bias=st.booleans(),
)
def test_conv_kernels(lib, n, g, ci, co, k, s, pads, hw, bias):
    x = rnd(1, n, ci * g, *hw)
    w = rnd(2, co * g, ci, *k)
    ins = ("x", "w", "b") if bias else ("x", "w")
    params = {"x": x, "w": w} | ({"b": rnd(3, co * g)} if bias else {})
    check_c(lib, [("conv2d", ins, "y", Attrs(strides=s, pads=pads, groups=g))], params)


@SETTINGS
@given(
    k=st.sampled_from([(1, 1), (2, 2), (3, 3), (2, 3)]),
    s=st.integers(1, 3),
    p=st.integers(0, 1),
    hw=st.tuples(st.integers(3, 9), st.integers(3, 9)),
    count_pad=st.booleans(),
)
def test_pool_kernels(lib, k, s, p, hw, count_pad):
    x = np.maximum(rnd(4, 2, 3, *hw), 0.0)  # ReLU'd input: ties between zeros
    pads = (min(p, k[0] - 1), min(p, k[1] - 1)) * 2
    a = Attrs(kernel=k, strides=(s, s), pads=pads, count_include_pad=count_pad)
    check_c(lib, [("maxpool", ("x",), "y", a)], {"x": x + rnd(5, 2, 3, *hw) * 0.01 * (x > 0)})
    check_c(lib, [("avgpool", ("x",), "y", a)], {"x": x})


@SETTINGS
@given(n=st.integers(1, 3), c=st.integers(1, 5), hw=st.sampled_from([(), (1, 1), (3, 4), (6, 6)]))
def test_batchnorm_kernels(lib, n, c, hw):
    n = 3 if not hw or hw == (1, 1) else n  # with 2 values per channel the normalised output is +-1: dx ~ 0
    params = {"x": rnd(6, n, c, *hw) * 2 + 1, "gamma": rnd(7, c), "beta": rnd(8, c)}
    state = {"rm": rnd(9, c), "rv": rnd(10, c, lo=0.5)}
    a = Attrs(eps=1e-5, momentum=0.1)
    nodes = [
        ("bn_stats", ("x", "rm", "rv", TRAIN_FLAG), "stats", a),
        ("bn_apply", ("x", "stats", "gamma", "beta"), "y", a),
    ]
    tg = check_c(lib, nodes, params, state)
    assert {n.op for n in tg.graph.nodes} >= {"bn_dx", "bn_dgamma", "bn_dbeta", "bn_running"}


def test_batchnorm_stats_in_inference_are_the_running_ones(lib):
    c = 3
    p = structs()["bn"](n=2, c=c, hw=4, eps=1e-5, momentum=0.1, unbias=8 / 7, which=0)
    x = rnd(11, 2, c, 4).astype(np.float32)
    rm, rv = rnd(12, c).astype(np.float32), rnd(13, c, lo=0.5).astype(np.float32)
    stats = np.zeros((2, c), np.float32)
    for flag, want in ((0.0, np.stack([rm, rv])), (1.0, np.stack([x.mean(axis=(0, 2)), x.var(axis=(0, 2))]))):
        f = np.array([flag], np.float32)
        assert lib.poet_bn_stats_f32(ctypes.byref(p), *map(_ptr, (x, rm, rv, f, stats))) == 0
        np.testing.assert_allclose(stats, want, rtol=1e-5)


@SETTINGS
@given(shape=st.lists(st.integers(1, 6), min_size=2, max_size=4), seed=st.integers(0, 50))
def test_activation_kernels(lib, shape, seed):
    x = rnd(seed, *shape) * 3
    for op, attrs, v in [
        ("clip", Attrs(a=0.0, b=6.0), x * 3),
        ("sigmoid", Attrs(), x),
        ("tanh", Attrs(), x),
        ("gelu", Attrs(), x),
        ("erf", Attrs(), x),
        ("affine", Attrs(a=-0.7, b=0.25), x),
        ("sqrt", Attrs(), np.abs(x) + 0.1),
        ("pow", Attrs(a=2.0), x),
        ("pow", Attrs(a=1.5), np.abs(x) + 0.1),
        ("relu", Attrs(), x),
    ]:
        check_c(lib, [(op, ("x",), "y", attrs)], {"x": v})


@SETTINGS
@given(shape=st.lists(st.integers(1, 7), min_size=2, max_size=4), data=st.data())
def test_softmax_and_layernorm_kernels(lib, shape, data):
    ax = data.draw(st.integers(0, len(shape) - 1))
    x = rnd(14, *shape) * 2
    check_c(lib, [("softmax", ("x",), "y", Attrs(axis=ax))], {"x": x})
    ax = max(ax, 1)
    norm = tuple(shape[ax:])
    p = {"x": x, "g": rnd(15, *norm), "b": rnd(16, *norm)}
    check_c(lib, [("layernorm", ("x", "g", "b"), "y", Attrs(axis=ax, eps=1e-5))], p)


@SETTINGS
@given(
    batch=st.sampled_from([(), (3,), (2, 2)]),
    bcast=st.sampled_from(["none", "a", "b"]),
    mkn=st.tuples(st.integers(1, 6), st.integers(1, 9), st.integers(1, 6)),
    ta=st.booleans(),
    tb=st.booleans(),
)
def test_matmul_kernel(lib, batch, bcast, mkn, ta, tb):
    m, k, n = mkn
    ba = () if bcast == "a" else batch
    bb = () if bcast == "b" else batch
    if not ba and not bb:
        ba = (1,)
    a = rnd(17, *ba, *((k, m) if ta else (m, k)))
    b = rnd(18, *bb, *((n, k) if tb else (k, n)))
    check_c(lib, [("matmul", ("a", "b"), "y", Attrs(ta=ta, tb=tb, alpha=0.5))], {"a": a, "b": b})


@SETTINGS
@given(
    full=st.lists(st.integers(1, 5), min_size=2, max_size=5),
    data=st.data(),
    op=st.sampled_from(["add", "sub", "mul", "div"]),
)
def test_broadcast_kernels(lib, full, data, op):
    small = [d if data.draw(st.booleans()) else 1 for d in full]
    small = small[data.draw(st.integers(0, len(full) - 1)) :]
    a, b = rnd(19, *full), (rnd(20, *small, lo=0.5) if op == "div" else rnd(20, *small))
    check_c(lib, [("binary", ("a", "b"), "y", Attrs(op=op))], {"a": a, "b": b})
    axes = [k for k in range(len(full) - 1) if data.draw(st.booleans())] or [0]
    keep = tuple(1 if k in axes else d for k, d in enumerate(full))
    attrs = Attrs(mode="sum", scale=0.25, out_shape=keep)
    check_c(lib, [("reduce", ("a",), "y", attrs)], {"a": a})


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=6), data=st.data())
def test_layout_kernels(lib, shape, data):
    x = rnd(21, *shape)
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    check_c(lib, [("transpose", ("x",), "y", Attrs(perm=perm))], {"x": x})
    src = tuple(1 if data.draw(st.booleans()) else d for d in shape)
    check_c(
        lib,
        [("expand", ("x",), "y", Attrs(src_shape=src, shape=tuple(shape), scale=2.0))],
        {"x": rnd(22, *src)},
    )
    starts = [data.draw(st.integers(0, d - 1)) for d in shape]
    steps = [data.draw(st.integers(1, 2)) for _ in shape]
    counts = [(d - 1 - s0) // k + 1 for d, s0, k in zip(shape, starts, steps, strict=True)]
    a = Attrs(starts=tuple(starts), steps=tuple(steps), shape=tuple(counts))
    if len(counts) >= 2:
        check_c(lib, [("slice", ("x",), "y", a)], {"x": x})
    ax = data.draw(st.integers(0, len(shape) - 1))
    parts = {}
    for i in range(data.draw(st.integers(1, 4))):
        s = list(shape)
        s[ax] = data.draw(st.integers(1, 3))
        parts[f"p{i}"] = rnd(23 + i, *s)
    check_c(lib, [("concat", tuple(parts), "y", Attrs(axis=ax))], parts)


# ---- optimizer steps: plain SGD, weight decay, momentum --------------------------------------------------------
OPTIMIZERS = [("sgd", 0.0), ("sgd", 0.01), ("momentum", 0.0), ("momentum:0.8", 5e-4)]


@SETTINGS
@given(
    m=st.integers(1, 6),
    k=st.integers(1, 9),
    n=st.integers(1, 9),
    opt=st.sampled_from(OPTIMIZERS),
    fuse=st.booleans(),
)
def test_optimizer_steps_through_autodiff(lib, m, k, n, opt, fuse):
    """Every update node of a linear layer (fused LINEAR_DW_SGD / BIAS_GRAD_SGD, or gradient + SGD) and of a
    convolution (fused CONV2D_DW_SGD / CONV2D_DB_SGD, or gradient + SGD) with weight decay and momentum: the
    parameter and its buffer against the float64 step (the buffer holds a non-zero value: the reference step
    already moved it once)."""
    optimizer = parse_optimizer(opt[0], opt[1])
    params = {"x": rnd(30, m, k), "w": rnd(31, n, k), "b": rnd(32, n)}
    lin = Attrs(trans_w=True, alpha=1.0, beta=1.0, flatten=True)
    tg = check_c(
        lib,
        [("linear", ("x", "w", "b"), "y", lin)],
        params,
        optimizer=optimizer,
        fuse_updates=fuse,
        trainable=("w", "b", "R"),  # R: the test's output scale; x (an input here) frozen
    )
    ops = [nd.op for nd in tg.graph.nodes]
    assert ops.count("linear_dw_sgd") == ops.count("bias_grad_sgd") == int(fuse)
    assert ops.count("sgd") == (1 if fuse else 3) and "linear_dx" not in ops
    assert len(tg.opt_state) == (3 if optimizer.has_buffer else 0)
    conv = {"x": rnd(33, 2, 2, 5, 5), "w": rnd(34, 3, 2, 3, 3), "b": rnd(35, 3)}
    a = Attrs(strides=(1, 1), pads=(1, 1, 1, 1), groups=1)
    # x trains too: the weight gradient reads a trained parameter and is not fused (the bias's is, when fusing)
    tg = check_c(lib, [("conv2d", ("x", "w", "b"), "y", a)], conv, optimizer=optimizer, fuse_updates=fuse)
    ops = [nd.op for nd in tg.graph.nodes]
    assert ops.count("sgd") == (3 if fuse else 4) and ops.count("conv2d_db_sgd") == int(fuse)
    tg = check_c(
        lib,
        [("conv2d", ("x", "w", "b"), "y", a)],
        conv,
        optimizer=optimizer,
        fuse_updates=fuse,
        trainable=("w", "b", "R"),
    )
    ops = [nd.op for nd in tg.graph.nodes]
    assert ops.count("conv2d_dw_sgd") == ops.count("conv2d_db_sgd") == int(fuse)
    assert ops.count("sgd") == (1 if fuse else 3) and "conv2d_dx" not in ops


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 9),
    k=st.integers(1, 40),
    n=st.integers(1, 13),
    trans=st.booleans(),
    opt=st.sampled_from([(0.9, 0.0, True), (0.0, 0.01, False), (0.8, 5e-4, True), (0.0, 0.0, True)]),
)
def test_fused_step_with_momentum_paths_agree(lib, m, k, n, trans, opt):
    """LINEAR_DW_SGD / BIAS_GRAD_SGD with weight decay and a momentum buffer: the blocked path (no sink) and the
    chunked one (gradient capture) leave bit-identical weights and buffers, the sink sees the raw gradient (before
    weight decay and momentum), and both match the float64 step; sizes at and around the 4x4 tiles."""
    mu, wd, has_v = opt
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    p = structs()["linear"](
        m=m, k=k, n=n, trans_w=int(trans), alpha=0.5, beta=2.0, momentum=mu, weight_decay=wd
    )
    a = Attrs(trans_w=trans, alpha=0.5, beta=2.0, n=n, b_shape=(n,), momentum=mu, weight_decay=wd)
    x, dy = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((m, n)).astype(np.float32)
    w = rng.standard_normal((n, k) if trans else (k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    lr = 0.125
    for name, args, param in (("linear_dw_sgd", (dy, x), w), ("bias_grad_sgd", (dy,), b)):
        v0 = rng.standard_normal(param.shape).astype(np.float32) if has_v else None
        op = get(name)
        g_want = op.step_grad(a, *[q.astype(np.float64) for q in args], param)
        # a gradient whose terms cancel is judged against the size of its terms (as replay does)
        floor = float(np.abs(op.step_grad(a, *[np.abs(q.astype(np.float64)) for q in args], param)).max())
        want = op.ref(a, *[q.astype(np.float64) for q in args], param.astype(np.float64),
                      *([v0.astype(np.float64)] if has_v else []), lr)  # fmt: skip
        results = []
        for capture in (False, True):
            wq, vq = param.copy(), (v0.copy() if has_v else None)
            seen = []
            sink = SINK(
                lambda ctx, off, g, cnt, seen=seen: seen.append(np.ctypeslib.as_array(g, (cnt,)).copy())
            )
            fn = getattr(lib, f"poet_{name}_f32")
            fn.argtypes = (
                [ctypes.c_void_p, ctypes.c_float]
                + [ctypes.c_void_p] * (len(args) + 2)
                + [
                    SINK if capture else ctypes.c_void_p,
                    ctypes.c_void_p,
                ]
            )
            vp = _ptr(vq) if has_v else None
            status = fn(
                ctypes.addressof(p), lr, *map(_ptr, args), _ptr(wq), vp, sink if capture else None, None
            )
            assert status == 0
            if capture:
                assert max_rel_error(np.concatenate(seen).reshape(g_want.shape), g_want, floor) <= TOL, name
            results.append((wq, vq))
            assert max_rel_error(wq, want[0]) <= TOL, name
            if has_v:
                assert max_rel_error(vq, want[1], floor) <= TOL, name
        (w_fast, v_fast), (w_cap, v_cap) = results
        np.testing.assert_array_equal(w_fast, w_cap)
        if has_v:
            np.testing.assert_array_equal(v_fast, v_cap)


SINK = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_float), ctypes.c_uint32
)


def _fused_call(lib, name, p, lr, ins, w, v, sink=None) -> int:
    """A fused gradient + update kernel: (params, lr, inputs..., w, v, sink, ctx)."""
    fn = getattr(lib, f"poet_{name}_f32")
    fn.argtypes = (
        [ctypes.c_void_p, ctypes.c_float]
        + [ctypes.c_void_p] * (len(ins) + 2)
        + [
            SINK if sink is not None else ctypes.c_void_p,
            ctypes.c_void_p,
        ]
    )
    return fn(ctypes.addressof(p), lr, *map(_ptr, ins), _ptr(w), None if v is None else _ptr(v), sink, None)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 2),
    g=st.sampled_from([1, 1, 2]),
    ci=st.integers(1, 9),
    co=st.integers(1, 9),
    k=st.sampled_from([(1, 1), (3, 3), (3, 3), (2, 3), (5, 5)]),
    s=st.sampled_from([(1, 1), (1, 1), (2, 2), (1, 2), (3, 3)]),
    pads=st.tuples(*[st.integers(0, 2)] * 4),
    hw=st.tuples(st.integers(1, 11), st.integers(1, 11)),
    depthwise=st.sampled_from([0, 0, 1, 2]),
    opt=st.sampled_from([(0.0, 0.0, False), (0.0, 0.01, False), (0.9, 0.0, True), (0.8, 5e-4, True)]),
)
def test_fused_conv_update_paths_agree(lib, n, g, ci, co, k, s, pads, hw, depthwise, opt):
    """CONV2D_DW_SGD / CONV2D_DB_SGD on every weight-gradient path (4x4 tiles of channels and the channels outside
    them, depthwise plane by plane with a channel multiplier of 1 or 2, groups, 1x1, 5x5, strides, padding) with
    plain SGD, weight decay and momentum: without a sink, the weights and the buffer are bit-identical to CONV2D_DW
    (CONV2D_DB) followed by SGD; with a sink they are bit-identical again and the sink sees the raw gradient, in
    W's memory order, contiguous from 0; all of them match the float64 step."""
    if depthwise:
        g, ci, co = 5, 1, depthwise
    mu, wd, has_v = opt
    pt, pl, pb, pr = pads
    h, w_ = max(hw[0], k[0] - pt - pb), max(hw[1], k[1] - pl - pr)
    oh, ow = (h + pt + pb - k[0]) // s[0] + 1, (w_ + pl + pr - k[1]) // s[1] + 1
    p = structs()["conv"](
        n=n, c_in=ci * g, h=h, w=w_, c_out=co * g, oh=oh, ow=ow, kh=k[0], kw=k[1], sh=s[0], sw=s[1], ph=pt, pw=pl,
        groups=g, momentum=mu, weight_decay=wd,
    )  # fmt: skip
    a = Attrs(
        strides=s, pads=pads, groups=g, x_shape=(n, ci * g, h, w_), w_shape=(co * g, ci, *k), momentum=mu,
        weight_decay=wd,
    )  # fmt: skip
    rng = np.random.default_rng(n + 7 * ci + 31 * co + 101 * h + 1000 * w_)
    x = rng.standard_normal((n, ci * g, h, w_)).astype(np.float32)
    dy = rng.standard_normal((n, co * g, oh, ow)).astype(np.float32)
    lr = 0.125
    for name, ins, param in (
        ("conv2d_dw_sgd", (dy, x), rng.standard_normal((co * g, ci, *k)).astype(np.float32)),
        ("conv2d_db_sgd", (dy,), rng.standard_normal(co * g).astype(np.float32)),
    ):
        op = get(name)
        v0 = rng.standard_normal(param.shape).astype(np.float32) if has_v else None
        ins64 = [q.astype(np.float64) for q in ins]
        g_want = op.step_grad(a, *ins64, param)
        floor = float(np.abs(op.step_grad(a, *[np.abs(q) for q in ins64], param)).max())
        want = op.ref(a, *ins64, param.astype(np.float64), *([v0.astype(np.float64)] if has_v else []), lr)
        # unfused: the gradient kernel, then SGD
        grad = np.full(param.shape, np.nan, np.float32)
        kernel = "conv2d_dw" if name == "conv2d_dw_sgd" else "conv2d_db"
        assert getattr(lib, f"poet_{kernel}_f32")(ctypes.byref(p), *map(_ptr, ins), _ptr(grad)) == 0
        w_ref, v_ref = param.copy(), (v0.copy() if has_v else None)
        sp = structs()["sgd"](n=param.size, momentum=mu, weight_decay=wd)
        lib.poet_sgd_f32.argtypes = [ctypes.c_void_p, ctypes.c_float] + [ctypes.c_void_p] * 3
        vp = _ptr(v_ref) if has_v else None
        assert lib.poet_sgd_f32(ctypes.addressof(sp), lr, _ptr(grad), _ptr(w_ref), vp) == 0
        for capture in (False, True):
            wq, vq = param.copy(), (v0.copy() if has_v else None)
            seen: list[tuple[int, np.ndarray]] = []
            sink = SINK(
                lambda ctx, off, gp, cnt, seen=seen: seen.append(
                    (off, np.ctypeslib.as_array(gp, (cnt,)).copy())
                )
            )
            assert _fused_call(lib, name, p, lr, ins, wq, vq, sink if capture else None) == 0
            np.testing.assert_array_equal(wq, w_ref, err_msg=f"{name}, capture {capture}")
            if has_v:
                np.testing.assert_array_equal(vq, v_ref, err_msg=f"{name}, capture {capture}")
            assert max_rel_error(wq, want[0]) <= TOL, name
            if has_v:
                assert max_rel_error(vq, want[1], floor) <= TOL, name
            if capture:
                offs = [o for o, _ in seen]
                ends = [o + len(c) for o, c in seen]
                assert offs[0] == 0 and offs[1:] == ends[:-1] and ends[-1] == param.size, name
                got = np.concatenate([c for _, c in seen]).reshape(param.shape)
                np.testing.assert_array_equal(got, grad)  # the raw gradient, as CONV2D_DW computes it
                assert max_rel_error(got, g_want, floor) <= TOL, name
            else:
                assert not seen


def test_fused_conv_momentum_without_its_buffer_is_refused(lib):
    p = structs()["conv"](
        n=1, c_in=4, h=3, w=3, c_out=4, oh=3, ow=3, kh=1, kw=1, sh=1, sw=1, ph=0, pw=0, groups=1, momentum=0.9
    )
    x, dy = np.ones((1, 4, 3, 3), np.float32), np.ones((1, 4, 3, 3), np.float32)
    w, b = np.ones((4, 4, 1, 1), np.float32), np.ones(4, np.float32)
    assert _fused_call(lib, "conv2d_dw_sgd", p, 0.1, (dy, x), w, None) == 2  # POET_ERR_ARG
    assert _fused_call(lib, "conv2d_db_sgd", p, 0.1, (dy,), b, None) == 2
    np.testing.assert_array_equal(w, 1.0)
    np.testing.assert_array_equal(b, 1.0)
    v = np.zeros_like(w)
    assert _fused_call(lib, "conv2d_dw_sgd", p, 0.1, (dy, x), w, v) == 0
    np.testing.assert_array_equal(v, 9.0)  # dW = 9 (3 x 3 positions of 1 x 1)
    np.testing.assert_allclose(w, 1.0 - 0.1 * 9.0, rtol=1e-6)


def test_momentum_without_its_buffer_is_refused(lib):
    w, g = np.ones(4, np.float32), np.ones(4, np.float32)
    sp = structs()["sgd"](n=4, momentum=0.9, weight_decay=0.0)
    lib.poet_sgd_f32.argtypes = [ctypes.c_void_p, ctypes.c_float] + [ctypes.c_void_p] * 3
    assert lib.poet_sgd_f32(ctypes.addressof(sp), 0.1, _ptr(g), _ptr(w), None) == 2  # POET_ERR_ARG
    np.testing.assert_array_equal(w, 1.0)
    v = np.zeros(4, np.float32)
    assert lib.poet_sgd_f32(ctypes.addressof(sp), 0.1, _ptr(g), _ptr(w), _ptr(v)) == 0
    np.testing.assert_allclose(w, 0.9, rtol=1e-6)
    np.testing.assert_array_equal(v, 1.0)


@SETTINGS
@given(n=st.integers(1, 3), c=st.integers(1, 5), hw=st.sampled_from([(), (1, 1), (3, 4)]))
def test_frozen_batchnorm_kernels(lib, n, c, hw):
    """A BatchNorm with frozen scale and bias (--bn frozen) between two trained layers: BN_FROZEN and its input
    gradient BN_FROZEN_DX, and no running-statistics update."""
    params = {"x": rnd(40, n, c, *hw) * 2 + 1, "gamma": rnd(41, c), "beta": rnd(42, c)}
    state = {"rm": rnd(43, c), "rv": rnd(44, c, lo=0.5)}
    a = Attrs(eps=1e-5, momentum=0.1)
    nodes = [
        ("bn_stats", ("x", "rm", "rv", TRAIN_FLAG), "stats", a),
        ("bn_apply", ("x", "stats", "gamma", "beta"), "y", a),
    ]
    tg = check_c(lib, nodes, params, state, trainable=("x", "R"))
    assert {nd.op for nd in tg.graph.nodes} >= {"bn_frozen", "bn_frozen_dx"}
    assert not {"bn_stats", "bn_running", "bn_dx"} & {nd.op for nd in tg.graph.nodes}


def test_every_c_params_matches_its_struct_and_every_kernel_has_a_prototype():
    from poetc.graph.ops import REGISTRY

    kinfo = cheaders.kernels()
    for op in REGISTRY.values():
        assert op.family in structs(), op.name
        assert f"poet_{op.kernel.lower()}_f32" in n_args(), op.kernel
        assert kinfo[op.kernel].family == op.family


def test_strided_kernel_rejects_a_view_outside_its_input(lib):
    p = structs()["layout"](rank=1, base=3, scale=1.0, n_src=4, n_dst=2)
    p.shape[0], p.stride[0] = 2, 1
    x, y = np.zeros(4, np.float32), np.zeros(2, np.float32)
    assert lib.poet_strided_f32(ctypes.byref(p), _ptr(x), _ptr(y)) == 1  # POET_ERR_SHAPE


# ---- optimised kernels against their reference versions ------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 13),
    k=st.integers(1, 21),
    n=st.integers(1, 13),
    trans=st.booleans(),
    alpha=st.sampled_from([1.0, 0.5]),
    bias=st.booleans(),
)
def test_blocked_linear_kernels_match_their_reference(lib, m, k, n, trans, alpha, bias):
    """Sizes below, at and above the 4x4 tiles, so that full tiles and every edge are exercised."""
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    p = structs()["linear"](m=m, k=k, n=n, trans_w=int(trans), alpha=alpha, beta=-0.5)
    x, dy = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((m, n)).astype(np.float32)
    w = rng.standard_normal((n, k) if trans else (k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    _check_fast_vs_ref(
        lib,
        p,
        [("linear_fwd", (x, w, b), (m, n)), ("linear_dx", (dy, w), (m, k)), ("linear_dw", (dy, x), w.shape)],
    )


def _check_fast_vs_ref(lib, p, cases) -> None:
    """Each (kernel, inputs, output shape): the dispatched kernel against its plain-loop _ref twin, both float32
    sums of the same products in different orders. Each output may differ by 1e-5 of the sum of its terms' sizes
    (the reference kernel on the inputs' absolute values): a sum that cancels (a weight gradient over positions
    whose products have both signs) is judged by its terms, not by its tiny result."""
    for name, ins, shape in cases:
        got, want = np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32)
        size = np.full(shape, np.nan, np.float32)
        args = [_ptr(a) if a is not None else None for a in ins]
        magnitudes = [np.abs(a) if a is not None else None for a in ins]  # kept alive across the calls
        absolute = [_ptr(a) if a is not None else None for a in magnitudes]
        assert getattr(lib, f"poet_{name}_f32")(ctypes.byref(p), *args, _ptr(got)) == 0
        assert getattr(lib, f"poet_{name}_ref_f32")(ctypes.byref(p), *args, _ptr(want)) == 0
        assert getattr(lib, f"poet_{name}_ref_f32")(ctypes.byref(p), *absolute, _ptr(size)) == 0
        assert np.all(np.isfinite(got)), name
        assert np.all(np.abs(got - want) <= 1e-5 * np.maximum(size, 1e-30)), (name, max_rel_error(got, want))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 2),
    g=st.sampled_from([1, 2, 3]),
    ci=st.integers(1, 9),
    co=st.integers(1, 9),
    k=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pads=st.tuples(*[st.integers(0, 2)] * 4),
    hw=st.tuples(st.integers(1, 13), st.integers(1, 13)),
    bias=st.booleans(),
    depthwise=st.booleans(),
)
def test_tiled_conv_kernels_match_their_reference(lib, n, g, ci, co, k, s, pads, hw, bias, depthwise):
    """Channel counts below, at and above the tiles of four, strides above the kernel, 1x1 and 5x5 kernels,
    asymmetric padding, odd sizes, depthwise."""
    if depthwise:
        g, ci, co = 5, 1, 1
    _check_conv_vs_ref(lib, n, g, ci, co, k, s, pads, hw, bias)


def _check_conv_vs_ref(
    lib, n, g, ci, co, k, s, pads, hw, bias, names=("conv2d_fwd", "conv2d_dx", "conv2d_dw")
):
    pt, pl, pb, pr = pads
    h, w = max(hw[0], k[0] - pt - pb), max(hw[1], k[1] - pl - pr)
    oh, ow = (h + pt + pb - k[0]) // s[0] + 1, (w + pl + pr - k[1]) // s[1] + 1
    p = structs()["conv"](
        n=n, c_in=ci * g, h=h, w=w, c_out=co * g, oh=oh, ow=ow, kh=k[0], kw=k[1], sh=s[0], sw=s[1], ph=pt, pw=pl,
        groups=g,
    )  # fmt: skip
    rng = np.random.default_rng(n + 7 * ci + 31 * co + 101 * h)
    x = rng.standard_normal((n, ci * g, h, w)).astype(np.float32)
    wt = rng.standard_normal((co * g, ci, *k)).astype(np.float32)
    dy = rng.standard_normal((n, co * g, oh, ow)).astype(np.float32)
    b = rng.standard_normal(co * g).astype(np.float32) if bias else None
    cases = [
        ("conv2d_fwd", (x, wt, b), dy.shape),
        ("conv2d_dx", (dy, wt), x.shape),
        ("conv2d_dw", (dy, x), wt.shape),
    ]
    _check_fast_vs_ref(lib, p, [c for c in cases if c[0] in names])


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 2),
    g=st.sampled_from([1, 2]),
    ci=st.integers(1, 5),
    co=st.sampled_from([4, 5, 8, 12]),
    k=st.sampled_from([(3, 3), (5, 5), (2, 3), (5, 3), (3, 5), (1, 3), (3, 2)]),
    s=st.sampled_from([(1, 1), (2, 2), (1, 2), (2, 1), (3, 3)]),
    pads=st.tuples(*[st.integers(0, 2)] * 4),
    hw=st.tuples(st.integers(1, 21), st.integers(1, 21)),
    bias=st.booleans(),
)
def test_conv_forward_few_input_channels_matches_its_reference(lib, n, g, ci, co, k, s, pads, hw, bias):
    """The forward path for 1 to 4 input channels per group (every tap in registers): kernel widths 3 and 5 with
    strides 1 and 2 (and the others, which take the tap-by-tap tiles), images small enough for a padded copy of
    the input and larger ones (tiles read in place, border tiles from a padded copy), partial tiles of positions,
    output channels beyond the tiles of four, kernel rows and columns entirely in the padding."""
    _check_conv_vs_ref(lib, n, g, ci, co, k, s, pads, hw, bias, names=("conv2d_fwd",))


@pytest.mark.parametrize(
    "ci, co, k, s, pads, hw",
    [
        (1, 8, 3, 1, 1, 8),  # digits_cnn.conv1: the padded copy of the whole input
        (3, 16, 3, 1, 1, 32),  # resnet8.conv1: tiles in place, border tiles copied
        (3, 16, 3, 2, 1, 32),  # a stride-2 stem
        (3, 6, 5, 1, 0, 32),  # lenet.conv1: no padding, two channels outside the tiles
        (4, 8, 5, 2, 2, 17),
        (1, 4, 3, 1, 2, 9),  # padding 2: whole kernel rows and columns in the padding at the corners
    ],
)
def test_conv_forward_first_layers_match_their_reference(lib, ci, co, k, s, pads, hw):
    _check_conv_vs_ref(lib, 2, 1, ci, co, (k, k), (s, s), (pads,) * 4, (hw, hw), True, names=("conv2d_fwd",))


@settings(max_examples=120, deadline=None)
@given(
    n=st.integers(1, 2),
    g=st.sampled_from([1, 3, 4]),
    co=st.sampled_from([1, 1, 2]),
    k=st.sampled_from([(3, 3), (3, 3), (5, 5), (2, 3), (3, 5), (1, 1), (4, 4), (6, 2)]),
    s=st.sampled_from([(1, 1), (1, 1), (2, 2), (1, 2), (2, 1), (3, 3)]),
    pads=st.tuples(*[st.integers(0, 2)] * 4),
    hw=st.tuples(st.integers(1, 21), st.integers(1, 21)),
    bias=st.booleans(),
)
def test_depthwise_conv_kernels_match_their_reference(lib, n, g, co, k, s, pads, hw, bias):
    """Depthwise (one input channel per group, channel multiplier 1 or 2): the plane-by-plane paths, 3x3 and 5x5
    kernels held in registers (strides 1 and 2) and the others looped, asymmetric padding, images smaller than the
    kernel, rows of fewer positions than a tile of four and widths leaving one or several edge positions."""
    _check_conv_vs_ref(lib, n, g, 1, co, k, s, pads, hw, bias)


@pytest.mark.parametrize(
    "c, k, s, pads, hw",
    [
        (16, 3, 1, 1, 16),  # MobileNetV2
        (8, 3, 2, 1, 32),
        (8, 3, 2, 1, 15),  # stride 2, odd size: a right edge
        (4, 5, 1, 2, 12),  # two edge positions each side
        (4, 5, 2, 2, 17),
        (3, 3, 1, 0, 9),  # no padding
        (3, 3, 1, 2, 7),  # whole kernel rows and columns in the padding
    ],
)
def test_depthwise_conv_layers_match_their_reference(lib, c, k, s, pads, hw):
    _check_conv_vs_ref(lib, 2, c, 1, 1, (k, k), (s, s), (pads,) * 4, (hw, hw), True)
