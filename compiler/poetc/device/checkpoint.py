"""Checkpoints of the C API (runtime_c/include/poet/train.h) read on the host from a copy of the device's
storage (QEMU's and the host program's pager file, an SD card image): the layout comes from the build's
manifest (``checkpoint``: address, slot bytes, the tensors in payload order).

A slot: header (magic "PCKP", version, sequence number, step, data position, last loss, payload bytes, build
hash), the payload (the tensors' bytes in order) and a CRC32 of both. ``newest`` returns the valid slot with the
highest sequence number, as poet_checkpoint_restore does.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..emit.builddir import BuildInfo
from ..emit.codegen import CKPT_HEADER_BYTES, CKPT_MAGIC, CKPT_VERSION
from ..errors import PoetcError


@dataclass(frozen=True)
class Checkpoint:
    slot: int
    seq: int
    step: int
    data_pos: int
    loss: float
    tensors: dict[str, np.ndarray]  # by name, float32, the build's shapes


def read_slot(build: BuildInfo, image: bytes, slot: int) -> Checkpoint | None:
    """Slot ``slot`` of a storage image, or None when it does not hold a valid checkpoint of this build."""
    ck = build.doc.get("checkpoint")
    if not ck:
        raise PoetcError(f"{build.dir}: the build records no checkpoint layout; rebuild it")
    base = ck["addr"] + slot * ck["slot_bytes"]
    payload = sum(t["bytes"] for t in ck["tensors"])
    raw = image[base : base + CKPT_HEADER_BYTES + payload + 4]
    if len(raw) < CKPT_HEADER_BYTES + payload + 4:
        return None
    magic, version, _, seq, step, pos, loss, n = struct.unpack_from("<IHHIIIfI", raw)
    if (magic, version, n) != (CKPT_MAGIC, CKPT_VERSION, payload):
        return None
    if raw[28:36].hex() != build.doc["hash"]:
        return None
    body = raw[: CKPT_HEADER_BYTES + payload]
    if zlib.crc32(body) != struct.unpack_from("<I", raw, CKPT_HEADER_BYTES + payload)[0]:
        return None
    out, at = {}, CKPT_HEADER_BYTES
    for t in ck["tensors"]:
        shape = build.tensor(t["name"])["shape"]
        out[t["name"]] = np.frombuffer(raw[at : at + t["bytes"]], "<f4").reshape(shape).copy()
        at += t["bytes"]
    return Checkpoint(slot, seq, step, pos, loss, out)


def newest(build: BuildInfo, path: Path) -> Checkpoint | None:
    """The newest valid checkpoint in a storage image file, or None."""
    image = Path(path).read_bytes()
    valid = [c for c in (read_slot(build, image, k) for k in (0, 1)) if c is not None]
    if not valid:
        return None
    if len(valid) == 1:
        return valid[0]
    a, b = valid
    d = (
        b.seq - a.seq
    ) & 0xFFFFFFFF  # sequence numbers compare as poet_checkpoint_restore does (with wrap-around)
    return b if 0 < d < 0x80000000 else a
