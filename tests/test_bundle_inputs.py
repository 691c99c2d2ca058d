"""export.bundle: hostile inputs to `noodle bundle` and to every unpacking path.

Kept apart from tests/test_bundle.py only while that file changes on another branch;
they belong together.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.atomic import write_json
from edge.manifest import ManifestError, load_export, sha256_file
from export.bundle import BundleError, unpack, write_bundle
from tests.hostile import (
    HOSTILE,
    LONG,
    clean,
    error_line,
    fake_run,
    members,
)

runner = CliRunner()


def test_readme_pi_escapes_the_labels(tmp_path):
    from export.bundle import readme_labels

    labels = [label for label in HOSTILE if len(label) < 200] + [LONG]
    run = fake_run(tmp_path / "run", labels=labels[:20] + [LONG])
    files = members(write_bundle(run, "int8", tmp_path / "dist"))
    readme = next(v for k, v in files.items() if k.endswith("README-PI.md")).decode()
    assert clean(readme) and "L" * 100 not in readme
    everything = readme_labels(labels)
    assert clean(everything) and "\n" not in everything and "<script>" not in everything
    assert "&lt;script&gt;" in readme_labels(["<script>alert(1)</script>", "a|b"])
    assert "a\\|b" in readme_labels(["a|b", "c"])


def test_bundle_refuses_a_model_file_outside_the_export(tmp_path):
    from noodle import app

    (tmp_path / "secret.txt").write_text("the host's secret")
    run = fake_run(tmp_path / "run")
    manifest = json.loads((run / "export/manifest.json").read_text())
    for bad in ("../../secret.txt", str(tmp_path / "secret.txt"), "..", "a/b.tflite"):
        manifest["models"]["int8"].update(file=bad, sha256=sha256_file(tmp_path / "secret.txt"))
        write_json(run / "export/manifest.json", manifest)
        with pytest.raises(ManifestError, match=r"models\.int8\.file: expected a plain file name"):
            load_export(run / "export")
        result = runner.invoke(app, ["bundle", str(run), "--no-wheels", "--out", str(tmp_path / "dist")])
        assert "models.int8.file" in error_line(result)
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())


def test_bundle_refuses_a_symlinked_or_shell_unsafe_model(tmp_path):
    (tmp_path / "secret.txt").write_text("the host's secret")
    run = fake_run(tmp_path / "run")
    model = run / "export/int8.tflite"
    model.unlink()
    model.symlink_to(tmp_path / "secret.txt")
    manifest = json.loads((run / "export/manifest.json").read_text())
    manifest["models"]["int8"]["sha256"] = sha256_file(model)
    write_json(run / "export/manifest.json", manifest)
    with pytest.raises(BundleError, match=r"models\.int8\.file: .* is a link"):
        write_bundle(run, "int8", tmp_path / "dist")
    unsafe = fake_run(tmp_path / "unsafe", name="$(reboot).tflite")
    with pytest.raises(BundleError, match="letters, digits"):
        write_bundle(unsafe, "int8", tmp_path / "dist")


def test_bundle_members_are_plain_files_under_one_folder_and_its_sha256_is_printed(tmp_path):
    from noodle import app

    run = fake_run(tmp_path / "run")
    result = runner.invoke(app, ["bundle", str(run), "--no-wheels", "--out", str(tmp_path / "dist")])
    assert result.exit_code == 0, result.stderr
    path = Path(result.stdout.splitlines()[-1])
    assert f"sha256 {sha256_file(path)}  {path.name}" in result.stdout
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            assert member.isfile() and parts[0] == path.name.removesuffix(".tar.gz") and ".." not in parts
    readme = next(v for k, v in members(path).items() if k.endswith("README-PI.md")).decode()
    assert "sha256sum" in readme


def test_bundle_out_that_is_a_file_is_one_line(tmp_path):
    from noodle import app

    run = fake_run(tmp_path / "run")
    (tmp_path / "dist").write_text("in the way")
    result = runner.invoke(app, ["bundle", str(run), "--no-wheels", "--out", str(tmp_path / "dist")])
    assert "a file is where a folder should be" in error_line(result)


def evil_tarball(path: Path, kind: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, data: bytes = b"x", **fields):
            info = tarfile.TarInfo(name)
            info.size = len(data) if fields.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0
            for key, value in fields.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if info.size else None)

        add("top/install.sh")
        if kind == "dotdot":
            add("top/../../escaped.txt")
        elif kind == "absolute":
            add(str(path.parent / "outside" / "absolute.txt"))
        elif kind == "symlink":
            add("top/link", type=tarfile.SYMTYPE, linkname=str(path.parent / "outside"))
            add("top/link/through.txt")
        elif kind == "hardlink":
            add("top/hard", type=tarfile.LNKTYPE, linkname=str(path.parent / "outside" / "secret.txt"))
    return path


def unpackers():
    import test_bundle  # tests/ is on sys.path, as pytest puts it there

    from bench import pi_check

    return {"export.bundle.unpack": unpack, "bench.pi_check.unpack": pi_check.unpack,
            "tests.test_bundle.unpack": test_bundle.unpack}


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink"])
@pytest.mark.parametrize("where", ["export.bundle.unpack", "bench.pi_check.unpack",
                                   "tests.test_bundle.unpack"])
def test_every_unpacking_path_refuses_hostile_members(tmp_path, kind, where):
    from bench.pi_check import CheckFailed

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    tarball = evil_tarball(tmp_path / "evil.tar.gz", kind)
    into = tmp_path / "a" / "b" / "into"
    with pytest.raises((BundleError, CheckFailed), match="member"):
        unpackers()[where](tarball, into)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret"
    assert not list(tmp_path.rglob("escaped.txt")) and not list(tmp_path.rglob("through.txt"))
    assert not into.exists() or not list(into.rglob("*"))  # refused whole: nothing written
