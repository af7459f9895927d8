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

Sparse update: only the ``trainable`` parameters get gradients and updates; the others are frozen (read only).
Gradients flow only where a trainable parameter needs them: a tensor needs a gradient iff it is computed from a
trainable parameter, so a frozen prefix of the network gets no backward nodes at all, and a frozen layer between
trainable ones propagates its input gradient but computes no weight gradient. With ``bn="frozen"`` a BatchNorm
whose scale and bias are both frozen runs on its running statistics in training too (``bn_frozen``: no batch
statistics, no running-statistics update, no training flag); ``bn="train"`` keeps batch statistics everywhere.
With momentum, each trainable parameter has a buffer (``Role.OPT_STATE``, zero at start) that only the
parameter's update node reads and writes, in place (``opt_state``).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from ..errors import PoetcError
from . import ops
from .ir import Attrs, Graph, Model, Node, Role, Tensor
from .options import (
    BN_MODES,
    Optimizer,
    TrainingOptions,
    bias_params,
    layers_with_params,
    parse_optimizer,
    select_trainable,
)

__all__ = [
    "Optimizer",
    "TrainingGraph",
    "TrainingOptions",
    "bias_params",
    "build",
    "build_training_graph",
    "layers_with_params",
    "parse_optimizer",
    "select_trainable",
]


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
    frozen: tuple[str, ...] = ()  # parameters that are only read (no gradient, no update)
    opt_state: Mapping[str, str] = field(default_factory=dict)  # trainable parameter -> its momentum buffer

    @cached_property
    def in_place(self) -> Mapping[int, tuple[str, ...]]:
        """Node index -> the static tensors it updates in place: a parameter and its momentum buffer (optimizer
        steps), or a running statistic. Such a node must run exactly once, and no other reader of those tensors
        may run after it."""
        out = {}
        for i, n in enumerate(self.graph.nodes):
            targets = ops.get(n.op).updated(n.inputs)
            if targets:
                out[i] = targets
        return out

    @cached_property
    def update_stage(self) -> Mapping[int, int]:
        """Node index of a reader of an updated tensor -> the stage of the first update of that tensor.

        The reader must not run in any stage after that one (it would see the new value)."""
        g = self.graph
        out: dict[int, int] = {}
        for u, tensors in self.in_place.items():
            for tensor in tensors:
                for reader in g.consumers[tensor]:
                    if reader != u:
                        out[reader] = min(out.get(reader, u), u)
        return out

    @property
    def params(self) -> tuple[str, ...]:
        """The trainable parameters (those with gradients and updates)."""
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


def build(model: Model, options: TrainingOptions = TrainingOptions()) -> TrainingGraph:
    """The training graph ``options`` (``--train``, ``--bn``, ``--optimizer``, ``--weight-decay``) ask for."""
    return build_training_graph(model, options.optimizer, trainable=options.trainable(model), bn=options.bn)


def build_training_graph(
    model: Model,
    optimizer: Optimizer | str = Optimizer(),
    fuse_updates: bool = True,
    trainable: Collection[str] | None = None,
    bn: str = "frozen",
) -> TrainingGraph:
    """The training graph of ``model``. ``fuse_updates`` computes weight gradients inside their SGD step
    (no gradient buffer in RAM); without it, every gradient is a tensor of its own. ``trainable``: the
    parameters that train (None: all of them); the others are frozen. ``bn``: "frozen" runs a BatchNorm whose
    scale and bias are both frozen on its running statistics, "train" uses batch statistics everywhere."""
    if isinstance(optimizer, str):
        optimizer = parse_optimizer(optimizer)
    if bn not in BN_MODES:
        raise PoetcError(f"--bn {bn!r}: expected one of {', '.join(BN_MODES)}")
    fwd = model.graph
    train = _trainable_set(model, trainable)
    if bn == "frozen":
        fwd = _freeze_batchnorm(fwd, train)
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

    # tensors whose gradient is needed: trainable parameters and everything computed from them
    requires: set[str] = set(train)
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
            if x in train:
                first_reader.setdefault(x, i)
    grads: dict[str, str] = {}
    updates: dict[str, str] = {}
    opt_state: dict[str, str] = {}
    step_attrs = Attrs(optimizer.attrs())

    state_updates: dict[str, str] = {}

    def emit_state_updates(node: Node) -> None:
        rule = ops.get(node.op).state
        for su in rule(b, node) if rule is not None else ():
            (target,) = ops.get(su.op).updated(su.inputs)
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
            if x in train and first_reader[x] == i and x in pending:
                g = pending.pop(x)
                readers = tuple(dict.fromkeys(n.name for n in nodes if x in n.inputs))
                ins = (x, g)
                if optimizer.has_buffer:
                    v = _fresh(f"{x}:momentum", tensors)
                    tensors[v] = Tensor(v, tensors[x].shape, Role.OPT_STATE)
                    opt_state[x] = v
                    ins = (x, g, v)
                upd = b.emit(
                    "sgd",
                    ins,
                    step_attrs,
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

    missing = [p for p in fwd.params if p in train and p not in grads]
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
        tuple(p for p in fwd.params if p not in train),
        opt_state,
    )


def _trainable_set(model: Model, trainable: Collection[str] | None) -> set[str]:
    params = list(model.graph.params)
    if trainable is None:
        return set(params)
    if isinstance(trainable, str):
        raise TypeError("trainable is a collection of parameter names (select_trainable parses a spec)")
    for p in trainable:
        if p not in params:
            close = difflib.get_close_matches(p, params, n=3, cutoff=0.5)
            raise PoetcError(
                f"{model.source}: no parameter {p!r} to train"
                + (f" (close: {', '.join(close)})" if close else "")
            )
    if not trainable:
        raise PoetcError(f"{model.source}: no parameter to train (every parameter is frozen)")
    return set(trainable)


def _freeze_batchnorm(fwd: Graph, train: set[str]) -> Graph:
    """Each BatchNorm (bn_stats + bn_apply) whose scale and bias are both frozen -> one bn_frozen node on the
    running statistics, named as the bn_apply node; its statistics tensor goes away."""
    producer = {n.output: n for n in fwd.nodes}
    readers: dict[str, int] = {}
    for n in fwd.nodes:
        for x in set(n.inputs):
            readers[x] = readers.get(x, 0) + 1
    drop: set[str] = set()
    replace: dict[str, Node] = {}
    for n in fwd.nodes:
        if n.op != "bn_apply":
            continue
        x, stats, gamma, beta = n.inputs
        st = producer.get(stats)
        if gamma in train or beta in train or st is None or st.op != "bn_stats" or readers[stats] != 1:
            continue
        if st.inputs[0] != x:
            continue
        _x, rm, rv, _flag = st.inputs
        replace[n.name] = dataclasses.replace(n, op="bn_frozen", inputs=(x, rm, rv, gamma, beta))
        drop.add(st.name)
    if not replace:
        return fwd
    nodes = tuple(replace.get(n.name, n) for n in fwd.nodes if n.name not in drop)
    gone = {producer_node.output for producer_node in fwd.nodes if producer_node.name in drop}
    tensors = {k: t for k, t in fwd.tensors.items() if k not in gone}
    return Graph(fwd.name, tensors, nodes, fwd.inputs, fwd.outputs)


# gradient op -> the op that computes that gradient inside its parameter's optimizer step (ops/optim.py)
FUSED = {
    "linear_dw": "linear_dw_sgd",
    "bias_grad": "bias_grad_sgd",
    "conv2d_dw": "conv2d_dw_sgd",
    "conv2d_db": "conv2d_db_sgd",
}


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
        param, g = u.inputs[:2]
        pi = producer.get(g)
        if pi is None or nodes[pi].op not in FUSED or readers.get(g, 0) != 1:
            continue
        src = nodes[pi]
        if any(x in updates and x != param for x in src.inputs):
            # the gradient reads another trained parameter (a toy graph's parameter input): that one's update
            # may come first, so the fused node, which takes this update's later place, would read it too late
            continue
        fused = Node(
            f"{src.name}+sgd",
            FUSED[src.op],
            (*src.inputs, param, *u.inputs[2:]),  # the momentum buffer, if any, after the parameter
            u.output,
            src.attrs.replace(**dict(u.attrs)),  # momentum, weight decay
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
