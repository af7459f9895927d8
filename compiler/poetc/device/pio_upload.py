"""The upload step of poetc's local PlatformIO platform for the QEMU boards (``pio run -t upload``):
boot the image PlatformIO built in QEMU, check that it answers with the build directory's hash, and install it as
``build/poet.elf``, the image ``poetc train`` and ``verify`` run. ``python -m poetc.device.pio_upload PROJECT_DIR ELF``."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ..emit import builddir
from ..errors import PoetcError
from . import target


def upload(project_dir: Path, elf: Path) -> str:
    b = builddir.open_build(project_dir)
    board = b.board()
    tgt = target.for_board(board)
    if not isinstance(tgt, target.QemuTarget):
        raise PoetcError(
            f"board {board.name} is not emulated: poetc flash uploads to it with its own platform"
        )
    if not elf.is_file():
        raise PoetcError(f"{elf}: no such image (pio run builds it)")
    size = target.image_size(elf, board)
    with tgt.launch(b.dir, binary=elf, timeout_s=30.0) as session:
        info = session.link.info()
    if info.hash_hex != b.doc["hash"]:
        raise PoetcError(f"{elf} answers as build {info.hash_hex}, but {b.dir} is build {b.doc['hash']}")
    dest = tgt.binary(b.dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copy2(elf, tmp)
    os.replace(tmp, dest)
    return (
        f"{board.name}: {elf.name} booted in QEMU {board.emulator} and answered as build {info.hash_hex} "
        f"(port {info.port}, arena {info.arena_bytes} B); installed as {dest}\n{size.line()}"
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m poetc.device.pio_upload PROJECT_DIR ELF", file=sys.stderr)
        return 2
    try:
        print(upload(Path(args[0]), Path(args[1])), flush=True)
    except PoetcError as e:
        print(f"poetc upload: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
