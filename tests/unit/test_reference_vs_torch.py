"""The numpy reference, op by op and for whole training steps, against PyTorch (forward and every gradient)."""

import copy
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poetc import frontend
from poetc.graph import autodiff, reference
from poetc.graph.ir import Attrs
from poetc.graph.ops import get

torch = pytest.importorskip("torch")
TOL = 1e-9  # float64 against float64


def check_op(op, attrs, fwd_torch, *inputs, grads=()):
    """One-line per-op check: forward of ``op`` and the listed backward ops against torch autograd.

    grads: (backward op, builder of its inputs from (x tensors, y, dy), index of the torch input it matches)
    """
    xs = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in inputs]
    y = fwd_torch(*xs)
    ours = get(op).ref(attrs, *inputs)
    np.testing.assert_allclose(ours, y.detach().numpy(), rtol=TOL, atol=TOL)
    dy = np.random.default_rng(0).standard_normal(y.shape)
    y.backward(torch.tensor(dy))
    for bop, args, idx, battrs in grads:
        got = get(bop).ref(battrs, *args(inputs, ours, dy))
        np.testing.assert_allclose(got, xs[idx].grad.numpy(), rtol=1e-7, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 6),
    k=st.integers(1, 9),
    n=st.integers(1, 7),
    trans=st.booleans(),
    bias=st.booleans(),
    alpha=st.sampled_from([1.0, 0.5]),
    beta=st.sampled_from([1.0, 2.0]),
)
def test_linear(m, k, n, trans, bias, alpha, beta):
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    x = rng.standard_normal((m, k))
    w = rng.standard_normal((n, k) if trans else (k, n))
    b = rng.standard_normal(n)
    a = Attrs(trans_w=trans, alpha=alpha, beta=beta, flatten=True, x_shape=(m, k), n=n, b_shape=(n,))

    def fwd(x_, w_, b_=None):
        wk = w_.T if trans else w_
        y = alpha * x_ @ wk
        return y + beta * b_ if b_ is not None else y

    ins = (x, w, b) if bias else (x, w)
    grads = [
        ("linear_dx", lambda i, y, dy: (dy, i[1]), 0, a),
        ("linear_dw", lambda i, y, dy: (dy, i[0]), 1, a),
    ]
    if bias:
        grads.append(("bias_grad", lambda i, y, dy: (dy,), 2, a))
    check_op("linear", a, fwd, *ins, grads=grads)


@settings(max_examples=15, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3))
def test_relu(shape):
    x = np.random.default_rng(len(shape)).standard_normal(shape)
    check_op("relu", Attrs(), torch.relu, x, grads=[("relu_bwd", lambda i, y, dy: (y, dy), 0, Attrs())])


@settings(max_examples=15, deadline=None)
@given(m=st.integers(1, 8), c=st.integers(2, 12))
def test_softmax_xent(m, c):
    rng = np.random.default_rng(m * 13 + c)
    z = rng.standard_normal((m, c)) * 3
    y = rng.integers(0, c, m)
    loss = get("softmax_xent").ref(Attrs(), z, y)
    zt = torch.tensor(z, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(y))
    lt.backward()
    assert loss == pytest.approx(lt.item(), rel=1e-12)
    np.testing.assert_allclose(
        get("softmax_xent_bwd").ref(Attrs(), z, y), zt.grad.numpy(), rtol=1e-9, atol=1e-12
    )


def test_add_and_sgd():
    a, b = np.arange(6.0), np.ones(6)
    check_op("add", Attrs(), torch.add, a, b, grads=[])
    np.testing.assert_allclose(get("sgd").ref(Attrs(), a, b, 0.5)[0], a - 0.5)


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("widths", [(12, 7, 5, 3), (5, 9, 4)])
def test_training_step_matches_torch(tmp_path, widths, dynamo):
    from tests.conftest import export_torch

    torch.manual_seed(sum(widths))
    layers = [torch.nn.Flatten()]
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    net_f = torch.nn.Sequential(*layers)
    x = torch.randn(6, widths[0], dtype=torch.float64)
    y = torch.randint(0, widths[-1], (6,))
    p = export_torch(net_f, x.float(), tmp_path / "m.onnx", dynamo=dynamo)
    net = copy.deepcopy(net_f).double()
    model = frontend.load(p)
    tg = autodiff.build_training_graph(model)
    params = {k: v.astype(np.float64) for k, v in model.params.items()}
    r = reference.train_step(tg, params, x.numpy(), y.numpy(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    assert r.loss == pytest.approx(loss.item(), rel=1e-6)
    named = dict(net.named_parameters())
    for k in params:
        tk = k.split("::")[-1]
        tp = named[tk] if tk in named else named[next(n for n in named if k.endswith(n))]
        np.testing.assert_allclose(r.grads[k], tp.grad.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(r.params[k], params[k] - 0.1 * tp.grad.numpy(), rtol=1e-5, atol=1e-7)
