"""Build script of poetc's local PlatformIO platform for the QEMU boards.

Compiles with Debian's arm-none-eabi-gcc (the local toolchain package pio/toolchain links to it) and newlib-nano,
bare metal: poetc's start-up and linker script come from the project (board_build.ldscript, pio_link.py). The
upload target boots the image in QEMU, checks that it answers with the build's hash, and installs it as the
build directory's build/poet.elf, which poetc train and verify run."""

from SCons.Script import AlwaysBuild, Default, DefaultEnvironment

env = DefaultEnvironment()

env.Replace(
    AR="arm-none-eabi-gcc-ar",
    AS="arm-none-eabi-as",
    CC="arm-none-eabi-gcc",
    CXX="arm-none-eabi-g++",
    LINK="arm-none-eabi-gcc",
    OBJCOPY="arm-none-eabi-objcopy",
    RANLIB="arm-none-eabi-gcc-ranlib",
    SIZETOOL="arm-none-eabi-size",
    PROGNAME="poet",
    PROGSUFFIX=".elf",
    # flash: code, constants and .data's initial values; RAM: the stack reserve (NOLOAD), .data and .bss
    SIZECHECKCMD="$SIZETOOL -A -d $SOURCES",
    SIZEPROGREGEXP=r"^(?:\.text|\.ARM\.exidx|\.data)\s+(\d+).*",
    SIZEDATAREGEXP=r"^(?:\.stack|\.data|\.bss)\s+(\d+).*",
)
env.Append(
    CCFLAGS=["-ffunction-sections", "-fdata-sections"],
    LINKFLAGS=["--specs=nano.specs", "-Wl,--gc-sections"],
    LIBS=["m"],
)

elf = env.BuildProgram()
python = env.GetProjectOption("custom_poetc_python", "$PYTHONEXE")
upload = env.AddPlatformTarget(
    "upload",
    elf,
    env.VerboseAction(
        f'"{python}" -m poetc.device.pio_upload "$PROJECT_DIR" "$SOURCE"',
        "Booting $SOURCE in QEMU and installing it as build/poet.elf",
    ),
    "Upload",
)
AlwaysBuild(upload)
Default([elf])
