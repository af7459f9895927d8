"""ONNX import: an ONNX model (file or zoo name) -> forward ``Graph`` + initial parameter and state values.

What becomes what:
- Float initializers read as a layer's weight (Conv, Gemm, MatMul, BatchNormalization scale/bias,
  LayerNormalization) or as a non-scalar operand of elementwise arithmetic become trainable parameters and keep
  their ONNX names (so trained weights can be written back). BatchNormalization's running mean and variance
  become state tensors (updated in place by each training step, written back by ``poetc export``).
- Everything computable at compile time is folded (``constfold``): Constant nodes, integer initializers,
  scalar float initializers, and shape arithmetic (Shape, Gather, Unsqueeze, Concat, ... on constants).
- Flatten / Reshape feeding only Gemm, Identity, Cast to float and inference-mode Dropout are aliases (no node):
  the linear kernel views its input as rows of the weight's input size. Other reshapes are copies.
- Patterns fused on import: MatMul + Add of a bias vector -> one linear layer; PyTorch's exact GELU
  (Div by sqrt 2, Erf, Add 1, Mul x, Mul 0.5, in either order of the two Muls) -> one gelu op; MatMul with
  Transpose(weight) -> linear with a transposed weight.
- BatchNormalization always trains with batch statistics (whatever its training_mode says: poetc compiles
  training) and infers with the running ones: its statistics node reads the model's training flag.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import PoetcError
from ..graph import ops
from ..graph.ir import TRAIN_FLAG, Attrs, Graph, Model, Node, Role, Tensor
from ..graph.ops.act import FLT_MAX
from ..graph.ops.base import broadcast_shape
from ..graph.ops.layout import MAX_CONCAT
from . import constfold

# ops that become device nodes (or aliases)
LAYER_OPS = frozenset(
    {
        "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Conv", "Div", "Dropout", "Erf",
        "Expand", "Flatten", "Gather", "Gemm", "GlobalAveragePool", "Identity", "LayerNormalization", "MatMul",
        "MaxPool", "Mul", "Neg", "Pow", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Sigmoid", "Slice",
        "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze", "Gelu",
        "SplitToSequence", "SequenceAt",
    }
)  # fmt: skip
SUPPORTED_OPS = tuple(sorted(LAYER_OPS | constfold.FOLDABLE))
# outputs of these ops beyond the first are not computed (training-mode statistics, pooling indices)
_EXTRA_OUTPUTS_IGNORED = {"BatchNormalization", "MaxPool", "LayerNormalization", "Dropout"}


def load(source: str | Path, batch: int | None = None) -> Model:
    """Load a model from an ONNX file or a zoo name."""
    from . import zoo

    src = str(source)
    if src in zoo.NAMES:
        proto = zoo.build(src)
        return from_onnx(proto, f"zoo:{src}", batch if batch is not None else zoo.default_batch(src))
    path = Path(src)
    if not path.exists():
        raise PoetcError(f"{src}: no such file, and not a zoo model (zoo: {', '.join(zoo.NAMES)})")
    if not path.is_file() or not os.access(path, os.R_OK):
        raise PoetcError(f"{src}: cannot read (not a readable file)")
    try:
        proto = onnx.load(str(path))  # also loads external data files (PyTorch's dynamo exporter writes them)
    except OSError as e:
        raise PoetcError(f"{src}: cannot read: {e}") from None
    except Exception as e:  # protobuf raises DecodeError and friends
        raise PoetcError(f"{src}: not a valid ONNX model ({type(e).__name__}: {e})") from None
    if not proto.graph.node:
        raise PoetcError(f"{src}: the ONNX graph has no nodes")
    return from_onnx(proto, src, batch)


def from_onnx(proto: onnx.ModelProto, source: str, batch: int | None = None) -> Model:
    return _Importer(proto, source, batch).run()


class _Importer:
    def __init__(self, proto: onnx.ModelProto, source: str, batch: int | None) -> None:
        self.proto = proto
        self.src = source
        self.batch = batch
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
        g = proto.graph
        self.inits: dict[str, np.ndarray] = {}
        for t in g.initializer:
            try:
                self.inits[t.name] = numpy_helper.to_array(t)
            except Exception as e:
                raise PoetcError(f"{source}: initializer {t.name!r} cannot be read: {e}") from None
            v = self.inits[t.name]
            if v.dtype.kind == "f" and not np.all(np.isfinite(v.astype(np.float32))):
                bad = np.argwhere(~np.isfinite(v.astype(np.float32)))[0]
                raise PoetcError(
                    f"{source}: initializer {t.name!r} holds {int((~np.isfinite(v.astype(np.float32))).sum())} NaN "
                    f"or infinite values (as float32), the first at {list(map(int, bad))}"
                )
        # compile-time constants: integer initializers and scalar float ones (weights are the rest)
        self.known: dict[str, np.ndarray] = {
            k: v
            for k, v in self.inits.items()
            if v.dtype.kind in "iub" or (v.dtype.kind == "f" and v.size == 1)
        }
        self.alias: dict[str, str] = {}
        self.wview: dict[str, tuple[str, tuple[int, ...]]] = {}  # Transpose(weight) not yet materialised
        self.dead: dict[str, str] = {}  # outputs that are not computed -> why
        self.tensors: dict[str, Tensor] = {}
        self.nodes: list[Node] = []
        self.params: dict[str, np.ndarray] = {}
        self.state: dict[str, np.ndarray] = {}
        self.names: set[str] = set()
        self.flag: str | None = None
        self.notes: list[str] = []  # said to the user when the model loads (a folded final Softmax)
        self.folded: set[int] = set()  # ONNX nodes left out: a final Softmax / LogSoftmax (the loss has it)
        self.seqs: dict[
            str, tuple[str, int, list[int], bool]
        ] = {}  # SplitToSequence: source, axis, sizes, squeeze
        self.onnx_nodes = list(g.node)
        self.users = _users(self.onnx_nodes)
        self.graph_outputs = {o.name for o in g.output}

    def err(self, msg: str) -> PoetcError:
        return PoetcError(f"{self.src}: {msg}")

    # ------------------------------------------------------------------------------------------------
    def run(self) -> Model:
        g = self.proto.graph
        data_inputs = [i for i in g.input if i.name not in self.inits]
        if len(data_inputs) != 1:
            names = ", ".join(i.name for i in data_inputs) or "none"
            raise self.err(f"expected exactly one data input, found {len(data_inputs)} ({names})")
        if not g.output:
            raise self.err("the graph has no output")
        if len(g.output) != 1:
            raise self.err(
                f"expected one output (the logits), found {len(g.output)}: "
                + ", ".join(o.name for o in g.output)
            )
        self.folded = self._fold_final_softmax()
        self._check_supported()
        inp = data_inputs[0]
        self.tensors[inp.name] = Tensor(inp.name, self._input_shape(inp), Role.INPUT)
        self.input = inp.name

        fused, skip = self._fusions()
        skip |= self.folded
        for i, n in enumerate(self.onnx_nodes):
            if i in skip:
                continue
            try:
                if i in fused:
                    fused[i]()
                else:
                    self._convert(n, i)
            except PoetcError:
                raise
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise self.err(f"node {_label(n, i)} ({n.op_type}): {e}") from None

        out = self._name(g.output[0].name)
        if out not in self.tensors or self.tensors[out].role != Role.ACTIVATION:
            raise self.err(f"output {g.output[0].name!r} is not computed from the input by a layer")
        if not self.params:
            raise self.err("the model has no trainable parameters (no float initializer is used as a weight)")
        graph = Graph(
            name=self.proto.graph.name or "model",
            tensors=self.tensors,
            nodes=tuple(self.nodes),
            inputs=(self.input,),
            outputs=(out,),
        )
        sha = hashlib.sha256(self.proto.SerializeToString()).hexdigest()
        return Model(
            graph,
            self.params,
            self.proto,
            self.src,
            sha,
            self.input,
            out,
            self.state,
            self.flag,
            tuple(self.notes),
        )

    def _fold_final_softmax(self) -> set[int]:
        """A model whose output is a Softmax or LogSoftmax over the classes already ends in what the loss
        computes (softmax cross-entropy on logits): training through it would apply softmax twice (flat
        gradients, poorer accuracy). The node is left out of the training graph, its input taken as the logits,
        with a note; inference's argmax is the same, and an exported model keeps the node."""
        out = self.proto.graph.output[0].name
        i = next((k for k, n in enumerate(self.onnx_nodes) if out in n.output), None)
        if i is None or self.onnx_nodes[i].op_type not in ("Softmax", "LogSoftmax"):
            return set()
        n = self.onnx_nodes[i]
        axis = next((int(onnx.helper.get_attribute_value(x)) for x in n.attribute if x.name == "axis"), None)
        if axis is None:
            axis = -1 if self.opset >= 13 else 1
        rank = len(self.proto.graph.output[0].type.tensor_type.shape.dim) or 2
        if (axis + rank if axis < 0 else axis) != rank - 1 or len(self.users.get(n.input[0], ())) != 1:
            return set()
        self.alias[out] = n.input[0]
        self.notes.append(
            f"the model ends in {n.op_type} ({_label(n, i)}); training uses softmax cross-entropy on its input "
            f"(the logits), so the {n.op_type} is folded into the loss rather than applied twice"
        )
        return {i}

    def _check_supported(self) -> None:
        bad = [
            f"{_label(n, i)} ({n.op_type})"
            for i, n in enumerate(self.proto.graph.node)
            if (n.op_type not in SUPPORTED_OPS or n.domain not in ("", "ai.onnx")) and i not in self.folded
        ]
        if bad:
            raise self.err(
                f"unsupported op(s) at node(s) {', '.join(bad)}; supported: {', '.join(SUPPORTED_OPS)}"
            )

    def _input_shape(self, vi: onnx.ValueInfoProto) -> tuple[int, ...]:
        tt = vi.type.tensor_type
        if tt.elem_type != onnx.TensorProto.FLOAT:
            raise self.err(f"input {vi.name!r} must be float32 (elem_type {tt.elem_type})")
        if not tt.HasField("shape") or not tt.shape.dim:
            raise self.err(f"input {vi.name!r} has no shape")
        dims: list[int] = []
        for k, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif k == 0 and self.batch is not None:
                dims.append(self.batch)
            else:
                what = d.dim_param or "?"
                hint = "; pass --batch" if k == 0 else ""
                raise self.err(f"input {vi.name!r} has a symbolic dimension {k} ({what}){hint}")
        if self.batch is not None:
            dims[0] = self.batch
        return tuple(dims)

    # ---- fusions found before conversion ---------------------------------------------------------------
    def _single_user(self, name: str) -> int | None:
        us = self.users.get(name, [])
        if len(us) != 1 or name in self.graph_outputs:
            return None
        return us[0]

    def _scalar(self, name: str) -> float | None:
        v = self.known.get(name)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 and v.dtype.kind == "f" else None

    def _fusions(self) -> tuple[dict[int, Any], set[int]]:
        nodes = self.onnx_nodes
        fused: dict[int, Any] = {}
        skip: set[int] = set()
        for i, n in enumerate(nodes):
            # MatMul followed by Add of a parameter vector becomes one linear layer with a bias
            if n.op_type == "MatMul" and (j := self._single_user(n.output[0])) is not None:
                m = nodes[j]
                other = [x for x in m.input if x != n.output[0]]
                if (
                    m.op_type == "Add"
                    and len(other) == 1
                    and other[0] in self.inits
                    and other[0] not in self.known
                    and self.inits[other[0]].ndim == 1
                ):
                    fused[i] = lambda n=n, i=i, m=m, b=other[0]: self._matmul(n, _label(n, i), (m, b))
                    skip.add(j)
            # PyTorch's exact GELU: x * 0.5 * (1 + erf(x / sqrt 2))
            if n.op_type == "Erf":
                chain = self._gelu_chain(i)
                if chain is not None:
                    first, rest, x, out = chain
                    fused[first] = lambda x=x, out=out, first=first: self._gelu(x, out, first)
                    skip.update(rest)
        return fused, skip

    def _gelu_chain(self, e: int) -> tuple[int, list[int], str, str] | None:
        nodes = self.onnx_nodes
        prod = _producers(nodes)
        erf = nodes[e]
        d = prod.get(erf.input[0])
        if d is None or self._single_user(erf.input[0]) != e:
            return None
        dn = nodes[d]
        if dn.op_type == "Div" and _close(self._scalar(dn.input[1]), math.sqrt(2.0)):
            x = dn.input[0]
        elif dn.op_type == "Mul" and _close(self._scalar(dn.input[1]), 1 / math.sqrt(2.0)):
            x = dn.input[0]
        elif dn.op_type == "Mul" and _close(self._scalar(dn.input[0]), 1 / math.sqrt(2.0)):
            x = dn.input[1]
        else:
            return None
        a = self._single_user(erf.output[0])
        if a is None or nodes[a].op_type != "Add":
            return None
        one = [v for v in nodes[a].input if v != erf.output[0]]
        if len(one) != 1 or not _close(self._scalar(one[0]), 1.0):
            return None
        m1 = self._single_user(nodes[a].output[0])
        if m1 is None or nodes[m1].op_type != "Mul":
            return None
        other = [v for v in nodes[m1].input if v != nodes[a].output[0]]
        if len(other) != 1:
            return None
        m2 = self._single_user(nodes[m1].output[0])
        if m2 is None or nodes[m2].op_type != "Mul":
            return None
        last = [v for v in nodes[m2].input if v != nodes[m1].output[0]]
        if len(last) != 1:
            return None
        if other[0] == x and _close(self._scalar(last[0]), 0.5):
            pass  # (x * (1 + erf)) * 0.5
        elif _close(self._scalar(other[0]), 0.5) and last[0] == x:
            pass  # x * (0.5 * (1 + erf))
        else:
            return None
        return d, [e, a, m1, m2], x, nodes[m2].output[0]

    def _gelu(self, x: str, out: str, i: int) -> None:
        self._emit("gelu", (self._act(x, f"gelu@{i}"),), out, Attrs(), self._where_of(i))

    def _where_of(self, i: int) -> str:
        return _label(self.onnx_nodes[i], i)

    # ---- operands -------------------------------------------------------------------------------------
    def _name(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def _param(self, name: str, where: str) -> str:
        name = self._name(name)
        if name in self.tensors and self.tensors[name].role == Role.PARAM:
            return name
        if name not in self.inits or self.inits[name].dtype.kind != "f":
            raise self.err(f"node {where}: {name!r} must be a float initializer (a trainable weight)")
        if name in self.state:
            raise self.err(f"node {where}: {name!r} is a BatchNorm running statistic, not a weight")
        arr = self.inits[name].astype(np.float32)
        self.tensors[name] = Tensor(name, tuple(int(d) for d in arr.shape), Role.PARAM)
        self.params[name] = arr
        return name

    def _state(self, name: str, channels: int, where: str) -> str:
        if name not in self.inits or self.inits[name].dtype.kind != "f" or self.inits[name].size != channels:
            raise self.err(
                f"node {where}: running statistic {name!r} must be a float initializer of {channels}"
            )
        if name in self.tensors:
            raise self.err(f"node {where}: running statistic {name!r} is used twice")
        arr = self.inits[name].astype(np.float32)
        self.tensors[name] = Tensor(name, tuple(int(d) for d in arr.shape), Role.STATE)
        self.state[name] = arr
        return name

    def _act(self, name: str, where: str) -> str:
        name = self._name(name)
        if name in self.dead:
            raise self.err(f"node {where}: input {name!r} is not computed ({self.dead[name]})")
        if name in self.wview:
            return self._materialise(name, where)
        if name not in self.tensors or self.tensors[name].role not in (Role.INPUT, Role.ACTIVATION):
            raise self.err(f"node {where}: input {name!r} is not an activation computed from the data input")
        return name

    def _operand(self, name: str, where: str) -> tuple[str, Any]:
        """('const', array) | ('act', tensor) | ('param', tensor) for an input of elementwise arithmetic."""
        name = self._name(name)
        if name in self.known:
            return "const", self.known[name]
        if name in self.wview:
            return "act", self._materialise(name, where)
        if name in self.tensors and self.tensors[name].role == Role.PARAM:
            return "param", name
        if name in self.inits and self.inits[name].dtype.kind == "f":
            return "param", self._param(name, where)
        return "act", self._act(name, where)

    def _materialise(self, name: str, where: str) -> str:
        w, perm = self.wview.pop(name)
        self._emit("transpose", (self._param(w, where),), name, Attrs(perm=perm), where)
        return name

    def _shape(self, name: str) -> tuple[int, ...]:
        name = self._name(name)
        if name in self.known:
            return tuple(self.known[name].shape)
        if name in self.wview:
            w, perm = self.wview[name]
            return tuple(self.inits[w].shape[p] for p in perm)
        if name in self.tensors:
            return self.tensors[name].shape
        if name in self.inits:
            return tuple(self.inits[name].shape)
        raise KeyError(f"unknown tensor {name!r}")

    def _const(self, name: str, where: str, what: str) -> np.ndarray:
        v = self.known.get(self._name(name))
        if v is None:
            raise self.err(f"node {where}: {what} ({name!r}) must be a constant")
        return v

    def _tmp(self, base: str) -> str:
        name, k = base, 1
        while name in self.tensors or name in self.known:
            k += 1
            name = f"{base}~{k}"
        return name

    def _emit(self, op: str, inputs: tuple[str, ...], output: str, attrs: Attrs, where: str) -> str:
        opdef = ops.get(op)
        shape, dtype = opdef.infer(attrs, [self.tensors[i] for i in inputs])
        node_name = where if where not in self.names else f"{where}#{len(self.nodes)}"
        self.names.add(node_name)
        self.tensors[output] = Tensor(output, tuple(int(d) for d in shape), Role.ACTIVATION, dtype)
        self.nodes.append(Node(node_name, op, inputs, output, attrs, origin=where))
        return output

    def _train_flag(self) -> str:
        if self.flag is None:
            self.flag = TRAIN_FLAG
            self.tensors[TRAIN_FLAG] = Tensor(TRAIN_FLAG, (1,), Role.INPUT)
        return self.flag

    def _all_users_gemm_a(self, name: str) -> bool:
        """Every reader is a Gemm reading it as A (untransposed) with a weight, directly or through Identity:
        then a flattening view is free (the linear kernel views its input as rows)."""
        if name in self.graph_outputs:
            return False
        us = self.users.get(name, [])
        for j in us:
            u = self.onnx_nodes[j]
            if u.op_type == "Identity":
                if not self._all_users_gemm_a(u.output[0]):
                    return False
                continue
            if u.op_type != "Gemm" or u.input[0] != name or name in u.input[1:]:
                return False
            if any(a.name == "transA" and a.i for a in u.attribute):
                return False
            if u.input[1] not in self.inits:
                return False
        return bool(us)

    # ---- conversion ----------------------------------------------------------------------------------
    def _convert(self, n: onnx.NodeProto, i: int) -> None:
        where = _label(n, i)
        a = {at.name: onnx.helper.get_attribute_value(at) for at in n.attribute}
        op = n.op_type
        if op in _EXTRA_OUTPUTS_IGNORED:
            for extra in n.output[1:]:
                if extra:
                    self.dead[extra] = f"output of {where} ({op}) that poetc does not compute"
        if op == "Constant":
            self.known[n.output[0]] = self._constant(a, where)
            return
        if (
            op == "CastLike"
            and self._name(n.input[0]) in self.known
            and self._name(n.input[1]) not in self.known
        ):
            # the dynamo exporter casts constants "like" an activation: activations are float32
            self.known[n.output[0]] = self.known[self._name(n.input[0])].astype(np.float32)
            return
        if op == "Shape" and self._name(n.input[0]) not in self.known:
            self.known[n.output[0]] = constfold.shape_of(self._shape(n.input[0]), a)
            return
        if op in constfold.FOLDABLE and all((not x) or self._name(x) in self.known for x in n.input):
            ins = [self.known[self._name(x)] if x else None for x in n.input]
            try:
                outs = constfold.fold(op, a, ins)
            except constfold.NotFoldable:
                outs = None
            if outs is not None:
                for name, v in zip(n.output, outs, strict=False):
                    self.known[name] = v
                return
        conv = getattr(self, f"_op_{op}", None)
        if conv is None:
            if op in constfold.FOLDABLE:
                raise self.err(f"node {where}: {op} is only supported on compile-time constants")
            raise self.err(f"node {where}: unsupported op {op}")
        conv(n, a, where)

    def _constant(self, a: dict[str, Any], where: str) -> np.ndarray:
        if "value" in a:
            return numpy_helper.to_array(a["value"])
        for k, dt in (("value_float", np.float32), ("value_int", np.int64)):
            if k in a:
                return np.array(a[k], dt)
        for k, dt in (("value_floats", np.float32), ("value_ints", np.int64)):
            if k in a:
                return np.array(list(a[k]), dt)
        raise self.err(f"node {where}: unsupported Constant (no value, value_float(s) or value_int(s))")

    # aliases
    def _op_Identity(self, n, a, where):
        if self._name(n.input[0]) in self.wview:
            self.wview[n.output[0]] = self.wview[self._name(n.input[0])]
            return
        self.alias[n.output[0]] = self._act(n.input[0], where)

    def _op_Cast(self, n, a, where):
        if a.get("to") not in (onnx.TensorProto.FLOAT, None):
            raise self.err(
                f"node {where}: Cast of an activation to {a.get('to')} (only float32 is supported)"
            )
        self.alias[n.output[0]] = self._act(n.input[0], where)

    def _op_Dropout(self, n, a, where):
        ratio = float(self._const(n.input[1], where, "ratio")) if len(n.input) > 1 and n.input[1] else 0.5
        ratio = float(a.get("ratio", ratio))
        training = len(n.input) > 2 and n.input[2] and bool(self._const(n.input[2], where, "training_mode"))
        if training and ratio > 0.0:
            raise self.err(
                f"node {where}: Dropout with ratio {ratio:g} in training mode is not supported "
                "(export with dropout p=0 or in eval mode)"
            )
        self.alias[n.output[0]] = self._act(n.input[0], where)

    def _reshape_to(self, n: onnx.NodeProto, src: str, shape: tuple[int, ...], where: str) -> None:
        if self._all_users_gemm_a(n.output[0]) and len(shape) == 2 and shape[0] == self._shape(src)[0]:
            self.alias[n.output[0]] = src
            return
        if self._shape(src) == shape:
            self.alias[n.output[0]] = src
            return
        self._emit("reshape", (src,), n.output[0], Attrs(shape=shape), where)

    def _op_Flatten(self, n, a, where):
        src = self._act(n.input[0], where)
        shape = self._shape(src)
        ax = a.get("axis", 1)
        ax = ax + len(shape) if ax < 0 else ax
        self._reshape_to(n, src, (int(np.prod(shape[:ax])), int(np.prod(shape[ax:]))), where)

    def _op_Reshape(self, n, a, where):
        src = self._act(n.input[0], where)
        target = [int(v) for v in self._const(n.input[1], where, "the shape").reshape(-1)]
        shape = constfold.resolve_reshape(self._shape(src), target, bool(a.get("allowzero", 0)))
        self._reshape_to(n, src, shape, where)

    def _op_Squeeze(self, n, a, where):
        src = self._act(n.input[0], where)
        shape = self._shape(src)
        ax = self._axes(n, a, 1, len(shape), where)
        if ax is None:
            ax = [k for k, d in enumerate(shape) if d == 1]
        self._reshape_to(n, src, tuple(d for k, d in enumerate(shape) if k not in ax), where)

    def _op_Unsqueeze(self, n, a, where):
        src = self._act(n.input[0], where)
        shape = list(self._shape(src))
        raw = self._axes(n, a, 1, 0, where) or []
        rank = len(shape) + len(raw)
        for ax in sorted(v + rank if v < 0 else v for v in raw):
            shape.insert(ax, 1)
        self._reshape_to(n, src, tuple(shape), where)

    def _axes(self, n, a, k: int, rank: int, where: str) -> list[int] | None:
        if len(n.input) > k and n.input[k]:
            raw = [int(v) for v in self._const(n.input[k], where, "axes").reshape(-1)]
        elif "axes" in a:
            raw = [int(v) for v in a["axes"]]
        else:
            return None
        return [v + rank if v < 0 and rank else v for v in raw]

    # layers with weights
    def _op_Conv(self, n, a, where):
        x = self._act(n.input[0], where)
        w = self._param(n.input[1], where)
        xs, ws = self._shape(x), self.tensors[w].shape
        if len(xs) != 4:
            raise self.err(f"node {where}: only 2-D convolution (NCHW input) is supported, input is {xs}")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise self.err(f"node {where}: Conv with dilations {a['dilations']} is not supported (only 1)")
        strides = tuple(a.get("strides", [1, 1]))
        pads = self._pads(a, xs[2:], ws[2:], strides, where)
        attrs = Attrs(strides=strides, pads=pads, groups=int(a.get("group", 1)))
        ins = (x, w, *self._bias(n, 2, where))
        self._emit("conv2d", ins, n.output[0], attrs, where)

    def _bias(self, n: onnx.NodeProto, k: int, where: str) -> tuple[str, ...]:
        """The optional bias input k: a parameter, or nothing (absent, or a constant zero tensor, which the
        dynamo exporter writes for bias=False)."""
        if len(n.input) <= k or not n.input[k]:
            return ()
        v = self.known.get(self._name(n.input[k]))
        if v is not None:
            if np.any(v != 0):
                raise self.err(f"node {where}: a constant non-zero bias is not supported (only a weight)")
            return ()
        return (self._param(n.input[k], where),)

    def _pads(self, a, hw, k, strides, where) -> tuple[int, int, int, int]:
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("NOTSET", ""):
            p = list(a.get("pads", [0, 0, 0, 0]))
            if len(p) != 4:
                raise self.err(f"node {where}: pads {p} (expected 4 values for 2-D)")
            return (int(p[0]), int(p[1]), int(p[2]), int(p[3]))
        if auto == "VALID":
            return (0, 0, 0, 0)
        out = []
        for d, kk, s in zip(hw, k, strides, strict=True):
            total = max((math.ceil(d / s) - 1) * s + kk - d, 0)
            small = total // 2
            out.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
        return (out[0][0], out[1][0], out[0][1], out[1][1])

    def _op_BatchNormalization(self, n, a, where):
        x = self._act(n.input[0], where)
        xs = self._shape(x)
        if len(xs) < 2:
            raise self.err(f"node {where}: BatchNormalization of a {len(xs)}-D input")
        c = xs[1]
        if xs[0] * int(np.prod(xs[2:])) < 2:
            raise self.err(
                f"node {where}: BatchNormalization in training needs more than one value per channel "
                f"(input {list(xs)}); use a larger batch"
            )
        gamma, beta = self._param(n.input[1], where), self._param(n.input[2], where)
        rm, rv = self._state(n.input[3], c, where), self._state(n.input[4], c, where)
        # ONNX keeps `momentum` of the old value, PyTorch's momentum is the rest; the shortest decimal of the
        # float32 attribute (0.9, not 0.899999976) gives back PyTorch's 0.1 exactly
        mom = 1.0 - float(str(np.float32(a.get("momentum", 0.9))))
        attrs = Attrs(eps=float(a.get("epsilon", 1e-5)), momentum=mom)
        stats = self._emit(
            "bn_stats", (x, rm, rv, self._train_flag()), self._tmp(f"{n.output[0]}:stats"), attrs, where
        )
        self._emit("bn_apply", (x, stats, gamma, beta), n.output[0], attrs, where)

    def _op_LayerNormalization(self, n, a, where):
        x = self._act(n.input[0], where)
        rank = len(self._shape(x))
        ax = int(a.get("axis", -1))
        ax = ax + rank if ax < 0 else ax
        ins = (x, self._param(n.input[1], where))
        if len(n.input) > 2 and n.input[2]:
            ins += (self._param(n.input[2], where),)
        self._emit("layernorm", ins, n.output[0], Attrs(axis=ax, eps=float(a.get("epsilon", 1e-5))), where)

    def _op_Gemm(self, n, a, where):
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        ta, tb = bool(a.get("transA", 0)), bool(a.get("transB", 0))
        x = self._act(n.input[0], where)
        if ta:
            x = self._emit("transpose", (x,), self._tmp(f"{n.output[0]}:A^T"), Attrs(perm=(1, 0)), where)
        has_c = bool(self._bias(n, 2, where))
        bname = self._name(n.input[1])
        if bname in self.wview and self.wview[bname][1] == (1, 0):
            w, tb = self._param(self.wview.pop(bname)[0], where), not tb
        elif bname in self.inits and bname not in self.known:
            w = self._param(bname, where)
        else:
            w = None
        if w is not None:
            ins = (x, w) + ((self._param(n.input[2], where),) if has_c else ())
            attrs = Attrs(trans_w=tb, alpha=alpha, beta=beta, flatten=True)
            self._emit("linear", ins, n.output[0], attrs, where)
            return
        b = self._act(bname, where)
        y = n.output[0] if not has_c else self._tmp(f"{n.output[0]}:AB")
        self._emit("matmul", (x, b), y, Attrs(ta=False, tb=tb, alpha=alpha), where)
        if has_c:
            if beta != 1.0:
                raise self.err(f"node {where}: Gemm of two activations with beta != 1 is not supported")
            self._binary("add", y, n.input[2], n.output[0], where)

    def _op_MatMul(self, n, a, where):
        self._matmul(n, where, None)

    def _matmul(self, n: onnx.NodeProto, where: str, bias: tuple[onnx.NodeProto, str] | None) -> None:
        out = bias[0].output[0] if bias else n.output[0]
        bname = self._name(n.input[1])
        w = None
        trans = False
        if bname in self.wview and self.wview[bname][1] == (1, 0):
            w, trans = self._param(self.wview.pop(bname)[0], where), True
        elif bname in self.inits and bname not in self.known and self.inits[bname].ndim == 2:
            w = self._param(bname, where)
        if w is not None:
            x = self._act(n.input[0], where)
            if len(self._shape(x)) < 2:
                raise self.err(f"node {where}: MatMul of a 1-D input is not supported")
            attrs = Attrs(trans_w=trans, alpha=1.0, beta=1.0, flatten=False)
            ins = (x, w) + ((self._param(bias[1], where),) if bias else ())
            self._emit("linear", ins, out, attrs, where)
            return
        kinds = [self._operand(v, where) for v in n.input[:2]]
        if any(k == "const" for k, _ in kinds):
            raise self.err(f"node {where}: MatMul with a constant operand is not supported")
        A, B = (v for _, v in kinds)
        y = self._tmp(f"{out}:mm") if bias else out
        self._emit("matmul", (A, B), y, Attrs(ta=False, tb=False, alpha=1.0), where)
        if bias:
            self._binary("add", y, bias[1], out, where)

    # elementwise
    def _unary(self, op: str, n, where, **attrs) -> None:
        self._emit(op, (self._act(n.input[0], where),), n.output[0], Attrs(attrs), where)

    def _op_Relu(self, n, a, where):
        self._unary("relu", n, where)

    def _op_Sigmoid(self, n, a, where):
        self._unary("sigmoid", n, where)

    def _op_Tanh(self, n, a, where):
        self._unary("tanh", n, where)

    def _op_Erf(self, n, a, where):
        self._unary("erf", n, where)

    def _op_Sqrt(self, n, a, where):
        self._unary("sqrt", n, where)

    def _op_Neg(self, n, a, where):
        self._unary("affine", n, where, a=-1.0, b=0.0)

    def _op_Gelu(self, n, a, where):
        approx = a.get("approximate", b"none")
        approx = approx.decode() if isinstance(approx, bytes) else approx
        if approx != "none":
            raise self.err(
                f"node {where}: Gelu with approximate={approx!r} is not supported (only the exact one)"
            )
        self._unary("gelu", n, where)

    def _op_Clip(self, n, a, where):
        lo, hi = float(a.get("min", -FLT_MAX)), float(a.get("max", FLT_MAX))
        if len(n.input) > 1 and n.input[1]:
            lo = float(self._const(n.input[1], where, "min"))
        if len(n.input) > 2 and n.input[2]:
            hi = float(self._const(n.input[2], where, "max"))
        self._unary("clip", n, where, a=max(lo, -FLT_MAX), b=min(hi, FLT_MAX))

    def _op_Pow(self, n, a, where):
        e = self._const(n.input[1], where, "the exponent")
        if e.size != 1:
            raise self.err(f"node {where}: Pow with a non-scalar exponent is not supported")
        self._unary("pow", n, where, a=float(e.reshape(-1)[0]))

    def _op_Add(self, n, a, where):
        self._binary("add", n.input[0], n.input[1], n.output[0], where)

    def _op_Sub(self, n, a, where):
        self._binary("sub", n.input[0], n.input[1], n.output[0], where)

    def _op_Mul(self, n, a, where):
        self._binary("mul", n.input[0], n.input[1], n.output[0], where)

    def _op_Div(self, n, a, where):
        self._binary("div", n.input[0], n.input[1], n.output[0], where)

    def _binary(self, op: str, x: str, y: str, out: str, where: str) -> None:
        (kx, vx), (ky, vy) = self._operand(x, where), self._operand(y, where)
        for kind, val, other in ((kx, vx, ky), (ky, vy, kx)):
            if kind == "const" and np.asarray(val).size != 1 and other != "const":
                raise self.err(
                    f"node {where}: {op} with a constant non-scalar tensor of shape {list(np.shape(val))} "
                    "is not supported"
                )
        if kx == "const" or ky == "const":
            first = kx != "const"
            act, c = (
                (vx, float(np.asarray(vy).reshape(-1)[0]))
                if first
                else (vy, float(np.asarray(vx).reshape(-1)[0]))
            )
            if op == "add":
                ab = (1.0, c)
            elif op == "sub":
                ab = (1.0, -c) if first else (-1.0, c)
            elif op == "mul":
                ab = (c, 0.0)
            elif first:
                ab = (1.0 / c, 0.0)
            else:
                raise self.err(f"node {where}: division of a constant by an activation is not supported")
            if ab == (1.0, 0.0):
                self.alias[out] = act
                return
            self._emit("affine", (act,), out, Attrs(a=ab[0], b=ab[1]), where)
            return
        if op == "add" and self._shape(vx) == self._shape(vy) and kx == ky == "act":
            self._emit("add", (vx, vy), out, Attrs(), where)
            return
        self._emit("binary", (vx, vy), out, Attrs(op=op), where)

    # reductions, pooling, softmax
    def _op_ReduceMean(self, n, a, where):
        self._reduce(n, a, where, mean=True)

    def _op_ReduceSum(self, n, a, where):
        self._reduce(n, a, where, mean=False)

    def _reduce(self, n, a, where, mean: bool) -> None:
        x = self._act(n.input[0], where)
        shape = self._shape(x)
        ax = self._axes(n, a, 1, len(shape), where)
        if not ax:
            if a.get("noop_with_empty_axes", 0):
                self.alias[n.output[0]] = x
                return
            ax = list(range(len(shape)))
        keep = tuple(1 if k in ax else d for k, d in enumerate(shape))
        y = keep if a.get("keepdims", 1) else tuple(d for k, d in enumerate(shape) if k not in ax)
        count = int(np.prod([shape[k] for k in ax]))
        attrs = Attrs(mode="sum", scale=1.0 / count if mean else 1.0, out_shape=keep, y_shape=y)
        self._emit("reduce", (x,), n.output[0], attrs, where)

    def _pool(self, op: str, n, a, where) -> None:
        x = self._act(n.input[0], where)
        xs = self._shape(x)
        if len(xs) != 4:
            raise self.err(f"node {where}: only 2-D pooling (NCHW input) is supported, input is {xs}")
        if a.get("ceil_mode", 0):
            raise self.err(f"node {where}: pooling with ceil_mode=1 is not supported")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise self.err(f"node {where}: pooling with dilations {a['dilations']} is not supported")
        if a.get("storage_order", 0):
            raise self.err(f"node {where}: MaxPool with storage_order=1 is not supported")
        k = tuple(a["kernel_shape"])
        strides = tuple(a.get("strides", [1, 1]))
        attrs = Attrs(
            kernel=k,
            strides=strides,
            pads=self._pads(a, xs[2:], k, strides, where),
            count_include_pad=bool(a.get("count_include_pad", 0)),
        )
        self._emit(op, (x,), n.output[0], attrs, where)

    def _op_MaxPool(self, n, a, where):
        self._pool("maxpool", n, a, where)

    def _op_AveragePool(self, n, a, where):
        self._pool("avgpool", n, a, where)

    def _op_GlobalAveragePool(self, n, a, where):
        x = self._act(n.input[0], where)
        xs = self._shape(x)
        if len(xs) != 4:
            raise self.err(f"node {where}: only 2-D pooling (NCHW input) is supported, input is {xs}")
        attrs = Attrs(kernel=(xs[2], xs[3]), strides=(1, 1), pads=(0, 0, 0, 0), count_include_pad=True)
        self._emit("avgpool", (x,), n.output[0], attrs, where)

    def _op_Softmax(self, n, a, where):
        x = self._act(n.input[0], where)
        rank = len(self._shape(x))
        ax = int(a.get("axis", -1 if self.opset >= 13 else 1))
        ax = ax + rank if ax < 0 else ax
        coerce = self.opset < 13 and ax != rank - 1
        self._emit("softmax", (x,), n.output[0], Attrs(axis=ax, coerce_2d=coerce), where)

    # data movement
    def _op_Transpose(self, n, a, where):
        src = self._name(n.input[0])
        rank = len(self._shape(src))
        perm = tuple(int(p) for p in a.get("perm", list(range(rank))[::-1]))
        if src in self.inits and src not in self.known and src not in self.tensors:
            self.wview[n.output[0]] = (src, perm)  # a transposed weight: a layer may read it directly
            return
        if src in self.wview:
            w, p0 = self.wview[src]
            self.wview[n.output[0]] = (w, tuple(p0[p] for p in perm))
            return
        self._emit("transpose", (self._act(src, where),), n.output[0], Attrs(perm=perm), where)

    def _op_Expand(self, n, a, where):
        x = self._act(n.input[0], where)
        xs = self._shape(x)
        target = [int(v) for v in self._const(n.input[1], where, "the shape").reshape(-1)]
        shape = broadcast_shape(xs, tuple(target))
        self._emit("expand", (x,), n.output[0], Attrs(src_shape=xs, shape=shape, scale=1.0), where)

    def _slice(self, x: str, starts, counts, steps, out: str, where: str) -> None:
        shape = self._shape(x)
        if tuple(counts) == shape and all(k == 1 for k in steps):
            self.alias[out] = x
            return
        attrs = Attrs(starts=tuple(starts), steps=tuple(steps), shape=tuple(counts))
        self._emit("slice", (x,), out, attrs, where)

    def _op_Slice(self, n, a, where):
        x = self._act(n.input[0], where)
        shape = self._shape(x)
        if len(n.input) > 1:
            c = [self._const(v, where, "slice bounds").reshape(-1) if v else None for v in n.input[1:]]
            c += [None] * (4 - len(c))
            st, cnt, sp = constfold.slice_bounds(shape, c[0], c[1], c[2], c[3])
        else:
            st, cnt, sp = constfold.slice_bounds(shape, a["starts"], a["ends"], a.get("axes"), None)
        self._slice(x, st, cnt, sp, n.output[0], where)

    def _op_Split(self, n, a, where):
        x = self._act(n.input[0], where)
        shape = self._shape(x)
        ax = int(a.get("axis", 0))
        ax = ax + len(shape) if ax < 0 else ax
        sizes = self._split_sizes(n, a, where, shape[ax], len(n.output))
        if sum(sizes) != shape[ax] or len(sizes) != len(n.output):
            raise self.err(f"node {where}: split sizes {sizes} do not cover axis {ax} of {shape}")
        off = 0
        for out, sz in zip(n.output, sizes, strict=True):
            starts = [off if k == ax else 0 for k in range(len(shape))]
            counts = [sz if k == ax else d for k, d in enumerate(shape)]
            if out:
                self._slice(x, starts, counts, [1] * len(shape), out, where)
            off += sz

    def _split_sizes(self, n, a, where: str, dim: int, count: int | None) -> list[int]:
        if len(n.input) > 1 and n.input[1]:
            v = self._const(n.input[1], where, "split sizes")
            if v.ndim == 0:  # a chunk size: equal chunks, the last one smaller
                k = int(v)
                return [min(k, dim - j) for j in range(0, dim, k)]
            return [int(x) for x in v.reshape(-1)]
        if "split" in a:
            return [int(x) for x in a["split"]]
        if count is None:
            return [1] * dim
        step = -(-dim // count)
        return [min(step, dim - j * step) for j in range(count)]

    def _op_SplitToSequence(self, n, a, where):
        x = self._act(n.input[0], where)
        shape = self._shape(x)
        ax = int(a.get("axis", 0))
        ax = ax + len(shape) if ax < 0 else ax
        sizes = self._split_sizes(n, a, where, shape[ax], None)
        if sum(sizes) != shape[ax]:
            raise self.err(f"node {where}: split sizes {sizes} do not cover axis {ax} of {shape}")
        squeeze = not (len(n.input) > 1 and n.input[1]) and not a.get("keepdims", 1)
        self.seqs[n.output[0]] = (x, ax, sizes, squeeze)

    def _op_SequenceAt(self, n, a, where):
        if n.input[0] not in self.seqs:
            raise self.err(
                f"node {where}: SequenceAt of a sequence poetc did not make (only SplitToSequence)"
            )
        x, ax, sizes, squeeze = self.seqs[n.input[0]]
        k = int(self._const(n.input[1], where, "the position"))
        k = k + len(sizes) if k < 0 else k
        shape = self._shape(x)
        starts = [sum(sizes[:k]) if d == ax else 0 for d in range(len(shape))]
        counts = [sizes[k] if d == ax else s for d, s in enumerate(shape)]
        if not squeeze:
            self._slice(x, starts, counts, [1] * len(shape), n.output[0], where)
            return
        tmp = self._tmp(f"{n.output[0]}:slice")
        self._slice(x, starts, counts, [1] * len(shape), tmp, where)
        self._reshape_to(n, self._name(tmp), tuple(c for d, c in enumerate(counts) if d != ax), where)

    def _op_Gather(self, n, a, where):
        x = self._act(n.input[0], where)
        shape = self._shape(x)
        idx = self._const(n.input[1], where, "the indices").astype(np.int64)
        ax = int(a.get("axis", 0))
        ax = ax + len(shape) if ax < 0 else ax
        flat = [int(v) + shape[ax] if v < 0 else int(v) for v in idx.reshape(-1)]
        if not flat or flat != list(range(flat[0], flat[0] + len(flat))) or idx.ndim > 1:
            raise self.err(
                f"node {where}: Gather of an activation is only supported with constant contiguous indices "
                "(an embedding lookup is not supported)"
            )
        starts = [flat[0] if k == ax else 0 for k in range(len(shape))]
        counts = [len(flat) if k == ax else d for k, d in enumerate(shape)]
        if idx.ndim == 0:
            tmp = self._tmp(f"{n.output[0]}:slice")
            self._slice(x, starts, counts, [1] * len(shape), tmp, where)
            squeezed = tuple(d for k, d in enumerate(counts) if k != ax)
            src = self._name(tmp)
            self._emit("reshape", (src,), n.output[0], Attrs(shape=squeezed), where)
        else:
            self._slice(x, starts, counts, [1] * len(shape), n.output[0], where)

    def _op_Concat(self, n, a, where):
        kinds = [self._operand(v, where) for v in n.input if v]
        if any(k != "act" for k, _ in kinds):
            raise self.err(f"node {where}: Concat of activations with constants or weights is not supported")
        xs = [v for _, v in kinds]
        rank = len(self._shape(xs[0]))
        ax = int(a["axis"])
        ax = ax + rank if ax < 0 else ax
        maxin = MAX_CONCAT
        while len(xs) > maxin:
            part = self._emit(
                "concat", tuple(xs[:maxin]), self._tmp(f"{n.output[0]}:part"), Attrs(axis=ax), where
            )
            xs = [part, *xs[maxin:]]
        self._emit("concat", tuple(xs), n.output[0], Attrs(axis=ax), where)


def _close(v: float | None, want: float) -> bool:
    return v is not None and abs(v - want) <= 1e-4 * abs(want)


def _label(n: onnx.NodeProto, i: int) -> str:
    return n.name or f"{n.op_type}_{i}"


def _users(nodes: list[onnx.NodeProto]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for x in dict.fromkeys(n.input):
            if x:
                out.setdefault(x, []).append(i)
    return out


def _producers(nodes: Sequence[onnx.NodeProto]) -> dict[str, int]:
    return {o: i for i, n in enumerate(nodes) for o in n.output if o}


def _f32_bytes(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype=np.float32).tobytes()


def export_onnx(model: Model, values: dict[str, np.ndarray], path: Path) -> None:
    """Write ``values`` (initializer name -> array: parameters and running statistics) into a copy of the
    model's ONNX and save it to ``path``. A value equal bit for bit to the initializer's leaves it untouched
    (frozen parameters and the running statistics of frozen BatchNorms keep their exact encoding).

    BatchNormalization nodes are switched to inference (training_mode 0, one output), so the exported model
    computes what the device's inference program computes: PyTorch's eval() semantics."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.onnx_model)
    by_name = {t.name: t for t in proto.graph.initializer}
    for name, arr in values.items():
        if name not in by_name:
            raise PoetcError(f"{model.source}: no initializer named {name!r} to write back")
        old = numpy_helper.to_array(by_name[name])
        if old.shape != arr.shape:
            raise PoetcError(
                f"{model.source}: initializer {name!r} has shape {old.shape}, trained {arr.shape}"
            )
        new = np.asarray(arr).astype(old.dtype)
        imported = model.params.get(name, model.state.get(name))  # as imported (float32)
        same = imported is not None and _f32_bytes(arr) == _f32_bytes(imported)
        if same or new.tobytes() == old.tobytes():
            continue  # unchanged (a frozen parameter or BatchNorm): the initializer stays exactly as it was
        by_name[name].CopyFrom(numpy_helper.from_array(new, name))
    for n in proto.graph.node:
        if n.op_type == "BatchNormalization":
            keep = [at for at in n.attribute if at.name != "training_mode"]
            del n.attribute[:]
            n.attribute.extend(keep)
            del n.output[1:]
    onnx.save(proto, str(path))
