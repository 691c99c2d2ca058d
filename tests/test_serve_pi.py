"""`./install.sh --service 'serve ...'` in a real bundle: the unit, the token, the URL.

Beyond loopback `serve` refuses to start without a token, and a unit that cannot start only
restarts for ever; so install.sh gives such a service `--token-file serve.token`, a file it
makes once (readable by the service's user alone), and says the address to open.
"""
from __future__ import annotations

import json
import stat
import subprocess

import pytest
from test_bundle import install, one_error

from export import bundle
from export.bundle import write_bundle


@pytest.fixture(scope="module")
def unpacked(exported_run, tmp_path_factory):
    from export.convert import record_validation
    from export.validate import validate_export

    manifest = json.loads((exported_run / "export" / "manifest.json").read_text())
    if not (manifest.get("validation") or {}).get("passed"):  # as tests/test_bundle.py's shippable_run
        record_validation(exported_run, validate_export(exported_run))
    tarball = write_bundle(exported_run, "int8", tmp_path_factory.mktemp("dist"))
    return bundle.unpack(tarball, tmp_path_factory.mktemp("unpacked"))


def unit_args(unit: str) -> str:
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    return line.split("noodle-edge\" ", 1)[1]


def test_print_service_serve_on_loopback_is_as_written(unpacked):
    done = install(unpacked, "--print-service", "serve model/int8.tflite --picamera --port 8081")
    assert done.returncode == 0, done.stderr
    assert unit_args(done.stdout) == "serve model/int8.tflite --picamera --port 8081 --strict"


def test_print_service_serve_beyond_loopback_reads_a_token_file_and_makes_none(unpacked):
    model = "serve model/int8.tflite"
    done = install(unpacked, "--print-service", f"{model} --host 0.0.0.0")
    assert done.returncode == 0, done.stderr
    assert unit_args(done.stdout) == f"{model} --host 0.0.0.0 --token-file serve.token --strict"
    assert not (unpacked / "serve.token").exists()  # --print-service changes nothing
    done = install(unpacked, "--print-service", f"{model} --host=0.0.0.0 --token-file my.token")
    assert unit_args(done.stdout) == f"{model} --host=0.0.0.0 --token-file my.token --strict"
    done = install(unpacked, "--print-service", f"{model} --host 0.0.0.0 --token abc")
    assert "--token-file" not in done.stdout and "readable in its unit" in done.stderr


def test_service_serve_makes_the_token_once_readable_by_its_user_alone(unpacked, tmp_path):
    """--service: the token file is made before the install (which fails here: no index, no wheels)."""
    units = tmp_path / "units"
    args = "serve model/int8.tflite --host 0.0.0.0 --port 8090"
    done = install(unpacked, "--index", "--service", args, tools={"uname": "echo aarch64"},
                   NOODLE_UNIT_DIR=str(units))
    assert done.returncode != 0 and "made serve.token" in done.stdout
    token = (unpacked / "serve.token").read_text()
    assert len(token) == 49 and int(token, 16) >= 0 and token.endswith("\n")  # 48 hex digits, a line
    assert stat.S_IMODE((unpacked / "serve.token").stat().st_mode) == 0o600
    assert not units.exists()  # no unit without an install
    again = install(unpacked, "--index", "--service", args, tools={"uname": "echo aarch64"},
                    NOODLE_UNIT_DIR=str(units))
    assert "made serve.token" not in again.stdout and (unpacked / "serve.token").read_text() == token


def test_a_serve_option_it_does_not_have_is_refused(unpacked):
    error = one_error(install(unpacked, "--print-service", "serve model/int8.tflite --hots 0.0.0.0"))
    assert "'--hots' is not an option of noodle-edge serve" in error
    assert subprocess.run(["sh", "-n", str(unpacked / "install.sh")]).returncode == 0
