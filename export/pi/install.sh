#!/bin/sh
# Install the noodle edge runner on a Raspberry Pi: a virtual environment in
# .venv beside this script with the interpreter, numpy, Pillow and typer from
# requirements-pi.txt. Re-running it is harmless.
#
#   ./install.sh                 uses python3
#   PYTHON=python3.11 ./install.sh
set -eu
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

arch=$(uname -m)
case "$arch" in
    aarch64 | arm64 | x86_64) ;;
    armv6l | armv7l | armhf | arm*)
        echo "error: this is a 32-bit ARM system ($arch). tflite-runtime and ai-edge-litert ship" >&2
        echo "64-bit ARM (aarch64) wheels only: install 64-bit Raspberry Pi OS (Pi 3, 4, 5, Zero 2 W)." >&2
        exit 2 ;;
    *) echo "warning: $arch is untested; the runtimes publish wheels for aarch64 and x86_64" >&2 ;;
esac

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
    echo "error: $PYTHON is missing or older than 3.9; on Raspberry Pi OS: sudo apt install python3" >&2
    exit 2
fi

# picamera2 comes from apt (python3-picamera2), not pip: let the venv see the
# system's packages when it is there, so --picamera works.
system_site=""
if "$PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("picamera2") is None)' 2>/dev/null; then
    system_site="--system-site-packages"
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv $system_site .venv || {
        echo "error: '$PYTHON -m venv' failed; on Raspberry Pi OS: sudo apt install python3-venv" >&2
        exit 2
    }
fi
.venv/bin/python -m pip install --disable-pip-version-check --quiet -r requirements-pi.txt
.venv/bin/python -c 'from edge.runtime import find_runtime; print("runtime:", find_runtime()[0])'
echo "installed; try: ./noodle-edge classify model/@MODEL_FILE@ photo.jpg"
