"""The Flower side of a fleet: a ClientApp per board, a ServerApp with FedAvg (or FedAvgM), and a local run.

``client_app(resolve)``: a real ``flwr.clientapp.ClientApp`` whose ``train`` handler takes the global weights (an
ArrayRecord keyed by ONNX name) and the round's settings (a ConfigRecord: ``lr``, ``local-steps``), runs them on
the ``BoardClient`` that ``resolve(context)`` names (in a simulation, the one of the node's partition id; under a
SuperNode, the board this process serves), and replies with the board's weights and a MetricRecord:
``num-examples`` (the shard's size, FedAvg's weight), ``samples``, ``train-loss``, ``energy-j`` (compute and paging
split too), ``device-s``, ``link-bytes``, ``client``.

``server_app(settings, initial, evaluator, on_round)``: a real ``flwr.serverapp.ServerApp`` running Flower's
``FedAvg`` or ``FedAvgM`` (server momentum, Hsu et al. 2019) for ``rounds`` rounds from ``initial`` (the
travelling tensors only), scoring the global weights on the held-out samples after every round (Flower's
``evaluate_fn``, on the host reference) and handing each round's figures to ``on_round``. A client whose reply is
an error (its board died) is left out of that round's average, which the others complete; its reason is recorded.

``run_local``: Flower's simulation runtime (its in-memory SuperLink state, grid, per-node contexts and workers)
with one change: a thread backend in place of Ray's actor pool, so the ClientApp runs in this process, where
each board's session lives (a Ray actor is another process, and not pinned to one node). The runtime picks its
backend class by a module import (``vce_api.start_vce``), which ``_thread_backend`` stands in for during the run.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import PARTITION_ID_KEY, ErrorCode
from flwr.server.superlink.fleet.vce.backend import Backend, BackendConfig
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedAvgM

from ..errors import PoetcError
from .client import BoardClient
from .service import metrics_of
from .weights import Evaluator, payload_bytes

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"


# ---- the ClientApp ---------------------------------------------------------------------------------------------
def reply(msg: Message, weights: Mapping[str, np.ndarray], metrics: Mapping[str, float | int]) -> Message:
    """The train reply: the board's weights and its metrics."""
    return Message(
        RecordDict({ARRAYS: to_record(weights), METRICS: MetricRecord(dict(metrics))}), reply_to=msg
    )


def to_record(weights: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v, np.float32)) for k, v in weights.items()})


def from_record(rec: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: rec[k].numpy() for k in rec.keys()}


def client_app(
    resolve: Callable[[Context], BoardClient],
    on_step: Callable[[BoardClient, int], None] | None = None,
) -> ClientApp:
    """A ClientApp whose train handler runs a round on the board ``resolve(context)`` returns."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        client = resolve(context)
        cfg = msg.content[CONFIG]
        res = client.fit(from_record(msg.content[ARRAYS]), float(cfg["lr"]), int(cfg["local-steps"]), on_step)
        return reply(msg, res.weights, metrics_of(client, res))

    return app


def partition_resolver(clients: list[BoardClient]) -> Callable[[Context], BoardClient]:
    """In a simulation: the node's partition id is the client's place in the fleet."""

    def resolve(context: Context) -> BoardClient:
        return clients[int(context.node_config[PARTITION_ID_KEY])]

    return resolve


# ---- the ServerApp ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    rounds: int
    local_steps: int
    lr: float
    strategy: str = "fedavg"  # fedavg | fedavgm
    server_lr: float = 1.0  # FedAvgM
    server_momentum: float = 0.0  # FedAvgM
    min_clients: int = 2  # nodes that must be connected before a round starts (every client, locally)
    timeout_s: float = 3600.0  # how long a round waits for replies


def parse_strategy(text: str) -> tuple[str, float, float]:
    """``fedavg`` or ``fedavgm[:MOMENTUM[:SERVER_LR]]`` (default momentum 0.9, server rate 1)."""
    name, *rest = text.strip().lower().split(":")
    if name == "fedavg" and not rest:
        return "fedavg", 1.0, 0.0
    if name == "fedavgm" and len(rest) <= 2:
        try:
            momentum = float(rest[0]) if rest else 0.9
            lr = float(rest[1]) if len(rest) > 1 else 1.0
        except ValueError:
            momentum = lr = -1.0
        if 0 <= momentum < 1 and lr > 0:
            return "fedavgm", lr, momentum
    raise PoetcError(
        f"--aggregation {text}: expected fedavg or fedavgm[:MOMENTUM[:SERVER_LR]] (0 <= MOMENTUM < 1, SERVER_LR > 0)"
    )


@dataclass
class ClientRound:
    client: int
    examples: int
    samples: int
    train_loss: float
    energy_j: float
    compute_j: float
    paging_j: float
    device_s: float
    link_bytes: int


@dataclass
class RoundRecord:
    """One round as the server saw it (round 0: the initial weights, before any training)."""

    round: int
    accuracy: float
    test_loss: float
    train_loss: float | None = None  # sample-weighted over the clients that replied
    bytes_down: int = 0  # weight data sent to the clients
    bytes_up: int = 0  # weight data received from them
    clients: list[ClientRound] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # one reason per client whose round failed
    wall_s: float = 0.0

    def to_json(self) -> dict:
        return {
            "round": self.round,
            "accuracy": self.accuracy,
            "test_loss": self.test_loss,
            "train_loss": self.train_loss,
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "clients": [vars(c) for c in self.clients],
            "failures": self.failures,
            "wall_s": self.wall_s,
        }


class Recorder:
    """Collects each round's traffic, replies and failures; ``evaluate`` closes the round."""

    def __init__(self, evaluator: Evaluator, on_round: Callable[[RoundRecord], None] | None) -> None:
        self.evaluator = evaluator
        self.on_round = on_round
        self.rounds: list[RoundRecord] = []
        self.replies: dict[int, list[tuple[ClientRound, dict[str, np.ndarray]]]] = {}  # round -> results
        self.globals: dict[int, dict[str, np.ndarray]] = {}  # round -> global weights after it
        self._cur = RoundRecord(0, 0.0, 0.0)
        self._t0 = time.perf_counter()
        self.stopped = False  # set on Ctrl-C: the next round does not start

    def sent(self, rnd: int, n_messages: int, arrays: ArrayRecord) -> None:
        self._cur = RoundRecord(rnd, 0.0, 0.0)
        self._cur.bytes_down = n_messages * payload_bytes(from_record(arrays))

    def received(self, rnd: int, replies: list[Message]) -> None:
        got = []
        for msg in replies:
            if msg.has_error():
                self._cur.failures.append(msg.error.reason)
                continue
            m = msg.content[METRICS]
            w = from_record(msg.content[ARRAYS])
            self._cur.bytes_up += payload_bytes(w)
            c = ClientRound(
                int(m["client"]), int(m["num-examples"]), int(m["samples"]), float(m["train-loss"]),
                float(m["energy-j"]), float(m["compute-j"]), float(m["paging-j"]), float(m["device-s"]),
                int(m["link-bytes"]),
            )  # fmt: skip
            got.append((c, w))
        got.sort(key=lambda cw: cw[0].client)
        self._cur.clients = [c for c, _ in got]
        self.replies[rnd] = got
        if got:
            n = sum(c.examples for c in self._cur.clients)
            self._cur.train_loss = sum(c.train_loss * c.examples for c in self._cur.clients) / n

    def evaluate(self, rnd: int, arrays: ArrayRecord) -> MetricRecord:
        w = from_record(arrays)
        self.globals[rnd] = w
        score = self.evaluator(w)
        rec = self._cur if rnd > 0 else RoundRecord(0, 0.0, 0.0)
        rec.round, rec.accuracy, rec.test_loss = rnd, score.accuracy, score.loss
        rec.wall_s = time.perf_counter() - self._t0
        self.rounds.append(rec)
        if self.on_round is not None:
            self.on_round(rec)
        return MetricRecord({"accuracy": score.accuracy, "loss": score.loss})


def _train_metrics(records: list[RecordDict], key: str) -> MetricRecord:
    ms = [next(iter(r.metric_records.values())) for r in records]
    n = sum(float(m[key]) for m in ms)
    return MetricRecord(
        {
            "train-loss": sum(float(m["train-loss"]) * float(m[key]) for m in ms) / n,
            "energy-j": sum(float(m["energy-j"]) for m in ms),
        }
    )


def strategy(settings: Settings, rec: Recorder) -> FedAvg:
    """Flower's FedAvg or FedAvgM, reporting each round's messages to ``rec``; server-side evaluation only."""
    base = FedAvgM if settings.strategy == "fedavgm" else FedAvg
    kw = dict(
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=settings.min_clients,
        min_evaluate_nodes=0, min_available_nodes=settings.min_clients, train_metrics_aggr_fn=_train_metrics,
    )  # fmt: skip
    if base is FedAvgM:
        kw.update(server_learning_rate=settings.server_lr, server_momentum=settings.server_momentum)

    class Recording(base):  # type: ignore[misc, valid-type]
        def configure_train(
            self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
        ) -> Iterable[Message]:
            if rec.stopped:
                raise PoetcError("interrupted")
            msgs = list(super().configure_train(server_round, arrays, config, grid))
            rec.sent(server_round, len(msgs), arrays)
            return msgs

        def aggregate_train(self, server_round: int, replies: Iterable[Message]):
            replies = list(replies)
            rec.received(server_round, replies)
            return super().aggregate_train(server_round, replies)

    return Recording(**kw)


def server_app(
    settings: Settings,
    initial: Mapping[str, np.ndarray],
    evaluator: Evaluator,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> tuple[ServerApp, Recorder]:
    """The ServerApp and the recorder that will hold its rounds and global weights."""
    rec = Recorder(evaluator, on_round)
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        federate(grid, settings, initial, rec)

    return app, rec


def federate(grid: Grid, settings: Settings, initial: Mapping[str, np.ndarray], rec: Recorder) -> None:
    """The rounds: Flower's strategy from ``initial`` on ``grid``, every round recorded and evaluated."""
    strategy(settings, rec).start(
        grid=grid,
        initial_arrays=to_record(initial),
        num_rounds=settings.rounds,
        timeout=settings.timeout_s,
        train_config=ConfigRecord({"lr": settings.lr, "local-steps": settings.local_steps}),
        evaluate_fn=rec.evaluate,
    )


# ---- a local fleet: Flower's simulation runtime with a thread backend ---------------------------------------------
class ThreadBackend(Backend):
    """Runs the ClientApp in this process, one worker thread per node, so that every node's messages reach the
    board session it owns. A ClientApp that raises is answered with an error reply (Flower's ClientApp
    exception code and the error's text), as Flower does for a failing client, without a traceback."""

    def __init__(self, backend_config: BackendConfig) -> None:
        super().__init__(backend_config)
        self.workers = int(backend_config.get("init_args", {}).get("num_workers", 1))
        self.app: ClientApp | None = None

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        self.app = app_fn()

    @property
    def num_workers(self) -> int:
        return self.workers

    def is_worker_idle(self) -> bool:
        return True

    def terminate(self) -> None:
        pass

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        assert self.app is not None
        try:
            return self.app(message=message, context=context), context
        except Exception as e:
            reason = str(e) or type(e).__name__
            return Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message
            ), context


_RAY_BACKEND = "flwr.server.superlink.fleet.vce.backend.raybackend"
_lock = threading.Lock()


@contextmanager
def _thread_backend():
    """Flower's simulation runtime imports its backend class from the Ray backend's module when it starts; for
    the run, that module is one holding ``ThreadBackend``."""
    shim = types.ModuleType(_RAY_BACKEND)
    shim.RayBackend = ThreadBackend  # type: ignore[attr-defined]
    with _lock:
        old = sys.modules.get(_RAY_BACKEND)
        sys.modules[_RAY_BACKEND] = shim
        try:
            yield
        finally:
            if old is None:
                sys.modules.pop(_RAY_BACKEND, None)
            else:
                sys.modules[_RAY_BACKEND] = old


@contextmanager
def flower_log(verbose: bool):
    """Flower's own log on the console only with ``verbose`` (poetc prints each round itself)."""
    log = logging.getLogger("flwr")
    level = log.level
    log.setLevel(logging.DEBUG if verbose else logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def run_local(
    server: ServerApp,
    client: ClientApp,
    nodes: int,
    verbose: bool = False,
    on_interrupt: Callable[[], None] | None = None,
) -> None:
    """Run ``server`` and ``nodes`` SuperNodes of ``client`` in Flower's simulation runtime, in this process.

    The runtime runs in a thread of its own so that Ctrl-C reaches this one: ``on_interrupt`` then takes the boards
    down (their rounds fail at once), the ServerApp runs out its remaining rounds without them and the runtime
    stops, rather than a ServerApp thread waiting an hour for replies that will never come."""
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    failed: list[BaseException] = []

    def simulate() -> None:
        try:
            _run_simulation(
                num_supernodes=nodes,
                exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                client_app=client,
                server_app=server,
                backend_name="poetc-threads",
                backend_config={"init_args": {"num_workers": nodes}},
                verbose_logging=verbose,
            )
        except BaseException as e:
            failed.append(e)

    with _thread_backend(), flower_log(verbose):
        th = threading.Thread(target=simulate, name="poetc-flower-simulation", daemon=True)
        th.start()
        try:
            while th.is_alive():
                th.join(0.2)
        except KeyboardInterrupt:
            if on_interrupt is not None:
                on_interrupt()
            th.join(60)  # the round in progress fails at once, and no other starts
            raise
    if failed:
        e = failed[0]
        if isinstance(e, RuntimeError):  # the runtime wraps what stopped it
            cause = e.__cause__
            if isinstance(cause, PoetcError):
                raise cause from None
            raise PoetcError(f"the Flower simulation stopped: {cause or e}") from None
        raise e
