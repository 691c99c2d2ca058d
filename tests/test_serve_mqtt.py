"""`noodle-edge serve --mqtt` against a real broker: Debian's mosquitto, started here (issue 22).

The broker runs on a free loopback port with no persistence, so after it is killed and
started again nothing retained survives: whatever a subscriber sees then, serve published
again by itself. `make test` installs mosquitto; outside CI a machine without it skips.
"""
from __future__ import annotations

import getpass
import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from test_serve import Served, free_port, installed, make_clip

PREFIX = "noodle/test-door"
# Seconds any one expected message may take to arrive.
WAIT = 20


class Broker:
    """mosquitto on 127.0.0.1:`port`, anonymous, nothing kept on disk."""

    def __init__(self, folder: Path, port: int):
        self.port, self.folder = port, folder
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
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


class Subscriber:
    """Every message under the prefix and the discovery topic, with when it came."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[float, str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="noodle-test-subscriber")
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
        assert config["device"]["identifiers"] and len(config["device"]["sw_version"]) == 12

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
        assert "lost 127.0.0.1" in served.text() and served.text().count("mqtt: connected") >= 2

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
