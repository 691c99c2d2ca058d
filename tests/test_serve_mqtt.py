"""`noodle-edge serve --mqtt` against a real broker: Debian's mosquitto, started here.

The broker runs on a free loopback port with no persistence, so after it is killed and
started again nothing retained survives: whatever a subscriber sees then, serve published
again by itself. `make test` installs mosquitto; outside CI a machine without it skips.
"""
from __future__ import annotations

import getpass
import hashlib
import importlib.metadata
import json
import logging
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from test_serve import Served, free_port, installed, make_clip
from typer.testing import CliRunner

from edge import serve_mqtt
from edge.cli import app

PREFIX = "noodle/test-door"
# Seconds any one expected message may take to arrive.
WAIT = 20


class Broker:
    """mosquitto on 127.0.0.1:`port`, anonymous, nothing kept on disk."""

    def __init__(self, folder: Path, port: int, users: dict[str, str] | None = None):
        """`users`: name -> password, in a password file, and no anonymous clients."""
        self.port, self.folder = port, folder
        self.conf = folder / "mosquitto.conf"
        conf = "allow_anonymous true\n"
        if users is not None:
            passwords = folder / "passwords"
            passwords.write_text("")
            for user, password in users.items():
                subprocess.run([installed("mosquitto", "mosquitto_passwd"), "-b", str(passwords), user,
                                password], check=True, capture_output=True)
            conf = f"allow_anonymous false\npassword_file {passwords}\n"
        self.conf.write_text(f"listener {port} 127.0.0.1\n{conf}persistence false\n"
                             f"user {getpass.getuser()}\nlog_dest stderr\n")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        log = open(self.folder / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([installed("mosquitto"), "-c", str(self.conf)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.folder / "mosquitto.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("mosquitto did not listen within 10 s")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def log(self) -> str:
        return (self.folder / "mosquitto.log").read_text(errors="replace")


class Subscriber:
    """Every message under the prefix and the discovery topic, with when it came."""

    def __init__(self, port: int, user: str | None = None, password: str | None = None):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[float, str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="noodle-test-subscriber")
        if user is not None:
            self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, *_: c.subscribe([(f"{PREFIX}/#", 1), ("homeassistant/#", 1)])
        self.client.on_message = self._message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _message(self, client, userdata, message) -> None:
        with self.cond:
            self.messages.append((time.monotonic(), message.topic, message.payload, message.retain))
            self.cond.notify_all()

    def wait_for(self, what, since: float = 0.0, timeout: float = WAIT) -> tuple[str, bytes]:
        """The first (topic, payload) after `since` for which `what(topic, payload)` holds."""
        def found():
            return next(((t, p) for at, t, p, _ in self.messages if at >= since and what(t, p)), None)

        with self.cond:
            hit = self.cond.wait_for(found, timeout)
        assert hit, f"no such message in {timeout} s; got {[(t, p[:80]) for _, t, p, _ in self.messages]}"
        return hit

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def serve_connects(broker: Broker) -> list[str]:
    """The client ids of serve's connects, in order, as the broker logged them."""
    ids = re.findall(r"New client connected from \S+ as (\S+)", broker.log())
    return [i for i in ids if i != "noodle-test-subscriber"]


def topic(name: str):
    return lambda t, p: t == f"{PREFIX}/{name}"


def is_status(value: bytes):
    return lambda t, p: t == f"{PREFIX}/status" and p == value


def test_discovery_label_changes_heartbeat_broker_restart_and_last_will(exported_run, sample_data, tmp_path):
    pytest.importorskip("paho.mqtt.client")
    model = exported_run / "export" / "int8.tflite"
    labels = json.loads((exported_run / "export" / "manifest.json").read_text())["labels"]
    photos = sorted((sample_data / "test").rglob("*.jpg"))
    # Half one class, half the other: the label changes at least once a loop.
    clip = make_clip(tmp_path / "clip.avi", photos[10:30])
    broker = Broker(tmp_path, free_port())
    sub = Subscriber(broker.port)
    served = Served([model, "--source", clip, "--loop", "--mqtt", f"mqtt://127.0.0.1:{broker.port}/{PREFIX}",
                     "--mqtt-heartbeat", "0.5"], tmp_path / "serve.log")
    try:
        sub.wait_for(is_status(b"online"))
        _, config = sub.wait_for(lambda t, p: t.startswith("homeassistant/sensor/") and t.endswith("/config"))
        config = json.loads(config)
        assert config["state_topic"] == f"{PREFIX}/state"
        assert config["availability_topic"] == f"{PREFIX}/status"
        assert config["value_template"] == "{{ value_json.label }}"
        assert config["unique_id"].startswith("noodle_")
        assert config["payload_available"] == "online" and config["payload_not_available"] == "offline"
        # The device by a name (the prefix's last level), noodle's version as its software, the model
        # it runs as its model, and where the entity comes from (`origin`, as Home Assistant defines it).
        device = config["device"]
        sha256 = hashlib.sha256(model.read_bytes()).hexdigest()
        assert device["identifiers"] and device["name"] == PREFIX.rsplit("/", 1)[-1]
        version = importlib.metadata.version("noodle-kit")
        assert device["sw_version"] == version == config["origin"]["sw_version"]
        assert device["model"] == f"int8.tflite (int8, sha256 {sha256[:12]})"
        assert config["origin"]["name"] == "noodle"

        # Each label change, as JSON: a state of each class, in turn.
        seen = []
        start = time.monotonic()
        while len(set(seen)) < 2:
            _, state = sub.wait_for(topic("state"), since=start)
            state = json.loads(state)
            assert state["label"] in labels and 0 <= state["score"] <= 1
            assert state["top"][0]["label"] == state["label"]
            seen.append(state["label"])
            start = next(at for at, t, p, _ in reversed(sub.messages) if t == f"{PREFIX}/state") + 1e-6
        states = [json.loads(p)["label"] for _, t, p, _ in sub.messages if t == f"{PREFIX}/state"]
        assert all(a != b for a, b in zip(states, states[1:], strict=False)), states  # changes only
        _, beat = sub.wait_for(topic("heartbeat"))
        beat = json.loads(beat)
        assert beat["frames"] > 0 and beat["state"] == "running" and beat["label"] in labels

        # The broker dies, with nothing kept, and comes back: serve publishes again by itself.
        broker.kill()
        time.sleep(1.5)
        broker.start()
        back = time.monotonic()
        sub.wait_for(is_status(b"online"), since=back)
        sub.wait_for(lambda t, p: t.startswith("homeassistant/sensor/"), since=back)
        sub.wait_for(topic("heartbeat"), since=back)
        sub.wait_for(topic("state"), since=back)
        assert "lost the MQTT broker 127.0.0.1" in served.text()
        assert len(serve_connects(broker)) >= 2  # the broker's own log: connected before and after

        # Killed without a goodbye: the broker sends the last will.
        died = time.monotonic()
        served.proc.send_signal(signal.SIGKILL)
        served.proc.wait(10)
        sub.wait_for(is_status(b"offline"), since=died, timeout=10)
    finally:
        log = served.stop()
        sub.close()
        broker.kill()
    assert "Traceback" not in log, log


def test_a_clean_stop_says_offline_and_a_missing_broker_is_retried(exported_run, tmp_path):
    """SIGTERM publishes "offline" itself; a broker that is not up yet at the start is waited for."""
    pytest.importorskip("paho.mqtt.client")
    port = free_port()
    served = Served([exported_run / "export" / "int8.tflite", "--mqtt", f"mqtt://127.0.0.1:{port}/{PREFIX}"],
                    tmp_path / "serve.log")
    try:
        time.sleep(1.5)  # serve answers HTTP while its broker is missing
        assert served.get("/healthz")[0] == 200
        # ... and says so, within seconds, naming the broker and the cause.
        said = wait_for_line(served, f"no MQTT broker at 127.0.0.1:{port}", serve_mqtt.WARN_AFTER + 5)
        assert "connection refused" in said, said
        broker = Broker(tmp_path, port)
        sub = Subscriber(port)
        sub.wait_for(is_status(b"online"), timeout=40)  # paho's pause grows to 2, 4, ... s
        stopped = time.monotonic()
        served.proc.terminate()
        served.proc.wait(10)
        sub.wait_for(is_status(b"offline"), since=stopped, timeout=10)
        sub.close()
        broker.kill()
    finally:
        log = served.stop()
    assert "Traceback" not in log, log


def wait_for_line(served: Served, text: str, timeout: float) -> str:
    """The first line of serve's log holding `text`, waited for up to `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hit = next((line for line in served.text().splitlines() if text in line), None)
        if hit is not None:
            return hit
        time.sleep(0.2)
    raise AssertionError(f"no line with {text!r} in {timeout} s: {served.text()}")


# --- the broker speaks up, one client id a process, Home Assistant's device -----------------------------

@pytest.mark.parametrize(("url", "said"), [
    ("mqtt://127.0.0.1/$SYS/noodle", "starts with $"),
    ("mqtt://127.0.0.1/$noodle/door", "starts with $"),
    ("mqtt://127.0.0.1/noodle/+/door", "wildcards"),
    ("mqtt://127.0.0.1/noodle/#", "wildcards"),
    ("mqtt://127.0.0.1/noodle//door", "empty level"),
    ("mqtt://127.0.0.1/noodle/do\0or", "control character or NUL"),
    ("mqtt://127.0.0.1/noodle/" + "d" * 300, "longer than 200 bytes"),
    ("mqtt://127.0.0.1:0/noodle/door", "port 0"),
    ("mqtt://127.0.0.1:99999/noodle/door", "port"),
    ("mqtt://:s3cret@127.0.0.1/noodle/door", "a password needs a user name"),
    ("http://127.0.0.1/noodle/door", "mqtt://HOST"),
])
def test_a_prefix_port_or_login_the_broker_would_drop_is_refused_in_one_line(url, said, tmp_path):
    """Refused at the start with the fix: not taken and then dropped by the broker, nor made 1883."""
    model = tmp_path / "model.tflite"
    model.write_bytes(b"not loaded: --mqtt is checked first")
    result = CliRunner().invoke(app, ["serve", str(model), "--mqtt", url])
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and said in lines[0] and "Traceback" not in result.output, result.output
    assert "give" in lines[0] or "leave it out" in lines[0], lines[0]  # the fix, in the line
    assert "s3cret" not in result.output  # a password in the URL is never printed


def test_url_credentials_are_taken_decoded_and_checked_against_the_options():
    pytest.importorskip("paho.mqtt.client")
    broker = serve_mqtt.parse_url("mqtt://noodle:p%40ss%3Aword@127.0.0.1:1884/noodle/door")
    assert (broker.user, broker.password) == ("noodle", "p@ss:word")
    assert (broker.host, broker.port, broker.prefix) == ("127.0.0.1", 1884, "noodle/door")
    assert "p@ss" not in repr(broker)
    # The options alone, and both ways when they agree; a mismatch is refused.
    for url in ("mqtt://h/x", "mqtt://u:pw@h/x"):
        broker = serve_mqtt.parse_url(url, "u", "pw")
        assert (broker.user, broker.password) == ("u", "pw")
    with pytest.raises(serve_mqtt.MqttError, match="differently; give it once"):
        serve_mqtt.parse_url("mqtt://u:pw@h/x", None, "other")
    with pytest.raises(serve_mqtt.MqttError, match="a password needs a user name"):
        serve_mqtt.parse_url("mqtt://h/x", None, "pw")
    # TLS stays: mqtts:// and its port.
    broker = serve_mqtt.parse_url("mqtts://h/x")
    assert (broker.tls, broker.host, broker.port) == (True, "h", 8883)


class FakeLive:
    state, fps = "running", 2.0


class FakeMetrics:
    counts: dict = {}


HOSTILE = 'x</script><img src=x onerror=alert(1)>\n\x1b[2J"&'
FAKE_MODEL = {"file": f"{HOSTILE}.tflite", "variant": "int8", "sha256": "0123456789ab" + "c" * 52}


def test_discovery_names_the_device_carries_noodles_version_and_origin_and_escapes(tmp_path):
    """A device name of its own, noodle's version as its software, `origin`; hostile text stays inert."""
    pytest.importorskip("paho.mqtt.client")
    broker = Broker(tmp_path, free_port())
    sub = Subscriber(broker.port)
    publisher = serve_mqtt.Publisher(f"mqtt://127.0.0.1:{broker.port}/{PREFIX}", name="Front door")
    try:
        publisher.start(FAKE_MODEL, FakeLive, FakeMetrics)
        _, config = sub.wait_for(lambda t, p: t.startswith("homeassistant/sensor/"))
        publisher.result({"label": HOSTILE, "score": 0.9, "top": [{"label": HOSTILE, "score": 0.9}]})
        _, state = sub.wait_for(topic("state"))
    finally:
        publisher.close()
        sub.close()
        broker.kill()
    for payload in (config, state):  # one ASCII line, no raw <, > or &, the text back intact
        assert payload.isascii() and b"\n" not in payload and not set(b"<>&") & set(payload), payload
    config = json.loads(config)
    version = importlib.metadata.version("noodle-kit")
    assert config["device"]["name"] == "Front door" and "noodle/" not in config["device"]["name"]
    assert config["device"]["sw_version"] == version
    assert config["device"]["model"] == f"{HOSTILE}.tflite (int8, sha256 0123456789ab)"
    origin = config["origin"]
    assert origin["name"] == "noodle" and origin["sw_version"] == version
    # A support URL where pyproject.toml declares one ([project.urls]); never an empty or bare string.
    assert set(origin) <= {"name", "sw_version", "support_url"}
    assert origin.get("support_url", "https://").startswith(("https://", "http://"))
    assert json.loads(state)["label"] == HOSTILE
    # Without --mqtt-name: the prefix's last level, which by default is the hostname.
    assert serve_mqtt.Publisher("mqtt://127.0.0.1/noodle/garage").name == "garage"
    assert serve_mqtt.Publisher("mqtt://127.0.0.1").name == socket.gethostname()
    with pytest.raises(serve_mqtt.MqttError, match="--mqtt-name"):
        serve_mqtt.Publisher("mqtt://127.0.0.1/x", name="bad\nname")


def silent_server() -> tuple[socket.socket, int]:
    """A TCP server that takes connections and never says a word: no CONNACK."""
    server = socket.create_server(("127.0.0.1", 0))
    held = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in iter(int, 1)], daemon=True).start()
    return server, server.getsockname()[1]


@pytest.mark.parametrize("broker", ["nothing listening", "never answers"])
def test_an_unreachable_broker_is_said_within_seconds_then_at_a_bounded_rate(broker, caplog, monkeypatch):
    """The warning comes WARN_AFTER s in, names the cause, and repeats at most once per WARN_EVERY
    (shortened here to 2 s so that a test sees several), while paho keeps retrying."""
    pytest.importorskip("paho.mqtt.client")
    monkeypatch.setattr(serve_mqtt, "WARN_EVERY", 2.0)
    if broker == "never answers":
        server, port = silent_server()
        cause = "sends no MQTT answer (CONNACK)"
    else:
        server, port = None, free_port()
        cause = "connection refused"
    caplog.set_level(logging.INFO, logger="noodle.mqtt")
    publisher = serve_mqtt.Publisher(f"mqtt://127.0.0.1:{port}/{PREFIX}")
    started = time.time()
    publisher.start(FAKE_MODEL, FakeLive, FakeMetrics)
    time.sleep(serve_mqtt.WARN_AFTER + 6.5)
    publisher.close()
    if server is not None:
        server.close()
    warned = [r for r in caplog.records if r.name == "noodle.mqtt" and r.levelno == logging.WARNING]
    assert warned, caplog.text
    first = warned[0].created - started
    assert first <= serve_mqtt.WARN_AFTER + 1.5, first
    assert all(cause in r.getMessage() and f"127.0.0.1:{port}" in r.getMessage() for r in warned), caplog.text
    # Keeps saying it, but never more often than once per WARN_EVERY.
    gaps = [b.created - a.created for a, b in zip(warned, warned[1:], strict=False)]
    assert len(warned) >= 3 and all(gap >= 2.0 - 0.1 for gap in gaps), gaps


def test_two_processes_on_the_default_prefix_both_stay_connected(exported_run, tmp_path):
    """Two serves left on noodle/<hostname> (two Pis both `raspberrypi`) each keep their one
    connection: with one shared client id the broker closed one at each connect of the other."""
    pytest.importorskip("paho.mqtt.client")
    broker = Broker(tmp_path, free_port())
    model = exported_run / "export" / "int8.tflite"
    url = f"mqtt://127.0.0.1:{broker.port}"  # no prefix: noodle/<hostname>
    first = Served([model, "--mqtt", url], tmp_path / "first.log")
    second = Served([model, "--mqtt", url], tmp_path / "second.log")
    try:
        deadline = time.monotonic() + WAIT
        while len(serve_connects(broker)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(6)  # paho reconnects after 1 s: a knock-off loop would show several times here
        connects = serve_connects(broker)
    finally:
        logs = first.stop() + second.stop()
        broker.kill()
    assert len(connects) == 2 and len(set(connects)) == 2, (connects, broker.log())
    assert "already connected, closing old connection" not in broker.log(), broker.log()
    assert "lost the MQTT broker" not in logs and "Traceback" not in logs, logs


def test_credentials_in_the_url_log_in_and_wrong_ones_are_said(exported_run, tmp_path):
    """mqtt://USER:PASSWORD@HOST against a broker with a password file and no anonymous clients."""
    pytest.importorskip("paho.mqtt.client")
    broker = Broker(tmp_path, free_port(), users={"door": "s3cret:p@ss", "watcher": "w"})
    sub = Subscriber(broker.port, "watcher", "w")
    model = exported_run / "export" / "int8.tflite"
    good = Served([model, "--mqtt", f"mqtt://door:s3cret%3Ap%40ss@127.0.0.1:{broker.port}/{PREFIX}"],
                  tmp_path / "good.log")
    bad = Served([model, "--mqtt", f"mqtt://door:wrong@127.0.0.1:{broker.port}/noodle/other"],
                 tmp_path / "bad.log")
    try:
        sub.wait_for(is_status(b"online"))
        said = wait_for_line(bad, "no MQTT broker at", serve_mqtt.WARN_AFTER + 5)
        assert "refuses the connection (Not authorized)" in said and "check the user and password" in said
    finally:
        logs = good.stop() + bad.stop()
        sub.close()
        broker.kill()
    assert "s3cret" not in logs and "wrong" not in logs and "Traceback" not in logs, logs


def test_a_connection_knocked_off_again_and_again_is_said_a_bounded_number_of_times(tmp_path, caplog):
    """Lost 6 times in a few seconds (another client taking its id): at most LOST_BURST lines a minute."""
    mqtt = pytest.importorskip("paho.mqtt.client")
    broker = Broker(tmp_path, free_port())
    caplog.set_level(logging.INFO, logger="noodle.mqtt")
    publisher = serve_mqtt.Publisher(f"mqtt://127.0.0.1:{broker.port}/{PREFIX}")
    publisher.start(FAKE_MODEL, FakeLive, FakeMetrics)

    def until(what):
        deadline = time.monotonic() + WAIT
        while not what() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert what()

    try:
        for _ in range(6):
            until(lambda: publisher.up)
            kicker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=publisher.client_id)
            kicker.connect("127.0.0.1", broker.port)
            kicker.loop(2)  # its CONNACK: the broker has closed the publisher's connection
            kicker.disconnect()
            until(lambda: not publisher.up)
        until(lambda: publisher.up)
    finally:
        publisher.close()
        broker.kill()
    assert broker.log().count("already connected, closing old connection") >= 6, broker.log()
    lost = [r.getMessage() for r in caplog.records if "lost the MQTT broker" in r.getMessage()]
    assert len(lost) == serve_mqtt.LOST_BURST, caplog.text


def test_origins_support_url_comes_from_the_packages_project_urls(monkeypatch):
    """pyproject.toml's [project.urls] reach `origin.support_url`; without them it is left out."""
    import email.message

    meta = email.message.Message()
    meta["Version"] = "9.8.7"
    meta["Project-URL"] = "Source, https://example.org/noodle"
    monkeypatch.setattr(importlib.metadata, "metadata", lambda name: meta)
    assert serve_mqtt.noodle_package() == ("9.8.7", "https://example.org/noodle")
    del meta["Project-URL"]
    meta["Project-URL"] = "Bad, javascript:alert(1)"
    assert serve_mqtt.noodle_package() == ("9.8.7", None)


def test_a_bundle_without_the_package_reports_the_version_written_beside_edge(tmp_path):
    """On the Pi edge/ is copied without noodle-kit's metadata: sw_version comes from edge/VERSION."""
    import sys

    edge = tmp_path / "edge"
    edge.mkdir()
    for source in Path(serve_mqtt.__file__).parent.glob("*.py"):
        (edge / source.name).write_bytes(source.read_bytes())
    ask = [sys.executable, "-S", "-c", "from edge.serve_mqtt import noodle_package; print(noodle_package())"]
    # -S: no site-packages, so no installed noodle-kit, as on the Pi.
    def asked() -> str:
        return subprocess.run(ask, cwd=tmp_path, capture_output=True, text=True).stdout.strip()

    assert asked() == "(None, None)"
    (edge / serve_mqtt.VERSION_FILE).write_text("9.9.9\n")
    assert asked() == "('9.9.9', None)"
