"""Scheduling problems as data: read and write the JSON format of POET's benchmark graphs (docs/graph-format.md).

The format is the one of ``../shared/bench/poet-graphs/*.json`` (names, edges, per-node bytes, compute and
paging seconds and joules, budget, deadline), extended compatibly with optional keys that carry the rest of a
``Problem``: in-place updates and the stages nodes may run in, persistent tensors whose home the schedule
chooses (load nodes, their write-backs), storage capacity. A file without them is a POET graph; every key
``write`` adds is optional on reading, and unknown keys (``source``, ``notes``, ``floor_j``...) are ignored.

``read`` checks every field and raises ``PoetcError`` naming the file and the field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PoetcError
from .problem import Problem

FORMAT = "poetc-graph/1"
_ARRAYS = ("mem_bytes", "compute_s", "compute_j", "page_in_s", "page_in_j", "page_out_s", "page_out_j")


def to_dict(p: Problem, **info: Any) -> dict[str, Any]:
    """The problem as the format's object; ``info`` adds descriptive keys (model, platform, batch, source)."""
    T = p.T
    d: dict[str, Any] = {"format": FORMAT, **info, "T": T, "n_forward": p.n_forward, "names": list(p.names)}
    d["edges"] = [[int(u), int(v)] for u, v in p.edges]
    for key, arr in zip(
        _ARRAYS,
        (p.mem, p.compute_s, p.compute_j, p.page_in_s, p.page_in_j, p.page_out_s, p.page_out_j),
        strict=True,
    ):
        d[key] = [int(x) for x in arr] if key == "mem_bytes" else [float(x) for x in arr]
    d["budget_bytes"] = int(p.budget)
    d["deadline_s"] = p.deadline_s
    d["floor_j"] = p.floor_j
    if any(s != T - 1 for s in p.last_stage):
        d["last_stage"] = list(p.last_stage)
    if p.storage_bytes is not None:
        d["storage_bytes"] = int(p.storage_bytes)
    d["page_overhead_bytes"] = int(p.page_overhead)
    if p.outputs and tuple(p.outputs) != tuple(p.names):
        d["outputs"] = list(p.outputs)
    if p.updates:
        d["updates"] = [[int(u), [int(r) for r in rs]] for u, rs in p.updates]
    if p.loads:
        d["loads"] = [int(x) for x in p.loads]
        d["storage_only"] = sorted(int(x) for x in p.storage_only)
        d["writes"] = [[int(u), int(l)] for u, l in p.writes]
        d["store_j"] = [float(x) for x in p.store_j]
        d["store_s"] = [float(x) for x in p.store_s]
    return d


def write(p: Problem, path: str | Path, **info: Any) -> None:
    """Write the problem to ``path`` (whole or not at all)."""
    path = Path(path)
    text = json.dumps(to_dict(p, **info), indent=None, separators=(",", ":"))
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text + "\n")
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PoetcError(f"--export-graph {path}: cannot write: {e.strerror or e}") from None


def read(path: str | Path, budget: int | None = None, deadline_s: float | None = None) -> Problem:
    """The problem a file holds; ``budget`` and ``deadline_s`` (if given) override the file's."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise PoetcError(f"--graph {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PoetcError(f"--graph {path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    except json.JSONDecodeError as e:
        raise PoetcError(f"--graph {path}: not JSON: {e.msg} at line {e.lineno}") from None
    return from_dict(d, f"--graph {path}", budget, deadline_s)


def from_dict(
    d: Any, where: str = "graph", budget: int | None = None, deadline_s: float | None = None
) -> Problem:
    if not isinstance(d, dict):
        raise PoetcError(f"{where}: expected a JSON object")

    def bad(key: str, why: str) -> PoetcError:
        return PoetcError(f"{where}: field {key!r}: {why}")

    def get(key: str, default: Any = ...) -> Any:
        if key not in d or d[key] is None:
            if default is ...:
                raise bad(key, "missing")
            return default
        return d[key]

    fmt = d.get("format", FORMAT)
    if fmt != FORMAT:
        raise bad("format", f"unknown format {fmt!r} (this poetc reads {FORMAT})")
    names = get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise bad("names", "expected a non-empty list of strings")
    T = len(names)
    if "T" in d and d["T"] != T:
        raise bad("T", f"{d['T']!r} but there are {T} names")

    def node(key: str, x: Any) -> int:
        if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < T:
            raise bad(key, f"{x!r} is not a node index in 0..{T - 1}")
        return x

    def nodes(key: str, default: Any = ...) -> list[int]:
        v = get(key, default)
        if not isinstance(v, list):
            raise bad(key, "expected a list of node indices")
        return [node(key, x) for x in v]

    def number(key: str, x: Any, integer: bool = False) -> float:
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or x < 0:
            raise bad(key, f"{x!r} is not a finite non-negative number")
        if integer and x != int(x):
            raise bad(key, f"{x!r} is not a whole number of bytes")
        return x

    arrays = {}
    for key in _ARRAYS:
        v = get(key)
        if not isinstance(v, list) or len(v) != T:
            raise bad(key, f"expected a list of {T} numbers")
        arrays[key] = np.array([number(key, x, key == "mem_bytes") for x in v], dtype=float)
    edges = get("edges")
    if not isinstance(edges, list):
        raise bad("edges", "expected a list of [producer, consumer] pairs")
    pairs = []
    for e in edges:
        if not isinstance(e, list) or len(e) != 2:
            raise bad("edges", f"{e!r} is not a [producer, consumer] pair")
        u, v = node("edges", e[0]), node("edges", e[1])
        if u >= v:
            raise bad("edges", f"[{u}, {v}]: a consumer must come after its producer (topological order)")
        pairs.append((u, v))
    b = budget if budget is not None else number("budget_bytes", get("budget_bytes"), integer=True)
    dl = deadline_s if deadline_s is not None else get("deadline_s", None)
    if dl is not None:
        dl = number("deadline_s", dl)
    last = nodes("last_stage", [T - 1] * T)
    if len(last) != T or any(s < i for i, s in enumerate(last)):
        raise bad("last_stage", f"expected {T} stages, each not before its node")
    storage = get("storage_bytes", None)
    if storage is not None:
        storage = int(number("storage_bytes", storage, integer=True))
    overhead = int(number("page_overhead_bytes", get("page_overhead_bytes", 4), integer=True))
    outputs = get("outputs", [])
    if not isinstance(outputs, list) or (outputs and len(outputs) != T):
        raise bad("outputs", f"expected {T} tensor names")
    updates = []
    for e in get("updates", []):
        if not isinstance(e, list) or len(e) != 2 or not isinstance(e[1], list):
            raise bad("updates", f"{e!r} is not [update node, [reader, ...]]")
        updates.append((node("updates", e[0]), tuple(node("updates", r) for r in e[1])))
    loads = nodes("loads", [])
    if loads != sorted(set(loads)):
        raise bad("loads", "expected node indices in increasing order, each once")
    storage_only = nodes("storage_only", [])
    if not set(storage_only) <= set(loads):
        raise bad("storage_only", "expected a subset of 'loads'")
    writes = []
    for e in get("writes", []):
        if not isinstance(e, list) or len(e) != 2:
            raise bad("writes", f"{e!r} is not an [update node, load node] pair")
        u, l = node("writes", e[0]), node("writes", e[1])
        if l not in loads:
            raise bad("writes", f"[{u}, {l}]: node {l} is not a load node")
        writes.append((u, l))
    store = {}
    for key in ("store_j", "store_s"):
        v = get(key, [])
        if not isinstance(v, list) or len(v) != len(writes):
            raise bad(key, f"expected {len(writes)} numbers, one per entry of 'writes'")
        store[key] = tuple(float(number(key, x)) for x in v)
    n_forward = get("n_forward", 0)
    if isinstance(n_forward, bool) or not isinstance(n_forward, int) or not 0 <= n_forward <= T:
        raise bad("n_forward", f"{n_forward!r} is not a node count in 0..{T}")
    p = Problem(
        names=tuple(names),
        edges=tuple(dict.fromkeys(pairs)),
        mem=arrays["mem_bytes"].astype(np.int64),
        compute_j=arrays["compute_j"],
        compute_s=arrays["compute_s"],
        page_in_j=arrays["page_in_j"],
        page_in_s=arrays["page_in_s"],
        page_out_j=arrays["page_out_j"],
        page_out_s=arrays["page_out_s"],
        last_stage=tuple(last),
        budget=int(b),
        deadline_s=None if dl is None else float(dl),
        storage_bytes=storage,
        page_overhead=overhead,
        updates=tuple(updates),
        outputs=tuple(outputs),
        n_forward=n_forward,
        loads=tuple(loads),
        storage_only=frozenset(storage_only),
        writes=tuple(writes),
        store_j=store["store_j"],
        store_s=store["store_s"],
    )
    return p
