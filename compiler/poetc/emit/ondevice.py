"""On-device training (``poetc build --on-device``): the application that trains on the board with no host.

The build directory gets ``app/``: one of the example programs of ``firmware/examples/`` (``flash``: the data
set linked into flash; ``sensor``: a ring buffer that a callback fills, the data set standing in for a sensor),
``data.c``/``data.h`` (the data set as const tables: bytes with a scale when every value is exactly one, else
floats; labels as bytes), and ``app_config.h`` (steps, learning rate, checkpoint interval). The program uses
only the C API (``runtime_c/include/poet/train.h``) and the port's ``poet_port_log``; the Makefile builds it
in place of the link server's main.

Flash wear: every checkpoint rewrites one of two slots, so each erase page of a slot is erased once per two
intervals; on a board whose internal flash may serve as storage (``flash_pager``) the build records how many
steps the rated endurance allows and ``app_config.h`` refuses, at compile time, a longer run with ``make
PAGER=flash``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..boards import Board
from ..data import Dataset, q8_params
from ..errors import PoetcError
from ..resources import firmware_dir
from .codegen import CheckpointLayout, c_array_lines, c_comment, c_float

KINDS = ("flash", "sensor")
EXAMPLE = {"flash": "train_flash.c", "sensor": "train_sensor.c"}
MAX_TEST = 256  # held-out samples linked in for the accuracy the program prints


@dataclass(frozen=True)
class OnDevice:
    """What ``--on-device`` asks for."""

    kind: str  # flash | sensor
    data: Dataset
    steps: int
    lr: float
    checkpoint_every: int
    seed: int = 0
    log_every: int = 0  # 0: about 20 lines over the run

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PoetcError(f"--on-device {self.kind}: expected one of {', '.join(KINDS)}")
        if self.steps < 1:
            raise PoetcError(f"--on-device-steps must be >= 1, got {self.steps}")
        if self.checkpoint_every < 1:
            raise PoetcError(f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise PoetcError(f"--lr must be positive and finite, got {self.lr}")


def checkpoint_wear(board: Board, ckpt: CheckpointLayout, every: int) -> dict[str, Any]:
    """Flash erases of the checkpoints: each slot's pages are erased once per write of that slot, i.e. once per
    two intervals (with the internal-flash pager); None figures for a board without one."""
    out: dict[str, Any] = {"every": every, "addr": ckpt.addr, "slot_bytes": ckpt.slot_bytes}
    if not board.flash_pager:
        return {**out, "erases_per_step": None, "max_steps": None}
    per_step = 1.0 / (2 * every)
    return {
        **out,
        "erase_page_bytes": board.flash_erase_page_bytes,
        "pages_per_slot": -(-ckpt.slot_bytes // board.flash_erase_page_bytes),
        "erases_per_step": per_step,
        "max_steps": int(board.flash_endurance_cycles) * 2 * every,  # exact: endurance / per_step
    }


def _u8_table(x: np.ndarray, input_u8_scale: float | None) -> tuple[np.ndarray, float] | None:
    """(bytes, scale) with scale * byte == x exactly, or None (floats)."""
    if input_u8_scale is not None:
        from ..frontend.quantize import to_u8

        return to_u8(x, input_u8_scale), float(input_u8_scale)
    qp = q8_params(x)
    if qp is None:
        return None
    return np.round(x / np.float32(qp[0])).astype(np.uint8), qp[0]


def data_files(
    od: OnDevice,
    batch: int,
    sample_shape: tuple[int, ...],
    classes: int,
    input_u8_scale: float | None,
    header: str,
) -> dict[str, str]:
    """data.c / data.h: the training samples (shuffled once with the seed; the program goes through them in
    order, batch after batch, wrapping around) and up to MAX_TEST held-out ones."""
    ds = od.data
    n = len(ds.x)
    if n < batch:
        raise PoetcError(f"--data: {n} samples, fewer than the batch size {batch}")
    if classes > 256:
        raise PoetcError(
            f"--on-device: the data tables hold labels as bytes; the model has {classes} classes"
        )
    order = np.random.default_rng(od.seed).permutation(n)
    x, y = ds.x[order].reshape(n, -1), ds.y[order]
    xt = ds.x_test[:MAX_TEST].reshape(-1, x.shape[1]) if ds.x_test is not None else x[:0]
    yt = ds.y_test[:MAX_TEST] if ds.y_test is not None else y[:0]
    both = np.concatenate([x, xt]) if len(xt) else x
    q = _u8_table(both, input_u8_scale)
    feat = int(np.prod(sample_shape))
    lines_h = [
        f"/* {header} */",
        "#ifndef POET_APP_DATA_H",
        "#define POET_APP_DATA_H",
        "#include <stdint.h>",
        f"#define POET_DATA_N {n}u /* training samples */",
        f"#define POET_DATA_N_TEST {len(xt)}u /* held-out samples */",
        f"#define POET_DATA_SAMPLE {feat}u /* values per sample */",
        f"#define POET_DATA_CLASSES {classes}u",
        f"#define POET_DATA_U8 {1 if q is not None else 0} /* samples are bytes: value = POET_DATA_SCALE * byte */",
        f"#define POET_DATA_SCALE {c_float(q[1] if q is not None else 1.0)}",
        f"extern const {'uint8_t' if q is not None else 'float'} poet_data_x[{max(1, n * feat)}];",
        f"extern const uint8_t poet_data_y[{max(1, n)}];",
        f"extern const {'uint8_t' if q is not None else 'float'} poet_data_x_test[{max(1, len(xt) * feat)}];",
        f"extern const uint8_t poet_data_y_test[{max(1, len(yt))}];",
        "#endif",
        "",
    ]

    def table(ctype: str, name: str, vals: list[str]) -> list[str]:
        body = c_array_lines(vals or ["0"], per_line=16)
        return [f"const {ctype} {name}[{max(1, len(vals))}] = {{", *(f"    {ln}" for ln in body), "};"]

    if q is not None:
        qx = q[0]
        xs = [f"{v}u" for v in qx[:n].reshape(-1)]
        xts = [f"{v}u" for v in qx[n:].reshape(-1)]
        ctype = "uint8_t"
    else:
        xs = [c_float(v) for v in x.reshape(-1)]
        xts = [c_float(v) for v in xt.reshape(-1)]
        ctype = "float"
    lines_c = [
        f"/* {header} */",
        "/* "
        + c_comment(
            f"data set {ds.name}: {n} training samples (shuffled, seed {od.seed}), {len(xt)} held out"
        )
        + " */",
        '#include "data.h"',
        *table(ctype, "poet_data_x", xs),
        *table("uint8_t", "poet_data_y", [f"{int(v)}u" for v in y]),
        *table(ctype, "poet_data_x_test", xts),
        *table("uint8_t", "poet_data_y_test", [f"{int(v)}u" for v in yt]),
        "",
    ]
    return {"data.h": "\n".join(lines_h), "data.c": "\n".join(lines_c)}


def config_header(od: OnDevice, batch: int, wear: dict[str, Any], header: str) -> str:
    log_every = od.log_every or max(1, od.steps // 20)
    max_flash = wear.get("max_steps") or 0
    return "\n".join(
        [
            f"/* {header} */",
            "#ifndef POET_APP_CONFIG_H",
            "#define POET_APP_CONFIG_H",
            f"#define POET_APP_BATCH {batch}u /* samples per step (the build's batch) */",
            "#ifndef POET_APP_STEPS",
            f"#define POET_APP_STEPS {od.steps}u /* training steps of the run (a restored run continues) */",
            "#endif",
            "#ifndef POET_APP_LR",
            f"#define POET_APP_LR {c_float(od.lr)}",
            "#endif",
            f"#define POET_APP_CKPT_EVERY {od.checkpoint_every}u /* steps between checkpoints */",
            "#ifndef POET_APP_LOG_EVERY",
            f"#define POET_APP_LOG_EVERY {log_every}u /* a progress line every this many steps */",
            "#endif",
            f"#define POET_APP_MAX_FLASH_STEPS {max_flash}u /* steps the internal flash's endurance allows (0: n/a) */",
            "#if defined(POET_PAGER_FLASH) && POET_PAGER_FLASH && POET_APP_MAX_FLASH_STEPS && \\",
            "    POET_APP_STEPS > POET_APP_MAX_FLASH_STEPS",
            '#error "checkpoints every POET_APP_CKPT_EVERY steps for POET_APP_STEPS steps wear the internal flash out '
            '(POET_APP_MAX_FLASH_STEPS steps at most): use the SD card pager or a longer --checkpoint-every"',
            "#endif",
            "#endif",
            "",
        ]
    )


def write_app(
    d: Path,
    od: OnDevice,
    batch: int,
    sample_shape: tuple[int, ...],
    classes: int,
    input_u8_scale: float | None,
    wear: dict[str, Any],
    header: str,
) -> None:
    app = d / "app"
    app.mkdir()
    src = firmware_dir() / "examples"
    shutil.copyfile(src / EXAMPLE[od.kind], app / EXAMPLE[od.kind])
    shutil.copyfile(src / "app_util.h", app / "app_util.h")
    for name, text in data_files(od, batch, sample_shape, classes, input_u8_scale, header).items():
        (app / name).write_text(text)
    (app / "app_config.h").write_text(config_header(od, batch, wear, header))
