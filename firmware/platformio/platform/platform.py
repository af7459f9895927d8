"""poetc's local PlatformIO platform for the QEMU boards. Nothing to customise: the build script is
builder/main.py, the boards are generated per build (boards/poetc_<board>.json)."""

from platformio.public import PlatformBase


class PoetcqemuPlatform(PlatformBase):
    pass
