import numpy as np
import pytest

from poetc import frontend
from poetc.errors import PoetcError
from poetc.graph import autodiff
from poetc.graph.ir import Role


@pytest.fixture(scope="module")
def tg():
    return autodiff.build_training_graph(frontend.load("mlp"), fuse_updates=False)


def test_structure(tg):
    g = tg.graph
    ops = [n.op for n in g.nodes]
    assert ops[: tg.n_forward] == ["linear", "relu"] * 5 + ["linear"]
    assert ops[tg.n_forward] == "softmax_xent"
    assert ops.count("linear_dw") == 6 and ops.count("bias_grad") == 6 and ops.count("sgd") == 12
    # the first layer's input needs no gradient
    assert ops.count("linear_dx") == 5
    assert g.tensor(tg.loss).role == Role.LOSS and g.tensor(tg.label).dtype == "i32"


def test_fused_updates_keep_no_gradient_buffer():
    fused = autodiff.build_training_graph(frontend.load("mlp"))
    ops = [n.op for n in fused.graph.nodes]
    assert ops.count("linear_dw_sgd") == 6 and ops.count("bias_grad_sgd") == 6 and ops.count("sgd") == 0
    assert "linear_dw" not in ops and "bias_grad" not in ops
    # every parameter is updated once, after all of its readers
    g = fused.graph
    for p, upd in fused.updates.items():
        u = g.node_index[upd]
        assert g.nodes[u].inputs[-1] == p and fused.in_place[u] == (p,)
        assert all(r < u for r in g.consumers[p] if r != u)
    # the largest weight gradient is gone from the arena: no grad tensor has a weight's shape
    shapes = {g.tensor(p).shape for p in g.params}
    assert not [t for t in g.by_role(Role.GRAD) if t.shape in shapes and len(t.shape) == 2]


def test_update_right_after_gradient_and_after_all_readers(tg):
    g = tg.graph
    for p, upd in tg.updates.items():
        u = g.node_index[upd]
        grad_producer = g.producer[tg.grads[p]]
        # only other updates sit between the gradient and its update
        assert all(
            g.nodes[i].op == "sgd" or i == grad_producer or g.nodes[i].op == "bias_grad"
            for i in range(grad_producer + 1, u)
        )
        readers = [i for i in g.consumers[p] if i != u]
        assert readers and max(readers) < u
        assert set(g.nodes[u].after) == {g.nodes[r].name for r in readers}


def test_update_stage_forbids_recompute_after_update(tg):
    g = tg.graph
    fc1 = g.node_index[next(n.name for n in g.nodes if n.op == "linear")]
    assert (
        tg.update_stage[fc1] == g.node_index[tg.updates["fc1.weight"]]
        or tg.update_stage[fc1] == g.node_index[tg.updates["fc1.bias"]]
    )


def test_fanout_gradients_are_summed():
    from onnx import TensorProto, helper, numpy_helper

    w = np.ones((4, 4), np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Add", ["h", "r"], ["s"]),
        helper.make_node("Gemm", ["s", "w2"], ["y"], transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(w, "w1"), numpy_helper.from_array(w, "w2")],
    )
    tg = autodiff.build_training_graph(frontend.from_onnx(helper.make_model(g), "t"))
    assert "add" in [n.op for n in tg.graph.nodes[tg.n_forward :]]


def test_output_must_be_logits():
    m = frontend.load("digits-mlp")
    from dataclasses import replace

    bad = replace(m, logits=m.input)
    with pytest.raises(PoetcError):
        autodiff.build_training_graph(bad)
