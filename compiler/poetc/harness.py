"""The host harness: drive a built model on its target over the link.

Loads batches, runs training steps and inference, reads parameters, gradients and counters back, and checks
one step against the host reference. The same code runs the host program, QEMU and real boards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import autodiff, frontend, reference
from .builddir import BuildInfo
from .data import Dataset, q8_params
from .errors import PoetcError, TargetError
from .link import RunReply, StatusError
from .target import Session, Target

PROG_TRAIN, PROG_INFER = 0, 1


@dataclass
class StepOut:
    loss: float
    ticks: int
    reply: RunReply
    seconds: float  # on the target's own clock
    grads: dict[str, np.ndarray] = field(default_factory=dict)


class Device:
    """A running target with the tensor ids of its build."""

    def __init__(self, build: BuildInfo, session: Session) -> None:
        self.build = build
        self.session = session
        self.link = session.link
        self.info = self.link.info()
        if self.info.hash_hex != build.doc["hash"]:
            raise TargetError(
                f"target runs build {self.info.hash_hex}, but {build.dir} is build "
                f"{build.doc['hash']}; rebuild or reflash"
            )
        self.ids = build.ids
        self.pids = build.param_ids()
        self.names = {t["id"]: t["name"] for t in build.doc["tensors"]}
        self.shapes = {t["name"]: tuple(t["shape"]) for t in build.doc["tensors"]}

    @property
    def tick_hz(self) -> int:
        return self.info.tick_hz

    def write_f32(self, tid: int, arr: np.ndarray) -> None:
        self.link.write(tid, np.ascontiguousarray(arr, dtype="<f4").tobytes())

    def read_f32(self, name: str) -> np.ndarray:
        t = self.build.tensor(name)
        raw = self.link.read(t["id"], t["bytes"])
        return np.frombuffer(raw, dtype="<f4").reshape(t["shape"]).copy()

    def set_batch(self, x: np.ndarray, y: np.ndarray | None, q8: tuple[float, float] | None = None) -> None:
        x = np.asarray(x, np.float32)
        want = self.build.input_shape
        if x.shape != want:
            raise PoetcError(f"batch of shape {list(x.shape)} does not match the model input {list(want)}")
        qp = q8 if q8 is not None else q8_params(x)
        if qp is not None:
            q = np.round(x / np.float32(qp[0])).astype(np.uint8)
            self.link.write_q8(self.ids["input"], q.tobytes(), qp[0], qp[1])
        else:
            self.write_f32(self.ids["input"], x)
        if y is not None:
            y = np.asarray(y, np.int64)
            if y.max(initial=0) < 256 and y.min(initial=0) >= 0:
                self.link.write_q8(self.ids["label"], y.astype(np.uint8).tobytes(), 1.0, 0.0)
            else:
                self.link.write(self.ids["label"], y.astype("<i4").tobytes())

    def step(self, lr: float, capture: bool = False) -> StepOut:
        grads_raw: dict[int, bytearray] = {}

        def on_grad(tid: int, off: int, data: bytes) -> None:
            buf = grads_raw.setdefault(tid, bytearray())
            if off != len(buf):
                raise TargetError(f"target: gradient chunk for tensor {tid} at {off}, expected {len(buf)}")
            buf += data

        r = self.link.run(PROG_TRAIN, lr, capture, on_grad)
        if r.status != 0:
            raise StatusError(f"training step (instruction {r.pc})", r.status)
        out = StepOut(r.loss, r.ticks, r, r.ticks / self.tick_hz)
        for tid, buf in grads_raw.items():
            name = self.names[tid]
            out.grads[name] = np.frombuffer(bytes(buf), dtype="<f4").reshape(self.shapes[name]).copy()
        return out

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.set_batch(x, None)
        r = self.link.run(PROG_INFER, 0.0)
        if r.status != 0:
            raise StatusError(f"inference (instruction {r.pc})", r.status)
        return self.read_f32(self.build.doc["model"]["logits"])

    def params(self) -> dict[str, np.ndarray]:
        return {p: self.read_f32(p) for p in self.pids}

    def node_ticks(self) -> list[int]:
        return self.link.ticks(self.info.n_nodes)


def batches(ds: Dataset, batch: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless shuffled batches (a new permutation every epoch); the last partial batch of an epoch is dropped."""
    n = len(ds.x)
    if n < batch:
        raise PoetcError(f"the data has {n} samples, fewer than the batch size {batch}")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n)
        for i in range(0, n - batch + 1, batch):
            idx = order[i : i + batch]
            yield ds.x[idx], ds.y[idx]


def accuracy(dev: Device, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    """Held-out accuracy on the target (inference program); a last partial batch is padded and ignored."""
    correct = 0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        n = len(xb)
        if n < batch:
            xb = np.concatenate([xb, np.zeros((batch - n, *xb.shape[1:]), np.float32)])
        logits = dev.infer(xb).reshape(batch, -1)
        correct += int((logits[:n].argmax(axis=1) == y[i : i + n]).sum())
    return correct / max(1, len(x))


@dataclass
class TrainLog:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)  # (step, accuracy)
    step_ticks: list[int] = field(default_factory=list)
    tick_hz: int = 1
    wall_s: float = 0.0
    node_ticks: list[int] = field(default_factory=list)
    paging: tuple[int, int, int, int] = (0, 0, 0, 0)  # page-in bytes, page-out bytes, page-ins, page-outs


def train(
    build: BuildInfo,
    target: Target,
    ds: Dataset,
    steps: int,
    lr: float,
    seed: int = 0,
    eval_every: int = 0,
    dump: Path | None = None,
    on_step: Callable[[int, float, float | None, StepOut], None] | None = None,
    timeout_s: float = 120.0,
) -> tuple[TrainLog, dict[str, np.ndarray]]:
    """Train on the target; returns the log and the trained parameters (also written by the caller)."""
    batch = build.batch
    log = TrainLog()
    it = batches(ds, batch, seed)
    eval_x, eval_y = (ds.x_test, ds.y_test) if ds.x_test is not None else (ds.x[:256], ds.y[:256])
    t0 = time.perf_counter()
    with target.launch(build.dir, timeout_s=timeout_s) as sess:
        dev = Device(build, sess)
        log.tick_hz = dev.tick_hz
        dumpd: dict[str, np.ndarray] = {}
        if dump is not None:
            dumpd.update({f"param/{k}": v for k, v in dev.params().items()})
        for s in range(1, steps + 1):
            x, y = next(it)
            dev.set_batch(x, y, ds.q8)
            if s == 1 and dump is not None:
                dumpd["x"] = dev.read_f32(build.doc["model"]["input"])
                dumpd["y"] = y.astype(np.int64)
            out = dev.step(lr, capture=(s == 1 and dump is not None))
            if s == 1 and dump is not None:
                dumpd.update({f"grad/{k}": v for k, v in out.grads.items()})
            log.steps.append(s)
            log.loss.append(out.loss)
            log.step_ticks.append(out.ticks)
            r = out.reply
            log.paging = (r.page_in_bytes, r.page_out_bytes, r.page_ins, r.page_outs)
            acc = None
            if eval_every and (s % eval_every == 0 or s == steps or s == 1):
                acc = accuracy(dev, eval_x, eval_y, batch)
                log.evals.append((s, acc))
            if on_step:
                on_step(s, out.loss, acc, out)
        log.node_ticks = dev.node_ticks() if steps else []
        final = dev.params()
    log.wall_s = time.perf_counter() - t0
    if dump is not None:
        dumpd["loss"] = np.asarray(log.loss, np.float32)
        dumpd["lr"] = np.asarray(lr, np.float32)
        dumpd.update({f"final/{k}": v for k, v in final.items()})
        write_npz(dump, dumpd)
    return log, final


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically: a temporary file renamed into place."""
    path = Path(path)
    if path.suffix != ".npz":
        raise PoetcError(f"{path}: the dump file must end in .npz")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PoetcError(f"{path}: cannot write: {e.strerror}") from None


@dataclass
class VerifyResult:
    loss_device: float
    loss_ref: float
    errors: dict[str, float]  # per parameter: max relative error of the gradient
    update_errors: dict[str, float]  # per parameter: of the updated weights

    @property
    def worst(self) -> tuple[str, float]:
        k = max(self.errors, key=lambda n: self.errors[n])
        return k, self.errors[k]


def training_graph_of(build: BuildInfo) -> tuple[frontend.Model, autodiff.TrainingGraph]:
    model = frontend.load(build.dir / "model.onnx", batch=build.batch)
    tg = autodiff.build_training_graph(model)
    if tg.graph.fingerprint() != build.doc.get("graph_fingerprint"):
        raise PoetcError(f"{build.dir}: model.onnx no longer matches the build; rebuild it")
    return model, tg


def verify(build: BuildInfo, target: Target, ds: Dataset, lr: float, seed: int = 0) -> VerifyResult:
    """One step on the target against the float64 host reference, from the same parameters and batch."""
    _model, tg = training_graph_of(build)
    x, y = next(batches(ds, build.batch, seed))
    with target.launch(build.dir) as sess:
        dev = Device(build, sess)
        params = dev.params()
        dev.set_batch(x, y, ds.q8)
        x_dev = dev.read_f32(build.doc["model"]["input"])
        out = dev.step(lr, capture=True)
        after = dev.params()
    ref = reference.train_step(tg, params, x_dev, y, lr)
    errs = {p: reference.max_rel_error(out.grads[p], ref.grads[p]) for p in params}
    # the update's own rounding is measured against the step actually applied: lr * grad
    upd = {p: reference.max_rel_error(params[p] - after[p], params[p] - ref.params[p]) for p in params}
    return VerifyResult(out.loss, ref.loss, errs, upd)
