"""The Cortex-M pager back-ends, on the host: firmware/cortexm/sdcard.c against a simulated SD card in SPI mode
(both addressing modes), and firmware/cortexm/flashpager.c against simulated NOR flash. Random byte-addressed
writes and reads must behave like one flat byte array; partial blocks are read-modify-written, whole blocks are
not read first; flash pages are erased once per page written and never programmed from 0 back to 1."""

from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from poetc.resources import firmware_dir, runtime_dir

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a host C compiler (cc)")


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> ctypes.CDLL:
    out = tmp_path_factory.mktemp("pagers") / "libpagers.so"
    cm = firmware_dir() / "cortexm"
    subprocess.run(
        [
            "cc",
            "-std=c11",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-shared",
            "-fPIC",
            f"-I{runtime_dir() / 'include'}",
            f"-I{cm}",
            str(cm / "sdcard.c"),
            str(cm / "flashpager.c"),
            str(HERE / "fake_nvm.c"),
            "-o",
            str(out),
        ],
        check=True,
    )
    lib = ctypes.CDLL(str(out))
    u8p = ctypes.POINTER(ctypes.c_uint8)
    for name in ("t_sd_write", "t_sd_read", "t_fp_write", "t_fp_read"):
        getattr(lib, name).argtypes = [ctypes.c_uint32, u8p, ctypes.c_uint32]
    lib.t_sd_card.restype = u8p
    for name in (
        "t_sd_block_reads",
        "t_sd_block_writes",
        "t_sd_bad_frames",
        "t_sd_dma_starts",
        "t_sd_dma_bytes",
        "t_fp_erases",
        "t_fp_bad_programs",
    ):
        getattr(lib, name).restype = ctypes.c_long
    lib.t_fp_capacity.restype = ctypes.c_uint32
    lib.t_sd_async.argtypes = [
        ctypes.c_int, ctypes.c_uint32, u8p, ctypes.c_uint32, u8p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_long)
    ]  # fmt: skip
    lp = ctypes.POINTER(ctypes.c_long)
    lib.t_sd_async_irq.argtypes = [
        ctypes.c_int,
        ctypes.c_uint32,
        u8p,
        ctypes.c_uint32,
        u8p,
        ctypes.c_uint32,
        lp,
        lp,
        lp,
    ]
    return lib


def _buf(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))


def _random_traffic(write, read, size: int, rng: np.random.Generator, ops: int = 300) -> None:
    model = np.zeros(size, np.uint8)
    written = np.zeros(size, bool)
    for _ in range(ops):
        addr = int(rng.integers(0, size - 1))
        n = int(rng.integers(1, min(2000, size - addr) + 1))
        if rng.random() < 0.6:
            data = rng.integers(0, 256, n, dtype=np.uint8)
            assert write(addr, _buf(data), n) == 0
            model[addr : addr + n] = data
            written[addr : addr + n] = True
        else:
            out = np.zeros(n, np.uint8)
            assert read(addr, _buf(out), n) == 0
            mask = written[addr : addr + n]
            np.testing.assert_array_equal(out[mask], model[addr : addr + n][mask])


@pytest.mark.parametrize("sdhc", [1, 0])
def test_sd_pager_is_a_flat_byte_array(lib, sdhc):
    first = 100
    assert lib.t_sd_init(sdhc, first) == 0, "initialisation (CMD0, CMD8, ACMD41, CMD58) failed"
    assert lib.t_sd_bad_frames() == 0
    _random_traffic(lib.t_sd_write, lib.t_sd_read, 64 * 1024, np.random.default_rng(sdhc))
    # data lands on the card's raw blocks from the first block on
    data = np.arange(1024, dtype=np.uint16).view(np.uint8)[:1000].copy()
    assert lib.t_sd_write(10, _buf(data), 1000) == 0
    card = np.ctypeslib.as_array(lib.t_sd_card(), shape=(16 << 20,))
    np.testing.assert_array_equal(card[first * 512 + 10 : first * 512 + 1010], data)


def test_sd_whole_blocks_are_not_read_first(lib):
    assert lib.t_sd_init(1, 0) == 0
    reads0, writes0 = lib.t_sd_block_reads(), lib.t_sd_block_writes()
    data = np.ones(4 * 512, np.uint8)
    assert lib.t_sd_write(512, _buf(data), len(data)) == 0  # 4 aligned blocks
    assert lib.t_sd_block_reads() == reads0 and lib.t_sd_block_writes() == writes0 + 4
    assert lib.t_sd_write(512 + 100, _buf(data), 10) == 0  # part of a block: read, merge, write
    assert lib.t_sd_block_reads() == reads0 + 1 and lib.t_sd_block_writes() == writes0 + 5


def _async(lib, write: bool, addr: int, data: np.ndarray, trailer: np.ndarray, late: int) -> int:
    polls = ctypes.c_long(0)
    s = lib.t_sd_async(int(write), addr, _buf(data), len(data), _buf(trailer), late, ctypes.byref(polls))
    assert s == 0, f"asynchronous {'write' if write else 'read'} of {len(data)} B at {addr}: status {s}"
    return polls.value


@pytest.mark.parametrize("sdhc", [1, 0])
def test_sd_async_transfers_move_blocks_by_dma_in_the_background(lib, sdhc):
    """The nRF52840's pager path (sd_async_*, a DMA engine on the SPI) against the same fake card: random
    asynchronous writes and reads of data + trailer mixed with synchronous ones behave like one flat byte array,
    the DMA moves only whole 512-byte blocks, and a transfer whose DMA completes late takes polls (the core
    is free meanwhile) and keeps the bus from the synchronous calls until it is done."""
    assert lib.t_sd_init(sdhc, 100) == 0
    rng = np.random.default_rng(10 + sdhc)
    size = 48 * 1024
    model = np.zeros(size, np.uint8)
    written = np.zeros(size, bool)
    for _ in range(120):
        addr = int(rng.integers(0, size - 4000))
        n = int(rng.integers(1, 3000))
        late = int(rng.choice([0, 1, 4]))
        kind = rng.random()
        if kind < 0.35:  # asynchronous write: data, then its trailer
            data = rng.integers(0, 256, n, dtype=np.uint8)
            tr = rng.integers(0, 256, 4, dtype=np.uint8)
            polls = _async(lib, True, addr, data, tr, late)
            model[addr : addr + n], model[addr + n : addr + n + 4] = data, tr
            written[addr : addr + n + 4] = True
        elif kind < 0.5:  # synchronous write (the link's WRITE, the reset's copies)
            data = rng.integers(0, 256, n, dtype=np.uint8)
            assert lib.t_sd_write(addr, _buf(data), n) == 0
            model[addr : addr + n] = data
            written[addr : addr + n] = True
            continue
        else:  # asynchronous read into RAM filled with garbage
            data = np.full(n, 0xA5, np.uint8)
            tr = np.zeros(4, np.uint8)
            polls = _async(lib, False, addr, data, tr, late)
            got = np.concatenate([data, tr])
            mask = written[addr : addr + n + 4]
            np.testing.assert_array_equal(got[mask], model[addr : addr + n + 4][mask])
        if late:
            assert polls >= late  # it ran in the background: the core polled while the DMA moved a block
    assert lib.t_sd_dma_bytes() == 512 * lib.t_sd_dma_starts()  # the DMA moves data blocks only
    # an aligned write of 4 whole blocks: straight from RAM (no read); the trailer's block is read, merged, written
    r0, w0, d0 = lib.t_sd_block_reads(), lib.t_sd_block_writes(), lib.t_sd_dma_starts()
    data = rng.integers(0, 256, 2048, dtype=np.uint8)
    _async(lib, True, 512 * 3, data, np.arange(4, dtype=np.uint8), 2)
    assert (lib.t_sd_block_reads() - r0, lib.t_sd_block_writes() - w0) == (1, 5)
    assert lib.t_sd_dma_starts() - d0 == 6
    card = np.ctypeslib.as_array(lib.t_sd_card(), shape=(16 << 20,))
    base = 100 * 512 + 512 * 3
    np.testing.assert_array_equal(card[base : base + 2048], data)
    np.testing.assert_array_equal(card[base + 2048 : base + 2052], np.arange(4))


@pytest.mark.parametrize("sdhc", [1, 0])
def test_sd_async_transfers_chained_by_the_dma_end_interrupt(lib, sdhc):
    """The nRF52840's END-interrupt path (sd->irq, sd_async_irq from SPIM2's IRQ 35): the core never polls; a
    simulated clock advances the DMA and each DMA end raises the interrupt, whose handler runs the next step.
    Random asynchronous writes and reads (mixed with synchronous writes) still behave like one flat byte array,
    the transfer finishes through interrupts alone (the chain never breaks: every step ends with a DMA running),
    the interrupt is disabled when it is done, and the bus stays taken from the synchronous calls meanwhile."""
    assert lib.t_sd_init(sdhc, 100) == 0
    rng = np.random.default_rng(20 + sdhc)
    size = 32 * 1024
    model = np.zeros(size, np.uint8)
    written = np.zeros(size, bool)
    ticks, irqs, blocks = ctypes.c_long(), ctypes.c_long(), ctypes.c_long()
    moved = 0

    def run(write, addr, data, tr, late):
        args = (int(write), addr, _buf(data), len(data), _buf(tr), late)
        s = lib.t_sd_async_irq(*args, ctypes.byref(ticks), ctypes.byref(irqs), ctypes.byref(blocks))
        assert s == 0, f"interrupt-driven {'write' if write else 'read'} of {len(data)} B at {addr}: {s}"

    for _ in range(60):
        addr = int(rng.integers(0, size - 3000))
        n = int(rng.integers(1, 2500))
        late = int(rng.choice([0, 2, 5]))
        kind = rng.random()
        if kind < 0.4:
            data = rng.integers(0, 256, n, dtype=np.uint8)
            tr = rng.integers(0, 256, 4, dtype=np.uint8)
            run(True, addr, data, tr, late)
            model[addr : addr + n], model[addr + n : addr + n + 4] = data, tr
            written[addr : addr + n + 4] = True
        elif kind < 0.5:
            data = rng.integers(0, 256, n, dtype=np.uint8)
            assert lib.t_sd_write(addr, _buf(data), n) == 0
            model[addr : addr + n] = data
            written[addr : addr + n] = True
            continue
        else:
            data = np.full(n, 0xA5, np.uint8)
            tr = np.zeros(4, np.uint8)
            run(False, addr, data, tr, late)
            got = np.concatenate([data, tr])
            mask = written[addr : addr + n + 4]
            np.testing.assert_array_equal(got[mask], model[addr : addr + n + 4][mask])
        moved += blocks.value
        # every block's data moved by DMA, each DMA ended in an interrupt, each took `late` ticks of the clock
        assert irqs.value >= blocks.value and ticks.value >= irqs.value * (late + 1)
    assert moved > 0
    # an aligned write of 4 whole blocks: 4 straight from RAM, the trailer's block read, merged and written
    data = rng.integers(0, 256, 2048, dtype=np.uint8)
    run(True, 512 * 3, data, np.arange(4, dtype=np.uint8), 3)
    assert blocks.value == 6
    card = np.ctypeslib.as_array(lib.t_sd_card(), shape=(16 << 20,))
    base = 100 * 512 + 512 * 3
    np.testing.assert_array_equal(card[base : base + 2048], data)
    np.testing.assert_array_equal(card[base + 2048 : base + 2052], np.arange(4))


def test_flash_pager_is_a_flat_byte_array_on_nor_flash(lib):
    pages = 9
    assert lib.t_fp_init(pages * 4096) == 0
    cap = lib.t_fp_capacity()
    assert cap == (pages - 1) * 4096  # one spare page
    _random_traffic(lib.t_fp_write, lib.t_fp_read, cap, np.random.default_rng(7))
    assert lib.t_fp_bad_programs() == 0
    # one erase per page touched by a write
    e0 = lib.t_fp_erases()
    data = np.full(5000, 0x33, np.uint8)
    assert lib.t_fp_write(4000, _buf(data), len(data)) == 0  # pages 0, 1 and 2
    assert lib.t_fp_erases() == e0 + 3
    out = np.zeros(5000, np.uint8)
    assert lib.t_fp_read(4000, _buf(out), len(out)) == 0
    np.testing.assert_array_equal(out, data)
    assert lib.t_fp_write(cap - 1, _buf(data), 2) != 0  # past the end: an error, not a wild write
    assert lib.t_fp_init(4096) != 0  # one page leaves no spare


# ---- the semihosting pager in QEMU, through the real interpreter ---------------------------------------------
def _have_qemu_tools() -> bool:
    return all(shutil.which(t) for t in ("qemu-system-arm", "arm-none-eabi-gcc"))


@pytest.mark.qemu
@pytest.mark.skipif(
    not _have_qemu_tools(), reason="needs qemu-system-arm and arm-none-eabi-gcc (scripts/setup.sh)"
)
@pytest.mark.parametrize("board_name", ["qemu-m4", "qemu-m0"])
def test_page_out_and_in_through_semihosting(tmp_path, board_name):
    from poetc import boards
    from poetc.device import target

    board = boards.load(board_name)
    cm = firmware_dir() / "cortexm"
    (tmp_path / "memory.ld").write_text(
        f"POET_RAM_BYTES = {board.ram_bytes};\nPOET_FLASH_BYTES = {board.flash_bytes};\n"
        f"POET_STACK_BYTES = {board.stack_bytes};\nPOET_FLASH_PAGER_BYTES = 0;\n"
    )
    elf = tmp_path / "pager_test.elf"
    srcs = [
        firmware_dir() / board.port / "port.c",
        *(cm / f for f in ("startup.c", "systick.c", "semihost.c")),
    ]
    srcs += [*sorted((runtime_dir() / "src").glob("*.c")), HERE / "qemu_pager_main.c"]
    subprocess.run(
        [
            "arm-none-eabi-gcc",
            *target.CORE_FLAGS[board.core],
            "-std=gnu99",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-ffunction-sections",
            "-fdata-sections",
            "-DPOET_PORT_SEMIHOST=1",
            f"-I{runtime_dir() / 'include'}",
            f"-I{cm}",
            *map(str, srcs),
            "-nostartfiles",
            "--specs=nano.specs",
            "-Wl,--gc-sections",
            f"-L{tmp_path}",
            f"-L{cm}",
            f"-T{firmware_dir() / board.port / 'link.ld'}",
            "-lm",
            "-o",
            str(elf),
        ],
        check=True,
        capture_output=True,
    )
    proc = subprocess.run(
        [
            "qemu-system-arm",
            "-M",
            board.emulator,
            "-nographic",
            "-monitor",
            "none",
            "-icount",
            "shift=0",
            "-semihosting-config",
            "enable=on,target=native",
            "-serial",
            "null",
            "-kernel",
            str(elf),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "pager test passed" in out, out
    # the page-out really went to the host file: relu(x) as float32, then its CRC32 over the tensor id (1), the
    # write number (1: the first write to storage) and the bytes (one byte flipped since)
    stored = (tmp_path / "poet-pager.bin").read_bytes()
    x = (np.arange(64, dtype=np.float32) - 32) * np.float32(0.25)
    want = bytearray(np.maximum(x, 0).astype("<f4").tobytes())
    want += zlib.crc32(bytes(want), zlib.crc32(struct.pack("<HI", 1, 1))).to_bytes(4, "little")
    want[5] ^= 0x40
    assert stored == bytes(want)
