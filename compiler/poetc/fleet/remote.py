"""The Flower app of a real deployment: a SuperLink, ``poetc fleet --connect`` SuperNodes, and ``flwr run``.

Flower loads these by reference from a Flower app project (``examples/fleet-app/pyproject.toml``:
``serverapp = "poetc.fleet.remote:server_app"``, ``clientapp = "poetc.fleet.remote:client_app"``) in the processes
its SuperExec starts; poetc must be installed where they run (Flower is told not to install anything).

``client_app``: forwards each round to the board service of its SuperNode (``service.call``), found in the node
config that ``poetc fleet --connect`` gave the SuperNode (``poetc-board``, ``poetc-token``).

``server_app``: the same FedAvg/FedAvgM ServerApp as a local fleet (``flower.server_app``), set up from the run
config (``[tool.flwr.app.config]``, overridden with ``flwr run --run-config``): ``model``, ``rounds``,
``local-steps``, ``lr`` (0: the model's), ``strategy``, ``train`` (``--train``), ``batch`` (0: the model's),
``min-clients``, ``data`` (an .npz whose held-out samples score the global weights; empty: the bundled digits) and
``out`` (where ``trained.npz`` and ``fleet.json`` go). It builds the training graph itself (no board needed), sends
the travelling tensors' initial values and logs every round through Flower's log.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from .. import data, frontend
from ..errors import PoetcError
from ..graph import autodiff
from ..graph.options import TrainingOptions
from . import flower, service
from .weights import Evaluator

BOARD_KEY, TOKEN_KEY = "poetc-board", "poetc-token"

client_app = ClientApp()


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    address = str(context.node_config.get(BOARD_KEY, ""))
    if not address:
        raise PoetcError(
            "this SuperNode serves no poetc board: start it with poetc fleet MODEL --connect ADDR"
        )
    cfg = msg.content[flower.CONFIG]
    weights, metrics = service.call(
        address,
        str(context.node_config.get(TOKEN_KEY, "")),
        flower.from_record(msg.content[flower.ARRAYS]),
        float(cfg["lr"]),
        int(cfg["local-steps"]),
    )
    return flower.reply(msg, weights, metrics)


server_app = ServerApp()

DEFAULTS = {
    "model": "digits-mlp",
    "rounds": 3,
    "local-steps": 1,
    "lr": 0.0,
    "strategy": "fedavg",
    "train": "all",
    "batch": 0,
    "min-clients": 2,
    "data": "",
    "out": "poetc-fleet-server",
}


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    from ..frontend import zoo

    cfg = {**DEFAULTS, **dict(context.run_config)}
    model = frontend.load(str(cfg["model"]), batch=int(cfg["batch"]) or None)
    tg = autodiff.build(model, TrainingOptions(str(cfg["train"])))
    names = list(tg.params) + [s for s in model.state if s in tg.state_updates]  # as fleet.weights.travelling
    base = {**model.params, **model.state}
    shape = tuple(tg.graph.tensor(tg.input).shape[1:])
    classes = int(tg.graph.tensor(tg.logits).shape[-1])
    ds = data.load_npz(str(cfg["data"]), shape, classes) if cfg["data"] else data.digits_for(shape, classes)
    if ds.x_test is None:
        raise PoetcError(f"run config data={cfg['data']}: the server needs held-out samples (x_test, y_test)")
    name, server_lr, momentum = flower.parse_strategy(str(cfg["strategy"]))
    lr = float(cfg["lr"]) or zoo.default_lr(model.source)
    settings = flower.Settings(
        int(cfg["rounds"]), int(cfg["local-steps"]), lr, name, server_lr, momentum, int(cfg["min-clients"])
    )
    log = logging.getLogger("flwr")
    from .local import round_header, round_line

    log.info(
        "poetc fleet: %s, %d rounds, %s; %d tensors travel", model.source, settings.rounds, name, len(names)
    )
    log.info("%s", round_header())
    app_rounds: list[flower.RoundRecord] = []

    def on_round(r: flower.RoundRecord) -> None:
        app_rounds.append(r)
        log.info("%s", round_line(r))

    initial = {n: np.asarray(base[n], np.float32) for n in names}
    evaluator = Evaluator(tg, base, ds.x_test, ds.y_test)
    rec = flower.Recorder(evaluator, on_round)
    flower.federate(grid, settings, initial, rec)
    out = Path(str(cfg["out"]))
    out.mkdir(parents=True, exist_ok=True)
    final = {**{k: np.asarray(v, np.float32) for k, v in base.items()}, **rec.globals[max(rec.globals)]}
    np.savez(out / "trained.npz", **final)
    (out / "fleet.json").write_text(
        json.dumps({"config": cfg, "history": [r.to_json() for r in app_rounds]}, indent=1) + "\n"
    )
    log.info("poetc fleet: weights in %s", out / "trained.npz")
