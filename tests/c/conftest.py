"""Shared by the kernel tests: the C runtime's kernels compiled as a shared library for ctypes."""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

from poetc.resources import runtime_dir

# everything but the interpreter, the link and the training API, which need a port
KERNEL_SOURCES = sorted(
    p
    for p in (runtime_dir() / "src").glob("*.c")
    if p.name not in ("interp.c", "link.c", "train.c", "pager.c")
)


# the kernels' configuration on ARMv6-M (qemu-m0, MKR1000: 1-2 KB stacks), built on the host for the tests
SMALL_STACK_DEFINES = ("-DPOET_CONV_TAPS_BUF=0", "-DPOET_CONV_PLANE_KMAX=3")


def build_kernel_lib(out_dir: Path, name: str, defines: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Compile the kernels with the warnings the generated code must pass (C99, -Wall -Wextra -Werror)."""
    out = out_dir / f"lib{name}.so"
    # POETC_KERNEL_CFLAGS adds flags, e.g. sanitizers for a run under LD_PRELOAD=libasan.so (docs/adding-an-op.md)
    defines = (*defines, *os.environ.get("POETC_KERNEL_CFLAGS", "").split())
    subprocess.run(
        ["cc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", *defines,
         f"-I{runtime_dir() / 'include'}", *map(str, KERNEL_SOURCES), "-lm", "-o", str(out)],
        check=True,
    )  # fmt: skip
    return ctypes.CDLL(str(out))
