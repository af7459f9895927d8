"""docs/finetune.md on the emulated Cortex-M4: the digits CNN pretrained on digits 0-4 adapts its classifier to
the digits 5-9 it has never seen, with its convolutions frozen in flash and the classifier paged."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from tests.conftest import ROOT, poetc

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(
        not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
        reason="needs qemu-system-arm and arm-none-eabi-gcc (scripts/setup.sh installs them)",
    ),
]


def _doc_commands() -> list[list[str]]:
    """The first sh block of docs/finetune.md, one argument list per command (what the test runs)."""
    text = (ROOT / "docs" / "finetune.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S).group(1)
    return [line.split()[1:] for line in block.strip().splitlines()]


def test_the_pretrained_digits_cnn_learns_unseen_digits_on_qemu_m4(tmp_path):
    build, train, verify = _doc_commands()
    assert (
        build[:2] == ["build", "examples/digits-cnn-0to4.onnx"]
        and train[0] == "train"
        and verify[0] == "verify"
    )
    out = tmp_path / "ft"
    sub = {
        "build/ft": str(out),
        "examples/digits-cnn-0to4.onnx": str(ROOT / "examples" / "digits-cnn-0to4.onnx"),
    }

    def args(cmd: list[str]) -> list[str]:
        return [sub.get(a, a) for a in cmd]

    r = poetc(*args(build))
    assert "training 5130 parameters (2 tensors), 2416 frozen (10 tensors)" in r.stdout, r.stdout
    man = json.loads((out / "poetc.json").read_text())
    homes = {t["name"]: t["home"] for t in man["tensors"]}
    frozen = man["training"]["frozen"]
    assert frozen and {homes[p] for p in frozen} == {"flash"}  # read in place, no RAM
    assert homes["fc.weight"] == "storage"  # 64 KB: the schedule pages the classifier
    nodes = [n["name"] for n in man["nodes"]]
    assert not any(
        n.startswith("Conv") and ":conv2d_" in n for n in nodes
    )  # no backward through the backbone
    r = poetc(*args(train))
    acc = re.search(r"accuracy ([\d.]+) -> ([\d.]+)", r.stdout)
    before, after = float(acc.group(1)), float(acc.group(2))
    assert before < 0.05 and after > 0.8, r.stdout  # it had never seen a 5-9; now it knows them
    m = re.search(r"paging per step: (\d+) page-ins .*?, (\d+) page-outs", r.stdout)
    assert m and int(m.group(1)) >= 1 and int(m.group(2)) >= 1, r.stdout
    r = poetc(*args(verify))
    assert "PASS" in r.stdout and "frozen parameters: 10 of 10 unchanged" in r.stdout, r.stdout
