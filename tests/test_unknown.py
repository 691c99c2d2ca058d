"""--threshold's "none of these" (classify, camera, serve, MQTT, /metrics) and serve's /snapshot.jpg.

The model is a tiny Keras net converted here, whose answer is set by hand: its two classes
are "red" and "green", scored by the photo's red channel, so a red photo is red (0.9995), a
green one green, and a grey one neither (red 0.51): under --threshold 0.75 it is `unknown`.
Servers are the real command (tests/test_serve.py's Served), the broker Debian's mosquitto.
"""
from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_serve import TOKEN, Served, auth, free_port, one_line_error, serve_cli
from test_serve_browser import Browser
from test_serve_mqtt import PREFIX, Broker, Subscriber, topic
from typer.testing import CliRunner

from edge.cli import app
from tests.hostile import SIZE, error_line, write_export

runner = CliRunner()
LABELS = ["red", "green"]
COLOURS = {"red": (250, 10, 10), "green": (10, 250, 10), "grey": (128, 128, 128)}
THRESHOLD = "0.75"
# The camera's frame: not square and not the model's input size, so a snapshot of the
# frame is told from a crop or the model's input.
FRAME = (200, 120)


def red_or_green():
    """Dense(2) on the mean of each channel: logits 8r - 4 and 4 - 8r, r the red channel in 0..1."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(inputs))
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inputs, dense(x))
    dense.set_weights([np.array([[8, -8], [0, 0], [0, 0]], np.float32), np.array([-4, 4], np.float32)])
    return model


@pytest.fixture(scope="module")
def blob() -> bytes:
    from export.convert import convert

    return convert(red_or_green(), "float32")


@pytest.fixture(scope="module")
def model(blob, tmp_path_factory) -> Path:
    return write_export(tmp_path_factory.mktemp("red") / "export", LABELS, blob)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("colours")
    for name, colour in COLOURS.items():
        Image.new("RGB", (24, 20), colour).save(folder / f"{name}.png")
    return {name: folder / f"{name}.png" for name in COLOURS}


def clip(path: Path, colours: list[str]) -> Path:
    """An MJPG .avi of FRAME-sized frames, one solid colour each."""
    cv2 = pytest.importorskip("cv2")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, FRAME)
    assert writer.isOpened()
    for name in colours:
        writer.write(np.full((FRAME[1], FRAME[0], 3), COLOURS[name][::-1], np.uint8))  # B, G, R
    writer.release()
    return path


def classify(*args) -> object:
    return runner.invoke(app, ["classify", *map(str, args)])


# --- classify and camera --------------------------------------------------------------------

def test_classify_json_says_unknown_under_the_threshold_and_keeps_the_scores(model, photos):
    files = [photos["red"], photos["green"], photos["grey"]]
    plain = classify(model, *files, "--json", "-k", "2")
    said = classify(model, *files, "--json", "-k", "2", "--threshold", THRESHOLD)
    assert plain.exit_code == said.exit_code == 0, said.stderr
    before = [json.loads(line) for line in plain.stdout.splitlines()]
    after = [json.loads(line) for line in said.stdout.splitlines()]
    assert [r["label"] for r in before] == ["red", "green", "red"]  # no threshold: today's answers
    assert [r["label"] for r in after] == ["red", "green", "unknown"]
    assert 0.5 < after[2]["score"] < 0.75 and after[2]["top"][0]["label"] == "red"
    # The score and the top-k are the model's, threshold or not.
    assert [(r["score"], r["top"]) for r in after] == [(r["score"], r["top"]) for r in before]


def test_classify_csv_and_table_say_unknown_and_keep_the_models_label(model, photos):
    files = [photos["red"], photos["grey"]]
    said = classify(model, *files, "--csv", "--threshold", THRESHOLD)
    assert said.exit_code == 0, said.stderr
    rows = list(csv.reader(io.StringIO(said.stdout)))
    assert rows[0] == ["file", "label", "score", "top_label"]
    assert [(r[1], r[3]) for r in rows[1:]] == [("red", "red"), ("unknown", "red")]
    assert 0.5 < float(rows[2][2]) < 0.75
    plain = classify(model, *files, "--csv")
    assert list(csv.reader(io.StringIO(plain.stdout)))[0] == ["file", "label", "score"]  # as before

    table = classify(model, *files, "--threshold", THRESHOLD).stdout.splitlines()
    assert table[0].split() == ["file", "label", "score", "top_label"]
    assert table[2].split()[1::2] == ["unknown", "red"]


def test_a_class_named_unknown_is_refused_with_a_threshold_only(blob, photos, tmp_path):
    clash = write_export(tmp_path / "export", ["Unknown", "green"], blob)
    line = error_line(classify(clash, photos["grey"], "--threshold", "0.5"))
    assert "named 'Unknown'" in line and "--threshold" in line
    assert classify(clash, photos["grey"]).exit_code == 0  # no threshold: the class is a class
    done = serve_cli(clash, "--threshold", "0.5")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "named 'Unknown'" in done.stderr


def test_a_threshold_out_of_range_is_one_line(model, photos):
    result = classify(model, photos["grey"], "--threshold", "1.5")
    assert result.exit_code == 2 and "--threshold" in result.stderr and "Traceback" not in result.stderr


def test_camera_json_and_summary_say_unknown(model, tmp_path):
    video = clip(tmp_path / "clip.avi", ["red"] * 3 + ["grey"] * 3)
    result = runner.invoke(app, ["camera", str(model), "--source", str(video), "--every", "1", "--json",
                                 "--threshold", THRESHOLD])
    assert result.exit_code == 0, result.stderr
    labels = [json.loads(line)["label"] for line in result.stdout.splitlines()]
    assert labels == ["red"] * 3 + ["unknown"] * 3
    assert "red 3, unknown 3" in result.stderr


# --- serve: the API, /metrics, MQTT --------------------------------------------------------

@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-unknown")
    served = Served([model, "--source", clip(folder / "grey.avi", ["grey"] * 10), "--loop", "--rate", 500,
                     "--threshold", THRESHOLD], folder / "serve.log")
    yield served
    log = served.stop()
    assert "Traceback" not in log, log


def latest(served: Served, **headers) -> dict:
    """/v1/latest once the camera loop has classified a frame."""
    deadline = time.monotonic() + 30
    while "top" not in (result := served.json("GET", "/v1/latest", **headers)[1]):
        assert time.monotonic() < deadline, result
        time.sleep(0.1)
    return result


def test_serve_classify_latest_and_metrics_say_unknown(server, photos):
    status, grey = server.json("POST", "/v1/classify", photos["grey"].read_bytes())
    assert status == 200 and grey["label"] == "unknown" and grey["top"][0]["label"] == "red"
    assert 0.5 < grey["score"] == grey["top"][0]["score"] < 0.75
    assert server.json("POST", "/v1/classify", photos["red"].read_bytes())[1]["label"] == "red"
    now = latest(server)
    # A grey frame through JPEG is 127 or 128: either class's, at about 0.5.
    assert now["label"] == "unknown" and now["top"][0]["label"] in LABELS and now["score"] < 0.75
    assert server.json("GET", "/v1/model")[1]["threshold"] == 0.75

    text = server.get("/metrics")[2].decode()
    metrics = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert metrics['noodle_unknown_total{source="api"}'] == "1"
    assert int(metrics['noodle_unknown_total{source="camera"}']) >= 1


def test_the_page_shows_unknown_dimmed_and_the_threshold(server, tmp_path):
    browser = Browser(tmp_path / "profile")
    try:
        browser.page("Page.navigate", url=f"http://127.0.0.1:{server.port}/")
        deadline = time.monotonic() + 30
        read = ('document.getElementById("label") && JSON.stringify({label: '
                'document.getElementById("label").textContent, dimmed: '
                'document.getElementById("label").classList.contains("unknown"), '
                'model: document.getElementById("model").textContent})')
        while not ((shown := json.loads(browser.evaluate(read) or "{}")).get("label") == "unknown"
                   and "unknown under" in shown["model"]):
            assert time.monotonic() < deadline, shown
            time.sleep(0.05)
        time.sleep(0.5)  # the next results, drawn once the page knows the threshold
        shown = json.loads(browser.evaluate(read))
    finally:
        browser.close()
    assert shown["label"] == "unknown" and shown["dimmed"] and "unknown under 75.0 %" in shown["model"], shown


def test_the_mqtt_state_says_unknown(model, tmp_path):
    pytest.importorskip("paho.mqtt.client")
    broker = Broker(tmp_path, free_port())
    sub = Subscriber(broker.port)
    video = clip(tmp_path / "clip.avi", ["red"] * 5 + ["grey"] * 5)
    served = Served([model, "--source", video, "--loop", "--threshold", THRESHOLD,
                     "--mqtt", f"mqtt://127.0.0.1:{broker.port}/{PREFIX}"], tmp_path / "serve.log")
    try:
        states = [json.loads(sub.wait_for(lambda t, p, want=want: topic("state")(t, p) and
                                          json.loads(p)["label"] == want)[1]) for want in ("unknown", "red")]
        assert states[0]["top"][0]["label"] in LABELS and states[0]["score"] < 0.75
        assert states[1]["score"] >= 0.75
    finally:
        log = served.stop()
        sub.close()
        broker.kill()
    assert "Traceback" not in log, log


# --- /snapshot.jpg ------------------------------------------------------------------------------

def test_snapshot_is_the_cameras_frame_as_one_jpeg(server):
    latest(server)
    status, head, data = server.get("/snapshot.jpg")
    assert status == 200 and head["Content-Type"] == "image/jpeg" and head["Cache-Control"] == "no-store"
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == FRAME


def test_snapshot_needs_the_token_beyond_loopback_and_a_camera(model, tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    served = Served([model, "--source", clip(tmp_path / "grey.avi", ["grey"] * 10), "--loop",
                     "--host", "0.0.0.0", "--token-file", token], tmp_path / "serve.log")
    api = Served([model], tmp_path / "api.log")
    try:
        status, head, data = served.get("/snapshot.jpg")
        assert status == 401 and head["Content-Type"] == "application/json"
        one_line_error(status, json.loads(data))
        latest(served, **auth())
        status, head, data = served.get("/snapshot.jpg", **auth())
        assert status == 200 and Image.open(io.BytesIO(data)).size == FRAME
        # Home Assistant's generic camera sends no Bearer header: the token in its URL.
        assert served.get(f"/snapshot.jpg?token={TOKEN}")[0] == 200
        assert served.get("/snapshot.jpg?token=wrong-token-of-some-length")[0] == 401
        status, payload = api.json("GET", "/snapshot.jpg")
        assert status == 404 and "no camera" in one_line_error(status, payload)
    finally:
        assert "Traceback" not in served.stop() + api.stop()


def test_snapshot_before_the_first_frame_is_503_json():
    from edge.serve_http import App, Problem
    from edge.serve_live import Live

    app = App(None, Live("cam0"), None, 1, 1, 0)
    try:
        with pytest.raises(Problem) as refused:
            asyncio.run(app.on_snapshot(None))
    finally:
        app.workers.shutdown()
        app.waiters.shutdown()
    assert refused.value.status == 503 and "no camera frame yet" in refused.value.message


def test_a_teach_that_makes_a_class_named_unknown_fails_the_swap_under_a_threshold(tmp_path):
    """serve_teach.swap builds the new SharedModel with the served one's threshold: refused in words,
    before anything is loaded or swapped, so the model served stays."""
    from types import SimpleNamespace

    from edge.errors import NoodleError
    from edge.serve_teach import swap

    served = SimpleNamespace(threshold=0.5, clf="the old model")
    taught = SimpleNamespace(labels=["cat", "unknown"], folder=tmp_path / "taught", path=tmp_path / "x")
    with pytest.raises(NoodleError, match="named 'unknown'"):
        swap(served, taught, 1, {})
    assert served.clf == "the old model"
