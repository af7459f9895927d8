"""Training-step time on the host: the generated C (reference kernels, -O2) against PyTorch on the CPU, one thread.

For each zoo model it builds the host program (store-all schedule), runs a few training steps through the link
and takes the median of the step times the program measured itself (its own clock, so link traffic is not
counted); PyTorch runs the model's twin (tests/zoo_torch.py) in float32, train mode, one thread: forward,
cross-entropy, backward and an SGD step, median of the same number of steps after one warm-up step. FLOPs are
poetc's count for the whole training step (forward, backward, updates).

    python benchmarks/host_step_time.py [--models lenet,resnet8,...] [--steps 5] [--batch N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poetc import boards, frontend, pipeline  # noqa: E402
from poetc.device import harness, target  # noqa: E402
from poetc.emit import builddir  # noqa: E402
from poetc.fmt import table  # noqa: E402
from poetc.frontend import zoo  # noqa: E402

MODELS = ["lenet", "resnet8", "resnet18-cifar", "mobilenetv2-cifar", "vgg11-cifar", "tiny-bert"]


def c_step_s(name: str, batch: int, steps: int, work: Path) -> tuple[float, float, int]:
    """(median seconds per step on the generated C, GFLOP per step, parameters)."""
    board = boards.load("host")
    model = frontend.load(name, batch=batch)
    c = pipeline.compile_model(model, board, strategy="store-all", command="benchmarks/host_step_time.py")
    out = work / name
    tgt = target.for_board(board)
    builddir.write(c, out, "benchmarks/host_step_time.py", tgt)
    b = builddir.open_build(out)
    rng = np.random.default_rng(0)
    times = []
    with tgt.launch(out, timeout_s=600) as s:
        dev = harness.Device(b, s)
        for _ in range(steps + 1):
            dev.set_batch(
                rng.standard_normal(b.input_shape).astype(np.float32), rng.integers(0, b.classes, batch)
            )
            times.append(dev.step(0.01).seconds)
    flops = float(sum(n["flops"] for n in b.doc["nodes"]))
    params = sum(int(v.size) for v in model.params.values())
    return float(np.median(times[1:])), flops / 1e9, params


def torch_step_s(name: str, batch: int, steps: int) -> float:
    import torch
    from tests.zoo_torch import twin

    torch.set_num_threads(1)
    model = frontend.load(name, batch=batch)
    net = twin(name, {**model.params, **model.state}, dtype=torch.float32)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    shape = model.graph.tensor(model.input).shape
    classes = model.graph.tensor(model.logits).shape[-1]
    g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps + 1):
        x, y = torch.randn(*shape, generator=g), torch.randint(0, classes, (batch,), generator=g)
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, help="batch size for every model (default: the zoo's)")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in a.models.split(","):
            batch = a.batch or zoo.default_batch(name)
            c_s, gflop, params = c_step_s(name, batch, a.steps, Path(d))
            t_s = torch_step_s(name, batch, a.steps)
            rows.append(
                [
                    name,
                    batch,
                    f"{params:,}",
                    f"{gflop:.3f}",
                    f"{c_s * 1e3:.1f}",
                    f"{gflop / c_s:.2f}",
                    f"{t_s * 1e3:.1f}",
                    f"{c_s / t_s:.1f}x",
                ]
            )
            print(rows[-1], flush=True)
    headers = ["model", "batch", "params", "GFLOP/step", "C ms/step", "C GFLOP/s", "torch ms/step", "C/torch"]
    print(table(headers, rows, "lrrrrrrr"))


if __name__ == "__main__":
    main()
