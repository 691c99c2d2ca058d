"""pi-check's deploy step in words: what it checks after `noodle deploy`, and when it is skipped.

The step itself runs under qemu in `make pi-check` (bench/pi_check.py); these hold its judgement.
"""
from __future__ import annotations

from pathlib import Path

from bench import pi_check
from bench.pi_check import DEPLOY_NAME, Deploy, deploy_problems

PLAN = Deploy(Path("runs/r"), "float16", "new" * 4, {}, ["a/1.jpg", "b/2.jpg"],
              {"a/1.jpg": "a", "b/2.jpg": "b"})


def rows(**changes) -> dict:
    good = {"deploy": {"rc": 0, "out": "deployed ...\n"},
            "deployed": {"sha256": PLAN.sha256, "origin": {"kind": "deployed", "by": DEPLOY_NAME}},
            "files": {"a/1.jpg": {"label": "a"}, "b/2.jpg": {"label": "b"}},
            "rollback": {"sha256": "old"}, "after": {"sha256": "old"}}
    return {**good, **changes}


def test_a_deploy_that_served_the_model_and_rolled_back_passes():
    assert deploy_problems(rows(), PLAN, "old") == []


def test_each_way_a_deploy_goes_wrong_is_named():
    refused = rows(deploy={"rc": 2, "out": "", "err": "error: the device refused the model: sha256\n"})
    assert deploy_problems(refused, PLAN, "old") == [
        "`noodle deploy` exited 2: error: the device refused the model: sha256"]
    kept = rows(deployed={"sha256": "old", "origin": {"kind": "shipped", "by": DEPLOY_NAME}})
    assert "not the deployed float16's" in deploy_problems(kept, PLAN, "old")[0]
    anonymous = rows(deployed={"sha256": PLAN.sha256, "origin": {"kind": "deployed", "by": "token"}})
    assert deploy_problems(anonymous, PLAN, "old") == [
        f"/v1/model says it was deployed by 'token', not the token's name {DEPLOY_NAME!r}"]
    other = rows(files={"a/1.jpg": {"label": "b"}, "b/2.jpg": {"label": "b"}})
    assert deploy_problems(other, PLAN, "old") == [
        "labels differ from x86's float16 on 1 of 2 photo(s): a/1.jpg b vs a"]
    stuck = rows(after={"sha256": PLAN.sha256})
    assert deploy_problems(stuck, PLAN, "old") == [
        f"after /v1/model/rollback the sha256 is {PLAN.sha256[:12]}, not the shipped old"]


def test_a_bundle_alone_or_a_run_of_one_variant_skips_the_step_in_one_line(tmp_path, capsys):
    assert pi_check.plan_deploy(None, "int8", tmp_path, {}, Path("python")) is None
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "manifest.json").write_text('{"models": {"int8": {"file": "int8.tflite"}}}')
    assert pi_check.plan_deploy(tmp_path, "int8", tmp_path, {}, Path("python")) is None
    said = [line for line in capsys.readouterr().out.splitlines() if "deploy" in line]
    assert len(said) == 2 and "give pi-check the run folder" in said[0] and "no variant but int8" in said[1]


def test_a_step_fails_on_its_problems_or_a_traceback_in_serves_log_and_says_which(tmp_path, capsys):
    import subprocess

    target = pi_check.RELEASES["bookworm"]
    ran = subprocess.CompletedProcess([], 0, "", "client's last words\n")
    serve_log = tmp_path / "serve.log"
    serve_log.write_text("serving model/int8.tflite\n")
    assert pi_check.step_passed(target, "deploy from x86", [], ran, serve_log)
    assert not pi_check.step_passed(target, "deploy from x86", ["labels differ"], ran, serve_log)
    serve_log.write_text("Traceback (most recent call last):\n")
    assert not pi_check.step_passed(target, "deploy from x86", [], ran, serve_log)
    out = capsys.readouterr().out.splitlines()
    assert "pi-check: bookworm:   | client's last words" in out
    assert out[-1] == "pi-check: bookworm: FAILED: deploy from x86: serve's log holds a traceback"
    assert "pi-check: bookworm: FAILED: deploy from x86: labels differ" in out
