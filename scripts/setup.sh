#!/usr/bin/env bash
# Install what poetc needs on a fresh Debian machine: system packages (C compiler, make, the Arm cross
# toolchain with newlib, QEMU; the aarch64 cross compiler and QEMU user mode; chromium for the tests) when they
# are missing, then the Python package.
#   scripts/setup.sh          poetc itself (non-editable install)
#   scripts/setup.sh --dev    poetc editable, with everything the tests need
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
command -v arm-none-eabi-gcc >/dev/null || need+=(gcc-arm-none-eabi)
[ -d /usr/lib/arm-none-eabi/newlib ] || need+=(libnewlib-arm-none-eabi)
command -v qemu-system-arm >/dev/null || need+=(qemu-system-arm)
# Linux-class boards (rpi4, jetson-tx2): the aarch64 cross compiler and its C library, and QEMU user mode
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
[ -f /usr/aarch64-linux-gnu/lib/libc.a ] || need+=(libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
# the tests render poetc report in a headless browser
if [ "${1:-}" = "--dev" ]; then
  command -v chromium >/dev/null || need+=(chromium)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "setup: missing ${need[*]} (Debian: sudo apt-get install ${need[*]}); the Cortex-M and aarch64 builds need them" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ "${1:-}" = "--dev" ]; then
  "$PY" -m pip install -q -e '.[dev]'
else
  "$PY" -m pip install -q .
fi
