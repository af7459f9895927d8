"""Reverse-mode autodiff: forward Graph -> TrainingGraph (forward, loss, backward, optimizer updates).

Node order (which is also the stage order of the schedule):
  forward nodes as imported;
  the loss node (softmax cross-entropy, mean over the batch, integer labels);
  backward nodes, walking the forward nodes in reverse: for each, the input-gradient node(s) first, then the
  weight-gradient node(s); gradient contributions to a tensor read several times are summed by ADD nodes;
  an optimizer update right after a parameter's gradient is complete, so no gradient buffer outlives its layer;
  after a forward node's gradient nodes (and updates), the in-place updates of the state tensors it asks for
  (``OpDef.state``: BatchNorm running statistics), also for a node that does not reach the loss.

Updates happen in place, so each update node carries ``after`` edges to every node that reads the parameter.
A scheduler must not recompute a reader of a parameter once its update has run (``update_stage``).
Ops that behave differently in training and inference (BatchNorm statistics) read the model's training flag
(``train_flag``, an input tensor the runtime sets to 1 for the train program and 0 for inference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from ..errors import PoetcError
from . import ops
from .ir import Attrs, Graph, Model, Node, Role, Tensor


@dataclass(frozen=True)
class TrainingGraph:
    graph: Graph  # every node of one training step, in execution (stage) order
    input: str
    label: str
    logits: str
    loss: str
    grads: Mapping[str, str]  # parameter -> its complete gradient tensor
    updates: Mapping[str, str]  # parameter -> name of its update node
    n_forward: int  # graph.nodes[:n_forward] is the model's forward pass
    state_updates: Mapping[str, str] = field(default_factory=dict)  # state tensor -> its in-place update node
    train_flag: str | None = None  # 1 in the train program, 0 in inference (None: the model has no such op)

    @cached_property
    def in_place(self) -> Mapping[int, str]:
        """Node index -> the static tensor it updates in place (optimizer steps, running statistics).

        Such a node must run exactly once, and no reader of that tensor may run after it."""
        out = {}
        for i, n in enumerate(self.graph.nodes):
            k = ops.get(n.op).in_place
            if k is not None:
                out[i] = n.inputs[k]
        return out

    @cached_property
    def update_stage(self) -> Mapping[int, int]:
        """Node index of a reader of an updated tensor -> the stage of the first update of that tensor.

        The reader must not run in any stage after that one (it would see the new value)."""
        g = self.graph
        out: dict[int, int] = {}
        for u, tensor in self.in_place.items():
            for reader in g.consumers[tensor]:
                if reader != u:
                    out[reader] = min(out.get(reader, u), u)
        return out

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(self.grads)


class _Builder:
    def __init__(self, tensors: dict[str, Tensor], nodes: list[Node], requires: set[str]) -> None:
        self.tensors = tensors
        self.nodes = nodes
        self.requires = requires
        self.names = {n.name for n in nodes}

    def needs_grad(self, tensor: str) -> bool:
        return tensor in self.requires

    def tensor(self, name: str) -> Tensor:
        return self.tensors[name]

    def _unique(self, base: str, taken: Mapping[str, object] | set[str]) -> str:
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}~{k}"
        return name

    def emit(
        self,
        op: str,
        inputs: Sequence[str],
        attrs: Attrs,
        origin: Node,
        hint: str,
        role: Role = Role.GRAD,
        phase: str = "backward",
        after: tuple[str, ...] = (),
    ) -> str:
        opdef = ops.get(op)
        shape, dtype = opdef.infer(attrs, [self.tensors[i] for i in inputs])
        out = self._unique(f"grad:{origin.name}:{hint}", self.tensors)
        name = self._unique(f"{origin.name}:{op}:{hint}", self.names)
        self.tensors[out] = Tensor(out, shape, role, dtype)
        self.nodes.append(
            Node(name, op, tuple(inputs), out, attrs, after=after, phase=phase, origin=origin.name)
        )
        self.names.add(name)
        return out


def build_training_graph(model: Model, optimizer: str = "sgd", fuse_updates: bool = True) -> TrainingGraph:
    """The training graph of ``model``. ``fuse_updates`` computes weight gradients inside their SGD step
    (no gradient buffer in RAM); without it, every gradient is a tensor of its own."""
    fwd = model.graph
    if optimizer != "sgd":
        raise PoetcError(f"unknown optimizer {optimizer!r} (supported: sgd)")
    tensors = dict(fwd.tensors)
    nodes = list(fwd.nodes)
    logits = model.logits
    lt = tensors[logits]
    if len(lt.shape) < 2:
        raise PoetcError(
            f"{model.source}: output {logits!r} of shape {lt.shape} is not [batch, classes] logits"
        )
    m = lt.numel // lt.shape[-1]

    label = _fresh("labels", tensors)
    tensors[label] = Tensor(label, (m,), Role.LABEL, "i32")
    loss = _fresh("loss", tensors)
    tensors[loss] = Tensor(loss, (), Role.LOSS)
    loss_node = Node("loss", "softmax_xent", (logits, label), loss, Attrs(), phase="loss", origin="loss")
    nodes.append(loss_node)

    # tensors whose gradient is needed: parameters and everything computed from them
    requires: set[str] = set(fwd.params)
    for n in fwd.nodes:
        if any(i in requires for i in n.inputs):
            requires.add(n.output)
    if logits not in requires:
        raise PoetcError(f"{model.source}: the output does not depend on any trainable parameter")

    b = _Builder(tensors, nodes, requires)
    pending: dict[str, str] = {
        logits: b.emit("softmax_xent_bwd", (logits, label), Attrs(), loss_node, "dlogits")
    }
    # a parameter's gradient is complete once its first (in forward order) reader has been differentiated
    first_reader: dict[str, int] = {}
    for i, n in enumerate(fwd.nodes):
        for x in n.inputs:
            if x in fwd.params:
                first_reader.setdefault(x, i)
    grads: dict[str, str] = {}
    updates: dict[str, str] = {}

    state_updates: dict[str, str] = {}

    def emit_state_updates(node: Node) -> None:
        rule = ops.get(node.op).state
        for su in rule(b, node) if rule is not None else ():
            target = su.inputs[ops.get(su.op).in_place or 0]
            if tensors[target].role != Role.STATE:
                raise PoetcError(f"{model.source}: node {node.name}: {target!r} is not a state tensor")
            if target in state_updates:
                raise PoetcError(f"{model.source}: state tensor {target!r} is updated by two nodes")
            readers = tuple(dict.fromkeys(n.name for n in nodes if target in n.inputs))
            upd = b.emit(
                su.op,
                su.inputs,
                su.attrs,
                node,
                f"update:{target}",
                role=Role.UPDATE,
                phase="update",
                after=readers,
            )
            tensors[upd] = Tensor(upd, tensors[target].shape, Role.UPDATE)
            state_updates[target] = b.nodes[-1].name

    for i in range(len(fwd.nodes) - 1, -1, -1):
        node = fwd.nodes[i]
        dy = pending.pop(node.output, None)
        if dy is not None:  # else it does not reach the loss
            rule = ops.get(node.op).grad
            if rule is None:
                raise PoetcError(f"{model.source}: node {node.name}: op {node.op} has no gradient rule")
            contrib = rule(b, node, dy)
            for k, g in contrib.items():
                x = node.inputs[k]
                if x in pending:
                    pending[x] = b.emit("add", (pending[x], g), Attrs(), node, f"acc{k}")
                else:
                    pending[x] = g
        for x in dict.fromkeys(node.inputs):
            if x in fwd.params and first_reader[x] == i and x in pending:
                g = pending.pop(x)
                readers = tuple(dict.fromkeys(n.name for n in nodes if x in n.inputs))
                upd = b.emit(
                    "sgd",
                    (x, g),
                    Attrs(),
                    node,
                    f"update:{x}",
                    role=Role.UPDATE,
                    phase="update",
                    after=readers,
                )
                grads[x] = g
                updates[x] = b.nodes[-1].name
                tensors[upd] = Tensor(upd, tensors[x].shape, Role.UPDATE)
        emit_state_updates(node)

    missing = [p for p in fwd.params if p not in grads]
    if missing:
        raise PoetcError(f"{model.source}: parameter(s) {', '.join(missing)} do not affect the loss")
    if fuse_updates:
        nodes = _fuse_updates(nodes, tensors, grads, updates)
    graph = Graph(fwd.name + ":train", tensors, tuple(nodes), (model.input, label), (loss,))
    return TrainingGraph(
        graph,
        model.input,
        label,
        logits,
        loss,
        grads,
        updates,
        len(fwd.nodes),
        state_updates,
        model.train_flag,
    )


FUSED = {"linear_dw": "linear_dw_sgd", "bias_grad": "bias_grad_sgd"}


def _fuse_updates(
    nodes: list[Node], tensors: dict[str, Tensor], grads: dict[str, str], updates: dict[str, str]
) -> list[Node]:
    """Rewrite gradient + SGD pairs into fused nodes (ops/optim.py) where the gradient has no other reader.

    The fused node takes the SGD's place (right after the gradient was due) and the SGD's output token, so the
    order contract holds: every reader of the parameter still comes before its update."""
    producer = {n.output: i for i, n in enumerate(nodes)}
    readers: dict[str, int] = {}
    for n in nodes:
        for x in set(n.inputs):
            readers[x] = readers.get(x, 0) + 1
    drop: set[int] = set()
    out = list(nodes)
    for k, u in enumerate(nodes):
        if u.op != "sgd":
            continue
        param, g = u.inputs
        pi = producer.get(g)
        if pi is None or nodes[pi].op not in FUSED or readers.get(g, 0) != 1:
            continue
        src = nodes[pi]
        fused = Node(
            f"{src.name}+sgd",
            FUSED[src.op],
            (*src.inputs, param),
            u.output,
            src.attrs,
            after=u.after,
            phase="update",
            origin=src.origin,
        )
        out[k] = fused
        drop.add(pi)
        del tensors[g]
        grads[param] = u.output
        updates[param] = fused.name
    return [n for i, n in enumerate(out) if i not in drop]


def _fresh(base: str, taken: Mapping[str, object]) -> str:
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}{k}"
    return name
