"""The harness's link parser (poetc/device/link.py) under Hypothesis: whatever bytes the target sends, reading a
frame returns only a payload whose CRC holds, or raises a TargetError (never another exception, never hangs past
its deadline: the line ends); a good frame after any noise without a frame start is found; a request answered with arbitrary
bytes ends in its reply or a TargetError."""

from __future__ import annotations

import struct
import zlib

import serial
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poetc.device import link
from poetc.errors import TargetError


class Script:
    """A serial port that delivers a fixed byte string in random-sized reads, then reports the line gone."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data, self.sizes, self.sent = data, sizes or [1], bytearray()

    def read(self, n: int) -> bytes:
        if not self.data:
            raise serial.SerialException("end of the script")
        k = min(n, self.sizes[len(self.data) % len(self.sizes)])
        out, self.data = self.data[:k], self.data[k:]
        return out

    def write(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def flush(self) -> None:
        pass


def _link(data: bytes, sizes: list[int]) -> link.Link:
    lk = link.Link(Script(data, sizes), timeout_s=5)
    lk.max_reply = 300
    return lk


frames = st.binary(max_size=64).map(link.encode_frame)
chunks = st.lists(st.one_of(st.binary(max_size=40), frames), max_size=6).map(b"".join)
sizes = st.lists(st.integers(1, 9), max_size=5)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(data=chunks, sizes=sizes)
def test_read_frame_returns_only_checked_payloads_or_raises_a_target_error(data, sizes):
    lk = _link(data, sizes)
    for _ in range(8):
        try:
            payload = lk.read_frame()
        except TargetError:
            continue
        head = struct.pack("<H", len(payload))
        assert link.encode_frame(payload) in data  # it came whole from the stream, CRC and all
        assert zlib.crc32(head + payload) == struct.unpack("<I", link.encode_frame(payload)[-4:])[0]


@FAST
@given(noise=st.binary(max_size=60).map(lambda b: b.replace(b"\xa5", b"")), payload=st.binary(max_size=80),
       sizes=sizes)  # fmt: skip
def test_a_good_frame_after_noise_is_found(noise, payload, sizes):
    assert _link(noise + link.encode_frame(payload), sizes).read_frame() == payload


@FAST
@given(
    replies=st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.builds(
                lambda c, s, st_, d: link.encode_frame(bytes([c, s, st_]) + d),
                st.sampled_from([link.CMD_ECHO | 0x80, link.CMD_BAD_FRAME, link.EVT_GRAD, 0x00]),
                st.integers(0, 3),
                st.integers(0, 12),
                st.binary(max_size=20),
            ),
        ),
        max_size=6,
    ).map(b"".join),
    sizes=sizes,
)
def test_a_request_answered_with_anything_ends_in_a_reply_or_a_target_error(replies, sizes):
    lk = _link(replies, sizes)
    lk.retries = 2
    try:
        status, data = lk.request(link.CMD_ECHO, b"x")
    except TargetError:
        return
    assert 0 <= status <= 255 and isinstance(data, bytes)
    assert link.encode_frame(bytes([link.CMD_ECHO | 0x80, lk.seq, status]) + data) in replies
