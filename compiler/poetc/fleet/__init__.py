"""Fleet: many boards train one model together through Flower (federated learning, ``flwr``).

In: a model, the boards of the fleet (each built for its own RAM budget and schedule), a data set split into one
shard per board, and the federation's settings (rounds, local steps, strategy). Out: the global weights after
every round, per round the held-out accuracy, loss, bytes sent and each board's energy; the final weights.
- ``partition``: IID and Dirichlet shards of a data set (numpy only);
- ``client``: ``BoardClient``, one board behind one long-lived connection: global weights in, local steps,
  weights out, energy of the round (the device harness only; no Flower);
- ``weights``: what travels (trainable parameters and running statistics, by ONNX name), numpy FedAvg, the
  server's held-out evaluation on the host reference;
- ``flower``: the Flower apps (ClientApp, ServerApp with FedAvg or FedAvgM), run offline; a thread backend for
  Flower's simulation runtime, so each client's board lives in this process;
- ``local``: ``poetc fleet MODEL``: build per board, launch, simulate, report, write the weights;
- ``service``: a board held open by one process and lent to Flower's ClientApp processes over loopback;
- ``remote``: the ClientApp and ServerApp of a real deployment (``flwr run examples/fleet-app``);
- ``supernode``: ``poetc fleet --connect ADDR``: one board served to a Flower SuperNode of a real SuperLink.

Flower is imported only by ``flower``, ``remote`` and the modules that use them (``local``, ``supernode``), and
only when a fleet runs: it is the ``fleet`` extra. Importing this package sets Flower's offline switches.

May import: ``device``, ``emit``, ``pipeline``, ``frontend``, ``schedule``, ``graph``, the ground floor.
"""

import os

# Flower's own switches for running offline, set before any Flower module is imported (its telemetry reads its
# switch at import time): no runtime installation of an app's dependencies, no telemetry, no update check, and no
# usage statistics from Ray should a simulation ever start it. A value the user set is kept.
OFFLINE_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}
for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)

FLWR_PIN = "1.42.0"  # the flwr release the fleet extra pins (pyproject.toml); ``flower`` uses its runtime


def require_flower() -> None:
    """Flower is importable, or a one-line error saying how to install it."""
    from ..errors import PoetcError

    try:
        import flwr
    except ImportError:
        raise PoetcError(
            f"poetc fleet needs Flower (flwr {FLWR_PIN}): pip install 'poetc[fleet]' (scripts/setup.sh installs it)"
        ) from None
    have = getattr(flwr, "__version__", "?")
    if have.split(".")[:2] != FLWR_PIN.split(".")[:2]:
        raise PoetcError(f"poetc fleet runs on flwr {FLWR_PIN}; this environment has flwr {have}")
