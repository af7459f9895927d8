"""The host harness: drive a built model on its target over the link.

Loads batches, runs training steps and inference, reads parameters, gradients and counters back, and checks
one step against the host reference. The same code runs the host program, QEMU and real boards.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import frontend
from ..boards import Board
from ..data import Dataset, q8_params
from ..emit.builddir import BuildInfo, write_atomic
from ..errors import PoetcError, TargetError
from ..fmt import joules, nbytes, seconds, table
from ..frontend.quantize import from_u8, to_u8, u8_input
from ..graph import autodiff, reference
from ..graph.ir import Model
from ..schedule.program import Program
from . import meter as meter_mod
from .link import RunReply, StatusError
from .target import BoardTarget, LinuxTarget, QemuTarget, Session, Target

PROG_TRAIN, PROG_INFER = 0, 1


@dataclass
class StepOut:
    loss: float
    ticks: int
    reply: RunReply
    seconds: float  # on the target's own clock
    grads: dict[str, np.ndarray] = field(default_factory=dict)


class Device:
    """A running target with the tensor ids of its build. ``to_seconds`` turns (ticks, tick_hz) into seconds on
    the board (``Target.seconds``; QEMU's ticks are instructions)."""

    def __init__(
        self, build: BuildInfo, session: Session, to_seconds: Callable[[int, int], float] | None = None
    ) -> None:
        self.build = build
        self.session = session
        self.to_seconds = to_seconds or (lambda ticks, hz: ticks / hz)
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
        self.runs: list[meter_mod.RunMark] = []  # every RUN, with the host's clock around it (--meter)

    @property
    def tick_hz(self) -> int:
        return self.info.tick_hz

    def write_f32(self, tid: int, arr: np.ndarray) -> None:
        self.link.write(tid, np.ascontiguousarray(arr, dtype="<f4").tobytes())

    def read_f32(self, name: str) -> np.ndarray:
        """A tensor's value; a storage-homed one (not resident) comes from its slot, checked against its CRC."""
        t = self.build.tensor(name)
        if t.get("home") == "storage":
            raw = self.link.read(t["id"], t["bytes"] + 8)  # bytes, their CRC, the write number it covers
            raw, crc, gen = raw[:-8], int.from_bytes(raw[-8:-4], "little"), raw[-4:]
            if zlib.crc32(raw, zlib.crc32(struct.pack("<H", t["id"]) + gen)) != crc:
                raise TargetError(
                    f"target: the stored copy of {name!r} fails its CRC (storage corrupt, stale or misdirected?)"
                )
        else:
            raw = self.link.read(t["id"], t["bytes"])
        return np.frombuffer(raw, dtype="<f4").reshape(t["shape"]).copy()

    @property
    def input_u8_scale(self) -> float | None:
        """The scale of a byte input (models built with --input-u8), else None."""
        return self.build.doc.get("input_u8_scale")

    def read_input(self) -> np.ndarray:
        """The batch as the target holds it, as floats (dequantized for a byte input)."""
        name = self.build.doc["model"]["input"]
        scale = self.input_u8_scale
        if scale is None:
            return self.read_f32(name)
        t = self.build.tensor(name)
        raw = np.frombuffer(self.link.read(t["id"], t["bytes"]), dtype=np.uint8).reshape(t["shape"])
        return from_u8(raw, scale)

    def set_batch(self, x: np.ndarray, y: np.ndarray | None, q8: tuple[float, float] | None = None) -> None:
        x = np.asarray(x, np.float32)
        want = self.build.input_shape
        if x.shape != want:
            raise PoetcError(f"batch of shape {list(x.shape)} does not match the model input {list(want)}")
        qp = q8 if q8 is not None else q8_params(x)
        if self.input_u8_scale is not None:
            self.link.write_q8(self.ids["input"], to_u8(x, self.input_u8_scale).tobytes(), 1.0, 0.0)
        elif qp is not None:
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

        t0 = time.monotonic()
        r = self.link.run(PROG_TRAIN, lr, capture, on_grad)
        self.runs.append(meter_mod.RunMark(PROG_TRAIN, t0, time.monotonic()))
        if r.status != 0:
            raise StatusError(f"training step (instruction {r.pc})", r.status)
        out = StepOut(r.loss, r.ticks, r, self.to_seconds(r.ticks, self.tick_hz))
        for tid, buf in grads_raw.items():
            name = self.names[tid]
            out.grads[name] = np.frombuffer(bytes(buf), dtype="<f4").reshape(self.shapes[name]).copy()
        return out

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.set_batch(x, None)
        t0 = time.monotonic()
        r = self.link.run(PROG_INFER, 0.0)
        self.runs.append(meter_mod.RunMark(PROG_INFER, t0, time.monotonic()))
        if r.status != 0:
            raise StatusError(f"inference (instruction {r.pc})", r.status)
        return self.read_f32(self.build.doc["model"]["logits"])

    def params(self) -> dict[str, np.ndarray]:
        return {p: self.read_f32(p) for p in self.pids}

    def write_param(self, name: str, value: np.ndarray) -> None:
        """Overwrite a parameter or state tensor of the running target by its ONNX name (a fleet's global
        weights); the shape must be the build's."""
        t = next((t for t in self.build.doc["tensors"] if t["name"] == name), None)
        if t is None or t["role"] not in ("param", "state", "opt_state"):
            raise PoetcError(f"{self.build.dir}: the build has no parameter or state tensor {name!r}")
        arr = np.asarray(value, np.float32)
        if arr.shape != tuple(t["shape"]):
            raise PoetcError(f"{name}: got shape {list(arr.shape)}, the build holds {t['shape']}")
        if t.get("home") == "flash":
            raise PoetcError(f"{name} is frozen in the image's flash: it cannot be written")
        self.write_f32(t["id"], arr)
        if t.get("home") == "storage":  # its master copy on storage: the CRC after the new bytes
            self.link.seal(t["id"])

    def read_params(self, names: list[str]) -> dict[str, np.ndarray]:
        """The current values of some parameters (or state tensors), by ONNX name."""
        return {n: self.read_f32(n) for n in names}

    def state(self) -> dict[str, np.ndarray]:
        """State tensors (BatchNorm running statistics): trained like parameters, exported with them."""
        return {s: self.read_f32(s) for s in self.build.state_ids()}

    def node_ticks(self) -> list[int]:
        return self.link.ticks(self.info.n_nodes)


def check_flash_wear(build: BuildInfo, port: str, steps: int) -> None:
    """Refuse to train when the image pages to the board's internal flash (its port says so) and ``steps``
    steps would erase a flash page more often than it is rated for."""
    wear = build.doc.get("flash_pager")
    if "flash-pager" not in port or not wear or not wear.get("erases_per_step"):
        return
    total = steps * float(wear["erases_per_step"])
    if total > wear["endurance_cycles"]:
        raise PoetcError(
            f"{steps} steps would erase the most-worn page of the internal flash {total:.0f} times, over its "
            f"rated {wear['endurance_cycles']} cycles (this schedule erases it {wear['erases_per_step']:g} "
            f"times per step: at most {wear['max_steps']} steps); train with the SD card pager or fewer steps"
        )


def port_kw(tgt: Target, port: str | None) -> dict[str, str]:
    """``--port``: the serial device of a real board; any other target is refused rather than ignored."""
    if port is None:
        return {}
    if not isinstance(tgt, BoardTarget):
        how = "runs in QEMU" if isinstance(tgt, QemuTarget) else "runs as a process on this machine"
        raise PoetcError(
            f"--port {port}: board {tgt.board.name} {how}, not on a serial port; --port is for real boards"
        )
    return {"port": port}


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
    node_ticks: list[int] = field(default_factory=list)  # of the last training step
    paging: tuple[int, int, int, int] = (0, 0, 0, 0)  # page-in bytes, page-out bytes, page-ins, page-outs
    step_seconds: list[float] = field(default_factory=list)  # on the board's clock (Target.seconds)
    captured: list[int] = field(
        default_factory=list
    )  # steps that streamed gradients (their ticks include it)
    last_reply: RunReply | None = None
    metered: meter_mod.Metered | None = None  # the power meter's view of the steps (--meter)
    link_retried: int = 0  # requests sent again after a corrupted frame
    link_stale: int = 0  # late replies dropped
    link_resent: int = 0  # requests sent again after the target fell silent (a lost byte or reply)
    saved: Saved | None = None  # the last checkpoint (at the end: the trained weights)
    stopped: str | None = None  # why the run ended at a step boundary before its last step (Ctrl-C, SIGTERM)
    dump: dict[str, np.ndarray] | None = None  # --dump: the arrays the caller writes, after the weights

    @property
    def timed_ticks(self) -> list[int]:
        """Ticks of the steps that did nothing but compute and page (no gradient streaming)."""
        skip = set(self.captured)
        timed = [t for s, t in zip(self.steps, self.step_ticks, strict=True) if s not in skip]
        return timed or self.step_ticks

    @property
    def mean_step_s(self) -> float:
        return float(np.mean(self.step_seconds)) if self.step_seconds else 0.0


@dataclass(frozen=True)
class Saved:
    """A checkpoint the host holds, taken at a step boundary: parameters and running statistics (``weights``),
    momentum buffers (``opt``) and the steps done. What ``poetc train`` keeps of a run however it ends."""

    steps: int
    weights: dict[str, np.ndarray]
    opt: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class StartPoint:
    """Where a run starts when it is not the image's initial weights: a saved checkpoint and where it came from
    (``source``, for messages). ``poetc train --resume`` makes one from a run's files (``from_run``); a
    checkpoint the device keeps would be another source of the same record."""

    saved: Saved
    source: str
    run: int | None = None  # the run it came from (None: another source)

    @staticmethod
    def from_run(build: BuildInfo, run: int) -> StartPoint:
        rec = build.run_record(run)
        steps = rec.get("steps")
        if not isinstance(steps, int) or steps < 0:
            raise PoetcError(f"{build.run_summary(run)}: its train.json does not say how many steps it did")
        saved = Saved(steps, build.load_trained(run), build.load_optimizer(run))
        want = set(build.doc["params"]) | set(build.doc.get("state", []))
        if set(saved.weights) != want:
            raise PoetcError(
                f"{build.run_summary(run)}: its trained.npz does not hold this build's parameters"
            )
        missing = set(build.opt_state().values()) - set(saved.opt)
        if missing:
            raise PoetcError(
                f"{build.run_summary(run)}: no saved momentum buffer {sorted(missing)[0]!r} (optimizer.npz)"
            )
        return StartPoint(saved, build.run_summary(run), run)


class RunStopped(PoetcError):
    """Training ended before its last step: interrupted (Ctrl-C, SIGTERM) or failed (a target error, weights
    that stopped being finite). ``log`` is what ran; ``log.saved`` the last checkpoint (None: nothing to keep)."""

    def __init__(self, message: str, log: TrainLog, exit_code: int = 2, cause: BaseException | None = None):
        super().__init__(message)
        self.log = log
        self.exit_code = exit_code
        self.cause = cause


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
    meter: meter_mod.Ppk2Meter | None = None,
    port: str | None = None,
    start: StartPoint | None = None,
    stop: Callable[[], str | None] | None = None,
    save_every: int = 0,
    save_every_s: float = 10.0,
    on_save: Callable[[Saved, TrainLog], None] | None = None,
) -> tuple[TrainLog, dict[str, np.ndarray]]:
    """Train on the target up to step ``steps`` (counted from the image's initial weights, or from ``start``);
    returns the log and the trained parameters (also written by the caller). With a ``meter``, the board's
    current is sampled from the first step to the last and every step's energy metered. ``port``: a real board's
    serial device (default: found by USB id).

    Nothing trained is thrown away: the weights are read back (``on_save``) every ``save_every`` steps, or
    every ``save_every_s`` seconds when 0; ``stop()`` is asked before each step and a reason ends the run at that
    step boundary with its weights read back; any failure (a target error, a second Ctrl-C) raises
    ``RunStopped`` carrying the last checkpoint in ``log.saved``."""
    kw = port_kw(target, port)
    args = (build, target, ds, steps, lr, seed, eval_every, dump, on_step, timeout_s)
    more = dict(launch_kw=kw, start=start, stop=stop, save_every=save_every, save_every_s=save_every_s,
                on_save=on_save)  # fmt: skip
    if meter is not None:
        meter.open()  # as a source meter this powers the board: before the harness connects
        try:
            return _train(*args, meter=meter, **more)
        finally:
            meter.close()
    return _train(*args, meter=None, **more)


def _checkpoint(dev: Device, steps: int) -> Saved:
    build = dev.build
    return Saved(
        steps,
        {**dev.params(), **dev.state()},
        {v: dev.read_f32(v) for v in build.opt_state().values()},
    )


def _restore(dev: Device, saved: Saved) -> None:
    """Put a checkpoint's weights, running statistics and momentum buffers on the target (frozen parameters in
    flash cannot be written: they must equal the image's)."""
    for name, value in {**saved.weights, **saved.opt}.items():
        t = dev.build.tensor(name)
        if t.get("home") == "flash":
            if dev.read_f32(name).tobytes() != np.asarray(value, np.float32).tobytes():
                raise PoetcError(
                    f"{name}: the checkpoint's value differs from the image's frozen one (in flash)"
                )
            continue
        dev.write_param(name, value)


def _train(
    build: BuildInfo,
    target: Target,
    ds: Dataset,
    steps: int,
    lr: float,
    seed: int,
    eval_every: int,
    dump: Path | None,
    on_step: Callable[[int, float, float | None, StepOut], None] | None,
    timeout_s: float,
    meter: meter_mod.Ppk2Meter | None,
    launch_kw: dict[str, str],
    start: StartPoint | None,
    stop: Callable[[], str | None] | None,
    save_every: int,
    save_every_s: float,
    on_save: Callable[[Saved, TrainLog], None] | None,
) -> tuple[TrainLog, dict[str, np.ndarray]]:
    batch = build.batch
    log = TrainLog()
    first = start.saved.steps + 1 if start is not None else 1
    log.saved = start.saved if start is not None else None
    it = batches(ds, batch, seed)
    for _ in range(first - 1):  # the same data order as an uninterrupted run
        next(it)
    eval_x, eval_y = (ds.x_test, ds.y_test) if ds.x_test is not None else (ds.x[:256], ds.y[:256])
    t0 = time.perf_counter()
    dev: Device | None = None

    def save(s: int) -> None:
        assert dev is not None
        saved = _checkpoint(dev, s)
        check_finite({**saved.weights, **saved.opt}, f"after {s} training steps")
        log.saved = saved
        if on_save:
            on_save(saved, log)

    try:
        with target.launch(build.dir, timeout_s=timeout_s, **launch_kw) as sess:
            dev = Device(build, sess, target.seconds)
            check_flash_wear(build, dev.info.port, steps - first + 1)
            log.tick_hz = dev.tick_hz
            if start is not None:
                _restore(dev, start.saved)
            dumpd: dict[str, np.ndarray] = {}
            if dump is not None:
                dumpd.update({f"param/{k}": v for k, v in dev.params().items()})
                dumpd.update({f"state/{k}": v for k, v in dev.state().items()})
            if eval_every:  # accuracy before any step: what the model knew (a fine-tuning starts from it)
                log.evals.append((first - 1, accuracy(dev, eval_x, eval_y, batch)))
            if meter is not None:
                meter.start()
                dev.runs.clear()
            last_save = time.monotonic()
            for s in range(first, steps + 1):
                why = stop() if stop else None
                if why:
                    log.stopped = why
                    break
                x, y = next(it)
                dev.set_batch(x, y, ds.q8)
                capture = s == first and dump is not None
                if capture:
                    dumpd["x"] = dev.read_input()
                    dumpd["y"] = y.astype(np.int64)
                out = dev.step(lr, capture=capture)
                if capture:
                    dumpd.update({f"grad/{k}": v for k, v in out.grads.items()})
                    log.captured.append(s)
                log.steps.append(s)
                log.loss.append(out.loss)
                log.step_ticks.append(out.ticks)
                log.step_seconds.append(out.seconds)
                r = out.reply
                log.paging = storage_traffic(r)
                log.last_reply = r
                if (
                    s == steps
                ):  # the last training step's per-node ticks, before an evaluation's RUN replaces them
                    log.node_ticks = dev.node_ticks()
                acc = None
                if eval_every and (s % eval_every == 0 or s == steps or s == first):
                    acc = accuracy(dev, eval_x, eval_y, batch)
                    log.evals.append((s, acc))
                if on_step:
                    on_step(s, out.loss, acc, out)
                due = (save_every and s % save_every == 0) or (
                    not save_every and time.monotonic() - last_save >= save_every_s
                )
                if due and s < steps:
                    save(s)
                    last_save = time.monotonic()
            if meter is not None:
                log.metered = meter_mod.attribute(meter.stop(), dev.runs, meter.bit)
            done = log.steps[-1] if log.steps else first - 1
            final_saved = _checkpoint(dev, done)  # trained weights and running statistics
            log.link_retried, log.link_stale = dev.link.retried, dev.link.stale
            log.link_resent = dev.link.resent
    except BaseException as e:
        log.wall_s = time.perf_counter() - t0
        if dev is not None:
            log.link_retried, log.link_stale, log.link_resent = (
                dev.link.retried,
                dev.link.stale,
                dev.link.resent,
            )
        if isinstance(e, KeyboardInterrupt):
            raise RunStopped("interrupted", log, 130, e) from None
        if isinstance(e, PoetcError):
            raise RunStopped(str(e), log, e.exit_code, e) from None
        raise
    log.wall_s = time.perf_counter() - t0
    final = final_saved.weights
    try:
        check_finite({**final, **final_saved.opt}, f"after {final_saved.steps} training steps")
    except PoetcError as e:
        raise RunStopped(str(e), log, e.exit_code, e) from None
    log.saved = final_saved
    if log.stopped:
        return log, final
    if dump is not None:
        dumpd["loss"] = np.asarray(log.loss, np.float32)
        dumpd["lr"] = np.asarray(lr, np.float32)
        dumpd.update({f"final/{k}": v for k, v in final.items()})
        log.dump = dumpd
    return log, final


def check_finite(weights: dict[str, np.ndarray], when: str) -> None:
    """Weights read back from the target must be finite: a NaN or infinity is an error naming the parameter,
    never a result (the target itself checks only the loss)."""
    for name, v in weights.items():
        bad = ~np.isfinite(v)
        if bad.any():
            raise PoetcError(
                f"{name} holds {int(bad.sum())} NaN or infinite values {when} (training diverged: lower --lr, "
                "or check the data); no trained weights were written"
            )


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
    except BaseException:  # interrupted while writing: no half-written file left behind
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class VerifyResult:
    loss_device: float
    loss_ref: float
    errors: dict[str, float]  # per trainable parameter: max relative error of the gradient
    update_errors: dict[str, float]  # per trainable parameter: of the updated weights
    frozen_changed: list[str] = field(
        default_factory=list
    )  # frozen parameters the step changed (must be none)

    @property
    def worst(self) -> tuple[str, float]:
        k = max(self.errors, key=lambda n: self.errors[n])
        return k, self.errors[k]


def training_graph_of(build: BuildInfo) -> tuple[Model, autodiff.TrainingGraph]:
    model = frontend.load(build.dir / "model.onnx", batch=build.batch)
    if build.doc.get("input_u8_scale") is not None:
        model = u8_input(model, build.doc["input_u8_scale"])
    tg = autodiff.build(model, build.training())  # the recorded --train, --bn, --optimizer
    if tg.graph.fingerprint() != build.doc.get("graph_fingerprint"):
        raise PoetcError(f"{build.dir}: model.onnx no longer matches the build; rebuild it")
    return model, tg


def verify(
    build: BuildInfo,
    target: Target,
    ds: Dataset,
    lr: float,
    seed: int = 0,
    port: str | None = None,
    say: Callable[[str], None] = lambda s: None,
) -> VerifyResult:
    """One step on the target against the float64 host reference, from the same parameters and batch."""
    kw = port_kw(target, port)
    model, tg = training_graph_of(build)
    x, y = next(batches(ds, build.batch, seed))
    with target.launch(build.dir, **kw) as sess:
        dev = Device(build, sess, target.seconds)
        # the reference starts from the build's initial values (model.onnx), not from what the target holds: a
        # target whose image or storage carries other values is caught here rather than verified against itself
        params, state = initial_values(build, model, dev, say)
        opt = {v: dev.read_f32(v) for v in build.opt_state().values()}  # momentum buffers (zero at start)
        dev.set_batch(x, y, ds.q8)
        x_dev = dev.read_input()
        out = dev.step(lr, capture=True)
        after = dev.params()
    scale = build.doc.get("input_u8_scale")
    x_ref = x_dev if scale is None else to_u8(x_dev, scale)  # the reference's input is what the target holds
    ref = reference.train_step(tg, {**params, **state, **opt}, x_ref, y, lr)
    # judged at the model's gradient scale too: a bias before BatchNorm has an analytically zero gradient
    floor = reference.grad_floor(ref.grads)
    errs = {p: reference.max_rel_error(out.grads[p], ref.grads[p], floor) for p in tg.params}
    # the update's own rounding is measured against the step actually applied: lr * grad
    upd = {p: reference.max_rel_error(params[p] - after[p], params[p] - ref.params[p]) for p in tg.params}
    changed = [p for p in tg.frozen if params[p].tobytes() != after[p].tobytes()]
    return VerifyResult(out.loss, ref.loss, errs, upd, changed)


def initial_values(
    build: BuildInfo, model: Model, dev: Device, say: Callable[[str], None] = lambda s: None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The build's initial parameters and running statistics (from its model.onnx), after checking that the
    target holds exactly these. A target holding others gets a RESET (said through ``say``), which copies the
    image's initial values again: a real board keeps running between commands and may still hold the weights of
    a run (saved on the host by poetc train; verify's own step changes them anyway). Values that still differ
    after the reset come from the image itself or its storage: corrupted, or another build's."""
    want = {**model.params, **model.state}

    def differing() -> list[str]:
        held = {**dev.params(), **dev.state()}
        return [k for k, v in held.items() if np.asarray(want[k], np.float32).tobytes() != v.tobytes()]

    before = differing()
    if before:
        say(
            f"the target holds weights other than the image's initial ones ({before[0]}"
            + (f" and {len(before) - 1} more" if len(before) > 1 else "")
            + ": a previous run's?); resetting it to the image's initial values"
        )
        dev.link.reset()
        bad = differing()
        if bad:
            raise PoetcError(
                f"{build.dir}: the target's initial {bad[0]}"
                + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
                + " differs from the build's model.onnx even after a reset: the image (or its storage) is "
                "corrupted or from another build; rebuild or reflash"
            )
    params = {p: np.asarray(model.params[p], np.float32) for p in dev.pids}
    state = {s: np.asarray(model.state[s], np.float32) for s in build.state_ids()}
    return params, state


# ---- energy and per-node ticks -------------------------------------------------------------------------------
# Three names for energy, used everywhere a user sees one: "predicted" (the schedule's cost model), "counted"
# (ticks the target counted, as the board's seconds, x the board's power) and "metered" (a PPK2 on the board).
# A run whose ticks time an emulation on this machine rather than the board (qemu-aarch64) is "emulated" and
# gets no energy; QEMU's Cortex-M runs count instructions exactly, so they are "counted" and say "emulated".
@dataclass(frozen=True)
class Timing:
    """What a target's ticks are, and what its time and energy per step may be called (``timing()``)."""

    tick_unit: str  # instructions | cycles | ns
    how: str  # one line: how ticks become the board's seconds
    emulated: bool  # the run was emulated (QEMU, or qemu-aarch64 off the board)
    board_time: bool  # the seconds are the board's (False: they time an emulation on this machine)

    @property
    def label(self) -> str:
        """The name of the time and energy made from the ticks: "counted", or "emulated" when they are not the
        board's at all."""
        return "counted" if self.board_time else "emulated"

    def to_json(self) -> dict:
        return {"label": self.label, "tick_unit": self.tick_unit, "how": self.how, "emulated": self.emulated,
                "board_time": self.board_time}  # fmt: skip


def timing(tgt: Target) -> Timing:
    """The one place that decides how a target's ticks and the energy made from them are labelled."""
    b = tgt.board
    if isinstance(tgt, QemuTarget):
        return Timing(
            "instructions",
            f"instructions counted by QEMU (-icount, emulated) x {b.cycles_per_instruction:g} cycles/instruction / "
            f"{b.clock_hz / 1e6:g} MHz",
            True,
            True,
        )
    if isinstance(tgt, BoardTarget):
        return Timing("cycles", f"core cycles at {b.clock_hz / 1e6:g} MHz", False, True)
    if isinstance(tgt, LinuxTarget) and tgt.emulated:
        return Timing(
            "ns",
            f"CLOCK_MONOTONIC ns under qemu-aarch64 (user mode): the emulation's time on this machine, not the "
            f"{b.core}'s",
            True,
            False,
        )
    return Timing("ns", "CLOCK_MONOTONIC ns", False, True)


@dataclass(frozen=True)
class StepEnergy:
    """One training step's counted time and energy on the board, from what the target counted and reported.

    compute: seconds = Target.seconds(ticks) (QEMU: instructions x cycles_per_instruction / clock_hz; a real board:
    cycles / clock), times the board's active power (active_power_w, or flop_per_s / flop_per_j, which is the same
    power in POET's tables). paging: for each direction, count x latency + bytes / throughput seconds, times the
    board's memory power, as cost.py charges it. On a real board the ticks also include the CPU's time in the
    pager (SPI transfers); in QEMU the host file costs no instructions, only the CRC does."""

    ticks: int
    compute_s: float
    compute_j: float
    paging_s: float
    paging_j: float

    @property
    def total_j(self) -> float:
        return self.compute_j + self.paging_j

    @property
    def total_s(self) -> float:
        return self.compute_s + self.paging_s


def active_power_w(board: Board) -> float:
    return board.compute_power_w


def storage_traffic(r: RunReply) -> tuple[int, int, int, int]:
    """(bytes read, bytes written, reads, writes) of one step's storage traffic of every kind: activations
    paged in and out, parameters loaded and written back: what ``step_energy`` prices."""
    return (
        r.page_in_bytes + r.load_bytes,
        r.page_out_bytes + r.store_bytes,
        r.page_ins + r.loads,
        r.page_outs + r.stores,
    )


def step_energy(
    board: Board, target: Target, ticks: int, tick_hz: int, paging: tuple[int, int, int, int]
) -> StepEnergy:
    in_bytes, out_bytes, ins, outs = paging
    compute_s = target.seconds(ticks, tick_hz)
    page_s = (
        ins * board.page_in_latency_s
        + in_bytes / board.page_in_bytes_per_s
        + outs * board.page_out_latency_s
        + out_bytes / board.page_out_bytes_per_s
    )
    return StepEnergy(
        ticks, compute_s, compute_s * active_power_w(board), page_s, page_s * board.memory_power_w
    )


def predicted_source(build: BuildInfo, board: Board) -> str:
    """What the schedule's prediction was made from."""
    if (build.dir / "profile.json").is_file():
        return "a measured profile, profile.json"
    if board.instructions_per_flop:
        return (
            "instructions per FLOP per op measured on this board (board file) x cycles/instruction / clock x "
            "active power"
        )
    return "FLOPs / flop_per_j, POET's model"


def _schedule_prediction(build: BuildInfo) -> dict:
    sched = build.dir / "schedule.json"
    if not sched.is_file():
        return {}
    try:
        return json.loads(sched.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def energy_report(build: BuildInfo, target: Target, log: TrainLog) -> str:
    """The counted energy per step beside the schedule's prediction (schedule.json)."""
    if not log.step_ticks:
        return ""
    board = target.board
    tm = timing(target)
    ticks = int(np.mean(log.timed_ticks))
    e = step_energy(board, target, ticks, log.tick_hz, log.paging)
    pred = _schedule_prediction(build)

    def j(v: object) -> str:
        return joules(float(v)) if isinstance(v, int | float) else "-"

    def t(v: object) -> str:
        return seconds(float(v)) if isinstance(v, int | float) else "-"

    in_b, out_b, ins, outs = log.paging
    paging = (
        f"{ins} page-ins ({nbytes(in_b)}), {outs} page-outs ({nbytes(out_b)}) x the board's page-in/out latency, "
        f"throughput and {board.memory_power_w:g} W"
    )
    if tm.board_time:
        first = ["counted", j(e.compute_j), j(e.paging_j), j(e.total_j), t(e.total_s)]
        first.append("emulated: QEMU's instruction count" if tm.emulated else f"the board's {tm.tick_unit}")
        per = (
            f"{ticks:,} instructions per step x {board.cycles_per_instruction:g} cycles/instruction / "
            f"{board.clock_hz / 1e6:g} MHz (QEMU -icount, emulated)"
            if isinstance(target, QemuTarget)
            else f"{ticks:,} {tm.tick_unit} per step at {log.tick_hz / 1e6:g} MHz"
        )
        note = f"counted: {per} = {seconds(e.compute_s)} x {active_power_w(board) * 1e3:.4g} mW; paging: {paging}"
    else:
        first = ["emulated", "-", j(e.paging_j), "-", "-", "not the board's: no energy"]
        note = (
            f"emulated: {seconds(e.compute_s)} per step is {tm.how}, so no compute energy is made from it "
            f"(poetc profile on the board itself, or a power meter, gives one); paging: {paging}"
        )
    rows = [
        first,
        [
            "predicted",
            j(pred.get("compute_energy_j")),
            j(pred.get("paging_energy_j")),
            j(pred.get("energy_j")),
            t(pred.get("time_s")),
            "the schedule's cost model",
        ],
    ]
    return (
        table(["energy per step", "compute", "paging", "total", "time", "from"], rows, "lrrrrl")
        + f"\n{note}; predicted: the schedule's cost model ({predicted_source(build, board)})"
    )


def node_profile(build: BuildInfo, target: Target, log: TrainLog) -> str:
    """Per-node ticks of the last training step (the TICKS command), with FLOPs and the share of the step."""
    if not log.node_ticks:
        return ""
    nodes = build.doc.get("nodes", [])
    total = max(1, sum(log.node_ticks))
    unit = timing(target).tick_unit
    runs = node_runs(build)
    rows = []
    for i, tk in enumerate(log.node_ticks):
        nd = nodes[i] if i < len(nodes) else {}
        flops = int(nd.get("flops", 0))
        n = runs.get(i, 1) if runs else 1
        rows.append(
            [
                i,
                nd.get("name", f"node{i}"),
                nd.get("op", "?"),
                n if runs else "?",
                f"{tk:,}",
                f"{tk / (n * flops):.2f}" if flops and n else "-",
                seconds(target.seconds(tk, log.tick_hz)),
                f"{100 * tk / total:.1f}%",
            ]
        )
    per = "instr/FLOP" if unit == "instructions" else f"{unit}/FLOP"
    return table(["node", "name", "op", "runs", unit, per, "time", "share"], rows, "rllrrrrr")


def node_runs(build: BuildInfo) -> dict[int, int]:
    """How often each node computes in one training step (RUN plus every RECOMPUTE), from the build's
    program.json; empty when the build has none. A node's ticks cover all its runs."""
    path = build.dir / "program.json"
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    prog = next((p for p in doc.get("programs", []) if p.get("name") == "train"), None)
    if prog is None:
        return {}
    runs = Program.from_json(prog).runs(len(build.doc.get("nodes", [])), tuple(doc.get("ir_node", ())))
    return {i: int(n) for i, n in enumerate(runs) if n}


# ---- the training record (train.json) and the meter's report ------------------------------------------------------
TRAIN_RECORD = "train.json"


def train_record(build: BuildInfo, target: Target, log: TrainLog, lr: float, seed: int = 0) -> dict:
    """What ``poetc report`` shows of a training run: the loss curve, each step's ticks and board seconds, the
    last step's ticks per node, the paging counts, and the energy per step under its three names: counted (ticks
    as the board's seconds x its active power, paging counts x its constants; None when the ticks time an
    emulation rather than the board), predicted (the schedule's) and metered (--meter)."""
    board = target.board
    tm = timing(target)
    ticks = int(np.mean(log.timed_ticks)) if log.step_ticks else 0
    in_b, out_b, ins, outs = log.paging
    e = step_energy(board, target, ticks, log.tick_hz, log.paging)
    pin_s = ins * board.page_in_latency_s + in_b / board.page_in_bytes_per_s
    pout_s = outs * board.page_out_latency_s + out_b / board.page_out_bytes_per_s
    pred = _schedule_prediction(build)
    return {
        "board": board.name,
        "hash": build.doc["hash"],
        "steps": len(log.steps),
        "lr": lr,
        "seed": seed,
        "batch": build.batch,
        "tick_hz": log.tick_hz,
        "tick_unit": tm.tick_unit,
        "timing": tm.to_json(),
        "emulated": tm.emulated,
        "seconds_per_tick": target.seconds(10**9, log.tick_hz) / 1e9,
        "loss": log.loss,
        "evals": [list(ev) for ev in log.evals],
        "step_ticks": log.step_ticks,
        "step_seconds": log.step_seconds,
        "captured_steps": log.captured,
        "node_ticks": log.node_ticks,
        "node_seconds": [target.seconds(t, log.tick_hz) for t in log.node_ticks],
        "paging": {"page_in_bytes": in_b, "page_out_bytes": out_b, "page_ins": ins, "page_outs": outs},
        "counted_energy_per_step": {
            "ticks": ticks,
            "compute_s": e.compute_s,
            "compute_j": e.compute_j,
            "page_in_s": pin_s,
            "page_in_j": pin_s * board.memory_power_w,
            "page_out_s": pout_s,
            "page_out_j": pout_s * board.memory_power_w,
            "total_j": e.total_j,
        }
        if tm.board_time
        else None,
        "predicted_energy_per_step": {
            "compute_j": pred.get("compute_energy_j"),
            "paging_j": pred.get("paging_energy_j"),
            "total_j": pred.get("energy_j"),
            "time_s": pred.get("time_s"),
            "source": predicted_source(build, board),
        }
        if pred
        else None,
        "metered": log.metered.to_json() if log.metered is not None else None,
        "link": {"retried": log.link_retried, "stale_dropped": log.link_stale, "resent": log.link_resent},
        "wall_s": log.wall_s,
    }


def write_train_record(run_dir: Path, record: dict) -> Path:
    """The run's train.json (poetc train writes one per run: runs/<n>/)."""
    path = Path(run_dir) / TRAIN_RECORD
    write_atomic(path, json.dumps(record, indent=1) + "\n")
    return path


def metered_report(build: BuildInfo, target: Target, log: TrainLog) -> str:
    """The metered energy per step beside the counted one (--meter)."""
    m = log.metered
    if m is None:
        return ""
    skip = set(log.captured)
    steps_j = [j for s, j in zip(log.steps, m.train_j, strict=False) if s not in skip] or m.train_j
    if not steps_j:
        return f"metered: no training step in the trace ({m.note})"
    mean_j = float(np.mean(steps_j))
    ticks = int(np.mean(log.timed_ticks))
    counted = step_energy(target.board, target, ticks, log.tick_hz, log.paging).total_j
    vs = ""
    if timing(target).board_time:
        vs = f"counted {joules(counted)} " + (
            f"(metered / counted {mean_j / counted:.3g}); " if counted > 0 else "; "
        )
    return (
        f"metered: {joules(mean_j)} per step (min {joules(min(steps_j))}, max {joules(max(steps_j))}, "
        f"{len(steps_j)} steps) at {m.voltage_v:g} V; "
        + vs
        + f"idle {m.idle_a * 1e3:.3f} mA; {m.how}: {m.note}"
    )
