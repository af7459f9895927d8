"""Facts read from the C runtime's headers, so Python never keeps a second copy of them.

POET_KERNELS (kernel name, id, params family), POET_STATUSES (status name, value, text) and the POET_OP_*
opcodes are parsed from runtime_c/include/poet/*.h.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from ..resources import runtime_dir


@dataclass(frozen=True)
class KernelInfo:
    name: str
    id: int
    family: str


def _header(name: str) -> str:
    return (runtime_dir() / "include" / "poet" / name).read_text()


@cache
def kernels() -> dict[str, KernelInfo]:
    text = _header("kernels.h")
    block = text[text.index("#define POET_KERNELS(X)") :]
    block = block[: block.index("\n\n")]
    out = {}
    for name, num, fam in re.findall(r"X\((\w+),\s*(\d+),\s*(\w+)\)", block):
        out[name] = KernelInfo(name, int(num), fam)
    return out


@cache
def families() -> tuple[str, ...]:
    return tuple(dict.fromkeys(k.family for k in kernels().values()))


@cache
def statuses() -> dict[int, tuple[str, str]]:
    text = _header("status.h")
    return {int(v): (n, t) for n, v, t in re.findall(r'X\((\w+),\s*(\d+),\s*"([^"]*)"\)', text)}


@cache
def opcodes() -> dict[str, int]:
    text = _header("poet.h")
    return {n: int(v) for n, v in re.findall(r"POET_OP_(\w+)\s*=\s*(\d+)", text)}


def status_text(code: int) -> str:
    name, text = statuses().get(code, (f"status {code}", "unknown status"))
    return f"{text} ({name})"
