"""The link survives corruption: a corrupted frame is retried with its own sequence number, the target answers a
retransmission without running the command twice, late replies are dropped, and training goes on bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.conftest import poetc

from poetc.boards import load as load_board
from poetc.device import harness, link, target
from poetc.emit import builddir
from poetc.errors import TargetError

RUN_REPLY = 3 + 48  # payload bytes of a RUN reply


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "digits"
    poetc("build", "digits-mlp", "--board", "host", "--out", str(out))
    return out


class FlakySerial:
    """A test transport: passes bytes through, but flips one byte (XOR 0xFF) once, either in the ``nth`` request
    frame of command ``cmd`` (side "request", byte ``at`` of the frame) or in the first frame after it, its reply
    (side "reply"); ``always`` flips every such request. ``stale`` puts a well-formed reply with an earlier
    sequence number before that reply instead (a late reply to the request before)."""

    def __init__(self, ser, cmd: int, nth: int, side: str, at: int = 0, always: bool = False) -> None:
        self.ser, self.cmd, self.nth, self.side, self.at, self.always = ser, cmd, nth, side, at, always
        self.seen = 0
        self.fired = 0
        self.nread = 0
        self.flip_at: int | None = None
        self.pending = b""

    def write(self, data: bytes) -> int:
        data = bytes(data)
        if data[:2] == link.SOF and len(data) > 5 and data[4] == self.cmd:
            self.seen += 1
            if self.seen == self.nth or (self.always and self.seen >= self.nth):
                self.fired += 1
                if self.side == "request":
                    data = data[: self.at] + bytes([data[self.at] ^ 0xFF]) + data[self.at + 1 :]
                elif self.side == "reply" and self.fired == 1:
                    self.flip_at = self.nread + self.at
                elif self.side == "stale" and self.fired == 1:
                    late = bytes([self.cmd | 0x80, (data[5] - 1) & 0xFF, 0]) + bytes(48)
                    self.pending = link.encode_frame(late)
        return self.ser.write(data)

    def read(self, n: int) -> bytes:
        if self.pending:
            d, self.pending = self.pending[:n], self.pending[n:]
            return d
        d = self.ser.read(n)
        if self.flip_at is not None and self.nread <= self.flip_at < self.nread + len(d):
            i = self.flip_at - self.nread
            d = d[:i] + bytes([d[i] ^ 0xFF]) + d[i + 1 :]
            self.flip_at = None
        self.nread += len(d)
        return d

    def __getattr__(self, name: str):
        return getattr(self.ser, name)


def _train(build: Path, steps: int, flaky: dict | None = None) -> tuple[list[float], dict, link.Link]:
    b = builddir.open_build(build)
    with target.for_board(load_board("host")).launch(build, timeout_s=10, pager="ram") as s:
        dev = harness.Device(b, s)
        if flaky is not None:
            s.link.ser = FlakySerial(s.link.ser, **flaky)
        rng = np.random.default_rng(7)
        losses = []
        for _ in range(steps):
            dev.set_batch(rng.random(b.input_shape).astype(np.float32), rng.integers(0, 10, b.batch))
            losses.append(dev.step(0.1).loss)
        params = dev.params()
        s.link.ser = getattr(s.link.ser, "ser", s.link.ser)  # a clean EXIT
        return losses, params, s.link


@pytest.mark.parametrize(
    "what, flaky",
    [
        ("request payload (bad CRC at the target)", dict(side="request", at=8)),
        ("request sequence number", dict(side="request", at=5)),
        ("request length over the frame limit", dict(side="request", at=3)),
        ("reply payload (a RUN already done: answered again, not run again)", dict(side="reply", at=10)),
        ("reply length over the frame limit", dict(side="reply", at=3)),
        ("reply CRC", dict(side="reply", at=4 + RUN_REPLY + 3)),
    ],
)
def test_a_corrupted_frame_is_retried_and_training_goes_on_bit_for_bit(digits, what, flaky):
    steps = 5
    clean_loss, clean, clean_link = _train(digits, steps)
    assert clean_link.retried == 0
    loss, got, lk = _train(digits, steps, dict(cmd=link.CMD_RUN, nth=3, **flaky))
    assert lk.retried == 1, what
    assert loss == clean_loss, what
    for k in clean:
        assert got[k].tobytes() == clean[k].tobytes(), (what, k)


def test_a_late_reply_is_dropped_not_blamed_on_the_next_request(digits):
    clean_loss, clean, _ = _train(digits, 3)
    loss, got, lk = _train(digits, 3, dict(cmd=link.CMD_RUN, nth=2, side="stale"))
    assert lk.stale == 1 and lk.retried == 0
    assert loss == clean_loss and all(got[k].tobytes() == clean[k].tobytes() for k in clean)


def test_error_replies_carry_the_request_sequence_number(digits):
    with target.for_board(load_board("host")).launch(digits, timeout_s=10, pager="ram") as s:
        lk = s.link
        lk.info()
        frame = bytearray(link.encode_frame(bytes([link.CMD_ECHO, 77, 1, 2, 3])))
        frame[-1] ^= 0xFF  # bad CRC: the error names the frame's sequence number
        lk.send_raw(bytes(frame))
        reply = lk.read_frame(5)
        assert reply[0] == link.CMD_BAD_FRAME and reply[1] == 77 and reply[2] == 7
        lk.send_raw(link.encode_frame(bytes([0x33, 78])))  # unknown command: its own seq
        reply = lk.read_frame(5)
        assert reply[:3] == bytes([0x33 | 0x80, 78, 9])  # POET_ERR_UNKNOWN_CMD
        # the same request bytes again: the last reply again (a retransmission), not a second execution
        req = link.encode_frame(bytes([link.CMD_ECHO, 79]) + b"abc")
        lk.send_raw(req)
        first = lk.read_frame(5)
        lk.send_raw(req)
        assert lk.read_frame(5) == first == bytes([link.CMD_ECHO | 0x80, 79, 0]) + b"abc"


def test_a_link_that_stays_corrupted_is_one_error(digits):
    b = builddir.open_build(digits)
    with target.for_board(load_board("host")).launch(digits, timeout_s=10, pager="ram") as s:
        dev = harness.Device(b, s)
        s.link.ser = FlakySerial(s.link.ser, cmd=link.CMD_RUN, nth=1, side="request", at=8, always=True)
        dev.set_batch(np.zeros(b.input_shape, np.float32), np.zeros(b.batch, np.int64))
        with pytest.raises(TargetError, match="the link stays corrupted: 17 tries of command 5"):
            dev.step(0.1)
        s.link.ser = s.link.ser.ser
        assert s.link.echo(b"ok") == b"ok"
