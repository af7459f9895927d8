"""Sparse update, frozen BatchNorm and momentum in the training graph (issue 12).

Which parameters ``--train`` selects, how far gradients flow (pruning), the frozen BatchNorm lowering, the momentum
buffers, and the float64 reference against PyTorch for partially frozen zoo models: gradients and a five-step
trajectory of SGD with momentum 0.9 and weight decay (torch.optim.SGD), frozen parameters untouched.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from poetc import frontend
from poetc.errors import PoetcError
from poetc.graph import autodiff, reference
from poetc.graph.autodiff import (
    Optimizer,
    TrainingOptions,
    layers_with_params,
    parse_optimizer,
    select_trainable,
)
from poetc.graph.ir import Role


@pytest.fixture(scope="module")
def resnet8():
    return frontend.load("resnet8", batch=2)


@pytest.fixture(scope="module")
def cnn():
    return frontend.load("digits-cnn", batch=4)


def backward(tg) -> list[str]:
    """The ops after the loss: gradients and updates."""
    return [n.op for n in tg.graph.nodes[tg.n_forward + 1 :]]


# ---- which parameters train ---------------------------------------------------------------------------------
def test_layers_with_params_in_forward_order(cnn, resnet8):
    layers = layers_with_params(cnn)
    assert [ps for _n, ps in layers] == [(f"conv{i}.weight", f"conv{i}.bias") for i in range(1, 6)] + [
        ("fc.weight", "fc.bias")
    ]
    assert [cnn.graph.nodes[cnn.graph.node_index[n]].op for n, _ in layers] == ["conv2d"] * 5 + ["linear"]
    r = layers_with_params(resnet8)
    assert (
        r[0][1] == ("conv1.weight",)
        and r[1][1] == ("bn1.weight", "bn1.bias")
        and r[-1][1] == ("fc.weight", "fc.bias")
    )
    assert sorted(p for _n, ps in r for p in ps) == sorted(resnet8.graph.params)


def test_select_trainable(cnn, resnet8):
    def sel(model, spec):
        out = select_trainable(model, spec)
        assert out == tuple(p for p in model.graph.params if p in out)  # in the model's parameter order
        return set(out)

    assert sel(cnn, "all") == set(cnn.graph.params)
    assert sel(cnn, "last:1") == {"fc.weight", "fc.bias"}
    assert sel(cnn, "last:2") == {"conv5.weight", "conv5.bias", "fc.weight", "fc.bias"}
    assert sel(cnn, "bias") == {f"conv{i}.bias" for i in range(1, 6)} | {"fc.bias"}
    # ResNet-8's convolutions have no bias: BatchNorm's beta and the classifier's bias are the bias-like ones
    rb = sel(resnet8, "bias")
    assert "fc.bias" in rb and "bn1.bias" in rb and "bn1.weight" not in rb and len(rb) == 10
    assert sel(cnn, " fc.weight , conv1.bias ") == {"conv1.bias", "fc.weight"}


@pytest.mark.parametrize(
    "spec, words",
    [
        ("fc.wieght", ["'fc.wieght'", "close: fc.weight"]),
        ("last:0", ["last:0", "from 1 to 6"]),
        ("last:7", ["from 1 to 6"]),
        ("last:x", ["last:x"]),
        ("fc.weight,", ["empty parameter name"]),
    ],
)
def test_select_trainable_errors_are_one_line(cnn, spec, words):
    with pytest.raises(PoetcError) as e:
        select_trainable(cnn, spec)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_parse_optimizer():
    assert parse_optimizer("sgd") == Optimizer("sgd")
    assert parse_optimizer("momentum") == Optimizer("momentum", 0.9)
    assert parse_optimizer("momentum:0.8", 1e-4) == Optimizer("momentum", 0.8, 1e-4)
    for bad in ("adam", "momentum:x", "momentum:1.5", "momentum:0", "sgd:0.9", ""):
        with pytest.raises(PoetcError) as e:
            parse_optimizer(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(PoetcError):
        parse_optimizer("sgd", weight_decay=-1.0)
    with pytest.raises(PoetcError):
        TrainingOptions(bn="eval")


# ---- the graph: pruning, frozen BatchNorm, momentum buffers ------------------------------------------------
def test_default_graph_is_unchanged(resnet8):
    """trainable=None, every name and TrainingOptions() give one graph; plain SGD's updates carry no optimizer
    attributes and there is no optimizer state."""
    a = autodiff.build_training_graph(resnet8)
    b = autodiff.build_training_graph(resnet8, trainable=resnet8.graph.params, bn="frozen")
    c = autodiff.build(resnet8, TrainingOptions())
    assert a.graph.fingerprint() == b.graph.fingerprint() == c.graph.fingerprint()
    assert a.frozen == () and a.opt_state == {} and not a.graph.by_role(Role.OPT_STATE)
    steps = [n for n in a.graph.nodes if n.op in ("sgd", "linear_dw_sgd", "bias_grad_sgd", "conv2d_dw_sgd")]
    assert len(steps) == 29 and not any("momentum" in n.attrs or "weight_decay" in n.attrs for n in steps)
    assert all(len(ts) == 1 for ts in a.in_place.values())


def test_pruning_saves_backward_nodes(cnn, resnet8):
    """A frozen prefix gets no backward nodes: training only the classifier leaves its two fused updates."""
    full, last = autodiff.build(cnn), autodiff.build(cnn, TrainingOptions("last:1"))
    assert len(backward(full)) == 23  # 33 before the convolutions' dW and db were fused into their updates
    assert sorted(backward(last)) == ["bias_grad_sgd", "linear_dw_sgd", "softmax_xent_bwd"]
    assert last.params == ("fc.weight", "fc.bias") and len(last.frozen) == 10
    r_full, r_last = autodiff.build(resnet8), autodiff.build(resnet8, TrainingOptions("last:1"))
    assert (len(backward(r_full)), len(backward(r_last))) == (95, 3)  # 104 before the conv fusion


def test_frozen_layers_between_trained_ones_pass_the_input_gradient(cnn):
    tg = autodiff.build_training_graph(cnn, trainable=("conv1.weight", "fc.weight"), fuse_updates=False)
    ops = Counter(backward(tg))
    # conv2..conv5 are frozen: their input gradients flow down to conv1, no weight or bias gradient
    assert ops["conv2d_dx"] == 4 and ops["conv2d_dw"] == 1 and ops["conv2d_db"] == 0
    assert ops["linear_dx"] == 1 and ops["linear_dw"] == 1 and ops["bias_grad"] == 0 and ops["sgd"] == 2
    assert set(tg.grads) == {"conv1.weight", "fc.weight"} and set(tg.updates) == set(tg.grads)
    # a frozen parameter has no gradient node and is never updated in place
    updated = {t for ts in tg.in_place.values() for t in ts}
    assert not updated & set(tg.frozen)
    g = tg.graph
    weight_grads = {n.origin for n in g.nodes if n.op in ("conv2d_dw", "conv2d_db", "linear_dw", "bias_grad")}
    assert weight_grads == {g.nodes[g.consumers[p][0]].name for p in ("conv1.weight", "fc.weight")}


def test_frozen_batchnorm_runs_on_running_statistics(resnet8):
    tg = autodiff.build(resnet8, TrainingOptions("last:1"))
    ops = Counter(n.op for n in tg.graph.nodes)
    n_bn = sum(1 for n in resnet8.graph.nodes if n.op == "bn_apply")
    assert ops["bn_frozen"] == n_bn == 9 and not ops["bn_stats"] and not ops["bn_running"]
    assert tg.state_updates == {} and not tg.graph.consumers[tg.train_flag]
    # the same layers with --bn train: batch statistics and running-statistics updates, still no gradient
    tr = autodiff.build(resnet8, TrainingOptions("last:1", bn="train"))
    ops = Counter(n.op for n in tr.graph.nodes)
    assert ops["bn_stats"] == 9 and ops["bn_running"] == 18 and not ops["bn_frozen"] and not ops["bn_dx"]
    # a BatchNorm with a trained beta keeps batch statistics (and its input gradient goes through them)
    bias = autodiff.build(resnet8, TrainingOptions("bias"))
    assert Counter(n.op for n in bias.graph.nodes)["bn_frozen"] == 0
    # a trained convolution below a frozen BatchNorm: the gradient passes through BN_FROZEN_DX
    mid = autodiff.build(resnet8, TrainingOptions("conv1.weight,fc.weight"))
    assert "bn_frozen_dx" in backward(mid) and "bn_dx" not in backward(mid)


def test_momentum_buffers_are_optimizer_state(resnet8):
    tg = autodiff.build(resnet8, TrainingOptions("bias", optimizer=Optimizer("momentum", 0.9, 1e-3)))
    g = tg.graph
    assert set(tg.opt_state) == set(tg.params)
    for p, v in tg.opt_state.items():
        t = g.tensor(v)
        assert t.role == Role.OPT_STATE and t.shape == g.tensor(p).shape and not t.in_arena
        (u,) = g.consumers[v]  # read by its parameter's update node and nothing else
        assert g.nodes[u].name == tg.updates[p] and tg.in_place[u] == (p, v)
        assert g.nodes[u].attrs["momentum"] == 0.9 and g.nodes[u].attrs["weight_decay"] == 1e-3


def test_no_trainable_parameter_is_an_error(cnn):
    with pytest.raises(PoetcError, match="no parameter to train"):
        autodiff.build_training_graph(cnn, trainable=())
    with pytest.raises(PoetcError, match=r"close: fc\.bias"):
        autodiff.build_training_graph(cnn, trainable=("fc.bia",))


def test_parameter_feeding_a_trained_linear_layer_is_not_fused():
    """A parameter read by a linear layer whose weight trains: the weight's fused step would take a place after
    that parameter's own update, so it stays unfused and every reader precedes every update."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.ones((3, 3), np.float32)
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "p"], ["h"]), helper.make_node("Gemm", ["h", "w"], ["y"], transB=1)],
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w[:2] * 0.5, "p")],
    )
    tg = autodiff.build_training_graph(frontend.from_onnx(helper.make_model(g), "t"))
    gr = tg.graph
    for u, ts in tg.in_place.items():
        assert all(r < u for t in ts for r in gr.consumers[t] if r != u)


# ---- the reference against PyTorch: gradients and a momentum trajectory -------------------------------------
torch = pytest.importorskip("torch")
F = torch.nn.functional
LR, MU, WD, STEPS = 0.1, 0.9, 1e-3, 5


def _torch_run(name, model, opts: TrainingOptions, batches):
    """PyTorch twin: frozen parameters without gradients, frozen BatchNorms in eval() (--bn frozen), the rest in
    train(); torch.optim.SGD with momentum and weight decay. Returns (step 1's gradients, values after each step)."""
    from tests.zoo_torch import twin

    tg = autodiff.build(model, opts)
    net = twin(name, {k: v.astype(np.float64) for k, v in {**model.params, **model.state}.items()})
    trainable = set(tg.params)
    named = dict(net.named_parameters())
    for k, p in named.items():
        p.requires_grad_(k in trainable)
    for prefix, mod in net.named_modules():
        if isinstance(mod, torch.nn.BatchNorm2d) and opts.bn == "frozen":
            if f"{prefix}.weight" not in trainable and f"{prefix}.bias" not in trainable:
                mod.eval()
    o = opts.optimizer
    opt = torch.optim.SGD(
        [named[k] for k in tg.params], lr=LR, momentum=o.momentum, weight_decay=o.weight_decay
    )
    grads, traj = {}, []
    for s, (x, y) in enumerate(batches):
        opt.zero_grad()
        F.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        if s == 0:
            grads = {k: named[k].grad.numpy().copy() for k in tg.params}
        opt.step()
        traj.append({k: v.detach().numpy().copy() for k, v in net.state_dict().items()})
    return tg, grads, traj


CASES = [
    ("resnet8", 2, "last:1", "frozen"),
    ("resnet8", 2, "last:1", "train"),
    ("resnet8", 2, "bias", "frozen"),  # BatchNorm betas train, gammas do not: batch statistics
    ("resnet8", 2, "conv1.weight,layer2.0.conv2.weight,fc.weight", "frozen"),  # frozen BN in the middle
    ("digits-cnn", 4, "conv1.weight,fc.weight", "frozen"),  # frozen convolutions between trained layers
    ("resnet8", 1, "all", "frozen"),  # every convolution's update fused (conv2d_dw_sgd), BatchNorm trained
    ("digits-cnn", 2, "all", "frozen"),  # and the conv biases' (conv2d_db_sgd)
]


@pytest.mark.parametrize("name, batch, spec, bn", CASES, ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in CASES])
def test_partially_frozen_trajectory_matches_torch(name, batch, spec, bn):
    model = frontend.load(name, batch=batch)
    opts = TrainingOptions(spec, bn, Optimizer("momentum", MU, WD))
    rng = np.random.default_rng(3)
    shape = model.graph.tensor(model.input).shape
    classes = model.graph.tensor(model.logits).shape[-1]
    batches = [(rng.standard_normal(shape), rng.integers(0, classes, shape[0])) for _ in range(STEPS)]
    tg, t_grads, t_traj = _torch_run(name, model, opts, batches)
    assert tg.opt_state and bool(tg.frozen) == (spec != "all")
    if spec == "all":
        ops = {n.op for n in tg.graph.nodes}
        assert "conv2d_dw_sgd" in ops and not {"conv2d_dw", "conv2d_db"} & ops

    start = {k: v.astype(np.float64) for k, v in {**model.params, **model.state}.items()}
    carry = dict(start)
    for s, (x, y) in enumerate(batches):
        r = reference.train_step(tg, carry, x, y, LR)
        carry = r.carry
        if s == 0:
            assert set(r.grads) == set(tg.params)  # frozen parameters have no gradient
            floor = 1e-6 * reference.grad_floor(t_grads, 1.0)
            for p in tg.params:
                assert reference.max_rel_error(r.grads[p], t_grads[p], floor) <= 1e-9, p
        want = t_traj[s]
        for p in tg.params:
            assert reference.max_rel_error(r.params[p], want[p]) <= 1e-9, (s, p)
        for p in tg.frozen:  # bit for bit untouched
            assert np.array_equal(r.params[p], start[p]) and np.array_equal(want[p], start[p]), p
        for k in model.state:  # running statistics: updated by training BatchNorms only
            assert reference.max_rel_error(r.state[k], want[k]) <= 1e-9, (s, k)
