"""One board of a fleet: its build, its data shard and one long-lived connection to it.

A ``BoardClient`` launches its target once (``open``) and keeps the session for the whole federation: re-opening a
serial port toggles DTR and resets Arduino-style boards, and a reset board would lose its momentum buffers. A round
(``fit``) writes the global weights into the running target by name, runs the local steps on the shard's batches
(the same endless shuffled batches as ``poetc train``; the iterator lives across rounds), reads the travelling
tensors back and adds up the round's energy from the counted ticks and paging (``harness.step_energy``). Raw samples
go only to the board; only weights leave it.

A board that fails (crashed, hung, unplugged) raises a ``TargetError`` naming the client; the client is then
``dead`` and every later round fails at once with the same reason, so a federation can carry on without it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..data import Dataset
from ..device import harness
from ..device.target import Session, Target
from ..emit.builddir import BuildInfo
from ..errors import PoetcError, TargetError
from .weights import travelling


@dataclass
class FitResult:
    """What a client reports of one round (its weights go back to the server; the rest are metrics)."""

    weights: dict[str, np.ndarray]
    examples: int  # the shard's size: FedAvg's weight n_k
    samples: int  # samples trained on this round: local steps x batch
    losses: list[float] = field(default_factory=list)
    energy_j: float = 0.0  # compute + paging on the board, from its counted ticks
    compute_j: float = 0.0
    paging_j: float = 0.0
    device_s: float = 0.0  # seconds on the board's own clock
    link_bytes: int = 0  # bytes over the board's serial link this round (weights, batches, replies)
    wall_s: float = 0.0

    @property
    def loss(self) -> float:
        return float(np.mean(self.losses)) if self.losses else float("nan")


class BoardClient:
    """A board with its build and shard; ``index`` is its place in the fleet (Flower's partition id)."""

    def __init__(
        self,
        index: int,
        build: BuildInfo,
        target: Target,
        shard: Dataset,
        seed: int = 0,
        timeout_s: float = 120.0,
        port: str | None = None,
    ) -> None:
        self.index = index
        self.build = build
        self.target = target
        self.shard = shard
        self.seed = seed
        self.timeout_s = timeout_s
        self.port = port
        self.names = travelling(build)
        self.session: Session | None = None
        self.device: harness.Device | None = None
        self.dead: str | None = None  # why the board dropped out, once it has
        self._batches = harness.batches(shard, build.batch, seed)
        self._lock = threading.Lock()
        self.rounds = 0
        if len(shard.x) < build.batch:
            raise PoetcError(
                f"client {index} ({self.board}): its shard has {len(shard.x)} samples, fewer than the batch "
                f"{build.batch}"
            )

    @property
    def board(self) -> str:
        return self.target.board.name

    def __str__(self) -> str:
        return f"client {self.index} ({self.board})"

    def open(self) -> BoardClient:
        """Launch the target (QEMU, a host process) or open the board's serial port, once."""
        if self.device is None:
            kw = {"port": self.port} if self.port else {}
            self.session = self.target.launch(self.build.dir, timeout_s=self.timeout_s, **kw)
            try:
                self.device = harness.Device(self.build, self.session, self.target.seconds)
            except BaseException:
                self.session.close(graceful=False)
                self.session = None
                raise
        return self

    def close(self) -> None:
        if self.session is not None:
            self.session.close(graceful=self.dead is None)
            self.session = None
            self.device = None

    def abort(self, reason: str) -> None:
        """Take the board out of the federation now (Ctrl-C), even while a round runs on it: that round and
        every later one fail at once."""
        self.dead = reason
        sess = self.session
        if sess is not None:
            sess.close(graceful=False)

    def initial_weights(self) -> dict[str, np.ndarray]:
        """The travelling tensors as the board holds them after reset (the model's initial values)."""
        with self._lock:
            return self._dev().read_params(self.names)

    def _dev(self) -> harness.Device:
        if self.dead is not None:
            raise TargetError(f"{self}: dropped out earlier: {self.dead}")
        if self.device is None:
            self.open()
        assert self.device is not None
        return self.device

    def fit(
        self,
        weights: Mapping[str, np.ndarray],
        lr: float,
        steps: int,
        on_step: Callable[[BoardClient, int], None] | None = None,
    ) -> FitResult:
        """One round on the board: set ``weights``, train ``steps`` local steps at ``lr``, read the weights back."""
        missing = [n for n in self.names if n not in weights]
        if missing:
            raise PoetcError(f"{self}: the server sent no {missing[0]!r} ({len(missing)} tensors missing)")
        extra = [n for n in weights if n not in self.names]
        if extra:
            raise PoetcError(
                f"{self}: the server sent {extra[0]!r}, which this board's build does not train (its --train "
                f"trains {', '.join(self.names)})"
            )
        with self._lock:
            dev = self._dev()
            t0 = time.perf_counter()
            link = dev.link
            bytes0 = link.bytes_sent + link.bytes_received
            board = self.target.board
            res = FitResult({}, len(self.shard.x), steps * self.build.batch)
            try:
                for n in self.names:
                    dev.write_param(n, weights[n])
                for s in range(1, steps + 1):
                    x, y = next(self._batches)
                    dev.set_batch(x, y, self.shard.q8)
                    out = dev.step(lr)
                    r = out.reply
                    e = harness.step_energy(
                        board, self.target, out.ticks, dev.tick_hz,
                        harness.storage_traffic(r),
                    )  # fmt: skip
                    res.losses.append(out.loss)
                    res.compute_j += e.compute_j
                    res.paging_j += e.paging_j
                    res.device_s += e.total_s
                    if on_step is not None:
                        on_step(self, s)
                res.weights = dev.read_params(self.names)
            except TargetError as err:
                self.dead = str(err)
                self.close()
                raise TargetError(f"{self}: dropped out in round {self.rounds + 1}: {err}") from None
            res.energy_j = res.compute_j + res.paging_j
            res.link_bytes = link.bytes_sent + link.bytes_received - bytes0
            res.wall_s = time.perf_counter() - t0
            self.rounds += 1
            bad = [n for n, v in res.weights.items() if not np.all(np.isfinite(v))]
            if bad:
                raise PoetcError(f"{self}: {bad[0]} is not finite after round {self.rounds} (lower --lr)")
            return res
