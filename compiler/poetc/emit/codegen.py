"""Code generation: a compiled plan -> model.c / model.h (tables executed by runtime_c's interpreter).

Templates (templates/*.j2, StrictUndefined) hold layout only; every value is formatted here by small tested
helpers (C identifiers, float literals, struct initialisers). Each generated file starts with a provenance
header: tool version, command, model hash.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import jinja2
import numpy as np

from .. import __version__
from ..graph import ops
from ..graph.autodiff import TrainingGraph
from ..graph.ir import Role
from ..resources import templates_dir
from ..schedule.memplan import MemPlan
from ..schedule.program import Op, Program
from . import cheaders

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def c_ident(name: str) -> str:
    """Validate a C identifier (generated names only; user names never become identifiers)."""
    if not _IDENT.match(name) or len(name) > 63:
        raise ValueError(f"not a valid C identifier: {name!r}")
    return name


def c_comment(text: str) -> str:
    """Make arbitrary text (an ONNX name) safe inside /* ... */ on one line."""
    return re.sub(r"[^\x20-\x7e]", "?", text).replace("*/", "*\\/").replace("/*", "/\\*")


def c_float(x: float) -> str:
    """The shortest C float literal that round-trips the float32 value exactly."""
    v = np.float32(x)
    if not np.isfinite(v):
        raise ValueError(f"non-finite value {x!r} cannot be emitted")
    s = str(v)  # numpy prints the shortest decimal that round-trips the float32
    if "." not in s and "e" not in s:
        s += ".0"
    return s + "f"


def c_value(v: Any) -> str:
    if isinstance(v, bool):
        return "1u" if v else "0u"
    if isinstance(v, int):
        if v < 0 or v >= 2**32:
            raise ValueError(f"value {v} does not fit an unsigned 32-bit field")
        return f"{v}u"
    if isinstance(v, float):
        return c_float(v)
    if isinstance(v, tuple | list):  # a fixed-size array field
        return "{" + ", ".join(c_value(x) for x in v) + "}"
    raise ValueError(f"cannot emit {v!r} as a C value")


def c_struct_init(fields: dict[str, Any]) -> str:
    return ", ".join(f".{c_ident(k)} = {c_value(v)}" for k, v in fields.items())


def c_f32_bytes(values: np.ndarray, per_line: int = 64, indent: str = "    ") -> str:
    """float32 values as the bytes of their exact little-endian patterns: adjacent C string literals of ``\\xHH``
    escapes, ``per_line`` bytes a line, to initialise ``unsigned char b[4 * n + 1]`` (room for the NUL).

    Exact by construction (no decimal round trip), formatted with numpy in one pass, and cheap to compile: a
    compiler reads one string token where a float list costs it a parsed, converted literal per value (a
    140 MB table of 9 million floats took GCC about a minute; the same bytes as strings take seconds). The
    C side declares a union of the bytes (initialised) and ``float f[n]`` (read); the runtime already
    assumes little-endian memory (its image checksums hash the tables as little-endian words).
    """
    a = np.asarray(values, np.float32).reshape(-1)
    if not np.isfinite(a).all():
        raise ValueError("non-finite value cannot be emitted")
    raw = a.astype("<f4").tobytes()
    n = len(raw)
    if n == 0:
        return indent + '""'
    esc = np.empty((n, 4), np.uint8)
    esc[:, 0:2] = np.frombuffer(b"\\x", np.uint8)
    esc[:, 2:4] = np.frombuffer(raw.hex().encode("ascii"), np.uint8).reshape(n, 2)
    full, rest = divmod(n, per_line)
    head = np.frombuffer((indent + '"').encode("ascii"), np.uint8)
    out = []
    if full:
        rows = np.empty((full, len(head) + 4 * per_line + 2), np.uint8)
        rows[:, : len(head)] = head
        rows[:, len(head) : -2] = esc[: full * per_line].reshape(full, 4 * per_line)
        rows[:, -2:] = np.frombuffer(b'"\n', np.uint8)
        out.append(rows.tobytes().decode("ascii"))
    if rest:
        out.append(indent + '"' + esc[full * per_line :].tobytes().decode("ascii") + '"\n')
    return "".join(out)[:-1]


def c_array_lines(values: Iterable[str], per_line: int = 8) -> list[str]:
    vals = list(values)
    return [", ".join(vals[i : i + per_line]) + "," for i in range(0, len(vals), per_line)]


@dataclass(frozen=True)
class CodegenInput:
    tg: TrainingGraph
    params: dict[str, np.ndarray]
    programs: tuple[Program, ...]  # train, infer
    plans: tuple[MemPlan, ...]
    arena_bytes: int
    slots: dict[str, int]  # tensor -> storage address (paged activations, master copies)
    storage_bytes: int
    hash_hex: str  # 16 hex digits
    command: str
    model_sha256: str
    # the programs' node indices are the schedule problem's: its node -> training-graph node (-1: the load of a
    # persistent tensor) and its node -> the tensor it produces or loads; () = the training graph's own
    ir_node: tuple[int, ...] = ()
    tensor_of: tuple[str, ...] = ()
    homes: dict[str, str] = field(
        default_factory=dict
    )  # parameter/optimizer tensor -> "flash" | "storage" | "ram"
    ckpt_align: int = 256  # checkpoint slots start on this boundary (a flash erase page where there is one)


def pager_queue(programs: Iterable[Program]) -> int:
    """The transfers the device keeps in flight: every program must carry its wait points for it."""
    progs = list(programs)
    queues = {p.queue for p in progs}
    if 0 in queues:
        bad = next(p.name for p in progs if not p.queue)
        raise ValueError(f"{bad} program has no wait points (schedule.waits.insert before code generation)")
    if len(queues) > 1:
        raise ValueError(f"programs compiled for different pager queues: {sorted(queues)}")
    return queues.pop() if queues else 1


def tensor_ids(tg: TrainingGraph) -> dict[str, int]:
    return {name: i for i, name in enumerate(tg.graph.tensors)}


CKPT_HEADER_BYTES = 36  # poet/train.h
CKPT_MAGIC = 0x504B4350
CKPT_VERSION = 1


@dataclass(frozen=True)
class CheckpointLayout:
    """Where poet/train.h's checkpoints go: two slots of ``slot_bytes`` from ``addr`` on the port's storage (after
    the programs' storage, aligned to ``align``: a flash erase page where the board has one); a slot holds the
    header, the tensors of the model's params[] table in ``tensors`` order and a CRC."""

    addr: int
    slot_bytes: int
    align: int
    tensors: tuple[tuple[str, int], ...]  # (name, bytes), the params[] table's order

    @property
    def payload_bytes(self) -> int:
        return sum(b for _, b in self.tensors)

    @property
    def end(self) -> int:
        return self.addr + 2 * self.slot_bytes


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def persistent_tensors(tg: TrainingGraph, homes: dict[str, str]) -> list[str]:
    """The params[] table: parameters, running statistics and optimizer state the device keeps (not in flash),
    in tensor order; poet_model_reset gives them their initial values and checkpoints save them."""
    return [
        n
        for n, t in tg.graph.tensors.items()
        if not t.in_arena
        and t.nbytes
        and t.role in (Role.PARAM, Role.STATE, Role.OPT_STATE)
        and homes.get(n, "ram") != "flash"
    ]


def checkpoint_layout(
    tg: TrainingGraph, homes: dict[str, str], storage_bytes: int, align: int = 256
) -> CheckpointLayout:
    names = persistent_tensors(tg, homes)
    tensors = tuple((n, tg.graph.tensor(n).nbytes) for n in names)
    payload = sum(b for _, b in tensors)
    return CheckpointLayout(
        _align(max(storage_bytes, 0), align), _align(CKPT_HEADER_BYTES + payload + 4, align), align, tensors
    )


def render(inp: CodegenInput) -> dict[str, str]:
    tg = inp.tg
    g = tg.graph
    tid = tensor_ids(tg)
    header = c_comment(
        f"Generated by poetc {__version__} -- do not edit. command: {inp.command} | model sha256: "
        f"{inp.model_sha256[:16]} | build hash: {inp.hash_hex}"
    )
    kinfo = cheaders.kernels()
    opcodes = cheaders.opcodes()
    for op in Op:
        if opcodes.get(op.name) != op.value:
            raise RuntimeError(f"opcode {op.name} disagrees with runtime_c/include/poet/poet.h")

    statics = []
    tensors = []
    crc_tensors: list[tuple[int, int, int, int, int]] = []
    g_names = list(g.tensors)
    param_inits = []
    for name, t in g.tensors.items():
        i = tid[name]
        ident = c_ident(f"t{i}")
        data = "NULL"
        home = "arena" if t.in_arena else inp.homes.get(name, "ram")
        if not t.in_arena and t.nbytes:
            ctype = {"i32": "int32_t", "u8": "uint8_t"}.get(t.dtype, "float")
            init = None
            if t.role in (Role.PARAM, Role.STATE, Role.OPT_STATE):  # initial values (momentum: zeros)
                arr = np.asarray(inp.params.get(name, np.zeros(t.numel)), np.float32).reshape(-1)
                if arr.any() or home == "flash":
                    if ctype != "float":
                        raise RuntimeError(f"{name}: initial values of a {t.dtype} tensor cannot be emitted")
                    init = c_f32_bytes(arr)
                if home != "flash":
                    param_inits.append(
                        {"tensor": i, "init": f"{ident}_init.f" if init is not None else "NULL"}
                    )
            statics.append(
                {
                    "ctype": ctype,
                    "ident": ident,
                    "count": t.numel,
                    "init": init,
                    "home": home,
                    "comment": c_comment(f"{t.role.value} {name} {list(t.shape)} ({home})"),
                }
            )
            data = {"ram": ident, "flash": f"(void *){ident}.f", "storage": "NULL"}[home]
        writable = int(
            t.role in (Role.INPUT, Role.LABEL, Role.PARAM, Role.STATE, Role.OPT_STATE) and home != "flash"
        )
        crc_tensors.append(
            (
                t.nbytes if t.role != Role.UPDATE else 0,
                {"i32": 1, "u8": 2}.get(t.dtype, 0),
                {"arena": 0, "ram": 1, "flash": 2, "storage": 3}[home],
                writable,
                inp.slots.get(name, 0),
            )
        )
        tensors.append(
            {
                "id": i,
                "bytes": t.nbytes if t.role != Role.UPDATE else 0,
                "dtype": {"i32": "POET_I32", "u8": "POET_U8"}.get(t.dtype, "POET_F32"),
                "home": {
                    "arena": "POET_HOME_ARENA",
                    "ram": "POET_HOME_STATIC",
                    "flash": "POET_HOME_FLASH",
                    "storage": "POET_HOME_STORAGE",
                }[home],
                "writable": writable,
                "data": data,
                "slot": inp.slots.get(name, 0),
                "comment": c_comment(f"{t.role.value} {name} {list(t.shape)}"),
            }
        )

    fam_items: dict[str, list[str]] = {f: [] for f in cheaders.families()}
    crc_nodes: list[tuple[int, int, list[int], int, bytes]] = []
    nodes = []
    for k, n in enumerate(g.nodes):
        op = ops.get(n.op)
        if op.kernel not in kinfo:
            raise RuntimeError(f"op {n.op}: kernel {op.kernel} is missing from runtime_c's POET_KERNELS")
        fam = kinfo[op.kernel].family
        if fam != op.family:
            raise RuntimeError(f"op {n.op}: family {op.family} but the runtime says {fam}")
        fields = op.c_params(n.attrs, [g.tensor(x).shape for x in n.inputs], g.tensor(n.output).shape)
        fam_items[fam].append(c_struct_init(fields))
        crc_nodes.append(
            (kinfo[op.kernel].id, len(fam_items[fam]) - 1, [tid[x] for x in n.inputs], tid[n.output],
             struct_bytes(fam, fields))
        )  # fmt: skip
        ins = [str(tid[x]) for x in n.inputs] or ["0"]
        nodes.append(
            {
                "id": k,
                "kernel": f"POET_K_{op.kernel}",
                "params": len(fam_items[fam]) - 1,
                "n_in": len(n.inputs),
                "ins": ", ".join(ins),
                "out": tid[n.output],
                "comment": c_comment(f"{n.name} ({n.op})"),
            }
        )
    families = [{"name": f, "entries": items} for f, items in fam_items.items() if items]

    progs = []
    enum = {"train": "POET_PROG_TRAIN", "infer": "POET_PROG_INFER"}
    ir_node = inp.ir_node or tuple(range(len(g.nodes)))
    tensor_of = inp.tensor_of or tuple(n.output for n in g.nodes)
    crc_progs: list[list[tuple[int, int, int]]] = []
    for prog, mp in zip(inp.programs, inp.plans, strict=True):
        code = []
        crc_progs.append([])
        for pc, ins_ in enumerate(prog.instrs):
            if ins_.op in (Op.RUN, Op.RECOMPUTE):
                arg, what = ir_node[ins_.node], g.nodes[ir_node[ins_.node]].name
            else:
                arg, what = tid[tensor_of[ins_.node]], tensor_of[ins_.node]
            off = max(mp.offsets[pc], 0)
            crc_progs[-1].append((ins_.op.value, arg, off))
            code.append(
                {
                    "op": f"POET_OP_{ins_.op.name}",
                    "arg": arg,
                    "off": off,
                    "stage": ins_.stage,
                    "comment": c_comment(f"{ins_.op.name} {what}"),
                }
            )
        progs.append({"name": prog.name, "enum": enum[prog.name], "code": code})

    ckpt = checkpoint_layout(tg, inp.homes, inp.storage_bytes, inp.ckpt_align)
    if [n for n, _ in ckpt.tensors] != [g_names[p["tensor"]] for p in param_inits]:
        raise RuntimeError("the checkpoint's tensors are not the params[] table")
    ids = (tid[tg.input], tid[tg.label], tid[tg.loss], tid[tg.logits])
    sizes = (inp.arena_bytes, inp.storage_bytes, ckpt.addr, ckpt.slot_bytes)
    tables_crc = tables_checksum(crc_tensors, crc_nodes, crc_progs, ids, sizes)
    init_crc = 0
    for p in param_inits:
        name = g_names[p["tensor"]]
        init_crc = zlib.crc32(struct.pack("<HB", p["tensor"], p["init"] != "NULL"), init_crc)
        if p["init"] != "NULL":
            init_crc = zlib.crc32(_init_bytes(inp.params, name, g.tensor(name).numel), init_crc)
    for name, t in g.tensors.items():
        if inp.homes.get(name) == "flash" and not t.in_arena and t.nbytes:
            init_crc = zlib.crc32(_init_bytes(inp.params, name, t.numel), init_crc)
    ctx = {
        "header": header,
        "ckpt_addr": ckpt.addr,
        "ckpt_slot_bytes": ckpt.slot_bytes,
        "tables_crc": f"0x{tables_crc:08x}u",
        "init_crc": f"0x{init_crc:08x}u",
        "n_tensors": len(tensors),
        "n_nodes": len(nodes),
        "statics": statics,
        "tensors": tensors,
        "families": families,
        "nodes": nodes,
        "programs": progs,
        "param_inits": param_inits,
        "arena_bytes": inp.arena_bytes,
        "arena_words": max(1, (inp.arena_bytes + 3) // 4),
        "storage_bytes": inp.storage_bytes,
        "pager_queue": pager_queue(inp.programs),
        "hash_bytes": ", ".join(f"0x{inp.hash_hex[i : i + 2]}" for i in range(0, 16, 2)),
        "input": tid[tg.input],
        "label": tid[tg.label],
        "loss": tid[tg.loss],
        "logits": tid[tg.logits],
        "train_flag": f"t{tid[tg.train_flag]}" if tg.train_flag is not None else "NULL",
    }
    return {name: render_template(f"{name}.j2", **ctx) for name in ("model.c", "model.h")}


def _init_bytes(params: dict[str, np.ndarray], name: str, numel: int) -> bytes:
    """A parameter's initial value as the image holds it (float32, little-endian)."""
    return np.asarray(params.get(name, np.zeros(numel)), "<f4").reshape(-1).tobytes()


def struct_bytes(family: str, fields: dict[str, Any]) -> bytes:
    """A kernel's params struct as it lies in memory: its fields (absent ones 0) as little-endian 4-byte words."""
    out = bytearray()
    for f in cheaders.param_struct(family):
        v = fields.get(f.name, 0)
        vals = list(v) if isinstance(v, tuple | list) else [v]
        vals += [0] * (f.count - len(vals))
        for x in vals[: f.count]:
            out += struct.pack("<f", np.float32(x)) if f.ctype == "float" else struct.pack("<I", int(x))
    return bytes(out)


def tables_checksum(
    tensors: list[tuple[int, int, int, int, int]],
    nodes: list[tuple[int, int, list[int], int, bytes]],
    programs: list[list[tuple[int, int, int]]],
    ids: tuple[int, int, int, int],
    sizes: tuple[int, int, int, int],
) -> int:
    """CRC32 of the tables in the canonical form poet_model_check_image (runtime_c/src/interp.c) hashes."""
    c = 0
    for nbytes_, dtype, home, writable, slot in tensors:
        c = zlib.crc32(struct.pack("<IBBBI", nbytes_, dtype, home, writable, slot), c)
    for kernel, params, ins, out, raw in nodes:
        c = zlib.crc32(struct.pack(f"<HHH{len(ins)}HH", kernel, params, len(ins), *ins, out) + raw, c)
    for code in programs:
        c = zlib.crc32(struct.pack("<I", len(code)), c)
        for op, arg, off in code:
            c = zlib.crc32(struct.pack("<BHI", op, arg, off), c)
    return zlib.crc32(struct.pack("<4H4I", *ids, *sizes), c)


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_template(name: str, **ctx: Any) -> str:
    return _env().get_template(name).render(**ctx)
