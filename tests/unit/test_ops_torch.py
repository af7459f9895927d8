"""Every op's numpy reference against PyTorch: forward output and every gradient, through the real autodiff.

``check`` builds a one-node model whose inputs are all trainable parameters, differentiates it with
``autodiff`` (so the gradient rules are exercised exactly as in a real model, fan-out sums included), runs one
float64 reference step with a softmax cross-entropy on the output, and compares the output, the loss and the
gradient of every input with PyTorch autograd on the same data. Shapes come from hypothesis: 1x1 kernels,
strides larger than the kernel, odd sizes and batches above one are all in range.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poetc.graph import autodiff, reference
from poetc.graph.ir import TRAIN_FLAG, Attrs, Graph, Model, Node, Role, Tensor
from poetc.graph.ops import get
from poetc.graph.options import parse_optimizer

torch = pytest.importorskip("torch")
F = torch.nn.functional
TOL = 1e-9  # float64 against float64
SETTINGS = settings(max_examples=20, deadline=None)


def run(nodes, params, state=None, seed=0, **build):
    """nodes: [(op, inputs, output, attrs)]. The last output times a random tensor "R" (also a parameter: a
    plain cross-entropy would be blind to anything constant along the class axis, like a conv bias) is the
    logits. ``build``: arguments of build_training_graph (optimizer, trainable, bn). Returns (training graph,
    reference step, labels)."""
    state = state or {}
    nodes = list(nodes)
    last = nodes[-1]
    out_shape = get(last[0]).infer(last[3], [_probe(nodes, params, state, i) for i in last[1]])[0]
    params = {**params, "R": np.random.default_rng(seed + 99).uniform(0.5, 2.0, out_shape)}
    nodes.append(("binary", (last[2], "R"), "logits", Attrs(op="mul")))
    tensors = {"data:in": Tensor("data:in", (1,), Role.INPUT)}
    tensors.update({k: Tensor(k, np.shape(v), Role.PARAM) for k, v in params.items()})
    tensors.update({k: Tensor(k, np.shape(v), Role.STATE) for k, v in state.items()})
    flag = None
    if any(TRAIN_FLAG in n[1] for n in nodes):
        flag = TRAIN_FLAG
        tensors[flag] = Tensor(flag, (1,), Role.INPUT)
    ir = []
    for k, (op, ins, out, attrs) in enumerate(nodes):
        shape, dtype = get(op).infer(attrs, [tensors[i] for i in ins])
        tensors[out] = Tensor(out, tuple(shape), Role.ACTIVATION, dtype)
        ir.append(Node(f"n{k}", op, tuple(ins), out, attrs))
    logits = nodes[-1][2]
    g = Graph("t", tensors, tuple(ir), ("data:in",), (logits,))
    model = Model(g, dict(params), onnx.ModelProto(), "test", "", "data:in", logits, dict(state), flag)
    tg = autodiff.build_training_graph(model, **build)
    c = g.tensor(logits).shape[-1]
    labels = np.random.default_rng(seed).integers(0, c, g.tensor(logits).numel // c)
    r = reference.train_step(tg, {**params, **state}, np.zeros(1), labels, lr=0.0)
    return tg, r, labels


def _probe(nodes, params, state, name):
    """The tensor ``name`` (shape only) of a small node list, for sizing R."""
    if name in params or name in state:
        v = params.get(name, state.get(name))
        return Tensor(name, np.shape(v), Role.PARAM)
    if name == TRAIN_FLAG:
        return Tensor(name, (1,), Role.INPUT)
    op, ins, _out, attrs = next(n for n in nodes if n[2] == name)
    return Tensor(
        name, get(op).infer(attrs, [_probe(nodes, params, state, i) for i in ins])[0], Role.ACTIVATION
    )


def compare(r, labels, out_name, torch_fn, params):
    ts = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    R = torch.tensor(r.values["R"], dtype=torch.float64, requires_grad=True)
    y = torch_fn(**ts)
    np.testing.assert_allclose(r.values[out_name], y.detach().numpy(), rtol=TOL, atol=TOL)
    z = y * R
    c = z.shape[-1]
    loss = F.cross_entropy(z.reshape(-1, c), torch.tensor(labels))
    loss.backward()
    assert r.loss == pytest.approx(loss.item(), rel=1e-10)
    for k, t in ts.items():
        assert reference.max_rel_error(r.grads[k], t.grad.numpy()) <= 1e-8, k
    assert reference.max_rel_error(r.grads["R"], R.grad.numpy()) <= 1e-8


def check(op, attrs, torch_fn, **inputs):
    """The one-line check: op(inputs...) with attrs against torch_fn(**inputs), forward and all gradients."""
    _, r, labels = run([(op, tuple(inputs), "y", attrs)], inputs)
    compare(r, labels, "y", torch_fn, inputs)


def rnd(seed, *shape, lo=None):
    a = np.random.default_rng(seed).standard_normal(shape)
    return np.abs(a) + lo if lo is not None else a


# ---- convolution -------------------------------------------------------------------------------------------
@SETTINGS
@given(
    n=st.integers(1, 3),
    groups=st.sampled_from(["one", "two", "depthwise"]),
    ci=st.integers(1, 3),
    co=st.integers(1, 3),
    kh=st.integers(1, 3),
    kw=st.integers(1, 3),
    sh=st.integers(1, 3),
    sw=st.integers(1, 3),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    pads=st.tuples(*[st.integers(0, 2)] * 4),
    bias=st.booleans(),
)
def test_conv2d(n, groups, ci, co, kh, kw, sh, sw, h, w, pads, bias):
    g = {"one": 1, "two": 2, "depthwise": ci * 2}[groups]
    c_in = ci * 2 if groups != "one" else ci
    c_out = co * g
    pt, pl, pb, pr = pads
    h, w = max(h, kh - pt - pb), max(w, kw - pl - pr)
    x = rnd(1, n, c_in, h, w)
    wt = rnd(2, c_out, c_in // g, kh, kw)
    attrs = Attrs(strides=(sh, sw), pads=pads, groups=g)

    def fwd(x, w, b=None):
        return F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, b, stride=(sh, sw), groups=g)

    ins = {"x": x, "w": wt} | ({"b": rnd(3, c_out)} if bias else {})
    check("conv2d", attrs, fwd, **ins)


OPTIMIZERS = [("sgd", 0.0), ("sgd", 0.01), ("momentum", 0.0), ("momentum:0.8", 5e-4)]


@SETTINGS
@given(
    n=st.integers(1, 2),
    groups=st.sampled_from(["one", "two", "depthwise"]),
    ci=st.integers(1, 5),
    co=st.integers(1, 5),
    k=st.sampled_from([(1, 1), (3, 3), (2, 3)]),
    s=st.sampled_from([(1, 1), (2, 2), (2, 1)]),
    hw=st.tuples(st.integers(2, 7), st.integers(2, 7)),
    pads=st.tuples(*[st.integers(0, 1)] * 4),
    bias=st.booleans(),
    opt=st.sampled_from(OPTIMIZERS),
)
def test_conv2d_fused_update(n, groups, ci, co, k, s, hw, pads, bias, opt):
    """A convolution whose input does not train: its weight and bias gradients are computed inside their updates
    (conv2d_dw_sgd, conv2d_db_sgd). Forward output, the raw gradients the fused steps report, and two steps of the
    parameters (momentum buffers carried over) against PyTorch autograd and torch.optim.SGD."""
    g = {"one": 1, "two": 2, "depthwise": ci * 2}[groups]
    c_in = ci * 2 if groups != "one" else ci
    pt, pl, pb, pr = pads
    h, w = max(hw[0], k[0] - pt - pb), max(hw[1], k[1] - pl - pr)
    params = {"x": rnd(1, n, c_in, h, w), "w": rnd(2, co * g, c_in // g, *k)} | (
        {"b": rnd(3, co * g)} if bias else {}
    )
    optimizer = parse_optimizer(*opt)
    trainable = ("w", "b", "R") if bias else ("w", "R")
    attrs = Attrs(strides=s, pads=pads, groups=g)
    tg, r, labels = run(
        [("conv2d", tuple(params), "y", attrs)], params, optimizer=optimizer, trainable=trainable
    )
    ops = [nd.op for nd in tg.graph.nodes]
    assert ops.count("conv2d_dw_sgd") == 1 and ops.count("conv2d_db_sgd") == int(bias)
    assert not {"conv2d_dw", "conv2d_db"} & set(ops) and ops.count("sgd") == 1  # R's

    start = {**params, "R": r.values["R"]}
    ts = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k in trainable) for k, v in start.items()}
    sgd = torch.optim.SGD(
        [ts[k] for k in trainable], lr=0.1, momentum=optimizer.momentum if optimizer.has_buffer else 0.0,
        weight_decay=optimizer.weight_decay,
    )  # fmt: skip
    carry = dict(start)
    for step in range(2):
        sgd.zero_grad()
        y = F.conv2d(F.pad(ts["x"], (pl, pr, pt, pb)), ts["w"], ts.get("b"), stride=s, groups=g)
        z = y * ts["R"]
        F.cross_entropy(z.reshape(-1, z.shape[-1]), torch.tensor(labels)).backward()
        got = reference.train_step(tg, carry, np.zeros(1), labels, 0.1)
        if step == 0:
            np.testing.assert_allclose(got.values["y"], y.detach().numpy(), rtol=TOL, atol=TOL)
            assert set(got.grads) == set(trainable)
            for key in trainable:
                assert reference.max_rel_error(got.grads[key], ts[key].grad.numpy()) <= 1e-8, key
        sgd.step()
        carry = got.carry
        for key in trainable:
            assert reference.max_rel_error(got.params[key], ts[key].detach().numpy()) <= 1e-9, (step, key)
        assert np.array_equal(got.params["x"], params["x"])


# ---- pooling -----------------------------------------------------------------------------------------------
@SETTINGS
@given(
    n=st.integers(1, 2),
    c=st.integers(1, 3),
    kh=st.integers(1, 3),
    kw=st.integers(1, 3),
    s=st.integers(1, 4),
    p=st.integers(0, 1),
    h=st.integers(3, 8),
    w=st.integers(3, 8),
    avg=st.booleans(),
    count_pad=st.booleans(),
)
def test_pool(n, c, kh, kw, s, p, h, w, avg, count_pad):
    ph, pw = min(p, kh // 2), min(p, kw // 2)
    x = rnd(4, n, c, h, w)
    attrs = Attrs(kernel=(kh, kw), strides=(s, s), pads=(ph, pw, ph, pw), count_include_pad=count_pad)
    if avg:
        check(
            "avgpool",
            attrs,
            lambda x: F.avg_pool2d(x, (kh, kw), s, (ph, pw), count_include_pad=count_pad),
            x=x,
        )
    else:
        check("maxpool", attrs, lambda x: F.max_pool2d(x, (kh, kw), s, (ph, pw)), x=x)


def test_maxpool_ties_go_to_the_first_maximum():
    """After a ReLU many window entries are equal zeros: PyTorch gives the gradient to the first one."""
    x = np.maximum(rnd(5, 2, 3, 6, 6), 0.0)
    x[:, :, :2, :2] = 0.0
    attrs = Attrs(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1))
    check("maxpool", attrs, lambda x: F.max_pool2d(x, 3, 2, 1), x=x)


def test_global_average_pool_is_avgpool():
    x = rnd(6, 2, 3, 5, 4)
    attrs = Attrs(kernel=(5, 4), strides=(1, 1), pads=(0, 0, 0, 0), count_include_pad=True)
    check("avgpool", attrs, lambda x: F.adaptive_avg_pool2d(x, 1), x=x)


# ---- batch norm: statistics, normalisation, gradients and the running statistics -----------------------------
@SETTINGS
@given(n=st.integers(1, 3), c=st.integers(1, 4), hw=st.sampled_from([(), (1, 3), (3, 2), (5, 5)]))
def test_batchnorm_training(n, c, hw):
    if n * math.prod(hw) < 2:
        n = 2
    x = rnd(7, n, c, *hw) * 3 + 1
    params = {"x": x, "gamma": rnd(8, c), "beta": rnd(9, c)}
    state = {"rm": rnd(10, c), "rv": rnd(11, c, lo=0.5)}
    attrs = Attrs(eps=1e-5, momentum=0.1)
    nodes = [
        ("bn_stats", ("x", "rm", "rv", TRAIN_FLAG), "stats", attrs),
        ("bn_apply", ("x", "stats", "gamma", "beta"), "y", attrs),
    ]
    if not hw:
        nodes.append(("reshape", ("y",), "y2", Attrs(shape=(n, c))))
    tg, r, labels = run(nodes, params, state)
    rm, rv = (torch.tensor(state[k]) for k in ("rm", "rv"))

    def fwd(x, gamma, beta):
        return F.batch_norm(x, rm, rv, gamma, beta, training=True, momentum=0.1, eps=1e-5)

    compare(r, labels, "y", fwd, params)
    # the running statistics were updated exactly as PyTorch updates them (unbiased variance)
    np.testing.assert_allclose(r.state["rm"], rm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(r.state["rv"], rv.numpy(), rtol=1e-12)
    # in inference the running statistics are used
    ev = reference.forward(tg, {**params, **r.state, "R": r.values["R"]}, np.zeros(1)) / r.values["R"]
    with torch.no_grad():
        want = F.batch_norm(
            torch.tensor(x), rm, rv, torch.tensor(params["gamma"]), torch.tensor(params["beta"]), False
        )
    np.testing.assert_allclose(ev.reshape(want.shape), want.numpy(), rtol=1e-9, atol=1e-12)


@SETTINGS
@given(n=st.integers(1, 3), c=st.integers(1, 4), hw=st.sampled_from([(), (1, 3), (3, 2)]))
def test_batchnorm_frozen(n, c, hw):
    """Scale and bias frozen (--bn frozen): the running statistics in training too, as PyTorch's eval(); the
    input gradient is dy gamma / sqrt(var + eps) and the running statistics stay as they were."""
    x = rnd(12, max(n, 2), c, *hw) * 3 + 1
    gamma, beta, rm, rv = rnd(13, c), rnd(14, c), rnd(15, c), rnd(16, c, lo=0.5)
    attrs = Attrs(eps=1e-5, momentum=0.1)
    nodes = [
        ("bn_stats", ("x", "rm", "rv", TRAIN_FLAG), "stats", attrs),
        ("bn_apply", ("x", "stats", "gamma", "beta"), "y", attrs),
    ]
    if not hw:
        nodes.append(("reshape", ("y",), "y2", Attrs(shape=x.shape)))
    params = {"x": x, "gamma": gamma, "beta": beta}
    tg, r, labels = run(nodes, params, {"rm": rm, "rv": rv}, trainable=("x", "R"))
    assert tg.graph.nodes[0].op == "bn_frozen" and not tg.state_updates
    t = {k: torch.tensor(v) for k, v in (("rm", rm), ("rv", rv), ("gamma", gamma), ("beta", beta))}

    def fwd(x):
        return F.batch_norm(x, t["rm"], t["rv"], t["gamma"], t["beta"], training=False, eps=1e-5)

    compare(r, labels, "y", fwd, {"x": x})
    assert set(r.grads) == {"x", "R"}
    np.testing.assert_array_equal(r.state["rm"], rm)
    np.testing.assert_array_equal(r.state["rv"], rv)


# ---- activations ---------------------------------------------------------------------------------------------
@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=4), seed=st.integers(0, 100))
def test_activations(shape, seed):
    x = rnd(seed, *shape) * 3
    check("clip", Attrs(a=0.0, b=6.0), lambda x: F.relu6(x), x=x * 3)
    check("clip", Attrs(a=-1.0, b=0.5), lambda x: F.hardtanh(x, -1.0, 0.5), x=x)
    check("sigmoid", Attrs(), torch.sigmoid, x=x)
    check("tanh", Attrs(), torch.tanh, x=x)
    check("gelu", Attrs(), F.gelu, x=x)
    check("erf", Attrs(), torch.erf, x=x)
    check("affine", Attrs(a=-0.7, b=0.25), lambda x: -0.7 * x + 0.25, x=x)
    check("sqrt", Attrs(), torch.sqrt, x=np.abs(x) + 0.1)
    check("pow", Attrs(a=2.0), lambda x: x**2, x=x)
    check("pow", Attrs(a=0.5), lambda x: x**0.5, x=np.abs(x) + 0.1)
    check("relu", Attrs(), torch.relu, x=x)


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=4), data=st.data())
def test_softmax(shape, data):
    ax = data.draw(st.integers(0, len(shape) - 1))
    x = rnd(12, *shape) * 2
    check("softmax", Attrs(axis=ax), lambda x: torch.softmax(x, ax), x=x)
    flat = (math.prod(shape[:ax]), math.prod(shape[ax:]))
    check(
        "softmax",
        Attrs(axis=ax, coerce_2d=True),
        lambda x: torch.softmax(x.reshape(flat), 1).reshape(shape),
        x=x,
    )


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=4), data=st.data(), bias=st.booleans())
def test_layernorm(shape, data, bias):
    ax = data.draw(st.integers(1, len(shape) - 1))
    x = rnd(13, *shape) * 2 + 0.5
    norm = tuple(shape[ax:])
    ins = {"x": x, "g": rnd(14, *norm)} | ({"b": rnd(15, *norm)} if bias else {})
    check(
        "layernorm", Attrs(axis=ax, eps=1e-5), lambda x, g, b=None: F.layer_norm(x, norm, g, b, 1e-5), **ins
    )


# ---- matmul and broadcasting arithmetic ---------------------------------------------------------------------
@SETTINGS
@given(
    batch=st.sampled_from([(), (2,), (2, 3)]),
    bcast=st.sampled_from(["none", "a", "b"]),
    m=st.integers(1, 4),
    k=st.integers(1, 5),
    n=st.integers(1, 4),
    ta=st.booleans(),
    tb=st.booleans(),
    alpha=st.sampled_from([1.0, 0.5]),
)
def test_matmul(batch, bcast, m, k, n, ta, tb, alpha):
    ba = () if bcast == "a" else batch
    bb = () if bcast == "b" else batch
    if not ba and not bb:
        ba = (1,)
    a = rnd(16, *ba, *((k, m) if ta else (m, k)))
    b = rnd(17, *bb, *((n, k) if tb else (k, n)))

    def fwd(a, b):
        return alpha * (a.transpose(-1, -2) if ta else a) @ (b.transpose(-1, -2) if tb else b)

    check("matmul", Attrs(ta=ta, tb=tb, alpha=alpha), fwd, a=a, b=b)


def _bshapes():
    base = st.lists(st.integers(1, 4), min_size=2, max_size=4)

    def mask(shape, keep):
        return [d if k else 1 for d, k in zip(shape, keep, strict=False)]

    return base.flatmap(
        lambda s: st.tuples(
            st.just(s),
            st.lists(st.booleans(), min_size=len(s), max_size=len(s)).map(lambda k: mask(s, k)),
            st.integers(0, len(s)),
        )
    )


@SETTINGS
@given(shapes=_bshapes(), op=st.sampled_from(["add", "sub", "mul", "div"]), swap=st.booleans())
def test_binary_broadcast(shapes, op, swap):
    full, small, drop = shapes
    small = small[drop:] or [1]
    a = rnd(18, *full)
    b = rnd(19, *small, lo=0.5) if op == "div" else rnd(19, *small)
    if swap:
        a, b = b, a
        if op == "div":
            b = np.abs(b) + 0.5
    fn = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}[op]
    if len(np.broadcast_shapes(a.shape, b.shape)) < 2:
        return
    check("binary", Attrs(op=op), lambda a, b: fn(a, b), a=a, b=b)


def test_binary_same_operand_twice_sums_both_gradients():
    a = rnd(20, 3, 4)
    _, r, labels = run([("binary", ("a", "a"), "y", Attrs(op="mul"))], {"a": a})
    compare(r, labels, "y", lambda a: a * a, {"a": a})


@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=4), data=st.data(), mean=st.booleans())
def test_reduce(shape, data, mean):
    axes = data.draw(st.lists(st.integers(0, len(shape) - 2), min_size=1, max_size=2, unique=True))
    x = rnd(21, *shape)
    keep = tuple(1 if k in axes else d for k, d in enumerate(shape))
    count = math.prod(shape[k] for k in axes)
    attrs = Attrs(mode="sum", scale=1.0 / count if mean else 1.0, out_shape=keep)
    fn = torch.mean if mean else torch.sum
    check("reduce", attrs, lambda x: fn(x, dim=tuple(axes), keepdim=True), x=x)
    y = tuple(d for k, d in enumerate(shape) if k not in axes)
    if len(y) >= 2:
        check("reduce", attrs.replace(y_shape=y), lambda x: fn(x, dim=tuple(axes)), x=x)


# ---- data movement -------------------------------------------------------------------------------------------
@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=5), data=st.data())
def test_transpose_reshape_expand(shape, data):
    x = rnd(22, *shape)
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    check("transpose", Attrs(perm=perm), lambda x: x.permute(perm), x=x)
    flat = (shape[0], math.prod(shape[1:]))
    check("reshape", Attrs(shape=flat), lambda x: x.reshape(flat), x=x)
    src = tuple(1 if data.draw(st.booleans()) else d for d in shape)
    xs = rnd(23, *src)
    check(
        "expand",
        Attrs(src_shape=src, shape=tuple(shape), scale=0.5),
        lambda x: 0.5 * x.expand(*shape),
        x=xs,
    )


@SETTINGS
@given(shape=st.lists(st.integers(1, 6), min_size=2, max_size=4), data=st.data())
def test_slice(shape, data):
    x = rnd(24, *shape)
    starts, steps, counts = [], [], []
    for d in shape:
        s0 = data.draw(st.integers(0, d - 1))
        k = data.draw(st.integers(1, 3))
        cnt = data.draw(st.integers(1, (d - 1 - s0) // k + 1))
        starts.append(s0)
        steps.append(k)
        counts.append(cnt)
    idx = tuple(slice(s0, s0 + (c - 1) * k + 1, k) for s0, k, c in zip(starts, steps, counts, strict=True))
    if len(counts) < 2:
        return
    attrs = Attrs(starts=tuple(starts), steps=tuple(steps), shape=tuple(counts))
    check("slice", attrs, lambda x: x[idx], x=x)


@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=4), data=st.data(), k=st.integers(1, 4))
def test_concat(shape, data, k):
    ax = data.draw(st.integers(0, len(shape) - 1))
    ins = {}
    for i in range(k):
        s = list(shape)
        s[ax] = data.draw(st.integers(1, 3))
        ins[f"x{i}"] = rnd(25 + i, *s)
    check("concat", Attrs(axis=ax), lambda **xs: torch.cat(list(xs.values()), ax), **ins)


def test_fanout_through_two_ops_is_summed():
    """x feeds two nodes; autodiff sums both gradient contributions (ADD)."""
    x = rnd(30, 3, 4)
    nodes = [
        ("sigmoid", ("x",), "s", Attrs()),
        ("binary", ("x", "s"), "y", Attrs(op="mul")),
    ]
    _, r, labels = run(nodes, {"x": x})
    compare(r, labels, "y", lambda x: x * torch.sigmoid(x), {"x": x})
