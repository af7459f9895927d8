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


# ---- convolutions: dW and db inside their updates -----------------------------------------------------------
@pytest.mark.parametrize("opt", ["sgd", "sgd+wd", "momentum", "momentum+wd"])
def test_conv_updates_are_fused_for_every_optimizer(opt):
    """conv2d_dw + sgd -> conv2d_dw_sgd and conv2d_db + sgd -> conv2d_db_sgd, with the step's attributes and the
    momentum buffer as the last input; every reader of the parameter still runs before its update."""
    optimizer = autodiff.parse_optimizer(opt.split("+")[0], 1e-3 if "wd" in opt else 0.0)
    cnn = frontend.load("digits-cnn", batch=2)
    tg = autodiff.build_training_graph(cnn, optimizer)
    g = tg.graph
    ops = [n.op for n in g.nodes]
    convs = [n for n in cnn.graph.nodes if n.op == "conv2d"]
    assert ops.count("conv2d_dw_sgd") == len(convs) == ops.count("conv2d_db_sgd") == 5
    assert not {"conv2d_dw", "conv2d_db", "sgd"} & set(ops)
    for conv in convs:
        for p, op in zip(conv.inputs[1:], ("conv2d_dw_sgd", "conv2d_db_sgd"), strict=True):
            u = g.node_index[tg.updates[p]]
            node = g.nodes[u]
            assert node.op == op and node.origin == conv.name
            assert dict(node.attrs).items() >= optimizer.attrs().items()
            assert tg.in_place[u] == ((p, tg.opt_state[p]) if optimizer.has_buffer else (p,))
            assert node.inputs[-1] == (tg.opt_state[p] if optimizer.has_buffer else p)
            assert all(r < u for r in g.consumers[p] if r != u)
    # no gradient tensor of a convolution weight's size is left
    shapes = {g.tensor(c.inputs[1]).shape for c in convs}
    assert not [t for t in g.by_role(Role.GRAD) if t.shape in shapes]


def test_conv_weight_read_twice_is_not_fused():
    """A weight shared by two convolutions: its gradient is the sum of two (an ADD reads both), so the update
    stays SGD on the sum; the other layer's update is fused."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["h"], **conv),
            helper.make_node("Conv", ["h", "w"], ["h2"], **conv),
            helper.make_node("Conv", ["h2", "v"], ["y"], **conv),
            helper.make_node("Flatten", ["y"], ["f"]),
        ],
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("f", TensorProto.FLOAT, [1, 32])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w, "v")],
    )
    tg = autodiff.build_training_graph(frontend.from_onnx(helper.make_model(g), "t"))
    gr = tg.graph
    assert gr.nodes[gr.node_index[tg.updates["w"]]].op == "sgd"
    assert gr.nodes[gr.producer[gr.nodes[gr.node_index[tg.updates["w"]]].inputs[1]]].op == "add"
    assert gr.nodes[gr.node_index[tg.updates["v"]]].op == "conv2d_dw_sgd"


def _largest_node(tg) -> tuple[int, str]:
    """The most bytes one node needs resident: its output and every input, parameters and buffers included (as
    when parameters are not static: the lead's parameter homes page them)."""
    g = tg.graph

    def need(n):
        return g.tensor(n.output).nbytes + sum(g.tensor(t).nbytes for t in set(n.inputs))

    n = max(g.nodes, key=need)
    return need(n), n.op


def test_resnet8_has_no_weight_plus_gradient_node():
    """ResNet-8 (MLPerf Tiny) at batch 1: a 64 x 64 x 3 x 3 convolution's W is 147 KB, so the unfused SGD node needs
    W + dW = 295 KB, more than the 256 KB of the nRF52840 or the emulated Cortex-M4; fused, the largest node is a
    BatchNorm input gradient of the first stage (three 64 KB activations). With momentum, W's buffer is resident
    too, but dW no longer is."""
    m = frontend.load("resnet8", batch=1)
    w, act = 147456, 16384  # layer3's 64 x 64 x 3 x 3 weights; its 64 x 8 x 8 activations
    assert _largest_node(autodiff.build_training_graph(m, fuse_updates=False)) == (2 * w, "sgd")
    need, op = _largest_node(autodiff.build_training_graph(m))
    assert need < 200_000 and op == "bn_dx", (need, op)
    unfused = autodiff.build_training_graph(m, "momentum", fuse_updates=False)
    assert _largest_node(unfused) == (3 * w, "sgd")  # W, dW, the buffer
    fused = autodiff.build_training_graph(m, "momentum")
    assert _largest_node(fused) == (2 * w + 2 * act, "conv2d_dw_sgd")  # W, the buffer, x, dy
    g = fused.graph
    assert g.nodes[g.node_index[fused.updates["layer3.0.conv2.weight"]]].op == "conv2d_dw_sgd"
