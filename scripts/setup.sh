#!/usr/bin/env bash
# Install poetc into a virtual environment in this checkout (.venv), with what it needs from Debian.
#   scripts/setup.sh          poetc itself, as a user gets it (non-editable, with the fleet extra: Flower), then
#                             .venv/bin/poetc
#   scripts/setup.sh --dev    poetc editable, with everything the tests need: the dev and fleet extras
#                             (scripts/test.sh runs this)
# PYTHON=/path/to/python3 picks the interpreter the environment is made from (default: python3). A system
# Python that is externally managed (PEP 668, Debian's /usr/bin/python3) is fine: nothing is installed into it.
# As root on Debian, missing system packages are installed with apt-get: a C compiler, make and ccache
# (generated builds compile through it when it is there: rebuilding the same runtime is then a cache hit), the Arm
# cross toolchain with newlib and QEMU (Cortex-M boards), the aarch64 cross compiler and QEMU user mode
# (rpi4, jetson-tx2), python3-venv when the interpreter cannot make a virtual environment, chromium (--dev:
# the tests render poetc report). A second run with nothing changed skips pip.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=user
case "${1:-}" in
  "") ;;
  --dev) mode=dev ;;
  *) echo "usage: scripts/setup.sh [--dev]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
VENV=.venv

need=()
command -v "$PY" >/dev/null || need+=(python3)
# Debian leaves ensurepip out of its Python: python3-venv brings it (and `python3 -m venv` then works)
if ! { [ -x "$VENV/bin/python" ] || "$PY" -c 'import ensurepip, venv' 2>/dev/null; }; then
  need+=(python3-venv)
fi
command -v cc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
command -v ccache >/dev/null || need+=(ccache)
command -v arm-none-eabi-gcc >/dev/null || need+=(gcc-arm-none-eabi)
[ -d /usr/lib/arm-none-eabi/newlib ] || need+=(libnewlib-arm-none-eabi)
command -v qemu-system-arm >/dev/null || need+=(qemu-system-arm)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
[ -f /usr/aarch64-linux-gnu/lib/libc.a ] || need+=(libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if [ "$mode" = dev ]; then
  command -v chromium >/dev/null || need+=(chromium)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "setup: missing ${need[*]} (Debian: sudo apt-get install ${need[*]}); the Cortex-M and aarch64" \
      "builds need them" >&2
  fi
fi

# The virtual environment: made once; made again only when it is broken or PYTHON names another interpreter.
if ! command -v "$PY" >/dev/null; then
  echo "setup: $PY not found; install Python 3.11 or later (Debian: apt-get install python3 python3-venv)" >&2
  exit 1
fi
base=$("$PY" -c 'import os, sys; print(os.path.realpath(sys.executable))')
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  if [ -n "${PYTHON:-}" ] && [ "$(cat "$VENV/.poetc-python" 2>/dev/null)" != "$base" ]; then
    echo "setup: $VENV was made from another Python; making it again from $base"
    rm -rf "$VENV"
  fi
else
  rm -rf "$VENV"
fi
if [ ! -d "$VENV" ]; then
  if ! "$PY" -c 'import ensurepip' 2>/dev/null; then
    echo "setup: $PY cannot make a virtual environment (Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
  "$PY" -m venv "$VENV"
  echo "$base" >"$VENV/.poetc-python"
fi

# pip only when something it installs changed: the mode, the Python, pyproject.toml and (non-editable)
# every file that goes into the wheel.
stamp=$("$VENV/bin/python" - "$mode" <<'EOF'
import hashlib, os, sys
from pathlib import Path

h = hashlib.sha256(f"{sys.argv[1]} {sys.version}".encode())
files = [Path("pyproject.toml"), Path("README.md")]
if sys.argv[1] == "user":
    for top in ("compiler", "runtime_c", "templates", "boards", "firmware"):
        for root, dirs, names in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            files += [Path(root, n) for n in sorted(names) if not n.endswith(".pyc")]
for f in files:
    h.update(str(f).encode() + b"\0" + f.read_bytes())
print(h.hexdigest())
EOF
)
if [ "$(cat "$VENV/.poetc-setup" 2>/dev/null)" = "$stamp" ]; then
  echo "setup: $VENV is up to date (poetc, $mode install)"
else
  rm -f "$VENV/.poetc-setup"
  echo "setup: installing poetc into $VENV ($mode install)"
  # --no-compile: no bytecode for the ~100 packages up front (about half of a fresh install's time, most of it
  # for modules poetc never imports); Python writes it into .venv on first import of what is used
  if [ "$mode" = dev ]; then
    "$VENV/bin/python" -m pip install -q --no-compile -e '.[dev,fleet]'
  else
    "$VENV/bin/python" -m pip install -q --no-compile '.[fleet]' # pip rebuilds a local folder every time: a changed checkout
  fi
  echo "$stamp" >"$VENV/.poetc-setup"
fi
echo "setup: done; run $VENV/bin/poetc (or . $VENV/bin/activate, then poetc)"
