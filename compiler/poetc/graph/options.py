"""What a training step trains and how: the optimizer, the trainable parameters (sparse update), BatchNorm's mode.

``TrainingOptions`` is the one record the CLI (``--train``, ``--bn``, ``--optimizer``, ``--weight-decay``), the
pipeline and the build's manifest pass around; ``autodiff.build_training_graph`` takes its parts.

Layers: a *layer with parameters* is a forward node that is the first reader (in forward order) of at least one
parameter; it owns the parameters it reads first. ``last:K`` trains the parameters of the last K such layers.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import PoetcError
from .ir import Model, Role

OPTIMIZERS = ("sgd", "momentum")
BN_MODES = ("frozen", "train")
DEFAULT_MOMENTUM = 0.9


@dataclass(frozen=True)
class Optimizer:
    """PyTorch's torch.optim.SGD (dampening 0, no Nesterov): ``kind`` "sgd" or "momentum" (with ``momentum``),
    optional L2 ``weight_decay``. Both are build-time constants; the learning rate is sent with each step."""

    kind: str = "sgd"
    momentum: float = DEFAULT_MOMENTUM  # used by kind "momentum" only
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in OPTIMIZERS:
            raise PoetcError(f"unknown optimizer {self.kind!r} (supported: {', '.join(OPTIMIZERS)})")
        if self.kind == "momentum" and not (math.isfinite(self.momentum) and 0.0 < self.momentum < 1.0):
            raise PoetcError(f"momentum {self.momentum!r} must be in (0, 1)")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0.0):
            raise PoetcError(f"weight decay {self.weight_decay!r} must be a finite value >= 0")

    @property
    def has_buffer(self) -> bool:
        return self.kind == "momentum"

    def attrs(self) -> dict[str, float]:
        """The update node's attributes: only what differs from plain SGD (so plain SGD's graph is unchanged)."""
        out = {}
        if self.has_buffer:
            out["momentum"] = float(self.momentum)
        if self.weight_decay:
            out["weight_decay"] = float(self.weight_decay)
        return out

    def __str__(self) -> str:
        text = f"momentum:{self.momentum:g}" if self.has_buffer else "sgd"
        return text + (f", weight decay {self.weight_decay:g}" if self.weight_decay else "")


def parse_optimizer(text: str, weight_decay: float = 0.0) -> Optimizer:
    """``sgd``, ``momentum`` (0.9) or ``momentum:0.8``; one-line PoetcError otherwise."""
    kind, _, arg = text.strip().partition(":")
    if kind == "sgd" and not arg:
        return Optimizer("sgd", weight_decay=weight_decay)
    if kind == "momentum":
        try:
            mu = float(arg) if arg else DEFAULT_MOMENTUM
        except ValueError:
            raise PoetcError(f"--optimizer {text!r}: bad momentum {arg!r} (example: momentum:0.9)") from None
        return Optimizer("momentum", mu, weight_decay)
    raise PoetcError(f"--optimizer {text!r}: expected sgd, momentum or momentum:VALUE (e.g. momentum:0.9)")


@dataclass(frozen=True)
class TrainingOptions:
    """What to train (``train``: a ``select_trainable`` spec, or the parameter names themselves, as a build
    directory records them), BatchNorm's mode and the optimizer."""

    train: str | tuple[str, ...] = "all"
    bn: str = "frozen"
    optimizer: Optimizer = field(default_factory=Optimizer)

    def __post_init__(self) -> None:
        if self.bn not in BN_MODES:
            raise PoetcError(f"--bn {self.bn!r}: expected one of {', '.join(BN_MODES)}")

    def trainable(self, model: Model) -> tuple[str, ...] | None:
        """The trainable parameters, or None for every parameter (``all``)."""
        if isinstance(self.train, tuple):
            return self.train
        return None if self.train.strip() == "all" else select_trainable(model, self.train)

    def to_json(self) -> dict[str, Any]:
        o = self.optimizer
        return {
            "train": list(self.train) if isinstance(self.train, tuple) else self.train,
            "bn": self.bn,
            "optimizer": {"kind": o.kind, "momentum": o.momentum, "weight_decay": o.weight_decay},
        }

    @staticmethod
    def from_json(doc: Mapping[str, Any] | None) -> TrainingOptions:
        if not doc:
            return TrainingOptions()
        o = doc.get("optimizer", {})
        opt = Optimizer(o.get("kind", "sgd"), o.get("momentum", DEFAULT_MOMENTUM), o.get("weight_decay", 0.0))
        train = doc.get("train", "all")
        return TrainingOptions(
            tuple(train) if isinstance(train, list) else train, doc.get("bn", "frozen"), opt
        )


# ---- which parameters train ---------------------------------------------------------------------------------
# bias-like inputs: op -> input index (linear and conv biases, BatchNorm's beta, LayerNorm's beta)
BIAS_INPUTS = {"linear": 2, "conv2d": 2, "bn_apply": 3, "layernorm": 2}


def layers_with_params(model: Model) -> list[tuple[str, tuple[str, ...]]]:
    """(forward node name, the parameters it is the first reader of), for every such node, in forward order."""
    g = model.graph
    owner: dict[str, str] = {}
    for n in g.nodes:
        for x in n.inputs:
            if g.tensor(x).role == Role.PARAM:
                owner.setdefault(x, n.name)
    layers: dict[str, list[str]] = {}
    for p, node in owner.items():
        layers.setdefault(node, []).append(p)
    return [(n.name, tuple(layers[n.name])) for n in g.nodes if n.name in layers]


def bias_params(model: Model) -> tuple[str, ...]:
    """The bias-like parameters: 1-D parameters read as the bias of a linear layer or a convolution (input 2),
    as BatchNorm's beta or LayerNorm's beta, or added (``binary`` add/sub) to an activation."""
    g = model.graph
    out: list[str] = []
    for n in g.nodes:
        if n.op in BIAS_INPUTS:
            k = BIAS_INPUTS[n.op]
            cand = [n.inputs[k]] if len(n.inputs) > k else []
        elif n.op == "binary" and n.attrs.get("op") in ("add", "sub"):
            cand = list(n.inputs)
        else:
            cand = []
        for x in cand:
            t = g.tensor(x)
            if t.role == Role.PARAM and len([d for d in t.shape if d != 1]) <= 1 and x not in out:
                out.append(x)
    return tuple(out)


def select_trainable(model: Model, spec: str) -> tuple[str, ...]:
    """The parameters ``--train SPEC`` trains, in the model's parameter order:
    - ``all``: every parameter;
    - ``bias``: the bias-like 1-D parameters (``bias_params``: linear and conv biases, BatchNorm's and
      LayerNorm's beta, a 1-D parameter added to an activation);
    - ``last:K``: the parameters of the last K layers with parameters (``layers_with_params``);
    - ``NAME[,NAME...]``: these parameters, by ONNX initializer name.
    ``auto`` (the largest suffix that fits the RAM budget) needs the scheduler: the pipeline resolves it."""
    text = spec.strip()
    order = list(model.graph.params)
    if text == "all":
        chosen = set(order)
    elif text == "bias":
        chosen = set(bias_params(model))
        if not chosen:
            raise PoetcError(f"--train bias: {model.source} has no bias-like parameter")
    elif text.startswith("last:"):
        layers = layers_with_params(model)
        try:
            k = int(text[5:])
        except ValueError:
            k = 0
        if not 1 <= k <= len(layers):
            raise PoetcError(
                f"--train {text}: K must be an integer from 1 to {len(layers)} "
                f"(the layers with parameters of {model.source})"
            )
        chosen = {p for _name, ps in layers[-k:] for p in ps}
    elif text == "auto":
        raise PoetcError("--train auto is resolved against the RAM budget by the pipeline, not here")
    else:
        names = [n.strip() for n in text.split(",")]
        if not all(names):
            raise PoetcError(f"--train {spec!r}: an empty parameter name")
        for n in names:
            if n not in order:
                close = difflib.get_close_matches(n, order, n=3, cutoff=0.5)
                hint = f"; close: {', '.join(close)}" if close else f"; e.g. {', '.join(order[:3])}"
                raise PoetcError(
                    f"--train: {model.source} has no parameter {n!r} (expected all, bias, last:K or "
                    f"initializer names{hint})"
                )
        chosen = set(names)
    return tuple(p for p in order if p in chosen)
