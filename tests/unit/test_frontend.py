from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from poetc import frontend
from poetc.errors import PoetcError
from poetc.frontend import zoo
from poetc.graph.ir import Role


def _model(nodes, inits, in_shape=(4, 6), out="y", out_shape=(4, 3)):
    g = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


W = np.ones((3, 6), np.float32)
B = np.zeros(3, np.float32)


def test_zoo_mlp_shapes():
    m = frontend.load("mlp")
    lin = [n for n in m.graph.nodes if n.op == "linear"]
    widths = [m.graph.tensor(n.inputs[1]).shape for n in lin]
    assert widths == [(10, 784), (120, 10), (100, 120), (200, 100), (10, 200), (10, 10)]
    assert m.graph.tensor(m.input).shape == (zoo.default_batch("mlp"), 1, 28, 28)
    d = frontend.load("digits-mlp", batch=7)
    assert d.graph.tensor(d.input).shape == (7, 1, 8, 8)
    assert [d.graph.tensor(n.inputs[1]).shape for n in d.graph.nodes if n.op == "linear"] == [
        (32, 64),
        (10, 32),
    ]


def test_params_keep_onnx_names_and_values():
    m = frontend.from_onnx(
        _model([helper.make_node("Gemm", ["x", "w.0", "b.0"], ["y"], transB=1)], {"w.0": W, "b.0": B}),
        "t.onnx",
    )
    assert set(m.params) == {"w.0", "b.0"}
    assert m.graph.tensor("w.0").role == Role.PARAM
    np.testing.assert_array_equal(m.params["w.0"], W)


def test_matmul_add_fuses_into_linear():
    w = np.ones((6, 3), np.float32)
    m = frontend.from_onnx(
        _model(
            [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
            {"w": w, "b": B},
        ),
        "t.onnx",
    )
    (n,) = m.graph.nodes
    assert n.op == "linear" and n.inputs == ("x", "w", "b") and not n.attrs["trans_w"]


def test_flatten_and_identity_are_free():
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Identity", ["f"], ["i"]),
        helper.make_node("Gemm", ["i", "w", "b"], ["y"], transB=1),
    ]
    m = frontend.from_onnx(_model(nodes, {"w": W, "b": B}, in_shape=(4, 2, 3)), "t.onnx")
    assert [n.op for n in m.graph.nodes] == ["linear"]


def test_unsupported_ops_listed_at_once():
    nodes = [
        helper.make_node("Softsign", ["x"], ["s"], name="sig"),
        helper.make_node("HardSwish", ["s"], ["t"]),
        helper.make_node("Gemm", ["t", "w", "b"], ["y"], transB=1),
    ]
    with pytest.raises(PoetcError) as e:
        frontend.from_onnx(_model(nodes, {"w": W, "b": B}), "m.onnx")
    msg = str(e.value)
    assert (
        "m.onnx" in msg
        and "sig (Softsign)" in msg
        and "HardSwish_1 (HardSwish)" in msg
        and "supported: " in msg
    )


def test_no_parameters():
    with pytest.raises(PoetcError, match="no trainable parameters"):
        frontend.from_onnx(_model([helper.make_node("Relu", ["x"], ["y"])], {}, out_shape=(4, 6)), "m.onnx")


def test_no_output():
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
        [],
    )
    with pytest.raises(PoetcError, match="no output"):
        frontend.from_onnx(helper.make_model(g), "m.onnx")


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(PoetcError, match="no such file, and not a zoo model"):
        frontend.load(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not protobuf \xff\xff\xff")
    with pytest.raises(PoetcError, match=r"bad\.onnx"):
        frontend.load(bad)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(PoetcError, match=r"empty\.onnx"):
        frontend.load(empty)


def test_symbolic_batch_needs_batch(tmp_path: Path):
    m = _model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], {"w": W, "b": B}, in_shape=("N", 6)
    )
    p = tmp_path / "m.onnx"
    onnx.save(m, str(p))
    with pytest.raises(PoetcError, match=r"symbolic dimension 0.*--batch"):
        frontend.load(p)
    assert frontend.load(p, batch=5).graph.tensor("x").shape == (5, 6)


def test_weight_shape_mismatch_names_node():
    bad = np.ones((3, 5), np.float32)
    with pytest.raises(PoetcError, match=r"node g \(Gemm\)"):
        frontend.from_onnx(
            _model(
                [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="g")], {"w": bad, "b": B}
            ),
            "m.onnx",
        )


def test_export_roundtrip(tmp_path: Path):
    m = frontend.load("digits-mlp")
    new = {k: v + 1.0 for k, v in m.params.items()}
    p = tmp_path / "out.onnx"
    frontend.export_onnx(m, new, p)
    back = frontend.load(p, batch=32)
    for k in new:
        np.testing.assert_array_equal(back.params[k], new[k])
