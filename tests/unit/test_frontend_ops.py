"""ONNX import of the model-coverage ops: folding, fusions, aliases, BatchNorm state, clear errors."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from poetc import frontend
from poetc.errors import PoetcError
from poetc.graph import autodiff, reference
from poetc.graph.ir import TRAIN_FLAG, Role


def _model(nodes, inits, in_shape, out_shape, opset=17, out="y"):
    g = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _load(nodes, inits, in_shape, out_shape, **kw):
    return frontend.from_onnx(_model(nodes, inits, in_shape, out_shape, **kw), "t.onnx")


W = np.random.default_rng(0).standard_normal((3, 12)).astype(np.float32)
B = np.zeros(3, np.float32)


def _ops(m):
    return [n.op for n in m.graph.nodes]


def test_shape_arithmetic_is_folded_into_one_reshape():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as exporters write x.view(x.size(0), -1)."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Shape", ["r"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["r", "shape"], ["f"]),
        helper.make_node("Sigmoid", ["f"], ["g"]),
        helper.make_node("Gemm", ["g", "w", "b"], ["y"], transB=1),
    ]
    inits = {
        "zero": np.array(0, np.int64),
        "ax0": np.array([0], np.int64),
        "minus1": np.array([-1], np.int64),
    }
    m = _load(nodes, inits | {"w": W, "b": B}, (2, 3, 2, 2), (2, 3))
    assert _ops(m) == ["relu", "reshape", "sigmoid", "linear"]
    assert m.graph.tensor(m.graph.nodes[1].output).shape == (2, 12)


def test_flatten_before_gemm_is_free_but_not_elsewhere():
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1),
    ]
    assert _ops(_load(nodes, {"w": W, "b": B}, (2, 3, 4), (2, 3))) == ["linear"]
    nodes.insert(1, helper.make_node("Tanh", ["f"], ["t"]))
    nodes[2] = helper.make_node("Gemm", ["t", "w", "b"], ["y"], transB=1)
    assert _ops(_load(nodes, {"w": W, "b": B}, (2, 3, 4), (2, 3))) == ["reshape", "tanh", "linear"]


@pytest.mark.parametrize("order", ["legacy", "dynamo"])
def test_gelu_pattern_is_fused(order):
    c = {"sqrt2": np.float32(math.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}
    nodes = [
        helper.make_node("Div", ["x", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
    ]
    if order == "legacy":  # (x * (1 + erf)) * 0.5
        nodes += [helper.make_node("Mul", ["x", "a"], ["m"]), helper.make_node("Mul", ["m", "half"], ["g"])]
    else:  # x * (0.5 * (1 + erf))
        nodes += [helper.make_node("Mul", ["half", "a"], ["m"]), helper.make_node("Mul", ["x", "m"], ["g"])]
    nodes.append(helper.make_node("Gemm", ["g", "w", "b"], ["y"], transB=1))
    m = _load(nodes, c | {"w": W, "b": B}, (2, 12), (2, 3))
    assert _ops(m) == ["gelu", "linear"]


def test_gelu_written_out_with_an_extra_reader_stays_unfused_and_correct():
    c = {"sqrt2": np.float32(math.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}
    nodes = [
        helper.make_node("Div", ["x", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["x", "a"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["g"]),
        helper.make_node("Add", ["g", "e"], ["g2"]),  # erf read twice: no fusion
        helper.make_node("Gemm", ["g2", "w", "b"], ["y"], transB=1),
    ]
    m = _load(nodes, c | {"w": W, "b": B}, (2, 12), (2, 3))
    assert "gelu" not in _ops(m) and "erf" in _ops(m)
    tg = autodiff.build_training_graph(m)
    x = np.random.default_rng(1).standard_normal((2, 12))
    e = np.vectorize(math.erf)(x / math.sqrt(2))
    want = (x * (1 + e) * 0.5 + e) @ W.T.astype(np.float64)
    np.testing.assert_allclose(reference.forward(tg, m.params, x), want, rtol=1e-6)


def test_matmul_with_a_transposed_weight_and_bias_is_one_linear():
    w = np.ones((3, 12), np.float32)
    nodes = [
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wt"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["y"]),
    ]
    m = _load(nodes, {"w": w, "b": B}, (2, 5, 12), (2, 5, 3))
    (n,) = m.graph.nodes
    assert n.op == "linear" and n.inputs == ("x", "w", "b") and n.attrs["trans_w"]


def test_batchnorm_becomes_statistics_and_apply_with_state_and_training_flag():
    c = 3
    inits = {
        "g": np.ones(c, np.float32),
        "bb": np.zeros(c, np.float32),
        "rm": np.zeros(c, np.float32),
        "rv": np.ones(c, np.float32),
        "w": np.ones((2, c * 4), np.float32),
    }
    nodes = [
        helper.make_node(
            "BatchNormalization", ["x", "g", "bb", "rm", "rv"], ["n", "m1", "v1"], training_mode=1
        ),
        helper.make_node("Flatten", ["n"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["y"], transB=1),
    ]
    m = _load(nodes, inits, (2, c, 2, 2), (2, 2))
    assert _ops(m) == ["bn_stats", "bn_apply", "linear"]
    assert set(m.state) == {"rm", "rv"} and m.graph.tensor("rm").role == Role.STATE
    assert m.train_flag == TRAIN_FLAG and m.graph.tensor(m.train_flag).role == Role.INPUT
    assert m.graph.nodes[0].attrs["momentum"] == pytest.approx(0.1, abs=1e-12)
    tg = autodiff.build_training_graph(m)
    upd = [n for n in tg.graph.nodes if n.op == "bn_running"]
    assert [n.inputs[0] for n in upd] == ["rm", "rv"] and set(tg.state_updates) == {"rm", "rv"}
    assert all(i in tg.in_place for i, n in enumerate(tg.graph.nodes) if n.op == "bn_running")
    # the running-statistics outputs are not computed: reading them is an error that says so
    nodes[1] = helper.make_node("Flatten", ["m1"], ["f"])
    with pytest.raises(PoetcError, match="not computed"):
        _load(nodes, inits, (2, c, 2, 2), (2, 2))


def test_batchnorm_with_one_value_per_channel_is_refused():
    c = 2
    inits = {k: np.ones(c, np.float32) for k in ("g", "bb", "rm", "rv")} | {"w": np.ones((2, c), np.float32)}
    nodes = [
        helper.make_node("BatchNormalization", ["x", "g", "bb", "rm", "rv"], ["n"]),
        helper.make_node("Gemm", ["n", "w"], ["y"], transB=1),
    ]
    with pytest.raises(PoetcError, match="more than one value per channel"):
        _load(nodes, inits, (1, c), (1, 2))


def test_dropout_is_identity_only_when_it_drops_nothing():
    nodes = [
        helper.make_node("Dropout", ["x", "ratio", "train"], ["d"]),
        helper.make_node("Gemm", ["d", "w", "b"], ["y"], transB=1),
    ]
    keep = {"w": W, "b": B, "train": np.array(True)}
    assert _ops(_load(nodes, keep | {"ratio": np.float32(0.0)}, (2, 12), (2, 3))) == ["linear"]
    with pytest.raises(PoetcError, match=r"Dropout with ratio 0\.5 in training mode"):
        _load(nodes, keep | {"ratio": np.float32(0.5)}, (2, 12), (2, 3))


def test_gather_of_the_first_token_is_a_slice_and_an_embedding_lookup_is_refused():
    nodes = [
        helper.make_node("Gather", ["x", "i"], ["t"], axis=1),
        helper.make_node("Gemm", ["t", "w", "b"], ["y"], transB=1),
    ]
    m = _load(nodes, {"i": np.array(0, np.int64), "w": W, "b": B}, (2, 5, 12), (2, 3))
    assert _ops(m) == ["slice", "reshape", "linear"]
    with pytest.raises(PoetcError, match="embedding lookup is not supported"):
        _load(nodes, {"i": np.array([2, 0], np.int64), "w": W, "b": B}, (2, 5, 12), (2, 3))


def test_scalar_constants_become_affine_and_tensor_constants_are_refused():
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["a"]),
        helper.make_node("Sub", ["one", "a"], ["s"]),
        helper.make_node("Gemm", ["s", "w", "b"], ["y"], transB=1),
    ]
    m = _load(nodes, {"two": np.float32(2), "one": np.float32(1), "w": W, "b": B}, (2, 12), (2, 3))
    assert _ops(m) == ["affine", "affine", "linear"]
    assert (m.graph.nodes[1].attrs["a"], m.graph.nodes[1].attrs["b"]) == (-1.0, 1.0)
    bad = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones((2, 12), np.float32)))
    ]
    bad += [
        helper.make_node("Add", ["x", "c"], ["s"]),
        helper.make_node("Gemm", ["s", "w", "b"], ["y"], transB=1),
    ]
    with pytest.raises(PoetcError, match="constant non-scalar tensor"):
        _load(bad, {"w": W, "b": B}, (2, 12), (2, 3))


def test_conv_same_padding_and_clip_with_only_a_minimum():
    w = np.ones((4, 2, 3, 3), np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "cw"], ["c"], auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Clip", ["c", "lo"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1),
    ]
    m = _load(
        nodes,
        {"cw": w, "lo": np.float32(0.0), "w": np.ones((3, 4 * 3 * 3), np.float32), "b": B},
        (1, 2, 5, 5),
        (1, 3),
    )
    conv = m.graph.nodes[0]
    assert conv.attrs["pads"] == (1, 1, 1, 1) and m.graph.tensor(conv.output).shape == (1, 4, 3, 3)
    clip = m.graph.nodes[1]
    assert clip.attrs["a"] == 0.0 and clip.attrs["b"] == pytest.approx(float(np.finfo(np.float32).max))


def test_softmax_before_opset_13_flattens_from_its_axis():
    nodes = [
        helper.make_node("Softmax", ["x"], ["s"], axis=1),
        helper.make_node("Gemm", ["s", "w", "b"], ["y"], transB=1),
    ]
    m = _load(nodes, {"w": W, "b": B}, (2, 3, 4), (2, 3), opset=11)
    assert m.graph.nodes[0].attrs["coerce_2d"] is True
    m = _load(nodes, {"w": W, "b": B}, (2, 3, 4), (2, 3), opset=13)
    assert m.graph.nodes[0].attrs["coerce_2d"] is False


def test_every_unsupported_op_is_listed_once(tmp_path):
    nodes = [
        helper.make_node("LpNormalization", ["x"], ["a"], name="lp"),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Einsum", ["r", "r"], ["e"], equation="ij,ij->ij", name="es"),
        helper.make_node("Gemm", ["e", "w", "b"], ["y"], transB=1),
    ]
    with pytest.raises(PoetcError) as e:
        _load(nodes, {"w": W, "b": B}, (2, 12), (2, 3))
    msg = str(e.value)
    assert "lp (LpNormalization)" in msg and "es (Einsum)" in msg and "Conv" in msg


def test_export_sets_batchnorm_to_inference_and_writes_state(tmp_path):
    m = frontend.load("resnet8", batch=2)
    new = {k: v + 1.0 for k, v in m.params.items()} | {k: v + 0.5 for k, v in m.state.items()}
    p = tmp_path / "out.onnx"
    frontend.export_onnx(m, new, p)
    proto = onnx.load(str(p))
    bns = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    assert bns and all(
        len(n.output) == 1 and not any(a.name == "training_mode" for a in n.attribute) for n in bns
    )
    back = frontend.load(p, batch=2)
    for k in m.state:
        np.testing.assert_array_equal(back.state[k], new[k])
