"""Locate the files that ship with poetc: C runtime, templates, board files, firmware ports.

In a wheel they live under ``poetc/_share``; in a source checkout (editable install) at the repository root.
"""

from functools import cache
from pathlib import Path

_PKG = Path(__file__).resolve().parent


@cache
def share_dir() -> Path:
    installed = _PKG / "_share"
    if (installed / "runtime_c").is_dir():
        return installed
    repo = _PKG.parents[1]
    if (repo / "runtime_c").is_dir():
        return repo
    raise FileNotFoundError("poetc's runtime files are missing (neither poetc/_share nor a source checkout)")


def runtime_dir() -> Path:
    return share_dir() / "runtime_c"


def templates_dir() -> Path:
    return share_dir() / "templates"


def boards_dir() -> Path:
    return share_dir() / "boards"


def firmware_dir() -> Path:
    return share_dir() / "firmware"


def data_dir() -> Path:
    return _PKG / "data"
