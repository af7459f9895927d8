"""``poetc fleet MODEL``: a local fleet of emulated (or host) boards training one model through Flower.

1. Build the model once per distinct board and RAM budget of the fleet (``pipeline.compile_model`` and
   ``builddir.write``, as ``poetc build``), in ``OUT/builds/<board>[-<ram>]``: the same ONNX and training options,
   each with its own schedule.
2. Split the training samples into one shard per client (``partition``); the held-out samples stay with the
   server, which scores the global weights on them after every round.
3. Launch every client's target once (``BoardClient.open``) and run the ServerApp and one ClientApp per board in
   Flower's simulation runtime (``flower.run_local``).
4. Write the final global weights like ``poetc train`` does (a new ``runs/<n>/trained.npz`` in every build, so
   ``poetc export`` takes them), and ``OUT/trained.npz`` and ``OUT/fleet.json`` (settings and every round).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import boards, data, frontend, pipeline
from ..device import harness, target
from ..emit import builddir
from ..errors import PoetcError
from ..fmt import joules, nbytes
from ..graph.options import TrainingOptions
from ..schedule import strategies
from . import flower
from .client import BoardClient
from .partition import Partition, split
from .weights import Evaluator, check_same_model, frozen

FLEET_RECORD = "fleet.json"


@dataclass(frozen=True)
class FleetSpec:
    model: str  # an ONNX file or a zoo name
    clients: int
    rounds: int
    boards: tuple[str, ...]  # client k gets boards[k % len(boards)]
    out: Path
    rams: tuple[int | None, ...] = (None,)  # per board of ``boards`` (one value: for all)
    batch: int | None = None
    input_u8: float | None = None
    data: str | None = None
    partition: Partition = Partition("iid")
    local_steps: int = 1
    lr: float | None = None  # default: the model's (zoo.default_lr)
    strategy: str = "fedavg"  # fedavg | fedavgm[:M[:LR]]
    seed: int = 0
    training: TrainingOptions = TrainingOptions()
    schedule: str = "poet"
    time_limit_s: float = 20.0
    command: str = ""
    verbose: bool = False  # Flower's own log
    on_build: Callable[[pipeline.Compiled, Path], None] | None = (
        None  # after each build (cli: report's files)
    )

    def check(self) -> None:
        if self.clients < 1:
            raise PoetcError(f"--clients must be at least 1, got {self.clients}")
        if self.rounds < 1:
            raise PoetcError(f"--rounds must be at least 1, got {self.rounds}")
        if self.local_steps < 1:
            raise PoetcError(f"--local-steps must be at least 1, got {self.local_steps}")
        if self.lr is not None and not self.lr > 0:
            raise PoetcError(f"--lr must be positive, got {self.lr}")
        if len(self.rams) not in (1, len(self.boards)):
            raise PoetcError(
                f"--ram: {len(self.rams)} budgets for {len(self.boards)} boards; give one for all or one per board"
            )
        flower.parse_strategy(self.strategy)

    def board_of(self, k: int) -> tuple[str, int | None]:
        i = k % len(self.boards)
        return self.boards[i], self.rams[i if len(self.rams) > 1 else 0]


@dataclass
class FleetResult:
    rounds: list[flower.RoundRecord]
    final: dict[str, np.ndarray]  # every parameter and state tensor: the global weights and the frozen ones
    builds: list[builddir.BuildInfo]  # per client
    replies: dict[int, list] = field(default_factory=dict)  # round -> [(ClientRound, weights)] the server got
    globals: dict[int, dict[str, np.ndarray]] = field(
        default_factory=dict
    )  # round -> global travelling weights
    shards: list[data.Dataset] = field(default_factory=list)
    lr: float = 0.0


def build_dir_name(board: str, ram: int | None) -> str:
    return board if ram is None else f"{board}-{ram}"


def build_all(spec: FleetSpec, say: Callable[[str], None]) -> list[builddir.BuildInfo]:
    """One build per distinct (board, RAM budget); the list has each client's."""
    wanted = [spec.board_of(k) for k in range(spec.clients)]
    bds = {b: boards.load(b) for b, _ in wanted}
    targets = {b: target.for_board(bd) for b, bd in bds.items()}
    model = frontend.load(spec.model, batch=spec.batch)
    if spec.input_u8 is not None:
        from ..frontend.quantize import u8_input

        model = u8_input(model, spec.input_u8)
    built: dict[tuple[str, int | None], builddir.BuildInfo] = {}
    for b, ram in dict.fromkeys(wanted):
        out = spec.out / "builds" / build_dir_name(b, ram)
        say(f"building {model.source} for {b}" + (f" with {ram} bytes of RAM" if ram else "") + f" in {out}")
        c = pipeline.compile_model(
            model, bds[b], ram, spec.schedule, spec.command, progress=None,
            opts=strategies.SolveOptions(time_limit_s=spec.time_limit_s), training=spec.training,
        )  # fmt: skip
        builddir.write(c, out, spec.command, targets[b])
        if spec.on_build is not None:
            spec.on_build(c, out)
        built[(b, ram)] = builddir.open_build(out)
        s = builddir.schedule_summary(c)
        say(
            f"  {b}: peak RAM {s['peak_ram_bytes']} B of {c.memory.budget}, {s['strategy']} schedule, "
            f"{len(c.tg.params)} trainable and {len(c.tg.frozen)} frozen parameter tensors"
        )
    return [built[w] for w in wanted]


def load_data(spec: FleetSpec, b: builddir.BuildInfo) -> data.Dataset:
    """The fleet's data; without held-out samples in the file, 20% of it (drawn with the seed) is held out."""
    shape = b.input_shape[1:]
    ds = data.load_npz(spec.data, shape, b.classes) if spec.data else data.digits_for(shape, b.classes)
    if ds.x_test is None:
        order = np.random.default_rng(spec.seed).permutation(len(ds.x))
        n_test = max(1, len(ds.x) // 5)
        te, tr = order[:n_test], order[n_test:]
        ds = replace(ds, x=ds.x[tr], y=ds.y[tr], x_test=ds.x[te], y_test=ds.y[te])
    return ds


def default_lr(spec: FleetSpec, b: builddir.BuildInfo) -> float:
    from ..frontend import zoo

    return spec.lr if spec.lr is not None else zoo.default_lr(b.doc["model"]["source"])


def run(
    spec: FleetSpec,
    say: Callable[[str], None] = lambda s: None,
    on_round: Callable[[flower.RoundRecord], None] | None = None,
    on_step: Callable[[BoardClient, int], None] | None = None,
    builds: list[builddir.BuildInfo] | None = None,
) -> FleetResult:
    """Build (unless ``builds`` are given), partition, launch, federate, write the weights."""
    spec.check()
    builds = builds or build_all(spec, say)
    if len(builds) != spec.clients:
        raise PoetcError(f"{len(builds)} builds for {spec.clients} clients: give one build per client")
    names = check_same_model(builds)
    first = builds[0]
    ds = load_data(spec, first)
    batch_max = max(b.batch for b in builds)
    shards = split(ds, spec.clients, spec.partition, spec.seed, min_size=batch_max)
    lr = default_lr(spec, first)
    _model, tg = harness.training_graph_of(first)
    base = {**_model.params, **_model.state}
    initial = {n: np.asarray(base[n], np.float32) for n in names}
    evaluator = Evaluator(tg, base, ds.x_test, ds.y_test, first.doc.get("input_u8_scale"))
    name, server_lr, momentum = flower.parse_strategy(spec.strategy)
    settings = flower.Settings(
        spec.rounds, spec.local_steps, lr, name, server_lr, momentum, min_clients=spec.clients
    )
    clients = [
        BoardClient(k, b, target.for_board(b.board()), shards[k], seed=spec.seed + k)
        for k, b in enumerate(builds)
    ]
    say(
        f"{spec.clients} clients ({', '.join(sorted({c.board for c in clients}))}), {len(names)} tensors travel "
        f"({sum(initial[n].size for n in names)} values), {len(frozen(first))} frozen stay; "
        f"partition {spec.partition}: shards of {', '.join(str(len(s.x)) for s in shards)} samples; "
        f"{len(ds.x_test)} held out on the server"
    )
    try:
        t0 = time.perf_counter()
        for c in clients:
            c.open()
        say(f"launched {len(clients)} boards in {time.perf_counter() - t0:.1f} s")
        interrupted: list[bool] = []

        def report(r: flower.RoundRecord) -> None:
            if on_round is not None and not interrupted:
                on_round(r)

        def interrupt() -> None:
            interrupted.append(True)
            rec.stopped = True
            for c in clients:
                c.abort("interrupted")

        server, rec = flower.server_app(settings, initial, evaluator, report)
        client = flower.client_app(flower.partition_resolver(clients), on_step)
        flower.run_local(server, client, spec.clients, verbose=spec.verbose, on_interrupt=interrupt)
    finally:
        for c in clients:
            c.close()
    if not rec.rounds:
        raise PoetcError("the federation ended before its first evaluation")
    last = max(rec.globals)
    final = {**{k: np.asarray(v, np.float32) for k, v in base.items()}, **rec.globals[last]}
    res = FleetResult(rec.rounds, final, builds, rec.replies, rec.globals, shards, lr)
    write_results(spec, res, settings)
    return res


def write_results(spec: FleetSpec, res: FleetResult, settings: flower.Settings) -> None:
    """OUT/trained.npz and OUT/fleet.json; a new run with the weights in every build directory."""
    spec.out.mkdir(parents=True, exist_ok=True)
    record = {
        "model": spec.model,
        "clients": spec.clients,
        "boards": [b.doc["board"] for b in res.builds],
        "builds": [str(b.dir) for b in res.builds],
        "partition": str(spec.partition),
        "shard_sizes": [len(s.x) for s in res.shards],
        "rounds": spec.rounds,
        "local_steps": spec.local_steps,
        "lr": res.lr,
        "strategy": spec.strategy,
        "server_lr": settings.server_lr,
        "server_momentum": settings.server_momentum,
        "seed": spec.seed,
        "history": [r.to_json() for r in res.rounds],
    }
    harness.write_npz(spec.out / builddir.TRAINED, res.final)
    _write_json(spec.out / FLEET_RECORD, record)
    for b in {str(b.dir): b for b in res.builds}.values():
        _n, run_dir = b.new_run()
        harness.write_npz(run_dir / builddir.TRAINED, res.final)
        _write_json(run_dir / FLEET_RECORD, record)


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PoetcError(f"{path}: cannot write: {e.strerror}") from None


# ---- the per-round lines ------------------------------------------------------------------------------------------
ROUND_HEADER = [
    "round",
    "held-out acc",
    "held-out loss",
    "train loss",
    "sent",
    "received",
    "energy per client",
]
_WIDTHS = [5, 12, 13, 10, 9, 9, 0]


def round_header() -> str:
    head = "  ".join(h.rjust(w) for h, w in zip(ROUND_HEADER, _WIDTHS, strict=True))
    return head + "\n" + "  ".join("-" * max(w, len(h)) for h, w in zip(ROUND_HEADER, _WIDTHS, strict=True))


def round_line(r: flower.RoundRecord) -> str:
    """One round: held-out accuracy and loss of the global weights, the clients' training loss, the weight data
    sent to and received from the clients, each client's energy on its board (c<k>: its place in the fleet)."""
    if len(r.clients) <= 6:
        energy = "  ".join(f"c{c.client} {joules(c.energy_j)}" for c in r.clients)
    else:
        e = [c.energy_j for c in r.clients]
        energy = f"mean {joules(float(np.mean(e)))} ({joules(min(e))} - {joules(max(e))}, {len(e)} clients)"
    if r.failures:
        energy += f"  ({len(r.failures)} failed)"
    cells = [
        str(r.round),
        f"{r.accuracy:.3f}",
        f"{r.test_loss:.4f}",
        "-" if r.train_loss is None else f"{r.train_loss:.4f}",
        nbytes(r.bytes_down),
        nbytes(r.bytes_up),
        energy or "-",
    ]
    line = "  ".join(c.rjust(w) for c, w in zip(cells, _WIDTHS, strict=True))
    return line + "".join(f"\n  round {r.round}: {f}" for f in r.failures)
