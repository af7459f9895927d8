"""Which SGD learning rate learns for each zoo model: the measurement behind ``zoo.ZooEntry.lr``.

For each model it builds the host program (store-all schedule, the model's default batch), trains it for the
README's step count (200) on the bundled 8x8 digits at each rate of a grid, from the same initial weights and
batches, and prints the held-out accuracy (20% of the digits) and the mean loss of the last 20 steps. A rate
"learns" when its accuracy is well above chance (0.1) and its loss fell; the default is the best such rate.
tiny-bert has two classes, so it trains on a synthetic two-class task instead, which the digits cannot provide:
is the sum of the first half of the first token's features larger than the second half's (LayerNorm keeps that).

    python benchmarks/zoo_learning_rates.py [--models digits-mlp,examples/digits-mlp.onnx] [--rates 0.05,0.1]
                                            [--steps 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "compiler"))

from poetc import boards, data, frontend, pipeline  # noqa: E402
from poetc.device import harness, target  # noqa: E402
from poetc.emit import builddir  # noqa: E402
from poetc.fmt import table  # noqa: E402
from poetc.frontend import zoo  # noqa: E402


def dataset(b: builddir.BuildInfo) -> data.Dataset:
    shape = b.input_shape[1:]
    if b.classes >= 10:
        return data.digits_for(shape, b.classes)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, *shape)).astype(np.float32)
    first = x.reshape(len(x), shape[0], -1)[:, 0]  # the first token (what the classifier reads)
    half = first.shape[1] // 2
    y = (first[:, :half].sum(axis=1) > first[:, half:].sum(axis=1)).astype(np.int64)  # survives LayerNorm
    return data.Dataset(x[:800], y[:800], x[800:], y[800:], "synthetic two-class")


def measure(name: str, rates: list[float], steps: int, work: Path) -> list[list[object]]:
    board = boards.load("host")
    model = frontend.load(name)
    c = pipeline.compile_model(model, board, strategy="store-all", command="benchmarks/zoo_learning_rates.py")
    out = work / Path(name).stem
    tgt = target.for_board(board)
    builddir.write(c, out, "benchmarks/zoo_learning_rates.py", tgt)
    b = builddir.open_build(out)
    ds = dataset(b)
    rows = []
    for lr in rates:
        log, _ = harness.train(b, tgt, ds, steps, lr, seed=0, eval_every=steps, timeout_s=600)
        loss = np.asarray(log.loss)
        last = float(np.mean(loss[-20:])) if np.all(np.isfinite(loss[-20:])) else float("nan")
        acc = log.evals[-1][1]
        rows.append([name, b.batch, f"{lr:g}", f"{loss[0]:.3f}", f"{last:.3f}", f"{acc:.3f}"])
        print("  ".join(map(str, rows[-1])), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(zoo.NAMES))
    ap.add_argument("--rates", default="0.01,0.05,0.1,0.2,0.4")
    ap.add_argument("--steps", type=int, default=200)
    a = ap.parse_args()
    rates = [float(r) for r in a.rates.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            rows += measure(name, rates, a.steps, Path(tmp))
    print(table(["model", "batch", "lr", "first loss", "last loss", "held-out acc"], rows, "lrrrrr"))


if __name__ == "__main__":
    main()
