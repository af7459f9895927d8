"""Host reference: run a training graph in numpy float64, node by node, with each op's reference.

Used by ``poetc verify`` (target vs reference) and in tests (reference vs PyTorch, C vs reference).
"""

from __future__ import annotations

from dataclasses import dataclass

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


def train_step(
    tg: TrainingGraph, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> StepResult:
    g = tg.graph
    vals: dict[str, np.ndarray] = {p: np.asarray(params[p], np.float64).copy() for p in g.params}
    vals[tg.input] = np.asarray(x, np.float64).reshape(g.tensor(tg.input).shape)
    vals[tg.label] = np.asarray(y, np.int64).reshape(g.tensor(tg.label).shape)
    grads: dict[str, np.ndarray] = {}
    for node in g.nodes:
        op = ops.get(node.op)
        args = [vals[i] for i in node.inputs]
        if op.in_place is not None:
            target = node.inputs[op.in_place]
            grads[target] = args[1].copy()
            vals[target] = op.ref(node.attrs, *args, lr)
            continue
        vals[node.output] = np.asarray(op.ref(node.attrs, *args), np.float64)
    new_params = {p: vals[p] for p in g.params}
    return StepResult(float(vals[tg.loss]), grads, new_params, vals)


def forward(tg: TrainingGraph, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Logits of the model for one batch."""
    g = tg.graph
    vals: dict[str, np.ndarray] = {p: np.asarray(params[p], np.float64) for p in g.params}
    vals[tg.input] = np.asarray(x, np.float64).reshape(g.tensor(tg.input).shape)
    for node in g.nodes[: tg.n_forward]:
        vals[node.output] = ops.get(node.op).ref(node.attrs, *[vals[i] for i in node.inputs])
    return vals[tg.logits]


def max_rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """Worst error relative to the tensor's scale: max|got - want| / max(max|want|, tiny)."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-30)
    return float(np.max(np.abs(got - want))) / scale if want.size else 0.0


__all__ = ["Role", "StepResult", "forward", "max_rel_error", "train_step"]
