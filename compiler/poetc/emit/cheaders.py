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


@dataclass(frozen=True)
class Field:
    name: str
    ctype: str  # "uint32_t" | "float"
    count: int  # 1, or the length of an array field


@cache
def param_struct(family: str) -> tuple[Field, ...]:
    """The fields of ``poet_<family>_params`` in declaration order (every one a 4-byte uint32_t or float, so the
    struct in memory is its fields as little-endian words: the image checksum hashes it so)."""
    text = _header("kernels.h")
    m = re.search(r"typedef struct \{([^{}]*)\}\s*poet_" + re.escape(family) + r"_params;", text)
    if m is None:
        raise RuntimeError(f"kernels.h has no poet_{family}_params")
    consts = {n: int(v) for n, v in re.findall(r"#define (POET_\w+) (\d+)", text)}
    out = []
    for decl in re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S).split(";"):
        decl = decl.strip()
        if not decl:
            continue
        ctype, _, names = decl.partition(" ")
        if ctype not in ("uint32_t", "float"):
            raise RuntimeError(f"poet_{family}_params: field type {ctype} is not a 4-byte word")
        for name in names.split(","):
            name = name.strip()
            arr = re.fullmatch(r"(\w+)\[(\w+)\]", name)
            if arr:
                n = arr.group(2)
                out.append(Field(arr.group(1), ctype, int(n) if n.isdigit() else consts[n]))
            else:
                out.append(Field(name, ctype, 1))
    return tuple(out)
