"""The harness side of the link: framed request/reply protocol over any pyserial transport.

frame   = 0xA5 0x5A, len (u16 LE), payload, crc32(len bytes + payload) (u32 LE)
request = cmd, seq, args;  reply = cmd | 0x80, seq, status, data;  event = 0x40, seq, data (before the reply)
The spec is docs/protocol.md; the target side is runtime_c/src/link.c.

A corrupted frame is retried: a reply that fails its CRC, is short or garbled, or a bad-frame error from the
target (it could not use our request) makes the harness send the same request, byte for byte, again (at most
``retries`` times per request, counted in ``Link.retried``). The target answers a retransmission with its last
reply rather than running the command again, so retrying is safe for every command, RUN included. A reply or
event carrying another sequence number is a late one for an earlier request: it is dropped, never blamed on
the request in flight.

A lost byte is recovered by time: when the target stays silent for longer than the command ever took (``quiet``;
at a reply's start or in the middle of one), the harness drops what it has of the reply and sends the same
request again, preceded by zero bytes that complete a frame the target may still be waiting for (that frame then
fails its CRC; zeros between frames are skipped): 16 at first, the target's frame from the second silence of the
request on, the quiet time growing by half each time; counted in ``Link.resent`` and bounded by the request's timeout. The chunked, idempotent transfers (WRITE, WRITE_Q8, READ) shrink their chunks on a link that corrupts
frames (a frame of n bytes survives a byte error rate e with probability (1 - e)^n) and grow them back on a
clean one.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import serial

from ..emit import cheaders
from ..errors import PoetcError, TargetError

try:
    import termios

    _TTY_ERRORS: tuple[type[BaseException], ...] = (termios.error,)
except ImportError:  # not POSIX
    _TTY_ERRORS = ()

SOF = b"\xa5\x5a"
(CMD_INFO, CMD_WRITE, CMD_WRITE_Q8, CMD_READ, CMD_RUN, CMD_TICKS, CMD_RESET, CMD_EXIT, CMD_ECHO, CMD_SEAL) = (
    range(1, 11)
)
EVT_GRAD = 0x40
CMD_BAD_FRAME = 0xFF
PROTO_VERSION = 4
RETRIES = (
    16  # retransmissions of one request after corrupted frames (at a 1% byte error rate half the frames of
)
# a RUN exchange fail: 16 keeps a lost request below 1e-5)
MIN_CHUNK = 32  # the smallest chunk of a WRITE / READ on a corrupting link
QUIET_FIRST_S = 1.0  # silence that asks for a retransmission before a command's reply time is known
QUIET_MIN_S = 0.03  # ... at least, once it is known (4 x the slowest reply of the command so far)
QUIET_MAX_S = 8.0  # the silence threshold grows by half after each retransmission, up to this


def _bad_frame_statuses() -> tuple[int, ...]:
    """The statuses of a frame the target could not use (bad CRC, length over its buffer): retransmit."""
    codes = {name: code for code, (name, _text) in cheaders.statuses().items()}
    return codes["ERR_CRC"], codes["ERR_OVERSIZE"]


def encode_frame(payload: bytes) -> bytes:
    head = struct.pack("<H", len(payload))
    return SOF + head + payload + struct.pack("<I", zlib.crc32(head + payload))


@dataclass(frozen=True)
class Info:
    proto: int
    hash_hex: str
    n_tensors: int
    n_nodes: int
    frame_max: int
    arena_bytes: int
    storage_bytes: int
    tick_hz: int
    pager_bytes: int
    port: str


@dataclass(frozen=True)
class RunReply:
    status: int
    pc: int
    loss: float
    ticks: int
    page_in_bytes: int
    page_out_bytes: int
    page_ins: int
    page_outs: int
    load_bytes: int = 0  # storage-homed parameters read (LOAD) and written back (STORE), CRCs included
    store_bytes: int = 0
    loads: int = 0
    stores: int = 0
    wait_ticks: int = 0  # ticks blocked in WAIT: transfers the computation did not hide
    waits: int = 0


class StatusError(TargetError):
    def __init__(self, what: str, status: int) -> None:
        super().__init__(f"target: {what} failed: {cheaders.status_text(status)}")
        self.status = status


class CorruptFrame(TargetError):
    """A frame that failed its CRC check, or is too short or too long to be a reply (a corrupted link)."""


class Silent(TargetError):
    """The target sent nothing (or stopped in the middle of a frame) for longer than the quiet time."""


class LinkCorrupted(TargetError):
    """Every try of one request met a corrupted frame."""


class Link:
    """Request/reply over a pyserial object. Not thread-safe; one outstanding request at a time."""

    def __init__(
        self, ser: serial.SerialBase, timeout_s: float = 30.0, on_dead: Callable[[], str | None] | None = None
    ) -> None:
        self.ser = ser
        self.timeout_s = timeout_s
        self.seq = 0
        self.frame_max = 64  # until INFO says otherwise
        self.on_dead = on_dead  # asks the session why the target stopped answering
        self.bytes_sent = 0
        self.bytes_received = 0
        self.retries = RETRIES
        self.retried = 0  # requests sent again after a corrupted frame, over the link's life
        self.stale = 0  # late replies and events (another sequence number) dropped
        self.max_reply = 0xFFFF  # a longer length field is corrupt; INFO sets it to the target's frame
        self.resent = 0  # requests sent again after the target fell silent (a lost byte or a lost frame)
        self.target_frame = 4096  # the target's frame (INFO): zeros that complete any frame it waits for
        self.chunk = 0xFFFF  # the payload budget of chunked transfers (shrinks on a corrupting link)
        self._clean = 0  # requests in a row without a retry (the chunk grows back after 8)
        self._slowest: dict[int, float] = {}  # per command: the longest a reply took

    # ---- raw frames ------------------------------------------------------------------------------
    def _read_exact(self, n: int, deadline: float, quiet_s: float | None = None) -> bytes:
        """n bytes; past ``deadline`` the target is dead, after ``quiet_s`` without a byte it is ``Silent``."""
        buf = bytearray()
        last = time.monotonic()
        while len(buf) < n:
            now = time.monotonic()
            if now > deadline:
                raise self._dead("timed out waiting for the target")
            if quiet_s is not None and now - last > quiet_s:
                raise Silent("target: silent")
            try:
                chunk = self.ser.read(n - len(buf))
            except serial.SerialException as e:
                raise self._dead(f"connection lost ({e})") from None
            if chunk:
                buf += chunk
                last = time.monotonic()
        self.bytes_received += n
        return bytes(buf)

    def _dead(self, msg: str) -> PoetcError:
        why = self.on_dead() if self.on_dead else None
        if why and "image is corrupted" in why:  # the build directory's program, not the target, is bad input
            return PoetcError(f"the build's image is damaged ({why}); run poetc build again")
        return TargetError(f"target: {why}" if why else f"target: {msg}")

    def send_raw(self, data: bytes) -> None:
        try:
            self.ser.write(data)
            self.ser.flush()
        except (serial.SerialException, OSError, *_TTY_ERRORS) as e:  # a tty that hung up: termios.error
            raise self._dead(f"cannot send ({e})") from None
        self.bytes_sent += len(data)

    def read_frame(
        self, timeout_s: float | None = None, quiet_s: float | None = None, deadline: float | None = None
    ) -> bytes:
        if deadline is None:
            deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.timeout_s)
        while True:
            b = self._read_exact(1, deadline, quiet_s)
            if b != SOF[:1]:
                continue
            b = self._read_exact(1, deadline, quiet_s)
            if b == SOF[1:]:
                break
        head = self._read_exact(2, deadline, quiet_s)
        (n,) = struct.unpack("<H", head)
        if n > self.max_reply:
            raise CorruptFrame(
                f"target: reply frame of {n} bytes, over the target's {self.max_reply} (corrupted link)"
            )
        payload = self._read_exact(n, deadline, quiet_s)
        (crc,) = struct.unpack("<I", self._read_exact(4, deadline, quiet_s))
        if zlib.crc32(head + payload) != crc:
            raise CorruptFrame("target: reply frame failed its CRC check (corrupted link)")
        return payload

    # ---- requests ----------------------------------------------------------------------------------
    def request(
        self,
        cmd: int,
        args: bytes = b"",
        on_event: Callable[[bytes], None] | None = None,
        timeout_s: float | None = None,
        retries: int | None = None,
    ) -> tuple[int, bytes]:
        self.seq = (self.seq + 1) & 0xFF
        payload = bytes([cmd, self.seq]) + args
        if len(payload) > self.frame_max:
            raise ValueError(
                f"request of {len(payload)} bytes exceeds the target's frame of {self.frame_max}"
            )
        frame = encode_frame(payload)
        retries = self.retries if retries is None else retries
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.timeout_s)
        seen = self._slowest.get(cmd)
        quiet = QUIET_FIRST_S if seen is None else max(QUIET_MIN_S, 4 * seen)
        events = False  # events of this request arrived: a lost one cannot be asked for again
        why = ""
        tries = 0
        send = frame
        pad = 0
        while tries <= retries:
            if tries:
                self.retried += 1
            tries += 1
            self.send_raw(send)
            sent = time.monotonic()
            send = frame
            try:
                while True:
                    reply = self.read_frame(quiet_s=None if events else quiet, deadline=deadline)
                    if len(reply) < 2:
                        raise CorruptFrame("target: short reply frame (corrupted link)")
                    if reply[0] == EVT_GRAD:
                        if reply[1] != self.seq:
                            self.stale += 1
                            continue
                        events = True
                        if on_event:
                            on_event(reply[2:])
                        continue
                    if reply[0] == CMD_BAD_FRAME:
                        status = reply[2] if len(reply) > 2 else -1
                        if (
                            status in _bad_frame_statuses()
                        ):  # a frame the target could not use: ours, most likely
                            raise CorruptFrame(
                                f"target: our request frame arrived corrupted ({cheaders.status_text(status)})"
                            )
                        if reply[1] != self.seq:
                            self.stale += 1
                            continue
                        raise StatusError("a request frame", status)
                    if reply[1] != self.seq:  # a late reply to an earlier request
                        self.stale += 1
                        continue
                    if reply[0] != (cmd | 0x80) or len(reply) < 3:
                        raise CorruptFrame(f"target: garbled reply {reply[:3].hex()} to command {cmd}")
                    took = time.monotonic() - sent
                    self._slowest[cmd] = max(self._slowest.get(cmd, 0.0), took)
                    self._clean = self._clean + 1 if tries == 1 else 0
                    return reply[2], reply[3:]
            except Silent:
                # a lost byte (ours: the target waits for the rest of a frame; or its: we wait) or a lost frame:
                # the same request again, after zeros that complete whatever frame the target is reading
                if events:
                    raise TargetError(
                        "target: the link lost a frame during a request that streams events; "
                        "the events cannot be sent again"
                    ) from None
                tries -= 1  # bounded by the deadline, not by the retries
                self.resent += 1
                self._clean = 0
                quiet = min(QUIET_MAX_S, 1.5 * quiet)
                # a lost byte leaves the target a few bytes short: 16 zeros; a corrupted length field up to a
                # whole frame: from the second silence of this request on, a frame's worth
                pad = 16 if pad == 0 else self.target_frame + 8
                send = bytes(pad) + frame
            except CorruptFrame as e:
                why = str(e).removeprefix("target: ")
                self._clean = 0
                if events:
                    raise TargetError(
                        f"target: a frame was corrupted during a request that streams events ({why}); "
                        "the events cannot be sent again"
                    ) from None
        raise LinkCorrupted(f"target: the link stays corrupted: {tries} tries of command {cmd}, last: {why}")

    def check(self, what: str, cmd: int, args: bytes = b"", **kw) -> bytes:
        status, data = self.request(cmd, args, **kw)
        if status != 0:
            raise StatusError(what, status)
        return data

    def _chunks(
        self, what: str, cmd: int, total: int, most: int, args: Callable[[int, int], bytes]
    ) -> list[bytes]:
        """An idempotent transfer of ``total`` units in chunks of at most ``most``: on a link that corrupts
        frames a chunk is tried twice, then asked again as two halves (down to ``MIN_CHUNK``: all the tries);
        eight clean requests in a row double the chunk again."""
        out = []
        off = 0
        while off < total:
            if self._clean >= 8 and self.chunk < 0xFFFF:
                self.chunk = min(0xFFFF, 2 * self.chunk)
                self._clean = 0
            n = min(most, self.chunk, total - off)
            small = n <= MIN_CHUNK
            try:
                out.append(self.check(what, cmd, args(off, n), retries=None if small else 1))
            except LinkCorrupted:
                if small:
                    raise
                self.chunk = max(MIN_CHUNK, n // 2)
                continue
            off += n
        return out

    # ---- commands ----------------------------------------------------------------------------------
    def info(self) -> Info:
        d = self.check("INFO", CMD_INFO)
        (proto,) = struct.unpack_from("<H", d, 0)
        n_t, n_n, fmax, arena, storage, hz, pager = struct.unpack_from("<HHHIIII", d, 10)
        nl = d[32]
        info = Info(proto, d[2:10].hex(), n_t, n_n, fmax, arena, storage, hz, pager, d[33 : 33 + nl].decode())
        if proto != PROTO_VERSION:
            raise TargetError(f"target speaks protocol {proto}, poetc speaks {PROTO_VERSION}")
        self.frame_max = fmax
        self.max_reply = fmax
        self.target_frame = fmax
        return info

    def write(self, tensor: int, data: bytes, offset: int = 0) -> None:
        def args(off: int, n: int) -> bytes:
            return struct.pack("<HI", tensor, offset + off) + data[off : off + n]

        self._chunks("WRITE", CMD_WRITE, len(data), self.frame_max - 2 - 6, args)

    def seal(self, tensor: int) -> None:
        """A storage-homed tensor's CRC, after WRITEs to its slot."""
        self.check("SEAL", CMD_SEAL, struct.pack("<H", tensor))

    def write_q8(self, tensor: int, q: bytes, scale: float, bias: float) -> None:
        def args(off: int, n: int) -> bytes:
            return struct.pack("<HIff", tensor, off, scale, bias) + q[off : off + n]

        self._chunks("WRITE_Q8", CMD_WRITE_Q8, len(q), self.frame_max - 2 - 14, args)

    def read(self, tensor: int, nbytes: int) -> bytes:
        def args(off: int, n: int) -> bytes:
            return struct.pack("<HIH", tensor, off, n)

        return b"".join(self._chunks("READ", CMD_READ, nbytes, self.frame_max - 3, args))

    def run(
        self,
        program: int,
        lr: float,
        capture: bool = False,
        on_grad: Callable[[int, int, bytes], None] | None = None,
        timeout_s: float | None = None,
    ) -> RunReply:
        def ev(data: bytes) -> None:
            if on_grad:
                t, off = struct.unpack_from("<HI", data, 0)
                on_grad(t, off, data[6:])

        status, d = self.request(
            CMD_RUN, struct.pack("<BBf", program, 1 if capture else 0, lr), on_event=ev, timeout_s=timeout_s
        )
        if len(d) < 60:
            if status == 0:
                raise TargetError(f"target: short RUN reply ({len(d)} bytes of data, 60 expected)")
            raise StatusError("RUN", status)
        return RunReply(status, *struct.unpack_from("<IfQIIIIIIIIQI", d, 0))

    def ticks(self, n_nodes: int) -> list[int]:
        out: list[int] = []
        per = max(1, (self.frame_max - 3) // 8)
        for first in range(0, n_nodes, per):
            cnt = min(per, n_nodes - first)
            d = self.check("TICKS", CMD_TICKS, struct.pack("<HH", first, cnt))
            out += list(struct.unpack(f"<{cnt}Q", d))
        return out

    def reset(self) -> None:
        self.check("RESET", CMD_RESET)

    def exit(self, code: int = 0) -> None:
        """Ask the target to stop. Its reply may be lost when the transport closes with it (a pty hangs up)."""
        try:
            self.check("EXIT", CMD_EXIT, bytes([code]), timeout_s=5.0)
        except TargetError as e:
            if isinstance(e, StatusError):
                raise

    def echo(self, data: bytes) -> bytes:
        return self.check("ECHO", CMD_ECHO, data)
