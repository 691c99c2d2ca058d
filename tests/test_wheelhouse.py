"""export.wheelhouse: the wheel cache is checked against the hashes recorded at download.
"""
from __future__ import annotations

import hashlib
import re

import pytest
from typer.testing import CliRunner

from export.bundle import write_bundle
from tests.hostile import (
    fake_run,
)

runner = CliRunner()


def test_wheel_cache_is_checked_against_the_hashes_recorded_at_download(tmp_path):
    from export.wheelhouse import WheelhouseError

    def download(specs, target, dest):
        for spec in specs:
            name = re.split(r"[=<>!~;]", spec)[0].replace("-", "_")
            # As on an index: one file name, one content, whichever release asks.
            (dest / f"{name}-1.0-py3-none-any.whl").write_bytes(f"{name} 1.0".encode())
        made.append(target.release)

    made, cache, run = [], tmp_path / "cache", fake_run(tmp_path / "run")
    write_bundle(run, "int8", tmp_path / "dist", wheel_cache=cache, download=download)
    # The runner's lock (the camera's, beside it, pins OpenCV against the same numpy).
    lock = next(p for p in sorted(cache.glob("bookworm-*.lock")) if "opencv" not in p.read_text())
    # tflite-runtime's wheel: the runner's alone (the camera's lock pins the packages both share).
    name, digest = next(line for line in lock.read_text().splitlines() if "tflite_runtime" in line).split()
    assert digest == hashlib.sha256((cache / name).read_bytes()).hexdigest()
    (cache / name).write_bytes(b"a modified wheel")
    with pytest.raises(WheelhouseError, match=f"{name}: sha256 .* differs .* the cache was altered"):
        write_bundle(run, "int8", tmp_path / "dist", wheel_cache=cache,
                     download=download)
    # A lock that records no sha256 (an older noodle's) is downloaded again, not trusted.
    made.clear()
    lock.write_text("\n".join(line.split()[0] for line in lock.read_text().splitlines()) + "\n")
    write_bundle(run, "int8", tmp_path / "dist", wheel_cache=cache, download=download)
    assert made == ["bookworm"] and (cache / name).read_bytes() != b"a modified wheel"
