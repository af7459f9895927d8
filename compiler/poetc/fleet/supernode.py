"""``poetc fleet MODEL --connect ADDR``: one board joins a real Flower SuperLink as a SuperNode.

The process builds MODEL for ``--board`` (or takes a build directory, e.g. one already flashed to a real board),
opens the board once (``BoardClient``; ``--port`` for a real board's serial device) with its own data (``--data``,
or shard ``--shard K`` of ``--clients`` under ``--partition``), serves it on a loopback port (``service``), and runs
Flower's ``flower-supernode --insecure --superlink ADDR`` with that port and a token in its node config. The
SuperNode runs ``poetc.fleet.remote:client_app`` for every round the ServerApp sends (``flwr run``, docs/fleet.md)
and the board trains; the raw samples never leave this process and its board. It runs until Ctrl-C or until the
SuperNode stops, then closes the board.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .. import data
from ..device import target
from ..emit import builddir
from ..errors import PoetcError
from ..fmt import joules
from . import OFFLINE_ENV, partition
from .client import BoardClient, FitResult
from .local import FleetSpec, build_all
from .remote import BOARD_KEY, TOKEN_KEY
from .service import BoardService


@dataclass(frozen=True)
class ConnectSpec:
    superlink: str  # host:port of the SuperLink's HTTP API (Fleet, Control and ServerApp APIs in flwr 1.42)
    fleet: FleetSpec  # model, board (one), RAM, batch, training options, data, partition, seed, out
    build_dir: Path | None = None  # an existing build instead of building MODEL
    shard: int | None = None  # with fleet.clients and fleet.partition: this board's shard of --data
    port: str | None = None  # a real board's serial device


def _build(spec: ConnectSpec, say: Callable[[str], None]) -> builddir.BuildInfo:
    if spec.build_dir is not None:
        b = builddir.open_build(spec.build_dir)
        if spec.fleet.boards and spec.fleet.boards[0] and spec.fleet.boards[0] != b.doc["board"]:
            raise PoetcError(
                f"--board {spec.fleet.boards[0]}: {spec.build_dir} was built for {b.doc['board']}"
            )
        return b
    if len(spec.fleet.boards) != 1:
        raise PoetcError(
            f"fleet --connect: one board per SuperNode, got --board {','.join(spec.fleet.boards)}"
        )
    return build_all(replace(spec.fleet, clients=1), say)[0]


def _data(spec: ConnectSpec, b: builddir.BuildInfo) -> data.Dataset:
    f = spec.fleet
    shape = b.input_shape[1:]
    ds = data.load_npz(f.data, shape, b.classes) if f.data else data.digits_for(shape, b.classes)
    if spec.shard is None:
        return ds
    if not 0 <= spec.shard < f.clients:
        raise PoetcError(f"--shard {spec.shard}: must be in 0..{f.clients - 1} (--clients {f.clients})")
    return partition.split(ds, f.clients, f.partition, f.seed, min_size=b.batch)[spec.shard]


def _check_address(addr: str) -> None:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise PoetcError(
            f"--connect {addr}: expected HOST:PORT of the SuperLink's HTTP API (e.g. 127.0.0.1:8000)"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def supernode_command(superlink: str, board_addr: str, token: str, runtime_port: int) -> list[str]:
    exe = shutil.which("flower-supernode")
    if exe is None:
        raise PoetcError(
            "flower-supernode not found on PATH (it comes with flwr: pip install 'poetc[fleet]')"
        )
    return [
        exe, "--insecure", "--superlink", superlink,
        "--node-config", f"{BOARD_KEY}='{board_addr}' {TOKEN_KEY}='{token}'",
        "--port", str(runtime_port),  # the SuperNode's runtime API: one per SuperNode on this machine
    ]  # fmt: skip


def run(spec: ConnectSpec, say: Callable[[str], None], verbose: bool = False) -> int:
    _check_address(spec.superlink)
    b = _build(spec, say)
    ds = _data(spec, b)
    board = b.board()
    client = BoardClient(
        spec.shard or 0, b, target.for_board(board, port=spec.port), ds, seed=spec.fleet.seed
    )
    rounds = [0]

    def on_round(res: FitResult | None, err: str | None) -> None:
        rounds[0] += 1
        if res is None:
            print(f"round {rounds[0]}: failed: {err}", flush=True)
        else:
            print(
                f"round {rounds[0]}: {len(res.losses)} local steps, loss {res.loss:.4f}, {joules(res.energy_j)} on "
                f"the board, {res.link_bytes} bytes over its link",
                flush=True,
            )

    def terminate(signum, frame):  # a service manager's TERM: leave as on Ctrl-C, closing the board
        raise KeyboardInterrupt

    client.open()
    svc = BoardService(client, on_round).start()
    proc = None
    old_term = signal.signal(signal.SIGTERM, terminate)
    try:
        cmd = supernode_command(spec.superlink, svc.address, svc.token, _free_port())
        print(
            f"poetc fleet: {board.name} ({b.dir}) with {len(ds.x)} samples of {ds.name} joins the SuperLink at "
            f"{spec.superlink} as a Flower SuperNode; Ctrl-C leaves",
            flush=True,
        )
        env = {**os.environ, **{k: os.environ.get(k, v) for k, v in OFFLINE_ENV.items()}}
        out = None if verbose else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True)
        rc = proc.wait()
        if rc != 0:
            raise PoetcError(f"the Flower SuperNode exited with code {rc} (--verbose shows its log)")
        return 0
    except KeyboardInterrupt:
        print("poetc fleet: leaving the federation", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if proc is not None and proc.poll() is None:  # the SuperNode and the SuperExec it started
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        svc.close()
        client.close()
