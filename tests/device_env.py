"""The device environment (.venv-edge) the tests run the Pi's interpreter in, and what it holds.

`make edge-env` makes it with a python3.11 where one runs: then it holds
tflite-runtime 2.14 and numpy < 2, Raspberry Pi OS Bookworm's set. Made by a
3.12+ Python (a Debian 13 host, whose python3 is Trixie's 3.13) it can hold
only ai-edge-litert. There, tests of tflite-runtime itself skip, saying why
and how to check it; tests of what the device environment does (classify
without TensorFlow, install.sh from its wheels) run with the runtime it has.
"""
from __future__ import annotations

import functools
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from export.validate import EDGE_RUNTIME, edge_python, runtime_missing

ROOT = Path(__file__).resolve().parent.parent
NOT_MADE = "no .venv-edge: `make edge-env` builds it (`make test` does)"


@dataclass(frozen=True)
class DeviceEnv:
    python: Path
    runtime: str  # the interpreter package edge.runtime finds there: tflite-runtime, else ai-edge-litert
    version: str
    numpy: str
    missing: str | None  # why tflite-runtime 2.14 is not there (a 3.12+ Python), or None

    @property
    def module(self) -> str:
        return {"tflite-runtime": "tflite_runtime", "ai-edge-litert": "ai_edge_litert"}[self.runtime]

    @property
    def wheel_glob(self) -> str:
        return f"{self.runtime.replace('-', '_')}-*.whl"


@functools.cache
def _described() -> DeviceEnv | None:
    python = edge_python()
    if python is None:
        return None
    probe = ("import json; from edge.runtime import find_runtime, package_version; name = find_runtime()[0]; "
             "print(json.dumps([name, package_version(name), package_version('numpy')]))")
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          check=True)
    runtime, version, numpy = json.loads(done.stdout)
    return DeviceEnv(python, runtime, version, numpy, runtime_missing(python))


def device_env() -> DeviceEnv:
    """The device environment, described; the test skips when it has not been made."""
    described = _described()
    if described is None:
        pytest.skip(NOT_MADE)
    return described


def tflite_runtime_missing() -> str | None:
    """Why the device environment has no tflite-runtime 2.14, or None when it has (or was not made)."""
    described = _described()
    return described.missing if described else None


def tflite_runtime_python() -> Path:
    """The device environment's Python where it holds tflite-runtime 2.14; else the test skips, saying why."""
    env = device_env()
    if env.missing:
        pytest.skip(skip_reason(env.missing))
    return env.python


def skip_reason(missing: str) -> str:
    return (f"{missing}: {EDGE_RUNTIME} 2.14, Bookworm's runtime, is checked where a python3.11 makes "
            ".venv-edge (rm -rf .venv-edge; make edge-env), and on the Pi by make pi-check")


def skip_the_tflite_runtime_half(what_ran: str) -> None:
    """At the end of a test of both runtimes, where tflite-runtime is not: skipped, saying why, what ran."""
    missing = tflite_runtime_missing()
    if missing:
        pytest.skip(f"{skip_reason(missing)} ({what_ran} ran and passed)")
