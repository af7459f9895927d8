"""Regenerate the README's example files in examples/ (run by a maintainer; needs PyTorch, a dev dependency):

    python scripts/make_examples.py

- ``examples/digits-mlp.onnx``: a 64-32-10 MLP for 8x8 digits exported by PyTorch (``torch.onnx.export``,
  input ``[32, 1, 8, 8]``: the batch is fixed at 32, so ``poetc build`` needs no ``--batch``), what a user brings.
- ``examples/digits.npz``: the bundled digits as a user's ``--data`` file: ``x`` [N, 8, 8] float32 in [0, 1], ``y``
  [N] int64, and a held-out fifth as ``x_test``/``y_test`` (the split ``poetc train`` uses for the bundled set).

Both record the versions that made them (ONNX ``doc_string``; the npz's ``provenance``).
"""

from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "examples"
BATCH = 32


class DigitsMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 32)
        self.fc2 = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def main() -> None:
    import onnx

    OUT.mkdir(exist_ok=True)
    torch.manual_seed(0)
    net = DigitsMLP().eval()
    onnx_path = OUT / "digits-mlp.onnx"
    torch.onnx.export(
        net, (torch.zeros(BATCH, 1, 8, 8),), str(onnx_path), input_names=["input"], output_names=["logits"],
        dynamo=False,
    )  # fmt: skip
    m = onnx.load(str(onnx_path))
    m.doc_string = (
        f"64-32-10 MLP for 8x8 digits, batch {BATCH}; scripts/make_examples.py with torch {torch.__version__}, "
        f"onnx {onnx.__version__}"
    )
    onnx.save(m, str(onnx_path))

    with np.load(ROOT / "compiler" / "poetc" / "data" / "digits.npz") as z:
        x = z["x"].astype(np.float32) / 16.0  # [N, 8, 8], pixels 0..16 -> [0, 1]
        y = z["y"].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))  # poetc.data.digits_for's split
    n_test = int(len(x) * 0.2)
    te, tr = order[:n_test], order[n_test:]
    np.savez_compressed(
        OUT / "digits.npz",
        x=x[tr],
        y=y[tr],
        x_test=x[te],
        y_test=y[te],
        provenance=np.array(
            f"UCI digits as bundled with poetc, pixels / 16; scripts/make_examples.py with numpy {np.__version__}"
        ),
    )
    for p in (onnx_path, OUT / "digits.npz"):
        print(p, p.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
