"""ONNX import: an ONNX model (file or zoo name) -> forward ``Graph`` + initial parameter values.

Float initializers read by a layer become trainable parameters and keep their ONNX names (so trained weights
can be written back). Integer initializers and Constant nodes are folded (they only describe shapes).
Shape-only nodes (Flatten, Identity, a Reshape that flattens) become aliases: the linear kernel views its
input as rows of the weight's input size, so no copy is needed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from . import ops
from .errors import PoetcError
from .ir import Attrs, Graph, Node, Role, Tensor


@dataclass(frozen=True)
class Model:
    """A forward graph with its parameter values and where it came from."""

    graph: Graph
    params: dict[str, np.ndarray] = field(hash=False)  # ONNX initializer name -> float32 array
    onnx_model: onnx.ModelProto = field(hash=False, repr=False)
    source: str  # file path or "zoo:<name>"
    sha256: str
    input: str  # the data input tensor
    logits: str  # the graph output fed to the loss


SUPPORTED_OPS = ("Add", "Constant", "Flatten", "Gemm", "Identity", "MatMul", "Relu", "Reshape")


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
        g = proto.graph
        self.inits: dict[str, np.ndarray] = {}
        for t in g.initializer:
            try:
                self.inits[t.name] = numpy_helper.to_array(t)
            except Exception as e:
                raise PoetcError(f"{source}: initializer {t.name!r} cannot be read: {e}") from None
        self.consts: dict[str, np.ndarray] = {k: v for k, v in self.inits.items() if v.dtype.kind in "iu"}
        self.alias: dict[str, str] = {}
        self.tensors: dict[str, Tensor] = {}
        self.nodes: list[Node] = []
        self.params: dict[str, np.ndarray] = {}
        self.names: set[str] = set()

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
        self._check_supported()
        inp = data_inputs[0]
        self.tensors[inp.name] = Tensor(inp.name, self._input_shape(inp), Role.INPUT)
        self.input = inp.name

        onnx_nodes = list(g.node)
        # MatMul followed by Add of a parameter vector becomes one linear layer with a bias
        fused_add: dict[int, int] = {}
        users = _users(onnx_nodes)
        for i, n in enumerate(onnx_nodes):
            if n.op_type == "MatMul" and len(users.get(n.output[0], [])) == 1:
                j = users[n.output[0]][0]
                m = onnx_nodes[j]
                other = [x for x in m.input if x != n.output[0]]
                if (
                    m.op_type == "Add"
                    and len(other) == 1
                    and other[0] in self.inits
                    and self.inits[other[0]].dtype.kind == "f"
                    and self.inits[other[0]].ndim == 1
                ):
                    fused_add[i] = j
        skip = set(fused_add.values())
        for i, n in enumerate(onnx_nodes):
            if i in skip:
                continue
            try:
                self._convert(n, i, onnx_nodes[fused_add[i]] if i in fused_add else None)
            except PoetcError:
                raise
            except (ValueError, KeyError, IndexError) as e:
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
        return Model(graph, self.params, self.proto, self.src, sha, self.input, out)

    def _check_supported(self) -> None:
        bad = [
            f"{_label(n, i)} ({n.op_type})"
            for i, n in enumerate(self.proto.graph.node)
            if n.op_type not in SUPPORTED_OPS or n.domain not in ("", "ai.onnx")
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

    # ------------------------------------------------------------------------------------------------
    def _name(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def _param(self, name: str, where: str) -> str:
        if name not in self.inits or self.inits[name].dtype.kind != "f":
            raise self.err(f"node {where}: {name!r} must be a float initializer (a trainable weight)")
        if name not in self.tensors:
            arr = self.inits[name].astype(np.float32)
            self.tensors[name] = Tensor(name, tuple(int(d) for d in arr.shape), Role.PARAM)
            self.params[name] = arr
        return name

    def _act(self, name: str, where: str) -> str:
        name = self._name(name)
        if name not in self.tensors or self.tensors[name].role not in (Role.INPUT, Role.ACTIVATION):
            raise self.err(f"node {where}: input {name!r} is not an activation computed from the data input")
        return name

    def _emit(self, op: str, inputs: tuple[str, ...], output: str, attrs: Attrs, where: str) -> None:
        opdef = ops.get(op)
        shape, dtype = opdef.infer(attrs, [self.tensors[i] for i in inputs])
        node_name = where if where not in self.names else f"{where}#{len(self.nodes)}"
        self.names.add(node_name)
        self.tensors[output] = Tensor(output, shape, Role.ACTIVATION, dtype)
        self.nodes.append(Node(node_name, op, inputs, output, attrs, origin=where))

    def _convert(self, n: onnx.NodeProto, i: int, fused: onnx.NodeProto | None) -> None:
        where = _label(n, i)
        a = {at.name: onnx.helper.get_attribute_value(at) for at in n.attribute}
        if n.op_type == "Constant":
            value = a.get("value")
            if value is None:
                raise self.err(f"node {where}: only Constant with a tensor 'value' is supported")
            arr = numpy_helper.to_array(value)
            self.inits[n.output[0]] = arr
            if arr.dtype.kind in "iu":
                self.consts[n.output[0]] = arr
            return
        if n.op_type == "Identity":
            self.alias[n.output[0]] = self._act(n.input[0], where)
            return
        if n.op_type == "Flatten":
            src = self._act(n.input[0], where)
            if a.get("axis", 1) != 1:
                raise self.err(f"node {where}: Flatten with axis={a['axis']} is not supported (only axis=1)")
            self.alias[n.output[0]] = src
            return
        if n.op_type == "Reshape":
            src = self._act(n.input[0], where)
            target = self.consts.get(n.input[1])
            if target is None:
                raise self.err(f"node {where}: Reshape needs a constant shape")
            shape = self.tensors[src].shape
            t = [int(d) for d in target.reshape(-1)]
            if len(t) == 2 and t[0] in (shape[0], 0) and t[1] in (-1, int(np.prod(shape[1:]))):
                self.alias[n.output[0]] = src
                return
            raise self.err(
                f"node {where}: Reshape of {shape} to {t} is not supported (only flattening to 2-D)"
            )
        if n.op_type == "Relu":
            self._emit("relu", (self._act(n.input[0], where),), n.output[0], Attrs(), where)
            return
        if n.op_type == "Gemm":
            if a.get("transA", 0):
                raise self.err(f"node {where}: Gemm with transA=1 is not supported")
            x = self._act(n.input[0], where)
            w = self._param(n.input[1], where)
            ins = (x, w) + ((self._param(n.input[2], where),) if len(n.input) > 2 and n.input[2] else ())
            attrs = Attrs(
                trans_w=bool(a.get("transB", 0)),
                alpha=float(a.get("alpha", 1.0)),
                beta=float(a.get("beta", 1.0)),
                flatten=True,
            )
            self._emit("linear", ins, n.output[0], attrs, where)
            return
        if n.op_type == "MatMul":
            x = self._act(n.input[0], where)
            w = self._param(n.input[1], where)
            attrs = Attrs(trans_w=False, alpha=1.0, beta=1.0, flatten=False)
            if fused is not None:
                b = next(v for v in fused.input if v != n.output[0])
                self._emit("linear", (x, w, self._param(b, where)), fused.output[0], attrs, where)
            else:
                self._emit("linear", (x, w), n.output[0], attrs, where)
            return
        if n.op_type == "Add":
            x, y = (self._act(v, where) for v in n.input)
            self._emit("add", (x, y), n.output[0], Attrs(), where)
            return
        raise self.err(f"node {where}: unsupported op {n.op_type}")


def _label(n: onnx.NodeProto, i: int) -> str:
    return n.name or f"{n.op_type}_{i}"


def _users(nodes: list[onnx.NodeProto]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for x in n.input:
            out.setdefault(x, []).append(i)
    return out


def export_onnx(model: Model, values: dict[str, np.ndarray], path: Path) -> None:
    """Write ``values`` (initializer name -> array) into a copy of the model's ONNX and save it to ``path``."""
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
        by_name[name].CopyFrom(numpy_helper.from_array(arr.astype(old.dtype), name))
    onnx.save(proto, str(path))
