"""Profiles: every node of a model's training step timed on its target, and the pager's throughput.

``measure`` builds the model for the board through the ordinary pipeline (store-all when it fits the board's RAM,
else another heuristic schedule or POET's, so every kernel runs with the shapes it will have) and replaces the inference program
with a pager probe: the forward pass, with the largest forward activation paged out, freed and paged back in a
few times right after it is computed. It then runs training steps on the target and reads each node's ticks of
the last RUN (the TICKS command), and runs the probe once or more:

  node seconds   ticks of the node / times it ran in the program, converted by ``Target.seconds`` (QEMU:
                 instructions x cycles_per_instruction / clock_hz; real boards: cycles / clock; host: ns)
  pager          what a RUN spends outside its nodes, D = ticks - sum(node ticks), is interpreter overhead per
                 instruction (o) plus pager time per byte moved (b): D = o * instructions + b * bytes. The
                 training program (little or no paging) and the probe (much paging) give two such equations;
                 bytes/s = 1 / b (page-out and page-in together, CRC included).

A profile is JSON: the board, the model (source, sha256, graph fingerprint, batch), per node name the measured
seconds beside the FLOP model's, the pager figure and the tool versions. ``poetc solve/build --profile FILE``
feeds its seconds to ``cost.build`` in place of FLOPs / flop_per_s (energy: seconds x the board's power).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, data, pipeline
from ..boards import Board
from ..emit import builddir
from ..errors import PoetcError
from ..fmt import nbytes, seconds, table
from ..graph.ir import Model
from ..graph.options import TrainingOptions
from ..schedule import memplan, simulate, strategies, waits
from ..schedule.program import Instr, Op, Program
from . import harness, target

FORMAT = 1
PROBE_MIN_BYTES = 64 * 1024  # bytes the probe moves (out + in), so the pager dominates its extra ticks
PROBE_MAX_REPEATS = 32


@dataclass(frozen=True)
class NodeTiming:
    name: str
    op: str
    flops: int
    runs: int  # executions per training step (RUN + RECOMPUTE)
    ticks: float  # per execution, median over the measured steps
    seconds: float  # per execution, on the board's clock
    flop_model_s: float  # the FLOP model's prediction: flops / flop_per_s

    @property
    def ratio(self) -> float | None:
        """FLOP-model prediction / measurement (None when the node took no measurable time)."""
        return self.flop_model_s / self.seconds if self.seconds > 0 else None


@dataclass(frozen=True)
class PagerTiming:
    bytes_per_s: float | None  # page-out + page-in bytes per second (None: too fast to resolve)
    probe_bytes: int  # bytes the probe moved per run
    probe_ops: int  # page-outs + page-ins per probe run
    tensor: str  # the tensor paged
    overhead_ticks_per_instr: float
    emulated: bool  # the pager is not the board's storage (a host file under QEMU)
    board_bytes_per_s: float  # the board file's figure, for comparison: 2 / (1/in + 1/out)
    storage: str = ""  # what was measured


@dataclass(frozen=True)
class Profile:
    board: str
    model_source: str
    model_sha256: str
    graph_fingerprint: str
    batch: int
    strategy: str  # the schedule the measured build used
    tick_unit: str  # instructions | cycles | ns
    tick_hz: int
    seconds_per_tick: float
    timing: str  # how ticks became seconds
    emulated_timing: bool  # the seconds are not the board's (qemu-aarch64 user mode times the emulation)
    steps: int
    step_ticks: float  # median ticks of one training step
    step_s: float
    nodes: tuple[NodeTiming, ...]
    pager: PagerTiming | None
    tools: dict[str, str]
    created: str
    command: str = ""

    def node_seconds(self) -> dict[str, float]:
        return {n.name: n.seconds for n in self.nodes}

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["nodes"] = [dataclasses.asdict(n) for n in self.nodes]
        return {"poetc_profile": FORMAT, "poetc_version": __version__, **d}

    @staticmethod
    def from_json(doc: dict[str, Any], where: str = "profile") -> Profile:
        if doc.get("poetc_profile") != FORMAT:
            raise PoetcError(
                f"{where}: not a poetc profile (format {doc.get('poetc_profile')!r}, expected {FORMAT})"
            )
        try:
            fields = {f.name for f in dataclasses.fields(Profile)}
            vals = {k: v for k, v in doc.items() if k in fields}
            vals["nodes"] = tuple(NodeTiming(**n) for n in doc["nodes"])
            vals["pager"] = PagerTiming(**doc["pager"]) if doc.get("pager") else None
            return Profile(**vals)
        except (KeyError, TypeError) as e:
            raise PoetcError(f"{where}: malformed profile ({e})") from None

    @property
    def ratios(self) -> list[float]:
        return [r for r in (n.ratio for n in self.nodes) if r is not None]

    @property
    def step_ratio(self) -> float:
        """The FLOP model's time for one step over the measured one (nodes only, each as often as it runs)."""
        pred = sum(n.flop_model_s * n.runs for n in self.nodes)
        meas = sum(n.seconds * n.runs for n in self.nodes)
        return pred / meas if meas > 0 else math.nan

    @property
    def geomean_ratio(self) -> float:
        r = self.ratios
        return float(np.exp(np.mean(np.log(r)))) if r else math.nan


def save(prof: Profile, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(prof.to_json(), indent=1) + "\n")
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PoetcError(f"{path}: cannot write: {e.strerror}") from None


def load(path: str | Path) -> Profile:
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as e:
        raise PoetcError(f"--profile {p}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise PoetcError(f"--profile {p}: not JSON: {e}") from None
    return Profile.from_json(doc, str(p))


def for_build(
    path: str | Path, model: Model, board: Board, say: Callable[[str], None] | None = None
) -> Profile:
    """Load a profile for scheduling ``model`` on ``board``: it must have been measured there, on this model and
    batch size (the pipeline then checks that it times every node)."""
    prof = load(path)
    batch = model.graph.tensor(model.input).shape[0]
    if prof.board != board.name:
        raise PoetcError(f"--profile {path}: measured on board {prof.board}, not {board.name}; profile again")
    if prof.model_sha256 != model.sha256 or prof.batch != batch:
        raise PoetcError(
            f"--profile {path}: measured for {prof.model_source} at batch {prof.batch}, not this model "
            f"({model.source}, batch {batch}); run poetc profile for it"
        )
    if say:
        say(
            f"cost model: measured profile {path} ({len(prof.nodes)} nodes, {prof.timing}); the FLOP model's "
            f"step time is {prof.step_ratio:.3g}x the measured one"
            + ("; NOTE: its times are of an emulation, not the board" if prof.emulated_timing else "")
        )
    return prof


# ---- the probe ------------------------------------------------------------------------------------------------
def with_pager_probe(
    c: pipeline.Compiled, say: Callable[[str], None] | None = None
) -> tuple[pipeline.Compiled, int | None]:
    """``c`` with its inference program replaced by the pager probe, and the probed node (None: no probe fits)."""
    say = say or (lambda s: None)
    p, infer = c.problem, c.programs[1]
    fwd = [i.node for i in infer.instrs if i.op == Op.RUN and p.mem[i.node] > 0]
    if not fwd:
        say("pager probe: no forward activation lives in the arena; the pager is not measured")
        return c, None
    k = max(fwd, key=lambda i: (int(p.mem[i]), -i))
    moved = 2 * (int(p.mem[k]) + 4)
    reps = min(PROBE_MAX_REPEATS, max(1, -(-PROBE_MIN_BYTES // moved)))
    code: list[Instr] = []
    for ins in infer.instrs:
        if ins.op == Op.WAIT:
            continue  # the probe gets its own wait points below
        code.append(ins)
        if ins.op == Op.RUN and ins.node == k:
            for _ in range(reps):
                code += [
                    Instr(Op.PAGE_OUT, k, ins.stage),
                    Instr(Op.FREE, k, ins.stage),
                    Instr(Op.PAGE_IN, k, ins.stage),
                ]
    probe = Program("infer", tuple(code), infer.required, infer.keep, infer.ram_homes)
    simulate.replay(p, probe, budget=p.budget)
    plan = memplan.plan(probe, p.mem)
    probe, plan = waits.insert(p, probe, plan, c.board.pager_queue)
    replay = simulate.replay(p, probe, budget=p.budget, offsets=plan.offsets)
    if plan.arena_bytes > p.budget:
        say(f"pager probe: its arena ({plan.arena_bytes} B) exceeds the budget; the pager is not measured")
        return c, None
    slots = dict(c.slots)
    if k not in slots:
        slots[k] = memplan.storage_bytes(slots, p.mem)
    storage = memplan.storage_bytes(slots, p.mem)
    if storage > c.board.storage_bytes:
        say("pager probe: no storage left for it; the pager is not measured")
        return c, None
    arena = max(c.plans[0].arena_bytes, plan.arena_bytes)
    h = hashlib.sha256((c.hash_hex + "|pager-probe|" + repr(probe.instrs) + repr(plan.offsets)).encode())
    c2 = dataclasses.replace(
        c,
        programs=(c.programs[0], probe),
        plans=(c.plans[0], plan),
        replays=(c.replays[0], replay),
        slots=slots,
        storage_bytes=storage,
        memory=dataclasses.replace(c.memory, arena=arena),
        hash_hex=h.hexdigest()[:16],
    )
    say(f"pager probe: {p.tensor_names[k]} ({nbytes(int(p.mem[k]))}) paged out and in {reps} times per run")
    return c2, k


# ---- measuring ------------------------------------------------------------------------------------------------
def tick_unit(tgt: target.Target) -> str:
    return harness.timing(tgt).tick_unit


def timing_note(tgt: target.Target) -> tuple[str, bool]:
    """(how ticks become seconds, whether they time an emulation rather than the board): harness.timing's."""
    tm = harness.timing(tgt)
    return tm.how, not tm.board_time


def pager_storage(tgt: target.Target) -> str:
    if isinstance(tgt, target.QemuTarget):
        return "a host file through semihosting: CPU cost (CRC) only, not an SD card"
    if isinstance(tgt, target.LinuxTarget) and tgt.emulated:
        return "a host file under qemu-aarch64, timed on this machine"
    if isinstance(tgt, target.BoardTarget):
        return f"the board's {tgt.board.storage} storage"
    return "a file (the host port's --pager)"


def _first_line(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return "missing"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else "?"


def tool_versions(tgt: target.Target) -> dict[str, str]:
    out = {
        "poetc": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
    }
    if isinstance(tgt, target.LinuxTarget):
        out["cc"] = (
            _first_line([target.LINUX_CC, "--version"])
            if not tgt.native
            else _first_line(["cc", "--version"])
        )
        if tgt.emulated:
            out["qemu"] = _first_line(["qemu-aarch64", "--version"])
    elif isinstance(tgt, target.ArmTarget):
        out["cc"] = _first_line(["arm-none-eabi-gcc", "--version"])
        if isinstance(tgt, target.QemuTarget):
            out["qemu"] = _first_line(["qemu-system-arm", "--version"])
    else:
        out["cc"] = _first_line(["cc", "--version"])
    return out


def _batch(build: builddir.BuildInfo, seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None]:
    try:
        ds = data.digits_for(build.input_shape[1:], build.classes)
        x, y = next(harness.batches(ds, build.batch, seed))
        return x, y, ds.q8
    except PoetcError:  # an input the bundled digits cannot fill: random values of the same shape
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(build.input_shape).astype(np.float32)
        return x, rng.integers(0, build.classes, build.batch), None


def _pager_fit(train: tuple[float, int, int], probe: tuple[float, int, int]) -> tuple[float, float] | None:
    """Solve D = o * instructions + b * bytes for (o, b) from the training program and the probe."""
    (d_t, n_t, b_t), (d_p, n_p, b_p) = train, probe
    if b_p <= 0:
        return None
    if b_t == 0:
        o = d_t / max(1, n_t)
        return o, (d_p - o * n_p) / b_p
    a = np.array([[n_t, b_t], [n_p, b_p]], dtype=np.float64)
    if abs(np.linalg.det(a)) < 1e-9 * abs(a).max() ** 2:
        return None
    o, b = np.linalg.solve(a, np.array([d_t, d_p], dtype=np.float64))
    return float(o), float(b)


def measure(
    model: Model,
    board: Board,
    steps: int | None = None,
    strategy: str | None = None,
    opts: strategies.SolveOptions = strategies.SolveOptions(),
    say: Callable[[str], None] | None = None,
    keep: Path | None = None,
    command: str = "",
    port: str | None = None,
    seed: int = 0,
    timeout_s: float = 120.0,
    training: TrainingOptions = TrainingOptions(),
) -> Profile:
    """Build ``model`` for ``board`` with the pager probe, run it and return the profile (see the module doc)."""
    say = say or (lambda s: None)
    tgt = target.for_board(board)
    harness.port_kw(tgt, port)  # a --port that cannot apply fails before the build
    pl = pipeline.plan(model, board, say=say, training=training)
    if strategy is None:  # any schedule that runs every node will do: the cheapest heuristic, else POET's
        best = strategies.best_heuristic(pl.problem)
        strategy = best.strategy if best is not None else "poet"
    say(f"profiling build: the {strategy} schedule at the board's {nbytes(board.ram_bytes)} of RAM")
    c = pipeline.compile_model(
        model, board, None, strategy, command or "poetc profile", progress=say, opts=opts, training=training
    )
    c, probed = with_pager_probe(c, say)
    tmp = None
    if keep is None:
        tmp = Path(tempfile.mkdtemp(prefix="poetc-profile-"))
        out = tmp / "build"
    else:
        out = Path(keep)
    try:
        builddir.write(c, out, command or "poetc profile", tgt, say=say)
        b = builddir.open_build(out)
        if isinstance(tgt, target.BoardTarget):
            _flash(board, out, port, say)
        return _run(c, b, tgt, probed, steps, say, seed, timeout_s, command, port)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _flash(board: Board, out: Path, port: str | None, say: Callable[[str], None]) -> None:
    """Flash the profiling build. ``port`` (--port) is the link's serial device; a board that is flashed through
    another port (the MKR1000: native USB, while the link is a USB-serial adapter) finds that one by USB id."""
    pio = target.PLATFORMIO.get(board.port)
    cmd = target.flash(board, out, port=None if pio is not None and pio.upload_usb else port)
    say("flashing the profiling build: " + " ".join(cmd))
    if subprocess.run(cmd).returncode != 0:
        raise PoetcError("pio run -t upload failed; its output is above")


def _run(
    c: pipeline.Compiled,
    b: builddir.BuildInfo,
    tgt: target.Target,
    probed: int | None,
    steps: int | None,
    say: Callable[[str], None],
    seed: int,
    timeout_s: float,
    command: str,
    port: str | None,
) -> Profile:
    board = c.board
    qemu = isinstance(tgt, target.QemuTarget)
    if steps is None:
        steps = 2 if qemu else 7  # QEMU counts are deterministic; wall-clock ticks need a median
    if steps < 1:
        raise PoetcError(f"--steps must be at least 1, got {steps}")
    train, probe = c.programs
    runs = train.runs(len(c.tg.graph.nodes), c.problem.ir_node)
    x, y, q8 = _batch(b, seed)
    node_ticks: list[list[int]] = []
    totals: list[tuple[int, int]] = []  # (RUN ticks, paged bytes)
    probes: list[tuple[int, int]] = []
    kw: dict[str, Any] = harness.port_kw(tgt, port)
    with tgt.launch(b.dir, timeout_s=timeout_s, **kw) as sess:
        dev = harness.Device(b, sess, tgt.seconds)
        dev.set_batch(x, y, q8)
        say(f"running {steps} training step(s) on {board.name} and reading each node's ticks")
        for _ in range(steps):
            out = dev.step(0.0)  # lr 0: the parameters, hence every step's data path, stay the same
            node_ticks.append(dev.node_ticks())
            r = out.reply
            totals.append((out.ticks, r.page_in_bytes + r.page_out_bytes))
        if probed is not None:
            for _ in range(1 if qemu else 3):
                r = dev.link.run(harness.PROG_INFER, 0.0, timeout_s=timeout_s)
                if r.status != 0:
                    raise PoetcError(f"pager probe failed on the target (status {r.status})")
                probes.append((r.ticks - sum(dev.node_ticks()), r.page_in_bytes + r.page_out_bytes))
        tick_hz = dev.tick_hz
    keep_from = 1 if steps >= 3 else 0  # the first wall-clock step warms caches
    nt = np.median(np.array(node_ticks[keep_from:], dtype=np.float64), axis=0)
    sec_per_tick = tgt.seconds(10**9, tick_hz) / 1e9
    g = c.tg.graph
    nodes = []
    for i, n in enumerate(g.nodes):
        per = float(nt[i]) / max(1, int(runs[i]))
        nodes.append(
            NodeTiming(n.name, n.op, int(c.cost.flops[i]), int(runs[i]), per, per * sec_per_tick,
                       float(c.cost.flops[i] / board.flop_per_s))
        )  # fmt: skip
    step_ticks = float(np.median([t for t, _ in totals[keep_from:]]))
    pager = None
    if probes:
        d_t = float(
            np.median([t - sum(ts) for (t, _), ts in zip(totals, node_ticks, strict=True)][keep_from:])
        )
        d_p = float(np.median([d for d, _ in probes]))
        fit = _pager_fit((d_t, len(train.instrs), totals[-1][1]), (d_p, len(probe.instrs), probes[-1][1]))
        bps = None
        if fit is not None and fit[1] > 0:
            bps = 1.0 / (fit[1] * sec_per_tick)
        board_bps = 2.0 / (1.0 / board.page_in_bytes_per_s + 1.0 / board.page_out_bytes_per_s)
        ops = probe.count(Op.PAGE_OUT) + probe.count(Op.PAGE_IN)
        pager = PagerTiming(
            bps,
            probes[-1][1],
            ops,
            c.problem.tensor_names[probed] if probed is not None else "",
            fit[0] if fit else math.nan,
            qemu or timing_note(tgt)[1],
            board_bps,
            pager_storage(tgt),
        )
    note, emulated = timing_note(tgt)
    return Profile(
        board=board.name,
        model_source=c.model.source,
        model_sha256=c.model.sha256,
        graph_fingerprint=g.fingerprint(),
        batch=b.batch,
        strategy=c.strategy,
        tick_unit=tick_unit(tgt),
        tick_hz=tick_hz,
        seconds_per_tick=sec_per_tick,
        timing=note,
        emulated_timing=emulated,
        steps=steps,
        step_ticks=step_ticks,
        step_s=step_ticks * sec_per_tick,
        nodes=tuple(nodes),
        pager=pager,
        tools=tool_versions(tgt),
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        command=command or " ".join(sys.argv),
    )


# ---- the report ----------------------------------------------------------------------------------------------
def ratio_rows(prof: Profile) -> list[list[object]]:
    rows: list[list[object]] = []
    for i, n in enumerate(prof.nodes):
        r = n.ratio
        rows.append(
            [
                i,
                n.name[:40],
                n.op,
                f"{n.flops:,}",
                n.runs,
                f"{n.ticks:,.0f}",
                seconds(n.seconds),
                seconds(n.flop_model_s),
                "-" if r is None else f"{r:.3g}",
            ]
        )
    return rows


def table_text(prof: Profile) -> str:
    """Per node: the measurement beside the FLOP model's prediction and their ratio; then the totals."""
    head = ["node", "name", "op", "FLOPs", "runs", prof.tick_unit, "measured", "FLOP model", "model/meas."]
    lines = [table(head, ratio_rows(prof), "rllrrrrrr")]
    r = prof.ratios
    if r:
        lo = min(prof.nodes, key=lambda n: n.ratio if n.ratio is not None else math.inf)
        hi = max(prof.nodes, key=lambda n: n.ratio if n.ratio is not None else -math.inf)
        lines.append(
            f"FLOP model / measured: step {prof.step_ratio:.3g}, geometric mean over nodes "
            f"{prof.geomean_ratio:.3g}, range {lo.ratio:.3g} ({lo.name}) to {hi.ratio:.3g} ({hi.name})"
        )
    lines.append(
        f"one training step: {prof.step_ticks:,.0f} {prof.tick_unit} = {seconds(prof.step_s)} ({prof.timing})"
    )
    if prof.pager is not None:
        pg = prof.pager
        what = pg.storage or ("emulated storage" if pg.emulated else "board storage")
        if pg.bytes_per_s is None:
            lines.append(f"pager: too fast to resolve ({pg.probe_bytes} B per probe run; {what})")
        else:
            lines.append(
                f"pager: {nbytes(pg.bytes_per_s)}/s out+in, CRC included ({pg.probe_ops} page-outs/ins of "
                f"{pg.tensor}, {nbytes(pg.probe_bytes)} per run; {what}); board file: "
                f"{nbytes(pg.board_bytes_per_s)}/s"
            )
    if prof.emulated_timing:
        lines.append("NOTE: these times are of an emulation on this machine, not of the board")
    return "\n".join(lines)
