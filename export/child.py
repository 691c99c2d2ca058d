"""A child process that prints one JSON line: run it, and say in words how it failed.

Validation runs export.runtime_check in the device environment, and the
benchmark runs bench.probe and `noodle-edge bench`, each as a child, so a
crash or an abort of a runtime costs a line of the report, not the parent.
"""
from __future__ import annotations

from pathlib import Path


class ChildFailed(Exception):
    """A child process that failed, in words: str() says how it ended and why; `log` is its stderr."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


def ending(returncode: int) -> str:
    """How a child ended, in words: a signal by name (TensorFlow's aborts are SIGABRT), else its exit code."""
    import signal

    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name} (exit {returncode})"
        except ValueError:
            pass
    return f"exit {returncode}"


def reason(stderr: str) -> str:
    """The last line of a child's stderr that says something: not a stack frame of a native crash dump."""
    import re

    frame = re.compile(r"^\s*(@\s+0x|\*\*\* |PC: |#\d+ |0x[0-9a-f]+ |File \"|\^+$)")
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = [line for line in lines if not frame.match(line)]
    return (said or lines or ["no output"])[-1]


def run_json(cmd: list, timeout: float, env: dict | None = None, ok_codes: tuple[int, ...] = (0,)) -> dict:
    """Run a child that prints one JSON line (export.runtime_check, bench.probe, edge bench); its object.

    The last line starting with "{" counts, so log lines before it do no harm.
    `ok_codes`: exit codes whose JSON is a report (export.runtime_check exits 1 when some model failed).
    """
    import json
    import subprocess

    cmd = [str(c) for c in cmd]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ChildFailed(f"timed out after {timeout:g} s", _text(exc.stderr)) from None
    except OSError as exc:  # fork's EAGAIN (BlockingIOError), ENOMEM: the machine refused a process
        raise ChildFailed(f"could not start {Path(cmd[0]).name} ({exc.strerror or exc}): the machine is "
                          "out of processes or memory; retry when it is quieter") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode not in ok_codes or not lines:
        raise ChildFailed(f"{ending(done.returncode)}: {reason(done.stderr)}", done.stderr)
    return json.loads(lines[-1])


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""
