"""Boards: validated TOML data (units in field names) loaded into frozen dataclasses.

Each ``boards/<name>.toml`` describes one target: its memory, clock, storage, the firmware port that runs on it,
and the cost constants of POET's model (FLOP/s, FLOP/J, paging latency and throughput, memory power). Every
constant's origin is recorded in the file's ``[sources]`` table.

A board may also carry a calibrated compute model (the emulated boards do): ``[instructions_per_flop]`` and
``[instructions_per_run]``, keyed by op (``conv2d``), op and shape class (``conv2d.k5``, ``conv2d.depthwise``), op
family (``conv``) or ``default``; a node then takes instructions_per_flop x FLOPs + instructions_per_run per
run, x cycles_per_instruction / clock_hz seconds, at compute_power_w (schedule/cost.py).
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import PoetcError
from .resources import boards_dir

STORAGE_KINDS = ("file", "sd", "flash", "ram")


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    core: str
    port: str  # firmware/<port>/
    clock_hz: int
    ram_bytes: int
    flash_bytes: int
    storage: str  # file | sd | flash | ram
    storage_bytes: int
    flop_per_s: float
    flop_per_j: float
    page_in_latency_s: float
    page_in_bytes_per_s: float
    page_out_latency_s: float
    page_out_bytes_per_s: float
    memory_power_w: float
    stack_bytes: int
    port_ram_bytes: int  # the port's own buffers (frame buffers, pager block buffer, counters)
    frame_max_bytes: int
    cycles_per_instruction: float = 1.0  # converts counted instructions (QEMU) to cycles
    active_power_w: float = 0.0  # core power while computing (0: use flop_per_j only)
    emulator: str = ""  # "qemu-system-arm -M ..." machine for emulated boards
    # internal flash as storage (a pager on the MCU's own flash): written only when the board says so
    flash_pager: bool = False
    flash_erase_page_bytes: int = 0  # the erase unit
    flash_endurance_cycles: int = 0  # erase/write cycles a flash page is rated for
    # the calibrated compute model (module doc): op key -> instructions per FLOP, instructions per run
    instructions_per_flop: dict[str, float] = field(default_factory=dict, hash=False)
    instructions_per_run: dict[str, float] = field(default_factory=dict, hash=False)
    # the pager moves data while the core computes (DMA): the schedule's time model overlaps transfers with
    # computation (one bus: transfers serialize among themselves). False: the core waits for every transfer.
    pager_overlap: bool = False
    pager_queue: int = 1  # transfers the port accepts in flight at once (the runtime keeps at most 4)
    sources: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    path: str = ""

    @property
    def emulated(self) -> bool:
        return bool(self.emulator)

    @property
    def compute_power_w(self) -> float:
        """The core's power while computing: active_power_w, or POET's flop_per_s / flop_per_j."""
        return self.active_power_w or self.flop_per_s / self.flop_per_j


_OPTIONAL_DEFAULTS = (
    "cycles_per_instruction",
    "active_power_w",
    "emulator",
    "flash_pager",
    "flash_erase_page_bytes",
    "flash_endurance_cycles",
    "instructions_per_flop",
    "instructions_per_run",
    "pager_overlap",
    "pager_queue",
    "sources",
)
_CALIBRATION = ("instructions_per_flop", "instructions_per_run")
_OP_KEY = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)?")


def _check(path: Path, doc: dict[str, Any], check_name: bool = True) -> Board:
    where = str(path)
    known = {f.name: f for f in fields(Board)}
    for key in doc:
        if key not in known or key == "path":
            raise PoetcError(f"{where}: unknown field {key!r}")
    vals: dict[str, Any] = {}
    for f in fields(Board):
        if f.name == "path":
            continue
        if f.name not in doc:
            if f.name in _OPTIONAL_DEFAULTS:
                continue
            raise PoetcError(f"{where}: missing field {f.name!r}")
        v = doc[f.name]
        t = f.type
        if t == "int":
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise PoetcError(f"{where}: field {f.name!r} must be a non-negative integer, got {v!r}")
        elif t == "float":
            if not isinstance(v, int | float) or isinstance(v, bool) or not (v >= 0 and math.isfinite(v)):
                raise PoetcError(
                    f"{where}: field {f.name!r} must be a non-negative, finite number, got {v!r}"
                )
            v = float(v)
        elif t == "str":
            if not isinstance(v, str):
                raise PoetcError(f"{where}: field {f.name!r} must be a string, got {v!r}")
        elif t == "bool":
            if not isinstance(v, bool):
                raise PoetcError(f"{where}: field {f.name!r} must be true or false, got {v!r}")
        elif f.name in _CALIBRATION:
            if not isinstance(v, dict) or not v:
                raise PoetcError(f"{where}: [{f.name}] must be a table of op names to numbers")
            for k, x in v.items():
                if not _OP_KEY.fullmatch(k):
                    raise PoetcError(f"{where}: [{f.name}] key {k!r} is not an op, op.class or family name")
                if not isinstance(x, int | float) or isinstance(x, bool) or not (x >= 0 and math.isfinite(x)):
                    raise PoetcError(f"{where}: [{f.name}] {k} must be a non-negative number, got {x!r}")
            if "default" not in v:
                raise PoetcError(f"{where}: [{f.name}] needs a 'default' entry for ops it does not name")
            v = {k: float(x) for k, x in v.items()}
        elif f.name == "sources":
            if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
                raise PoetcError(f"{where}: [sources] must map field names to strings")
            for k in v:
                if k not in known:
                    raise PoetcError(f"{where}: [sources] names unknown field {k!r}")
        vals[f.name] = v
    for positive in (
        "clock_hz",
        "ram_bytes",
        "flop_per_s",
        "flop_per_j",
        "page_in_bytes_per_s",
        "page_out_bytes_per_s",
        "frame_max_bytes",
    ):
        if vals[positive] == 0:
            raise PoetcError(f"{where}: field {positive!r} must be positive")
    if vals["storage"] not in STORAGE_KINDS:
        raise PoetcError(f"{where}: field 'storage' must be one of {', '.join(STORAGE_KINDS)}")
    if check_name and vals["name"] != path.stem:
        raise PoetcError(f"{where}: field 'name' is {vals['name']!r} but the file is {path.name}")
    if vals.get("flash_pager"):
        for k in ("flash_erase_page_bytes", "flash_endurance_cycles"):
            if not vals.get(k):
                raise PoetcError(f"{where}: flash_pager = true needs a positive {k!r}")
    if ("instructions_per_flop" in vals) != ("instructions_per_run" in vals):
        raise PoetcError(f"{where}: [instructions_per_flop] and [instructions_per_run] come together")
    if "instructions_per_flop" in vals and "cycles_per_instruction" not in vals:
        raise PoetcError(f"{where}: [instructions_per_flop] needs the field 'cycles_per_instruction'")
    if not 1 <= vals.get("pager_queue", 1) <= 4:
        raise PoetcError(f"{where}: field 'pager_queue' must be in 1..4 (the runtime's transfer slots)")
    if not 64 <= vals["frame_max_bytes"] <= 65535:
        raise PoetcError(f"{where}: field 'frame_max_bytes' must be in 64..65535")
    return Board(**vals, path=where)


def load_file(path: Path, check_name: bool = True) -> Board:
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise PoetcError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise PoetcError(f"{path}: not valid TOML: {e}") from None
    return _check(path, doc, check_name)


def names() -> list[str]:
    return sorted(p.stem for p in boards_dir().glob("*.toml"))


def load(name_or_path: str) -> Board:
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return load_file(p)
    path = boards_dir() / f"{name_or_path}.toml"
    if not path.exists():
        raise PoetcError(f"unknown board {name_or_path!r} (known: {', '.join(names())})")
    return load_file(path)


def all_boards() -> list[Board]:
    return [load(n) for n in names()]
