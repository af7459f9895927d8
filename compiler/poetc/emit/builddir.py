"""The build directory: generated sources, a copy of the runtime and port, the manifest, the binary.

Written all-or-nothing: everything goes to a sibling temporary directory that replaces ``--out`` only when the
generation and the compilation succeeded. An existing ``--out`` is replaced only if poetc wrote it (it lists
its files in ``.poetc-files``); a directory holding anything else is refused. The manifest carries a SHA-256 of
its own contents (``manifest_sha256``): a damaged or edited one is refused when the build is opened. A command
holds the directory's lock (``locked``) while it uses it.

Layout:
  poetc.json       manifest: model, board, tensors with ids, parameters, training options (trainable, frozen,
                   optimizer, BatchNorm mode), programs, memory, hash
  arena.txt        the memory plan over each program (memplan.timeline)
  schedule.json    the schedule's figures (strategy, energy, time, peak RAM, arena, paging counts)
  model.c/.h       generated tables;   model.onnx   the source model (for export)
  runtime/ port/   copies of runtime_c and firmware/<port>;  Makefile;  build/  the compiled program
  runs/<n>/        each poetc train: trained.npz (weights), optimizer.npz (momentum buffers, if any) and
                   train.json (its record: status complete | interrupted | failed, steps done); never replaced
  cortexm/ memory.ld   Cortex-M boards: the shared start-up and sections, the board's RAM/flash/stack sizes
  platformio.ini pio_link.py   Cortex-M boards: the PlatformIO project (``poetc flash``); QEMU boards also get
                   pio/ (the local platform, toolchain and tool-scons packages that let it build offline)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .. import __version__
from ..errors import PoetcError
from ..graph.ir import Role
from ..graph.options import TrainingOptions
from ..pipeline import Compiled
from ..resources import firmware_dir, runtime_dir
from ..schedule import memplan, strategies
from . import codegen, ondevice

MANIFEST = "poetc.json"
FILE_LIST = ".poetc-files"
RUNS = "runs"  # training runs: runs/<n>/trained.npz and train.json
TRAINED = "trained.npz"
OPTIMIZER = "optimizer.npz"  # a run's momentum buffers (resume continues with them)
CHECKSUM_KEY = "manifest_sha256"


def manifest_checksum(doc: dict[str, Any]) -> str:
    """SHA-256 of the manifest's canonical JSON without its own checksum field."""
    body = {k: v for k, v in doc.items() if k != CHECKSUM_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file all-or-nothing: a temporary sibling renamed into place (never a half-written file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PoetcError(f"{path}: cannot write: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---- one command at a time per build directory -------------------------------------------------------------
def lock_path(d: Path) -> Path:
    """The lock of build directory ``d``: a sibling file, so it also guards a build that replaces ``d``."""
    d = Path(d).resolve()
    return d.parent / f".{d.name}.poetc-lock"


@contextlib.contextmanager
def locked(d: Path, what: str) -> Iterator[None]:
    """Hold build directory ``d`` for one command (``what``). A second poetc on the same directory is refused
    with the holder's PID (exit 2); the lock is an flock on a file holding the PID, so a holder that died
    (killed, crashed) leaves nothing that blocks: its stale file is taken over."""
    import fcntl

    path = lock_path(d)
    if not path.parent.is_dir():  # nothing to guard yet (build makes the parent)
        yield
        return
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise PoetcError(f"{d}: cannot lock ({path}: {e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").split()
            os.close(fd)
            pid = holder[0] if holder else "?"
            cmd = " ".join(holder[1:2])
            raise PoetcError(
                f"{d}: in use by another poetc{' ' + cmd if cmd else ''} (PID {pid}); wait for it to finish "
                f"or stop it"
            ) from None
        try:  # the file we locked must still be the lock (a releasing holder unlinks it)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {what}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def check_out_dir(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise PoetcError(f"--out {out}: exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    listed = set((out / FILE_LIST).read_text().split()) if (out / FILE_LIST).is_file() else set()
    foreign = [e for e in entries if e not in listed and e != FILE_LIST]
    if foreign or not listed:
        example = foreign[0] if foreign else entries[0]
        raise PoetcError(
            f"--out {out}: holds files poetc did not write (e.g. {example}); use a new or empty directory"
        )


def schedule_summary(c: Compiled) -> dict[str, Any]:
    out = strategies.figures(c.problem, c.solution, c.fixed_bytes, c.arena_bytes)
    out["fragmentation_repairs"] = c.repairs
    # the program the device runs, with its wait points (the solution's replay has none)
    out["waits"] = c.replays[0].waits
    out["event_time_s"] = c.replays[0].event_time_s
    if c.repairs and c.first_extra_j is not None and out["extra_energy_j"] is not None:
        out["repair_overhead_j"] = out["extra_energy_j"] - c.first_extra_j
    return out


def flash_pager_wear(c: Compiled) -> dict[str, Any] | None:
    """For a board whose internal flash may serve as storage: how fast this schedule wears it out."""
    b = c.board
    if not b.flash_pager:
        return None
    per_step = memplan.flash_wear(c.programs[0], c.slots, c.problem.mem, b.flash_erase_page_bytes)
    return {
        "erase_page_bytes": b.flash_erase_page_bytes,
        "endurance_cycles": b.flash_endurance_cycles,
        "erases_per_step": per_step,  # of the most-erased physical page
        "max_steps": None if per_step == 0 else int(b.flash_endurance_cycles // per_step),
    }


def homes(c: Compiled) -> dict[str, str]:
    """Parameter, optimizer and state tensor -> "ram" | "flash" | "storage"."""
    g = c.tg.graph
    return {n: c.home(n) for n, t in g.tensors.items() if t.role in (Role.PARAM, Role.STATE, Role.OPT_STATE)}


def manifest(c: Compiled, command: str, batch: int) -> dict[str, Any]:
    g = c.tg.graph
    ids = codegen.tensor_ids(c.tg)
    where = homes(c)
    return {
        "poetc_version": __version__,
        "command": command,
        "hash": c.hash_hex,
        "model": {
            "source": c.model.source,
            "sha256": c.model.sha256,
            "onnx": "model.onnx",
            "input": c.model.input,
            "logits": c.model.logits,
        },
        "board": c.board.name,
        "strategy": c.strategy,
        "param_homes": c.param_homes,
        "batch": batch,
        "input_shape": list(g.tensor(c.tg.input).shape),
        "classes": int(g.tensor(c.tg.logits).shape[-1]),
        "tensors": [
            {
                "id": ids[n],
                "name": n,
                "role": t.role.value,
                "shape": list(t.shape),
                "dtype": t.dtype,
                "bytes": t.nbytes,
                "home": "arena" if t.in_arena else where.get(n, "ram"),
            }
            for n, t in g.tensors.items()
        ],
        "ids": {
            "input": ids[c.tg.input],
            "label": ids[c.tg.label],
            "loss": ids[c.tg.loss],
            "logits": ids[c.tg.logits],
        },
        "params": list(c.model.graph.params),  # every parameter, trainable or frozen
        "state": list(c.model.state),  # BatchNorm running statistics: read back and exported with the params
        # --train, --bn, --optimizer, --weight-decay, and what they resolved to: train/verify/report rebuild the
        # same training graph from this
        "training": {
            **c.training.to_json(),
            "trainable": list(c.tg.params),
            "frozen": list(c.tg.frozen),
            "opt_state": dict(c.tg.opt_state),  # parameter -> its momentum buffer tensor
            "updated_state": list(
                c.tg.state_updates
            ),  # running statistics a step updates (not a frozen BN's)
        },
        "graph_fingerprint": c.tg.graph.fingerprint(),
        # --input-u8: the batch is sent and held as bytes, dequantized on the target with this scale
        "input_u8_scale": next((n.attrs["scale"] for n in g.nodes if n.op == "dequant_u8"), None),
        "nodes": [
            {"name": n.name, "op": n.op, "phase": n.phase, "flops": int(c.cost.flops[i])}
            for i, n in enumerate(g.nodes)
        ],
        "programs": {
            p.name: {
                "instructions": len(p.instrs),
                "arena_bytes": mp.arena_bytes,
                "live_peak_bytes": mp.live_peak_bytes,
            }
            for p, mp in zip(c.programs, c.plans, strict=True)
        },
        "memory": dict(c.memory.rows()),
        "storage_bytes": c.storage_bytes,
        "flash_pager": flash_pager_wear(c),
        "schedule": schedule_summary(c),
    }


def write(
    c: Compiled,
    out: Path,
    command: str,
    target: Any,
    say=lambda s: None,
    compile_: bool = True,
    app: ondevice.OnDevice | None = None,
) -> None:
    check_out_dir(out)
    out = out.resolve()
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{out.name}.poetc-tmp-{os.getpid()}"
    old = parent / f".{out.name}.poetc-old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _write_files(c, tmp, command, target, app)
        if compile_:
            say(f"compiling for {c.board.name} ...")
            target.build(tmp, say)
        (tmp / FILE_LIST).write_text("\n".join(sorted(p.name for p in tmp.iterdir())) + "\n")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)
        raise


def checkpoint_layout(c: Compiled) -> codegen.CheckpointLayout:
    """Where the C API's checkpoints go on this build's storage (slots aligned to the board's flash erase page,
    if it has one)."""
    return codegen.checkpoint_layout(c.tg, homes(c), c.storage_bytes, c.board.flash_erase_page_bytes or 256)


def checkpoint_doc(c: Compiled, every: int | None) -> dict[str, Any]:
    """The manifest's record of the checkpoint layout (device/checkpoint.py reads slots with it)."""
    ck = checkpoint_layout(c)
    doc: dict[str, Any] = {
        "addr": ck.addr,
        "slot_bytes": ck.slot_bytes,
        "header_bytes": codegen.CKPT_HEADER_BYTES,
        "tensors": [{"name": n, "bytes": b} for n, b in ck.tensors],
    }
    if every is not None:
        doc["wear"] = ondevice.checkpoint_wear(c.board, ck, every)
    return doc


def _write_files(
    c: Compiled, d: Path, command: str, target: Any, app: ondevice.OnDevice | None = None
) -> None:
    batch = c.tg.graph.tensor(c.tg.input).shape[0]
    ckpt = checkpoint_layout(c)
    files = codegen.render(
        codegen.CodegenInput(
            tg=c.tg,
            params={**c.model.params, **c.model.state},  # initial values of parameters and state
            programs=c.programs,
            plans=c.plans,
            arena_bytes=c.arena_bytes,
            slots={c.problem.tensor_names[k]: a for k, a in c.slots.items()},
            storage_bytes=c.storage_bytes,
            hash_hex=c.hash_hex,
            command=command,
            model_sha256=c.model.sha256,
            ir_node=c.problem.ir_node,
            tensor_of=c.problem.tensor_names,
            homes=homes(c),
            ckpt_align=ckpt.align,
        )
    )
    for name, text in files.items():
        (d / name).write_text(text)
    shutil.copytree(runtime_dir() / "include", d / "runtime" / "include")
    shutil.copytree(runtime_dir() / "src", d / "runtime" / "src")
    shutil.copytree(firmware_dir() / c.board.port, d / "port")
    header = f"Generated by poetc {__version__} for board {c.board.name}; build hash {c.hash_hex}"
    target.write_port_files(d, header, ckpt.end)  # Cortex-M: cortexm/, memory.ld, platformio.ini
    doc = manifest(c, command, batch)
    doc["checkpoint"] = checkpoint_doc(c, app.checkpoint_every if app else None)
    if app is not None:
        g = c.tg.graph
        ondevice.write_app(
            d, app, batch, tuple(g.tensor(c.tg.input).shape[1:]), int(g.tensor(c.tg.logits).shape[-1]),
            doc["input_u8_scale"], doc["checkpoint"]["wear"], header,
        )  # fmt: skip
        doc["on_device"] = {
            "kind": app.kind,
            "steps": app.steps,
            "lr": app.lr,
            "checkpoint_every": app.checkpoint_every,
            "data": app.data.name,
            "seed": app.seed,
        }
    (d / "Makefile").write_text(
        codegen.render_template(
            target.makefile_template,
            header=header,
            frame_max=c.board.frame_max_bytes,
            board=c.board,
            app=app is not None,
            **target.template_vars(c.storage_bytes),
        )
    )
    onnx.save(c.model.onnx_model, str(d / "model.onnx"))
    names = list(c.problem.tensor_names)
    (d / "arena.txt").write_text("".join(memplan.timeline(mp, names) for mp in c.plans))
    if c.board.path:  # the board as built, so train/verify find it even when it came from a file
        shutil.copyfile(c.board.path, d / "board.toml")
    doc[CHECKSUM_KEY] = manifest_checksum(doc)
    (d / MANIFEST).write_text(json.dumps(doc, indent=1) + "\n")
    (d / "schedule.json").write_text(json.dumps(schedule_summary(c), indent=1) + "\n")


@dataclass(frozen=True)
class BuildInfo:
    dir: Path
    doc: dict[str, Any]

    @property
    def ids(self) -> dict[str, int]:
        return self.doc["ids"]

    def tensor(self, name: str) -> dict[str, Any]:
        return next(t for t in self.doc["tensors"] if t["name"] == name)

    def param_ids(self) -> dict[str, int]:
        return {p: self.tensor(p)["id"] for p in self.doc["params"]}

    def training(self) -> TrainingOptions:
        """The build's training options, with the trainable parameters it resolved (``--train auto``,
        ``last:K``, ...) spelled out, so the same training graph can be rebuilt from model.onnx."""
        doc = self.doc.get("training")
        opts = TrainingOptions.from_json(doc)
        if doc and doc.get("frozen"):
            opts = dataclasses.replace(opts, train=tuple(doc["trainable"]))
        return opts

    def opt_state(self) -> dict[str, str]:
        """Trainable parameter -> its momentum buffer tensor (empty for plain SGD)."""
        return dict(self.doc.get("training", {}).get("opt_state", {}))

    def state_ids(self) -> dict[str, int]:
        """State tensors (BatchNorm running statistics), updated by training and exported like parameters."""
        return {s: self.tensor(s)["id"] for s in self.doc.get("state", [])}

    @property
    def batch(self) -> int:
        return int(self.doc["batch"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.doc["input_shape"])

    @property
    def classes(self) -> int:
        return int(self.doc["classes"])

    def add_file(self, name: str) -> Path:
        """Record a file poetc writes into the build directory later (trained weights), so rebuilds accept it."""
        listed = self.dir / FILE_LIST
        names = set(listed.read_text().split()) if listed.is_file() else set()
        if name not in names:
            write_atomic(listed, "\n".join(sorted(names | {name})) + "\n")
        return self.dir / name

    def board(self):  # -> boards.Board
        """The board this was built for (the copy in the build directory; by name for older builds)."""
        from .. import boards

        copy = self.dir / "board.toml"
        return boards.load_file(copy, check_name=False) if copy.is_file() else boards.load(self.doc["board"])

    # ---- training runs: poetc train writes runs/<n>/ (trained.npz, train.json) and never replaces one ----
    # A run that stopped early (Ctrl-C, SIGTERM, a target error) keeps the weights of its last saved step; its
    # train.json says so ("status": interrupted | failed, "steps" done of "steps_planned") and names it for
    # poetc train --resume; export takes the latest run only when it completed.
    def runs(self) -> list[int]:
        """The training runs kept in this build, oldest first."""
        d = self.dir / RUNS
        if not d.is_dir():
            return []
        return sorted(int(e.name) for e in d.iterdir() if e.name.isdigit() and (e / TRAINED).is_file())

    def new_run(self) -> tuple[int, Path]:
        """A new, empty run directory (the next number; numbers are never reused while the build lives)."""
        d = self.add_file(RUNS)
        d.mkdir(exist_ok=True)
        n = max((int(e.name) for e in d.iterdir() if e.name.isdigit()), default=0) + 1
        (d / str(n)).mkdir()
        return n, d / str(n)

    def run_dir(self, run: int | None = None) -> tuple[int, Path]:
        """(number, directory) of ``run``, or of the latest run; an error names the runs there are."""
        have = self.runs()
        if not have:
            raise PoetcError(f"{self.dir}: no trained weights yet (run poetc train {self.dir} first)")
        if run is None:
            run = have[-1]
        if run not in have:
            raise PoetcError(f"--run {run}: {self.dir} has no run {run} (runs: {', '.join(map(str, have))})")
        return run, self.dir / RUNS / str(run)

    def run_record(self, run: int | None = None) -> dict[str, Any]:
        """The run's train.json (empty when it has none, e.g. a fleet's run, or it is unreadable)."""
        _, d = self.run_dir(run)
        try:
            doc = json.loads((d / "train.json").read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def run_complete(self, run: int) -> bool:
        return self.run_record(run).get("status", "complete") == "complete"

    def run_summary(self, run: int | None = None) -> str:
        """'run 2 (build/m/runs/2: 200 steps, lr 0.4)' for messages; a run that stopped early says so."""
        n, d = self.run_dir(run)
        doc = self.run_record(n)
        what = ""
        try:
            what = f": {doc['steps']} steps, lr {doc['lr']:g}"
            status = doc.get("status", "complete")
            if status != "complete":
                what = f": {status} after {doc['steps']} of {doc.get('steps_planned', '?')} steps, lr {doc['lr']:g}"
        except (KeyError, TypeError, ValueError):
            what = ""
        return f"run {n} ({d}{what})"

    def exportable_run(self, run: int | None) -> int:
        """The run export writes: ``run`` as asked, or the latest, which must have completed (an interrupted or
        failed latest run is named, with how to export it anyway or finish it)."""
        d = self.dir / RUNS
        newest = max((int(e.name) for e in d.iterdir() if e.name.isdigit()), default=0) if d.is_dir() else 0
        if run is None and newest and newest not in self.runs():  # the newest run kept no weights at all
            try:
                doc = json.loads((d / str(newest) / "train.json").read_text())
                why = f": {doc.get('error')}" if isinstance(doc, dict) and doc.get("error") else ""
            except (OSError, ValueError):
                why = ""
            have = self.runs()
            raise PoetcError(
                f"the latest run {newest} ({d / str(newest)}) failed and kept no weights{why}"
                + (f"; --run {have[-1]} exports the run before it" if have else "")
            )
        n, _ = self.run_dir(run)
        if run is not None or self.run_complete(n):
            return n
        done = [r for r in self.runs() if self.run_complete(r)]
        raise PoetcError(
            f"the latest {self.run_summary(n)} did not complete; poetc train {self.dir} --resume finishes it, "
            f"--run {n} exports its saved weights as they are"
            + (f", --run {done[-1]} exports the latest complete run" if done else "")
        )

    def train_record_path(self, run: int | None = None) -> Path | None:
        """train.json of ``run`` (default: the latest run); None when nothing was trained yet and no run named."""
        if run is None and not self.runs():
            return None
        return self.run_dir(run)[1] / "train.json"

    def load_trained(self, run: int | None = None) -> dict[str, np.ndarray]:
        _, d = self.run_dir(run)
        return load_weights(d / TRAINED)

    def load_optimizer(self, run: int | None = None) -> dict[str, np.ndarray]:
        """The run's momentum buffers (optimizer.npz); empty for plain SGD."""
        _, d = self.run_dir(run)
        return load_weights(d / OPTIMIZER) if (d / OPTIMIZER).is_file() else {}


def load_weights(path: Path) -> dict[str, np.ndarray]:
    """Float arrays by name from a .npz poetc wrote; a damaged file is one error, never a traceback."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except Exception as e:  # truncated, not a zip, object arrays: never a traceback
        raise PoetcError(f"{path}: damaged trained weights ({type(e).__name__}: {e})") from None
    bad = [k for k, v in out.items() if v.dtype.kind != "f" or not np.all(np.isfinite(v))]
    if bad:
        raise PoetcError(f"{path}: {bad[0]!r} is not finite float data; the file is damaged")
    return out


MANIFEST_KEYS = ("poetc_version", "hash", "tensors", "model")  # a manifest without them is damaged


def open_build(d: Path) -> BuildInfo:
    m = d / MANIFEST
    if not m.is_file():
        raise PoetcError(f"{d}: not a poetc build directory (no {MANIFEST}); run poetc build first")
    try:
        doc = json.loads(m.read_text())
    except (OSError, ValueError) as e:  # JSON and UTF-8 decoding errors alike
        raise PoetcError(f"{m}: unreadable manifest: {str(e).splitlines()[0]}") from None
    missing = [k for k in MANIFEST_KEYS if not isinstance(doc, dict) or k not in doc]
    if missing:
        raise PoetcError(f"{m}: damaged manifest: no {missing[0]!r}; rebuild it")
    if doc.get("poetc_version") != __version__:
        raise PoetcError(f"{d}: built by poetc {doc.get('poetc_version')}, this is {__version__}; rebuild it")
    if doc.get(CHECKSUM_KEY) != manifest_checksum(doc):
        raise PoetcError(
            f"{m}: damaged manifest: its checksum does not match its contents (edited or corrupted); rebuild it"
        )
    return BuildInfo(d, doc)
