"""edge.atomic: nothing half-written, whether killed, interrupted or out of disk.
"""
from __future__ import annotations

import errno
import signal
import subprocess
import sys

import pytest

from edge.atomic import OutputError, atomic_output
from tests.hostile import (
    ROOT,
)


def test_rerun_removes_stale_temporary_files_but_not_a_writers(tmp_path):
    import fcntl

    dest = tmp_path / "out.tar.gz"
    stale = tmp_path / ".out.tar.gz.abc123.tmp.tar.gz"
    held = tmp_path / ".out.tar.gz.def456.tmp.tar.gz"
    stale.write_bytes(b"left by a killed run")
    held.write_bytes(b"being written")
    with open(held, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # what a live writer holds
        with atomic_output(dest, suffix=".tar.gz") as tmp:
            tmp.write_bytes(b"new")
        assert not stale.exists() and held.exists() and dest.read_bytes() == b"new"


SIGTERMED = """
import os, signal, sys, time
from pathlib import Path
from edge.errors import one_line_errors
from edge.atomic import atomic_output

@one_line_errors
def command():
    with atomic_output(Path(sys.argv[1])) as tmp:
        tmp.write_bytes(b"half")
        print("writing", flush=True)
        time.sleep(60)

command()
"""


def test_sigterm_cleans_up_as_ctrl_c_does(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SIGTERMED, str(tmp_path / "out.bin")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "writing\n"
    assert len(list(tmp_path.iterdir())) == 1  # the temporary file
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM and err.strip() == "terminated"
    assert list(tmp_path.iterdir()) == []  # no temporary file, no half file


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match="No space left on device"):
        with atomic_output(tmp_path / "x.json") as tmp:
            tmp.write_bytes(b"half")
            full()
    assert list(tmp_path.iterdir()) == []
