"""The board service: one board, held open by ``poetc fleet --connect``, lent to Flower's ClientApp processes.

A Flower SuperNode runs each ClientApp in a fresh process (Flower's SuperExec starts one per run), while a board's
connection must last: re-opening a serial port toggles DTR and resets Arduino-style boards. So the ``poetc fleet
--connect`` process keeps the ``BoardClient`` and serves it on a loopback TCP port; the ClientApp finds the port and
a random token in the SuperNode's node config (``poetc-board``, ``poetc-token``) and asks for one round at a time.

Wire format, one request per connection: a u32 length (little-endian) and an ``.npz`` both ways. Request: ``token``
(bytes), ``lr``, ``steps`` and ``w/<name>`` per weight tensor. Reply: ``w/<name>`` and ``m/<metric>``, or ``error``
(the text of the client's failure, which the ClientApp raises so that Flower reports it to the server).
"""

from __future__ import annotations

import io
import secrets
import socket
import socketserver
import struct
import threading
from collections.abc import Callable

import numpy as np

from ..errors import PoetcError
from .client import BoardClient, FitResult

MAX_BYTES = 256 << 20


def _send(sock: socket.socket, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    sock.sendall(struct.pack("<I", len(data)) + data)


def _recv(sock: socket.socket) -> dict[str, np.ndarray]:
    def exact(n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = sock.recv(min(1 << 20, n - len(out)))
            if not chunk:
                raise ConnectionError("the board service closed the connection")
            out += chunk
        return bytes(out)

    (n,) = struct.unpack("<I", exact(4))
    if n > MAX_BYTES:
        raise ConnectionError(f"a message of {n} bytes is over the board service's limit")
    with np.load(io.BytesIO(exact(n)), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def metrics_of(client: BoardClient, res: FitResult) -> dict[str, float | int]:
    return {
        "num-examples": res.examples,
        "client": client.index,
        "samples": res.samples,
        "train-loss": res.loss,
        "energy-j": res.energy_j,
        "compute-j": res.compute_j,
        "paging-j": res.paging_j,
        "device-s": res.device_s,
        "link-bytes": res.link_bytes,
    }


class BoardService:
    """Serves ``client`` on 127.0.0.1 (a free port); ``on_round`` sees every round it served."""

    def __init__(
        self, client: BoardClient, on_round: Callable[[FitResult | None, str | None], None] | None = None
    ) -> None:
        self.client = client
        self.token = secrets.token_hex(16)
        self.on_round = on_round
        svc = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                svc._handle(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="poetc-board-service", daemon=True
        )

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> BoardService:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, sock: socket.socket) -> None:
        try:
            req = _recv(sock)
        except (ConnectionError, OSError, ValueError):
            return
        if bytes(req.get("token", np.zeros(0, np.uint8))).decode(errors="replace") != self.token:
            _send(sock, {"error": np.array("the board service refused a request without its token")})
            return
        weights = {k[2:]: v for k, v in req.items() if k.startswith("w/")}
        try:
            res = self.client.fit(weights, float(req["lr"]), int(req["steps"]))
        except PoetcError as e:  # TargetError included: the board dropped out
            if self.on_round:
                self.on_round(None, str(e))
            _send(sock, {"error": np.array(str(e))})
            return
        if self.on_round:
            self.on_round(res, None)
        out = {f"w/{k}": v for k, v in res.weights.items()}
        out.update({f"m/{k}": np.array(v) for k, v in metrics_of(self.client, res).items()})
        _send(sock, out)


def call(
    address: str, token: str, weights: dict[str, np.ndarray], lr: float, steps: int, timeout_s: float = 3600.0
) -> tuple[dict[str, np.ndarray], dict[str, float | int]]:
    """One round on the board behind ``address`` (what the ClientApp does); a board's failure is a PoetcError."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
            req = {f"w/{k}": np.asarray(v, np.float32) for k, v in weights.items()}
            req.update(token=np.frombuffer(token.encode(), np.uint8), lr=np.array(lr), steps=np.array(steps))
            _send(sock, req)
            rep = _recv(sock)
    except (OSError, ValueError) as e:
        raise PoetcError(f"board service at {address}: {e}") from None
    if "error" in rep:
        raise PoetcError(str(rep["error"]))
    w = {k[2:]: v for k, v in rep.items() if k.startswith("w/")}
    m = {k[2:]: v.item() for k, v in rep.items() if k.startswith("m/")}
    return w, m
