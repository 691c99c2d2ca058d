"""The loop against a real serve on loopback: captures posted, `noodle pull`, `noodle deploy`, the
swap seen on /v1/model, /v1/classify and MQTT (Debian's mosquitto), a restart that resumes the
deployed model, rollback; and each refused model while a client keeps classifying on the old one.

The models are the suite's exported sample run (tests/conftest.py's exported_run: allconv, its four
variants): serve ships its float32, and its int8 is deployed, so no training is added here.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import threading
from pathlib import Path

import pytest
from test_serve import Served, free_port
from test_serve_mqtt import Broker, Subscriber
from typer.testing import CliRunner

from edge.errors import NoodleError

TOKEN = "laptop:" + "s3cret-token-of-the-test"
SECRET = TOKEN.split(":")[1]
PER_CLASS = 6
LOOP_UP = 20  # seconds any one MQTT message may take


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def call(served: Served, method: str, path: str, body: bytes | None = None, token: str | None = SECRET,
         **headers) -> tuple[int, dict]:
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return served.json(method, path, body, **headers)


def post_captures(served: Served, sample_data: Path, swap: bool = False) -> None:
    for label in ("discs", "stripes"):
        for photo in sorted((sample_data / "train" / label).glob("*.jpg"))[:PER_CLASS]:
            name = {"discs": "stripes", "stripes": "discs"}[label] if swap else label
            status, answer = call(served, "POST", f"/v1/captures/{name}", photo.read_bytes())
            assert status == 201, answer


def noodle(*args: str):
    from noodle import app

    return CliRunner().invoke(app, [*args])


def start(export: Path, tmp_path: Path, *more) -> Served:
    return Served([export / "float32.tflite", "--captures", tmp_path / "captures", "--token", TOKEN,
                   "--rate", "0", *more], tmp_path / "serve.log")


def test_pull_deploy_swap_mqtt_restart_and_rollback(exported_run, sample_data, tmp_path):
    pytest.importorskip("paho.mqtt.client")
    export = exported_run / "export"
    shipped, int8 = sha256(export / "float32.tflite"), sha256(export / "int8.tflite")
    broker = Broker(tmp_path, free_port())
    sub = Subscriber(broker.port)
    mqtt = ["--mqtt", f"mqtt://127.0.0.1:{broker.port}/noodle/test-door"]
    served = start(export, tmp_path, *mqtt)
    url = f"http://127.0.0.1:{served.port}/"
    try:
        post_captures(served, sample_data)
        # The pull: class folders `noodle train` reads; a second pull fetches nothing.
        out = tmp_path / "pulled"
        first = noodle("pull", url, "--out", str(out), "--token", TOKEN)
        assert first.exit_code == 0, first.stderr
        assert f"pulled {2 * PER_CLASS} new captures" in first.stderr
        assert sorted(p.name for p in out.iterdir()) == ["discs", "stripes"]
        assert len(list((out / "discs").glob("*.jpg"))) == PER_CLASS
        again = noodle("pull", url, "--out", str(out), "--token", TOKEN)
        assert "pulled 0 new captures" in again.stderr and f"{2 * PER_CLASS} of the" in again.stderr

        # The deploy: accepted, scored on the captures, swapped, announced.
        since = sub.messages[-1][0] if sub.messages else 0.0
        done = noodle("deploy", url, str(exported_run), "--token", TOKEN, "--min-accuracy", "0.5")
        assert done.exit_code == 0, done.output + done.stderr
        assert f"sha256 {int8[:12]}" in done.stdout and f"of run {exported_run.name}" in done.stdout
        assert f"accuracy on the device's {2 * PER_CLASS} captures" in done.stdout
        model = call(served, "GET", "/v1/model")[1]
        assert model["sha256"] == int8 and model["variant"] == "int8"
        origin = model["origin"]
        assert origin["kind"] == "deployed" and origin["run"] == exported_run.name
        assert origin["by"] == "laptop"
        assert SECRET not in json.dumps(model) and model["previous"]["kind"] == "shipped"
        _, config = sub.wait_for(lambda t, p: t.endswith("/config") and int8[:12].encode() in p, since,
                                 LOOP_UP)
        assert json.loads(config)["device"]["model"] == f"int8.tflite (int8, sha256 {int8[:12]})"

        # /v1/classify agrees with `noodle-edge classify` of the deployed model.
        photos = sorted((sample_data / "test").rglob("*.jpg"))[::4]
        cli = noodle("edge", "classify", str(export / "int8.tflite"), *map(str, photos), "--json")
        lines = [json.loads(line) for line in cli.stdout.splitlines() if line.startswith("{")]
        assert len(lines) == len(photos)
        for photo, line in zip(photos, lines, strict=True):
            status, answer = call(served, "POST", "/v1/classify", photo.read_bytes())
            assert status == 200 and answer["sha256"] == int8 and answer["label"] == line["label"], answer

        # A restart resumes it, and says how to go back.
        log = served.stop()
        assert "deployed int8.tflite" in log and "by laptop" in log and "Traceback" not in log
        served = start(export, tmp_path, *mqtt)
        url = f"http://127.0.0.1:{served.port}/"
        assert "resumed the deployed model" in served.text() and "rollback" in served.text()
        assert call(served, "GET", "/v1/model")[1]["sha256"] == int8

        # Rollback: the shipped model again, and after a restart too.
        status, back = call(served, "POST", "/v1/model/rollback")
        assert status == 200 and back["sha256"] == shipped and back["origin"]["kind"] == "shipped"
        assert not (tmp_path / "captures" / ".models" / "serving.json").exists()

        # Deployed again, then altered on disk while serve was down: not resumed, said in one line.
        redo = noodle("deploy", url, str(exported_run), "--token", TOKEN)
        assert redo.exit_code == 0, redo.stderr
        served.stop()
        (kept,) = (tmp_path / "captures" / ".models").glob("deployed-*/int8.tflite")
        data = bytearray(kept.read_bytes())
        data[len(data) // 2] ^= 1
        kept.write_bytes(bytes(data))
        served = start(export, tmp_path, *mqtt)
        assert "not resumed (its sha256 differs from the one recorded" in served.text()
        assert call(served, "GET", "/v1/model")[1]["sha256"] == shipped
        assert not list((tmp_path / "captures" / ".models").iterdir())  # the file and the model gone
    finally:
        log = served.stop()
        sub.close()
        broker.kill()
    assert "Traceback" not in log, log


def put(served: Served, model: bytes, manifest: dict | bytes, token: str | None = SECRET,
        variant: str = "int8", query: str = "") -> tuple[int, dict]:
    from export.deploy import form

    manifest = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    body, kind = form({"variant": variant.encode(), "run": b"test"},
                      {"manifest": ("manifest.json", manifest), "model": (f"{variant}.tflite", model)})
    return call(served, "PUT", "/v1/model" + query, body, token, **{"Content-Type": kind})


def test_refused_models_leave_the_old_one_answering(exported_run, sample_data, blobs, tmp_path):
    from tests.hostile import entry, export_manifest

    export = exported_run / "export"
    shipped = sha256(export / "float32.tflite")
    manifest = json.loads((export / "manifest.json").read_text())
    int8 = (export / "int8.tflite").read_bytes()
    served = start(export, tmp_path, "--max-model-mb", "20")
    post_captures(served, sample_data, swap=True)  # every capture labelled as the other class
    photo = sorted((sample_data / "test").rglob("*.jpg"))[0].read_bytes()
    answers, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            try:
                answers.append(call(served, "POST", "/v1/classify", photo))
            except (OSError, http.client.HTTPException) as exc:
                answers.append((0, {"error": repr(exc)}))

    thread = threading.Thread(target=client)
    thread.start()
    refusals = {}
    try:
        tampered = bytearray(int8)
        tampered[len(tampered) // 2] ^= 1
        refusals["tampered"] = put(served, bytes(tampered), manifest)
        foreign = tmp_path / "foreign" / "int8.tflite"
        foreign.parent.mkdir()
        foreign.write_bytes(blobs["softmax"])
        refusals["foreign"] = put(served, blobs["softmax"],
                                  export_manifest(["a", "b", "c"], {"int8": entry(foreign, 3)}))
        other = json.loads(json.dumps(manifest))
        other["input"]["height"] += 8
        other["input"]["width"] += 8
        refusals["other input"] = put(served, int8, other)
        refusals["no token"] = put(served, int8, manifest, token=None)
        refusals["worse than asked"] = put(served, int8, manifest, query="?min_accuracy=0.9")
        head = (f"PUT /v1/model HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {SECRET}\r\n"
                "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 60000000\r\n\r\n")
        raw = served.raw(head.encode())
        refusals["oversize"] = (int(raw.split()[1]), json.loads(raw.partition(b"\r\n\r\n")[2]))
    finally:
        stop.set()
        thread.join()
    log = served.stop()
    statuses = {k: v[0] for k, v in refusals.items()}
    assert statuses == {"tampered": 422, "foreign": 422, "other input": 422, "no token": 401,
                        "worse than asked": 422, "oversize": 413}, refusals
    said = {k: v[1]["error"] for k, v in refusals.items()}
    assert all(set(v[1]) == {"error"} and "\n" not in v[1]["error"] for v in refusals.values()), said
    assert "sha256" in said["tampered"] and "no noodle metadata" in said["foreign"]
    assert "model input" in said["other input"] and "under min_accuracy 0.9" in said["worse than asked"]
    assert "over the 20000000 byte limit" in said["oversize"]
    # The old model answered every request sent meanwhile, and serves on.
    assert answers and all(s == 200 and a["sha256"] == shipped for s, a in answers), answers[:3]
    assert not [p for p in (tmp_path / "captures" / ".models").glob("*") if p.name != "serving.json"]
    # One line in the server's log for each refusal.
    for status in ("422", "401", "413"):
        assert f"PUT /v1/model: {status} " in log, log
    assert "Traceback" not in log


def test_deploy_says_a_wrong_token_and_a_missing_variant_in_one_line(exported_run, tmp_path):
    served = start(exported_run / "export", tmp_path)
    try:
        wrong = noodle("deploy", f"http://127.0.0.1:{served.port}", str(exported_run), "--token", "nope-" * 4)
        missing = noodle("deploy", f"http://127.0.0.1:{served.port}", str(exported_run), "--token", TOKEN,
                         "--variant", "int4")
    finally:
        served.stop()
    (line,) = wrong.stderr.strip().splitlines()
    assert wrong.exit_code == 1 and "401" in line and "--token" in line and "nope-" not in line, line
    (line,) = missing.stderr.strip().splitlines()
    assert missing.exit_code == 2 and "no variant int4" in line, line


def test_tokens_have_names_and_a_file_holds_several(tmp_path):
    from edge.serve_auth import ServeError, Tokens, resolve_token

    tokens = Tokens.parse(["laptop:" + "a" * 20])
    assert tokens.match("a" * 20) == tokens.match("someone:" + "a" * 20) == "laptop"
    assert tokens.match("b" * 20) is None and Tokens.parse(["c" * 20]).match("c" * 20) == "token"
    file = tmp_path / "serve.token"
    file.write_text("# who may deploy\nlaptop:" + "a" * 20 + "\nphone:" + "b" * 20 + "\n" + "c" * 20 + "\n")
    tokens = resolve_token(None, file, "0.0.0.0")
    assert [tokens.match(x * 20) for x in "abcd"] == ["laptop", "phone", "token-3", None]
    for bad, said in (["x:" + "a" * 20, "x:" + "b" * 20], "two tokens named x"), (["bad name:" + "a" * 20],
                                                                                   "a token's name"):
        with pytest.raises(ServeError, match=said):
            Tokens.parse(bad)


def test_deploy_finds_the_model_of_a_run_an_export_or_a_file(exported_run):
    from export.deploy import find_model

    export = exported_run / "export"
    for given, variant, wanted in ((exported_run, None, "int8"), (export, "float16", "float16"),
                                   (export / "dynamic.tflite", None, "dynamic")):
        model, manifest, _, found, run = find_model(given, variant)
        assert (found, run, manifest) == (wanted, exported_run.name, export / "manifest.json")
        assert model == export / f"{wanted}.tflite"
    with pytest.raises(NoodleError, match="/no-such-run: no such run folder, export folder or .tflite"):
        find_model(exported_run.parent / "no-such-run", None)


def test_the_verdict_says_when_the_captures_scored_are_photos_the_run_trained_on(tmp_path):
    """After pull and make export the device's captures are training photos: a fit, not a test score."""
    from export.deploy import learned_from, verdict

    splits = tmp_path / "splits.csv"
    splits.write_text("file,label,split,sha256\na.jpg,cat,train,aa\nb.jpg,cat,val,bb\nc.jpg,dog,test,cc\n")
    files = [{"sha256": s} for s in ("aa", "bb", "cc", "dd")]
    assert learned_from(splits, files) == (2, 4)
    assert learned_from(tmp_path / "none.csv", files) is None
    answer = {"file": "int8.tflite", "variant": "int8", "run": "r", "sha256": "0" * 64, "labels": ["cat"],
              "accuracy": {"accuracy": 1.0, "photos": 4, "per_class": {"cat": {"correct": 4, "photos": 4}}},
              "learned": (2, 4)}
    said = "\n".join(verdict(answer, "http://device"))
    assert "note: 2 of the device's 4 captures are photos this run trained on" in said
    assert "note:" not in "\n".join(verdict({**answer, "learned": (0, 4)}, "http://device"))
