"""Host reference: run a training graph in numpy float64, node by node, with each op's reference.

Used by ``poetc verify`` (target vs reference) and in tests (reference vs PyTorch, C vs reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import ops
from .autodiff import TrainingGraph
from .ir import Role


@dataclass
class StepResult:
    loss: float
    grads: dict[str, np.ndarray]  # parameter -> gradient of this step
    params: dict[str, np.ndarray]  # parameter values after the update
    values: dict[str, np.ndarray]  # every tensor computed during the step (for debugging)
    state: dict[str, np.ndarray] = field(default_factory=dict)  # state tensors after the step
    opt_state: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # momentum buffers after the step, by tensor

    @property
    def carry(self) -> dict[str, np.ndarray]:
        """Everything the next step starts from: parameters, running statistics and momentum buffers."""
        return {**self.params, **self.state, **self.opt_state}


def _sources(tg: TrainingGraph, params: dict[str, np.ndarray], training: bool) -> dict[str, np.ndarray]:
    """Parameters and state (BatchNorm running statistics) from ``params``, and the training flag; momentum
    buffers from ``params`` too, or zero (before the first step)."""
    g = tg.graph
    names = list(g.params) + [t.name for t in g.by_role(Role.STATE)]
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"no value for {', '.join(missing)}")
    vals = {n: np.asarray(params[n], np.float64).copy() for n in names}
    for t in g.by_role(Role.OPT_STATE):
        v = params.get(t.name)
        vals[t.name] = np.zeros(t.shape) if v is None else np.asarray(v, np.float64).reshape(t.shape).copy()
    if tg.train_flag is not None:
        vals[tg.train_flag] = np.full(g.tensor(tg.train_flag).shape, 1.0 if training else 0.0)
    return vals


def train_step(
    tg: TrainingGraph, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> StepResult:
    """One step; ``params`` holds the parameters and, for models with BatchNorm, the state tensors (and, to
    continue a trajectory with momentum, the buffers: ``StepResult.carry`` of the previous step)."""
    g = tg.graph
    vals = _sources(tg, params, training=True)
    vals[tg.input] = np.asarray(x, np.float64).reshape(g.tensor(tg.input).shape)
    vals[tg.label] = np.asarray(y, np.int64).reshape(g.tensor(tg.label).shape)
    grads: dict[str, np.ndarray] = {}
    for node in g.nodes:
        op = ops.get(node.op)
        args = [vals[i] for i in node.inputs]
        targets = op.updated(node.inputs)
        if targets:
            if g.tensor(targets[0]).role == Role.PARAM:  # the raw gradient, before weight decay and momentum
                grads[targets[0]] = (op.step_grad(node.attrs, *args) if op.step_grad else args[1]).copy()
            for t, v in zip(targets, op.ref(node.attrs, *args, lr), strict=True):
                vals[t] = np.asarray(v, np.float64)
            continue
        vals[node.output] = np.asarray(op.ref(node.attrs, *args), np.float64)
    new_params = {p: vals[p] for p in g.params}
    state = {t.name: vals[t.name] for t in g.by_role(Role.STATE)}
    opt = {t.name: vals[t.name] for t in g.by_role(Role.OPT_STATE)}
    return StepResult(float(vals[tg.loss]), grads, new_params, vals, state, opt)


def forward(tg: TrainingGraph, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Logits of the model for one batch, in inference mode (BatchNorm uses its running statistics)."""
    g = tg.graph
    vals = _sources(tg, params, training=False)
    vals[tg.input] = np.asarray(x, np.float64).reshape(g.tensor(tg.input).shape)
    for node in g.nodes[: tg.n_forward]:
        vals[node.output] = ops.get(node.op).ref(node.attrs, *[vals[i] for i in node.inputs])
    return vals[tg.logits]


def max_rel_error(got: np.ndarray, want: np.ndarray, floor: float = 0.0) -> float:
    """Worst error relative to the tensor's scale: max|got - want| / max(max|want|, floor, tiny).

    ``floor`` judges a tensor that is analytically zero (the gradient of a bias followed by BatchNorm, which
    removes any per-channel shift) by a scale from elsewhere, e.g. a fraction of the model's largest gradient;
    otherwise float32 rounding noise would count as an infinite relative error."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, floor, 1e-30)
    return float(np.max(np.abs(got - want))) / scale if want.size else 0.0


def grad_floor(grads: dict[str, np.ndarray], fraction: float = 1e-2) -> float:
    """A scale floor for ``max_rel_error`` of gradients: ``fraction`` of the largest gradient of the model."""
    return fraction * max((float(np.max(np.abs(g))) for g in grads.values() if np.size(g)), default=0.0)


__all__ = ["Role", "StepResult", "forward", "grad_floor", "max_rel_error", "train_step"]
