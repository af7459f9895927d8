"""What crosses the network, how it is averaged, and how the server judges the global model.

Weights travel by ONNX initializer name (every board builds the same ONNX file, each with its own tensor ids): the
trainable parameters of the build (``--train``; frozen parameters never travel, the server and every board
already hold them) and the BatchNorm running statistics (a few floats per channel; unchanged ones average to
themselves). ``fedavg`` is the sample-weighted mean (McMahan et al. 2017) in numpy, the reference the tests hold
Flower's aggregation to. ``Evaluator`` scores global weights on the held-out samples with the host reference
(``graph/reference.forward``, float64), which needs no board and sees no client's data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..emit.builddir import BuildInfo
from ..errors import PoetcError
from ..frontend.quantize import to_u8
from ..graph import reference
from ..graph.autodiff import TrainingGraph


def travelling(build: BuildInfo) -> list[str]:
    """Names of the tensors a round sends both ways: trainable parameters, then the running statistics training
    updates (a frozen BatchNorm's are constants in the image's flash: they never change, so they never travel)."""
    training = build.doc["training"]
    updated = training.get("updated_state", build.doc.get("state", []))
    return list(training["trainable"]) + [s for s in build.doc.get("state", []) if s in updated]


def frozen(build: BuildInfo) -> list[str]:
    return list(build.doc["training"].get("frozen", []))


def check_same_model(builds: Sequence[BuildInfo]) -> list[str]:
    """The travelling names, after checking that every client's build trains the same tensors of the same
    model (same source, same shapes): a mixed fleet differs in board, RAM and schedule only."""
    first = builds[0]
    names = travelling(first)
    shapes = {n: first.tensor(n)["shape"] for n in names}
    for b in builds[1:]:
        if b.doc["model"]["sha256"] != first.doc["model"]["sha256"]:
            raise PoetcError(f"{b.dir}: built from another model than {first.dir}; a fleet trains one model")
        other = travelling(b)
        if other != names:
            raise PoetcError(
                f"{b.dir}: trains {', '.join(other)}, but {first.dir} trains {', '.join(names)}; build every "
                "board with the same --train"
            )
        for n in names:
            if b.tensor(n)["shape"] != shapes[n]:
                raise PoetcError(f"{b.dir}: {n} has shape {b.tensor(n)['shape']}, {first.dir} {shapes[n]}")
    return names


def fedavg(results: Sequence[Mapping[str, np.ndarray]], counts: Sequence[float]) -> dict[str, np.ndarray]:
    """Sample-weighted mean of the clients' weights, in float64, returned as float32."""
    if not results:
        raise ValueError("fedavg of no results")
    total = float(sum(counts))
    out: dict[str, np.ndarray] = {}
    for name in results[0]:
        acc = sum(np.asarray(r[name], np.float64) * (c / total) for r, c in zip(results, counts, strict=True))
        out[name] = np.asarray(acc, np.float32)
    return out


def payload_bytes(weights: Mapping[str, np.ndarray]) -> int:
    """Bytes of weight data in one message (float32 values; Flower's framing adds a little)."""
    return int(sum(np.asarray(v).nbytes for v in weights.values()))


@dataclass(frozen=True)
class Score:
    accuracy: float
    loss: float  # mean softmax cross-entropy on the held-out samples


class Evaluator:
    """Held-out accuracy and loss of a set of weights, computed on the host in float64 (inference mode)."""

    def __init__(
        self,
        tg: TrainingGraph,
        base: Mapping[str, np.ndarray],
        x: np.ndarray,
        y: np.ndarray,
        u8_scale: float | None = None,
    ):
        self.tg = tg
        self.base = dict(base)  # every parameter and state tensor: the model's values (frozen ones stay so)
        # a byte-input build (--input-u8) takes the quantized batch, as the target does
        self.x = (
            to_u8(np.asarray(x, np.float32), u8_scale) if u8_scale is not None else np.asarray(x, np.float32)
        )
        self.y = np.asarray(y, np.int64)
        self.batch = tg.graph.tensor(tg.input).shape[0]

    def __call__(self, weights: Mapping[str, np.ndarray]) -> Score:
        params = {**self.base, **weights}
        correct, loss_sum, b = 0, 0.0, self.batch
        for i in range(0, len(self.x), b):
            xb = self.x[i : i + b]
            n = len(xb)
            if n < b:
                xb = np.concatenate([xb, np.zeros((b - n, *xb.shape[1:]), xb.dtype)])
            logits = np.asarray(reference.forward(self.tg, params, xb), np.float64).reshape(b, -1)[:n]
            z = logits - logits.max(axis=1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            yb = self.y[i : i + n]
            loss_sum += float(-logp[np.arange(n), yb].sum())
            correct += int((logits.argmax(axis=1) == yb).sum())
        n = max(1, len(self.x))
        return Score(correct / n, loss_sum / n)
