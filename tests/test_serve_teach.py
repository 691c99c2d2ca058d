"""serve's Teach routes against a real server: captures, a teach, the swap, rollback.

The model is lite0 trained on the sample data and exported (test_teach.py's fixture); the
captures are the sample's photos under new class names, posted as a client would. The answers
of /v1/classify after a teach are compared with `noodle-edge classify DIR` on the same photos.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from test_serve import Served, serving
from test_teach import taught_export  # noqa: F401 (the fixture: lite0 exported with embed.tflite)
from typer.testing import CliRunner

# Seconds a teach of a few dozen photos may take here (2 cores shared): a bound, never a figure.
TEACH_WAIT = 120
PER_CLASS = 10
# The sample's two classes, posted under names the shipped model does not know.
NEW = {"discs": "round", "stripes": "lined"}


def quote(label: str) -> str:
    return urllib.parse.quote(label, safe="")


def post_captures(served: Served, sample_data: Path, per_class: int = PER_CLASS) -> dict[str, int]:
    made = {}
    for old, new in NEW.items():
        for photo in sorted((sample_data / "train" / old).glob("*.jpg"))[:per_class]:
            status, answer = served.json("POST", f"/v1/captures/{new}", photo.read_bytes())
            assert status == 201, answer
            assert answer["label"] == new
        made[new] = answer["count"]
    return made


def teach_and_wait(served: Served, replace: bool = True) -> dict:
    status, job = served.json("POST", "/v1/teach", json.dumps({"replace": replace}).encode(),
                              **{"Content-Type": "application/json"})
    assert status == 202 and job["state"] == "running", job
    deadline = time.monotonic() + TEACH_WAIT
    while job["state"] == "running":
        assert time.monotonic() < deadline, f"the teach did not finish: {served.text()}"
        time.sleep(0.2)
        status, job = served.json("GET", "/v1/teach")
        assert status == 200, job
    return job


@pytest.fixture
def served(taught_export, tmp_path):  # noqa: F811
    # --rate 0: the swap test's clients send as fast as they can, from one address.
    with serving([taught_export / "int8.tflite", "--captures", tmp_path / "captures", "--rate", "0"],
                 tmp_path / "serve.log") as server:
        yield server


def test_captures_teach_swap_classify_and_rollback(served, taught_export, sample_data, tmp_path):  # noqa: F811
    before = served.json("GET", "/v1/model")[1]
    assert before["labels"] == ["discs", "stripes"] and before["origin"]["kind"] == "shipped"
    assert post_captures(served, sample_data) == {"round": PER_CLASS, "lined": PER_CLASS}
    listing = served.json("GET", "/v1/captures")[1]
    assert {k: v["count"] for k, v in listing["classes"].items()} == {"lined": PER_CLASS, "round": PER_CLASS}
    assert listing["bytes"] > 0 and listing["limit_bytes"] == 200_000_000
    # On disk: the layout `noodle train` reads, with the server's names.
    root = tmp_path / "captures"
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["lined", "round"]
    assert len(list((root / "round").glob("*.jpg"))) == PER_CLASS

    job = teach_and_wait(served)
    assert job["state"] == "done", job
    assert job["labels"] == ["lined", "round"] and job["photos"] == {"lined": PER_CLASS, "round": PER_CLASS}
    model = served.json("GET", "/v1/model")[1]
    assert model["labels"] == ["lined", "round"] and model["origin"]["kind"] == "taught"
    assert model["previous"]["kind"] == "shipped" and model["sha256"] != before["sha256"]
    folder = Path(model["origin"]["path"])
    from edge.taught import TEACH_MANIFEST, file_sha256

    assert model["sha256"] == file_sha256(folder / TEACH_MANIFEST)

    # /v1/classify agrees with `noodle-edge classify DIR` on photos neither saw.
    from edge.cli import app

    photos = sorted((sample_data / "test").rglob("*.jpg"))[::3]
    result = CliRunner().invoke(app, ["classify", str(folder), *map(str, photos), "--json"])
    assert result.exit_code == 0, result.output
    cli = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert len(cli) == len(photos)
    agree = 0
    for photo, line in zip(photos, cli, strict=True):
        status, answer = served.json("POST", "/v1/classify", photo.read_bytes())
        assert status == 200 and answer["sha256"] == model["sha256"], answer
        agree += answer["label"] == line["label"]
        assert answer["label"] in ("lined", "round")
    assert agree == len(photos), (agree, len(photos))

    # Rollback: the shipped model, its sha256, and the taught folder gone (nothing comes back to it).
    status, back = served.json("POST", "/v1/model/rollback")
    assert status == 200 and back["sha256"] == before["sha256"] and back["labels"] == ["discs", "stripes"]
    assert served.json("GET", "/v1/model")[1]["sha256"] == before["sha256"]
    status, answer = served.json("POST", "/v1/model/rollback")
    assert status == 409 and "no earlier model" in answer["error"]


def test_requests_during_a_swap_all_get_an_answer(served, sample_data):
    post_captures(served, sample_data, 6)
    photo = sorted((sample_data / "test").rglob("*.jpg"))[0].read_bytes()
    answers, errors, stop = [], [], threading.Event()

    def client():
        while not stop.is_set():
            try:
                status, answer = served.json("POST", "/v1/classify", photo)
                (answers if status == 200 else errors).append((status, answer))
            except Exception as exc:  # noqa: BLE001 (a dropped connection is what this test looks for)
                errors.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        assert teach_and_wait(served)["state"] == "done"
        assert served.json("POST", "/v1/model/rollback")[0] == 200
        assert teach_and_wait(served)["state"] == "done"
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    labels = {a["label"] for _, a in answers}
    # Both models answered: the shipped one's labels and the taught one's.
    assert labels & {"discs", "stripes"} and labels & {"lined", "round"}, labels


@pytest.mark.parametrize("label, words", [
    ("..", "starts with a dot"),
    ("a/b", "holds a slash"),
    ("_unsure", "unsure"),
    ("evil\u202eexe", "bidi"),
    ("x" * 101, "at most 100"),
    (".hidden", "starts with a dot"),
])
def test_a_hostile_class_name_is_refused_in_words(served, sample_data, tmp_path, label, words):
    photo = sorted((sample_data / "train" / "discs").glob("*.jpg"))[0].read_bytes()
    status, answer = served.json("POST", f"/v1/captures/{quote(label)}", photo)
    assert status == 400 and words in answer["error"], answer
    assert "\n" not in answer["error"]
    root = tmp_path / "captures"
    assert not root.exists() or not any(root.rglob("*.jpg"))
    assert not (tmp_path / "b").exists()


def test_a_full_store_loses_nothing_and_the_model_keeps_serving(taught_export, sample_data, tmp_path):  # noqa: F811
    root = tmp_path / "captures"
    server = Served([taught_export / "int8.tflite", "--captures", root, "--captures-max-mb", "0.05"],
                    tmp_path / "serve.log")
    try:
        kept, refused = [], None
        for photo in sorted((sample_data / "train" / "discs").glob("*.jpg"))[:30]:
            status, answer = server.json("POST", "/v1/captures/round", photo.read_bytes())
            if status != 201:
                refused = (status, answer)
                break
            kept.append(answer["name"])
        assert refused is not None and refused[0] == 413, refused
        assert "--captures-max-mb" in refused[1]["error"], refused
        assert kept  # some fitted before the limit
        # Every capture answered 201 is there, whole; nothing half-written is left behind.
        from PIL import Image

        on_disk = sorted(p.name for p in (root / "round").iterdir())
        assert on_disk == sorted(kept)
        for name in on_disk:
            with Image.open(root / "round" / name) as img:
                img.load()
        assert not [p for p in root.rglob("*") if p.name.startswith(".") and p.is_file()]
        photo = sorted((sample_data / "test").rglob("*.jpg"))[0].read_bytes()
        status, answer = server.json("POST", "/v1/classify", photo)
        assert status == 200 and answer["label"] in ("discs", "stripes")
        # A teach that fails (one class only) says so and leaves the shipped model serving.
        job = teach_and_wait(server)
        assert job["state"] == "failed" and "2 or more" in job["error"], job
        assert server.json("GET", "/v1/model")[1]["labels"] == ["discs", "stripes"]
    finally:
        log = server.stop()
    assert "Traceback" not in log, log


def test_delete_and_move_from_unsure(served, sample_data, tmp_path):
    post_captures(served, sample_data, 3)
    listing = served.json("GET", "/v1/captures")[1]
    first = listing["classes"]["round"]["recent"][0]
    status, head, data = served.get(f"/v1/captures/round/{first}")
    assert status == 200 and head["Content-Type"] == "image/jpeg" and data.startswith(b"\xff\xd8")
    assert served.json("DELETE", f"/v1/captures/round/{first}")[0] == 200
    assert served.json("GET", "/v1/captures")[1]["classes"]["round"]["count"] == 2
    # An unsure frame (put there as the camera loop does) moves into a class with one request.
    from edge.captures import CaptureStore

    frame = next(iter(sorted((sample_data / "train" / "discs").glob("*.jpg"))))
    import numpy as np
    from PIL import Image

    name = CaptureStore(tmp_path / "captures").add_unsure(np.asarray(Image.open(frame).convert("RGB"))).name
    status, answer = served.json("POST", f"/v1/captures/round/{name}?from=_unsure")
    assert status == 200 and answer["label"] == "round", answer
    listing = served.json("GET", "/v1/captures")[1]
    assert listing["classes"]["round"]["count"] == 3 and listing["unsure"]["count"] == 0
    status, answer = served.json("POST", "/v1/captures/round/../x")
    assert status in (400, 404)
    # Another site's page may not change anything (a loopback server without a token would take it).
    for method, path in (("DELETE", "/v1/captures/lined"), ("POST", "/v1/teach"),
                         ("POST", "/v1/model/rollback")):
        status, answer = served.json(method, path, Origin="http://evil.example")
        assert status == 403 and "another site" in answer["error"], answer
    origin = f"http://127.0.0.1:{served.port}"  # this server's own page
    status, answer = served.json("DELETE", "/v1/captures/lined", Origin=origin)
    assert status == 200 and answer["deleted"] == 3
    assert "lined" not in served.json("GET", "/v1/captures")[1]["classes"]


# ------------------------------------------------------------------ the page, in Chromium

# The clip: this many photos a class, at this many frames a second (a half lasts 5 s: time to
# press, hold and let go inside it).
CLIP_PER_CLASS = 10
CLIP_FPS = 2
# The record button pressed or let go, as a finger or a mouse would.
PRESS = 'document.getElementById("record").dispatchEvent(new PointerEvent("pointer{}")); true'


def test_the_page_records_two_classes_trains_here_and_follows_the_clip(taught_export, sample_data,  # noqa: F811
                                                                        tmp_path):
    from test_serve import make_clip
    from test_serve_browser import Browser, follow_clip, labels_of_frames, page_reader

    read_page = page_reader("label", "error", "progress", "model",
                            thumbs='document.querySelectorAll("#classes .thumb img").length')

    photos = [sorted((sample_data / "test" / old).glob("*.jpg"))[:CLIP_PER_CLASS] for old in NEW]
    clip = make_clip(tmp_path / "clip.avi", photos[0] + photos[1], fps=CLIP_FPS)
    root = tmp_path / "captures"
    served = Served([taught_export / "int8.tflite", "--source", clip, "--loop", "--captures", root],
                    tmp_path / "serve.log")
    browser = Browser(tmp_path / "profile")
    wait = 60

    def page() -> dict:
        return json.loads(browser.evaluate(read_page))

    def at() -> int:  # the clip's frame the page shows now
        return (page()["frame"] - 1) % (2 * CLIP_PER_CLASS)

    try:
        browser.page("Page.navigate", url=f"http://127.0.0.1:{served.port}/")
        deadline = time.monotonic() + wait
        while not (browser.evaluate('!!document.getElementById("record")') and page()["frame"]):
            assert time.monotonic() < deadline, "the page did not load"
            time.sleep(0.05)
        # A hostile class name, typed into the page, is refused in words.
        browser.evaluate('document.getElementById("class").value = "../etc"; ' + PRESS.format("down"))
        while "starts with a dot" not in page()["error"]:
            assert time.monotonic() < deadline, page()
            time.sleep(0.05)
        browser.evaluate(PRESS.format("up"))
        # Hold to record each class while the clip shows it: from its half's first frames, 2.5 s.
        for half, new in enumerate(NEW.values()):
            while not half * CLIP_PER_CLASS + 1 <= at() <= half * CLIP_PER_CLASS + 2:
                assert time.monotonic() < deadline + 30, "the clip never came to the half"
                time.sleep(0.05)
            browser.evaluate(f'document.getElementById("class").value = {json.dumps(new)}; '
                             + PRESS.format("down"))
            time.sleep(2.5)
            browser.evaluate(PRESS.format("up"))
        time.sleep(0.5)
        counts = {k: v["count"] for k, v in served.json("GET", "/v1/captures")[1]["classes"].items()}
        assert sorted(counts) == ["lined", "round"] and min(counts.values()) >= 4, counts
        # Train here, only these two classes; the page says when it is done.
        browser.evaluate('document.getElementById("replace").checked = true; '
                         'document.getElementById("train").click(); true')
        deadline = time.monotonic() + TEACH_WAIT
        while not page()["progress"].startswith(("done", "failed")):
            assert time.monotonic() < deadline, page()
            time.sleep(0.1)
        shown = page()
        assert shown["progress"].startswith("done"), shown
        # (Thumbnails as the page last listed them: a capture still in flight at the let-go may be missing.)
        assert "round" in shown["model"] and "lined" in shown["model"] and shown["thumbs"] >= 2 * 3
        folder = Path(served.json("GET", "/v1/model")[1]["origin"]["path"])
        expected = [label for label, _ in labels_of_frames(folder, clip)]
        assert expected[:CLIP_PER_CLASS].count("round") >= CLIP_PER_CLASS * 3 // 4, expected
        assert expected[CLIP_PER_CLASS:].count("lined") >= CLIP_PER_CLASS * 3 // 4, expected
        # The label follows the clip with the new model: round in the first half, lined in the second.
        follow_clip(page, expected, CLIP_PER_CLASS, ("round", "lined"), wait, stale=tuple(NEW))
    finally:
        browser.close()
        log = served.stop()
    assert "Traceback" not in log, log


def test_a_full_disk_during_captures_and_teach_loses_nothing(taught_export, sample_data, tmp_path):  # noqa: F811
    """Captures on a real 1 MB tmpfs (root only): the teach's model folder cannot fit, then the
    photos fill it."""
    import os
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    server, log = None, ""
    try:
        root = disk / "captures"
        server = Served([taught_export / "int8.tflite", "--captures", root, "--rate", "0"],
                        tmp_path / "serve.log")
        post_captures(server, sample_data, 4)
        shipped = server.json("GET", "/v1/model")[1]["sha256"]
        # embed.tflite alone is 4 MB: the teach fails in words and the shipped model serves on.
        job = teach_and_wait(server)
        assert job["state"] == "failed" and "free some space" in job["error"], job
        assert server.json("GET", "/v1/model")[1]["sha256"] == shipped
        assert not [p for p in (root / ".models").rglob("*") if p.is_file()]
        # Then photos until the disk is full: refused in words, and every photo answered 201 is whole.
        kept, refused = [], None
        for photo in sorted((sample_data / "train" / "discs").glob("*.jpg")) * 20:
            status, answer = server.json("POST", "/v1/captures/round", photo.read_bytes())
            if status != 201:
                refused = (status, answer)
                break
            kept.append(answer["name"])
        assert refused is not None and refused[0] == 413 and "disk is full" in refused[1]["error"], refused
        from PIL import Image

        on_disk = sorted(p.name for p in (root / "round").iterdir())
        assert len(on_disk) == 4 + len(kept) and set(kept) <= set(on_disk)
        for name in on_disk:
            with Image.open(root / "round" / name) as img:
                img.load()
        photo = sorted((sample_data / "test").rglob("*.jpg"))[0].read_bytes()
        status, answer = server.json("POST", "/v1/classify", photo)
        assert status == 200 and answer["sha256"] == shipped
    finally:
        if server is not None:
            log = server.stop()
        subprocess.run(["umount", str(disk)], check=False)
    assert "Traceback" not in log, log


def test_mqtt_republishes_discovery_and_state_with_the_new_labels(taught_export, sample_data,  # noqa: F811
                                                                   tmp_path):
    pytest.importorskip("paho.mqtt.client")
    from test_serve import free_port, make_clip
    from test_serve_mqtt import PREFIX, Broker, Subscriber, is_status

    clip = make_clip(tmp_path / "clip.avi", sorted((sample_data / "test").rglob("*.jpg"))[10:30])
    broker = Broker(tmp_path, free_port())
    sub = Subscriber(broker.port)
    served = Served([taught_export / "int8.tflite", "--source", clip, "--loop", "--captures", tmp_path / "c",
                     "--mqtt", f"mqtt://127.0.0.1:{broker.port}/{PREFIX}"], tmp_path / "serve.log")

    def config(t, p):
        return t.startswith("homeassistant/sensor/") and t.endswith("/config")

    try:
        sub.wait_for(is_status(b"online"))
        assert "(int8, sha256" in json.loads(sub.wait_for(config)[1])["device"]["model"]
        post_captures(served, sample_data, 6)
        swapped = time.monotonic()
        assert teach_and_wait(served)["state"] == "done"
        sha = served.json("GET", "/v1/model")[1]["sha256"]
        device = json.loads(sub.wait_for(config, since=swapped)[1])["device"]
        assert device["model"].endswith(f"(taught, sha256 {sha[:12]})"), device
        # The next state carries a label of the new model.
        new_state = lambda t, p: t == f"{PREFIX}/state" and json.loads(p)["label"] in NEW.values()  # noqa: E731
        _, state = sub.wait_for(new_state, since=swapped)
        assert json.loads(state)["top"][0]["label"] in ("round", "lined")
    finally:
        log = served.stop()
        sub.close()
        broker.kill()
    assert "Traceback" not in log, log


def test_the_token_guards_the_teach_routes_and_unsure_frames_fill_the_ring(taught_export, sample_data,  # noqa: F811
                                                                           tmp_path):
    from test_serve import TOKEN, auth, make_clip

    clip = make_clip(tmp_path / "clip.avi", sorted((sample_data / "test").rglob("*.jpg"))[10:30])
    root = tmp_path / "captures"
    # --unsure 1: every frame is "unsure", so the ring fills at its pace of one a second.
    served = Served([taught_export / "int8.tflite", "--source", clip, "--loop", "--captures", root,
                     "--unsure", "1", "--token", TOKEN], tmp_path / "serve.log")
    try:
        start = time.monotonic()
        photo = sorted((sample_data / "train" / "discs").glob("*.jpg"))[0].read_bytes()
        for method, path, body in (("GET", "/v1/captures", None), ("POST", "/v1/captures/round", photo),
                                   ("POST", "/v1/teach", None), ("POST", "/v1/model/rollback", None),
                                   ("DELETE", "/v1/captures/round", None)):
            status, answer = served.json(method, path, body)
            assert status == 401 and "token" in answer["error"], (method, path, answer)
        assert not (root / "round").exists()  # (the camera's unsure frames are there already)
        status, answer = served.json("POST", "/v1/captures/round", None, **auth())
        assert status == 201, answer  # the camera's current frame, with the token
        time.sleep(3.5)
        unsure = served.json("GET", "/v1/captures", **auth())[1]["unsure"]
        elapsed = time.monotonic() - start
        assert 2 <= unsure["count"] <= elapsed + 1, (unsure, elapsed)
        name = unsure["recent"][-1]
        status, head, data = served.request("GET", f"/v1/captures/_unsure/{name}", headers=auth())
        assert status == 200 and data.startswith(b"\xff\xd8")
    finally:
        log = served.stop()
    assert "Traceback" not in log, log
