"""Federated against centralized training on emulated boards: held-out accuracy per round.

A fleet of K boards (default: four emulated Cortex-M4s, QEMU) trains digits-mlp through Flower (FedAvg), each round
L local steps of batch B per board, once with IID shards and once with Dirichlet(ALPHA) label skew; beside it one
board trains centrally on all the training samples with the same batch and the same number of device steps
(K x L per round). Every column is scored the same way after every round: the global (or central) weights on the
held-out samples, on the host reference. Also printed: the weight data a round sends and receives, and the board
energy a round costs (all clients together; the central board the same number of steps).

    python benchmarks/fleet.py [--board qemu-m4] [--clients 4] [--rounds 10] [--local-steps 5] [--alpha 0.3]
                               [--batch 32] [--lr LR] [--seed 0]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "compiler"))

from poetc.device import harness, target  # noqa: E402
from poetc.fleet import local, partition, weights  # noqa: E402
from poetc.fmt import joules, nbytes, table  # noqa: E402


def centralized(spec: local.FleetSpec, build, ds, evaluator, lr: float) -> tuple[list[float], list[float]]:
    """Accuracy after 0..R rounds' worth of device steps (K x L each) on one board, and energy per round."""
    names = weights.travelling(build)
    per_round = spec.clients * spec.local_steps
    it = harness.batches(ds, build.batch, spec.seed)
    tgt = target.for_board(build.board())
    accs, energy = [], []
    with tgt.launch(build.dir) as sess:
        dev = harness.Device(build, sess, tgt.seconds)
        accs.append(evaluator(dev.read_params(names)).accuracy)
        for _ in range(spec.rounds):
            e = 0.0
            for _ in range(per_round):
                x, y = next(it)
                dev.set_batch(x, y, ds.q8)
                out = dev.step(lr)
                r = out.reply
                pg = harness.storage_traffic(r)
                e += harness.step_energy(tgt.board, tgt, out.ticks, dev.tick_hz, pg).total_j
            energy.append(e)
            accs.append(evaluator(dev.read_params(names)).accuracy)
    return accs, energy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--board", default="qemu-m4" if shutil.which("qemu-system-arm") else "host")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--local-steps", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="poetc-fleet-bench-"))
    try:
        spec = local.FleetSpec(
            "digits-mlp", a.clients, a.rounds, (a.board,), work / "iid", batch=a.batch, lr=a.lr,
            local_steps=a.local_steps, seed=a.seed, schedule="store-all",
        )  # fmt: skip
        t0 = time.perf_counter()
        builds = local.build_all(spec, lambda s: None)
        runs = {}
        for label, part in (("IID", "iid"), (f"Dirichlet {a.alpha:g}", f"dirichlet:{a.alpha}")):
            s = local.FleetSpec(**{**vars(spec), "partition": partition.parse(part), "out": work / part})
            t = time.perf_counter()
            runs[label] = local.run(s, builds=builds)
            skew = partition.label_counts(runs[label].shards, 10)
            print(
                f"{label}: shards {[len(x.x) for x in runs[label].shards]}, largest class share per shard "
                f"{np.round(skew.max(axis=1) / skew.sum(axis=1), 2).tolist()}; {time.perf_counter() - t:.1f} s",
                flush=True,
            )
        first = builds[0]
        ds = local.load_data(spec, first)
        model, tg = harness.training_graph_of(first)
        evaluator = weights.Evaluator(tg, {**model.params, **model.state}, ds.x_test, ds.y_test)
        lr = runs["IID"].lr
        t = time.perf_counter()
        central, central_j = centralized(spec, first, ds, evaluator, lr)
        print(f"centralized: one {a.board}, {len(ds.x)} samples; {time.perf_counter() - t:.1f} s", flush=True)
        labels = list(runs)
        rows = []
        for r in range(a.rounds + 1):
            steps = r * a.clients * a.local_steps
            rows.append(
                [r, steps, *(f"{runs[k].rounds[r].accuracy:.3f}" for k in labels), f"{central[r]:.3f}"]
            )
        print()
        print(
            f"digits-mlp on {a.board}: {a.clients} clients x {a.local_steps} local steps of batch {a.batch} per "
            f"round, FedAvg, lr {lr:g}; centralized: the same batch and device steps on one board; held-out "
            f"accuracy ({len(ds.x_test)} samples)"
        )
        print(table(["round", "device steps", *labels, "centralized"], rows, "rr" + "r" * (len(labels) + 1)))
        r1 = runs["IID"].rounds[1]
        fleet_j = float(np.mean([sum(c.energy_j for c in r.clients) for r in runs["IID"].rounds[1:]]))
        print(
            f"per round: {nbytes(r1.bytes_down)} of weights sent, {nbytes(r1.bytes_up)} received; board energy "
            f"{joules(fleet_j)} for the fleet (IID), {joules(float(np.mean(central_j)))} centralized"
        )
        print(f"total {time.perf_counter() - t0:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
