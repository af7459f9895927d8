"""Regenerate examples/digits-cnn-0to4.onnx: the zoo's digits CNN trained on the host on digits 0 to 4 only.

The fine-tuning example (docs/finetune.md) starts from it: a device then adapts the model to the digits it has
never seen (5 to 9), with the convolutional backbone frozen in flash. Deterministic (fixed seeds), run by a
maintainer with poetc installed:
    python scripts/make_pretrained.py
It trains through poetc itself (the host target), so it needs a C compiler, and prints the held-out accuracy
on digits 0-4 and on 5-9 (chance: the classifier has never seen them).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import onnx

from poetc import __version__, boards, data, frontend, pipeline
from poetc.device import harness, target
from poetc.emit import builddir

OUT = Path(__file__).resolve().parents[1] / "examples" / "digits-cnn-0to4.onnx"
STEPS, LR, BATCH, SEED = 400, 0.05, 32, 0


def main() -> int:
    board = boards.load("host")
    model = frontend.load("digits-cnn", batch=BATCH)
    c = pipeline.compile_model(model, board, strategy="store-all", params="ram")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "build"
        tgt = target.for_board(board)
        builddir.write(c, d, "scripts/make_pretrained.py", tgt)
        b = builddir.open_build(d)
        shape = b.input_shape[1:]
        seen = data.digits_for(shape, 10, only=frozenset(range(5)))
        unseen = data.digits_for(shape, 10, only=frozenset(range(5, 10)))
        log, final = harness.train(b, tgt, seen, STEPS, LR, seed=SEED, eval_every=100)
        print(
            f"trained {STEPS} steps on digits 0-4: held-out accuracy {log.evals[0][1]:.3f} -> {log.evals[-1][1]:.3f}"
        )
        with tgt.launch(d) as sess:
            dev = harness.Device(b, sess)
            for name, value in final.items():
                dev.write_param(name, value)
            acc = harness.accuracy(dev, unseen.x_test, unseen.y_test, b.batch)
        print(f"held-out accuracy on digits 5-9, never seen: {acc:.3f}")
    OUT.parent.mkdir(exist_ok=True)
    tmp_out = OUT.with_suffix(".tmp")
    frontend.export_onnx(model, final, tmp_out)
    proto = onnx.load(str(tmp_out))
    proto.doc_string = (
        f"poetc zoo digits-cnn trained by scripts/make_pretrained.py (poetc {__version__}) on the bundled digits "
        f"0-4: {STEPS} steps of SGD at lr {LR}, batch {BATCH}, seed {SEED}"
    )
    onnx.save(proto, str(OUT))
    tmp_out.unlink()
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
