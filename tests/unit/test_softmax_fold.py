"""A model that ends in Softmax or LogSoftmax trains under softmax cross-entropy on the logits: the final node is
folded into the loss, with a note, so the step (loss, gradients, updated weights) is that of the model without it;
a softmax anywhere else is kept."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from poetc import frontend
from poetc.graph import autodiff, reference

RNG = np.random.default_rng(3)
W1 = RNG.standard_normal((8, 6)).astype(np.float32) * 0.5
W2 = RNG.standard_normal((3, 8)).astype(np.float32) * 0.5


def _model(tmp_path, tail: str | None, axis: int = -1, opset: int = 13):
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2"], ["z" if tail else "y"], transB=1),
    ]
    if tail:
        nodes.append(helper.make_node(tail, ["z"], ["y"], axis=axis))
    g = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])],
        [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(W2, "w2")],
    )
    path = tmp_path / f"{tail}-{axis}-{opset}.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return frontend.load(path)


def _step(model):
    tg = autodiff.build(model)
    x = np.random.default_rng(5).standard_normal((4, 6)).astype(np.float32)
    y = np.array([0, 2, 1, 2])
    return reference.train_step(tg, {k: v.astype(np.float32) for k, v in model.params.items()}, x, y, 0.1)


@pytest.mark.parametrize(
    "tail, axis, opset", [("Softmax", -1, 13), ("Softmax", 1, 11), ("LogSoftmax", 1, 13)]
)
def test_a_final_softmax_is_folded_into_the_loss(tmp_path, tail, axis, opset):
    plain = _model(tmp_path, None)
    folded = _model(tmp_path, tail, axis, opset)
    assert not plain.notes
    assert (
        len(folded.notes) == 1
        and f"ends in {tail}" in folded.notes[0]
        and "folded into the loss" in folded.notes[0]
    )
    assert [n.op for n in folded.graph.nodes] == [n.op for n in plain.graph.nodes]
    a, b = _step(plain), _step(folded)
    assert a.loss == b.loss
    for p in plain.params:
        assert np.array_equal(a.grads[p], b.grads[p]), p


def test_a_softmax_elsewhere_is_kept(tmp_path):
    m = _model(tmp_path, "Softmax", axis=0)  # over the batch: not the classes
    assert not m.notes and m.graph.nodes[-1].op == "softmax"
