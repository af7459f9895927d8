"""``poetc export DIR --arduino OUT``: an Arduino library of a build made with ``--on-device``.

Layout (Arduino's library format 1.5, sources compiled recursively from ``src/``):
  library.properties
  src/PoetTrain.h          the sketch's header: the C API, the model, the data set, the run settings, the port
  src/poet/*.h             the runtime's headers;  src/runtime/*.c  the runtime (without the host link, link.c)
  src/model.c, model.h     the build's tables (initial values: the device trains itself)
  src/data.c, data.h, app_config.h   the build's data set and run settings (--on-device)
  src/poet_arduino.c/.h    the port: storage, clock and text through the sketch's callbacks
  examples/Train/Train.ino a sketch that trains with the C API only and checkpoints

Written all-or-nothing (a sibling temporary directory renamed into place); an existing OUT is replaced only if
poetc wrote it (it holds ``.poetc-arduino``).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .. import __version__
from ..errors import PoetcError
from ..resources import firmware_dir, runtime_dir
from .builddir import BuildInfo

MARK = ".poetc-arduino"
SKIP = {"link.c"}  # the host link: not part of an application library


def library_name(build: BuildInfo) -> str:
    src = str(build.doc["model"]["source"]).removeprefix("zoo:")
    stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(src).stem) or "model"
    return f"Poet_{stem}"


def properties(build: BuildInfo) -> str:
    name = library_name(build)
    return "\n".join(
        [
            f"name={name}",
            f"version={re.sub(r'[^0-9.]', '', __version__) or '0.0.0'}",
            "author=poetc",
            "maintainer=poetc",
            f"sentence=Trains {build.doc['model']['source']} on the board (poetc build hash {build.doc['hash']}).",
            "paragraph=The poet runtime, the model's tables and data set, and a C API that trains, infers and "
            "checkpoints to storage that survives power loss (docs/c-api.md of poetc).",
            "category=Data Processing",
            "url=https://github.com/poetc/poetc",
            "architectures=*",
            "includes=PoetTrain.h",
            "",
        ]
    )


def export(build: BuildInfo, out: Path) -> list[str]:
    """Write the library; returns its files (relative paths)."""
    app = build.dir / "app"
    if not (app / "data.c").is_file() or not (app / "app_config.h").is_file():
        raise PoetcError(
            f"--arduino: {build.dir} was not built with --on-device (the library carries its data set and run "
            "settings); rebuild with poetc build ... --on-device --data FILE.npz"
        )
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARK).is_file())):
        raise PoetcError(f"--arduino {out}: exists and was not written by poetc export; use a new directory")
    out = out.resolve()
    if not out.parent.is_dir():
        raise PoetcError(f"--arduino {out}: folder {out.parent} does not exist")
    tmp = out.parent / f".{out.name}.poetc-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        src = tmp / "src"
        shutil.copytree(runtime_dir() / "include" / "poet", src / "poet")
        (src / "runtime").mkdir()
        for f in sorted((runtime_dir() / "src").glob("*.c")):
            if f.name not in SKIP:
                shutil.copyfile(f, src / "runtime" / f.name)
        for name in ("model.c", "model.h"):
            shutil.copyfile(build.dir / name, src / name)
        for name in ("data.c", "data.h", "app_config.h"):
            shutil.copyfile(app / name, src / name)
        ard = firmware_dir() / "arduino"
        for name in ("PoetTrain.h", "poet_arduino.h", "poet_arduino.c"):
            shutil.copyfile(ard / name, src / name)
        (tmp / "examples" / "Train").mkdir(parents=True)
        shutil.copyfile(ard / "examples" / "Train" / "Train.ino", tmp / "examples" / "Train" / "Train.ino")
        (tmp / "library.properties").write_text(properties(build))
        (tmp / MARK).write_text(
            f"poetc {__version__} export of {build.dir} (build hash {build.doc['hash']})\n"
        )
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return files
    except OSError as e:
        raise PoetcError(f"--arduino {out}: cannot write: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
