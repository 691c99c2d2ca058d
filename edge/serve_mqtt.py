"""`noodle-edge serve --mqtt mqtt://host:1883/topic-prefix`: the label into home automation.

Under the prefix, as JSON (labels are only ever in payloads, never in topics):

    PREFIX/status      "online", or "offline" (retained; "offline" is also the last will,
                       which the broker sends when the process dies without saying goodbye)
    PREFIX/state       the camera's result at each change of label (retained)
    PREFIX/heartbeat   every --mqtt-heartbeat seconds: uptime, frames, FPS and the label
    homeassistant/sensor/<id>/config   Home Assistant's discovery (retained): the label as a
                       sensor, available while the status is "online", with no configuration

paho-mqtt keeps the connection: a broker that goes away is reconnected to with a growing
pause (RECONNECT_SECONDS), and on every connect the status, the discovery and the last
state are published again, so a broker that restarted without its retained messages gets
them back. While the broker is away, only the newest label matters: it is published on
reconnect, not a queue of stale ones.

paho-mqtt (the `serve` extra; the Pi bundle carries it), imported only with --mqtt.
"""
from __future__ import annotations

import re
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

from edge.errors import NoodleError
from edge.escape import escape_name, shown
from edge.serve import to_json

# Home Assistant's default discovery prefix.
DISCOVERY = "homeassistant"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
# Pauses between reconnect attempts grow from the first to the second, in seconds.
RECONNECT_SECONDS = (1, 30)
# Seconds between pings the broker expects; it sends the last will after 1.5 times this of silence.
KEEPALIVE = 30
# Seconds `close` waits for "offline" to reach the broker before it disconnects anyway.
GOODBYE_SECONDS = 2.0
INSTALL_FIX = "pip install 'paho-mqtt>=2,<3' (the Pi bundle's install.sh installs it)"


class MqttError(NoodleError):
    pass


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_url(url: str) -> tuple[bool, str, int, str]:
    """--mqtt mqtt[s]://host[:port]/prefix -> (tls, host, port, prefix); no prefix: noodle/<hostname>."""
    parts = urlsplit(url)
    # urlsplit reads "#" as the start of a fragment and "?" as a query: in a topic they are not.
    if parts.fragment or parts.query or url.endswith(("#", "?")):
        raise MqttError(f"--mqtt {shown(url)}: the topic prefix may not hold + or # (wildcards) or ?; "
                        "e.g. mqtt://homeassistant.local:1883/noodle/door")
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise MqttError(f"--mqtt {shown(url)}: give mqtt://HOST[:PORT]/TOPIC-PREFIX (mqtts:// for TLS), "
                        "e.g. mqtt://homeassistant.local:1883/noodle/door")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise MqttError(f"--mqtt {shown(url)}: the port is not a number from 1 to 65535") from None
    prefix = parts.path.strip("/") or f"noodle/{socket.gethostname()}"
    if any(c in prefix for c in "+#\0") or "//" in prefix or not prefix.isprintable() or len(prefix) > 200:
        raise MqttError(f"--mqtt {shown(url)}: the topic prefix may not hold + or # (wildcards), empty "
                        "levels or control characters; e.g. noodle/door")
    return parts.scheme == "mqtts", parts.hostname, port, prefix


class Publisher:
    """One MQTT connection for `serve`: status, discovery, label changes and the heartbeat."""

    def __init__(self, url: str, user: str | None = None, password: str | None = None, ca=None,
                 heartbeat: float = 30.0):
        self.tls, self.host, self.port, self.prefix = parse_url(url)
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise MqttError(f"--mqtt needs paho-mqtt, which is not installed; {INSTALL_FIX}") from None
        if ca is not None and not self.tls:
            raise MqttError("--mqtt-ca is for TLS: write the broker as mqtts://")
        self.heartbeat = heartbeat
        # Home Assistant's ids take letters, digits, _ and - only.
        self.id = "noodle_" + re.sub(r"[^A-Za-z0-9_-]", "_", self.prefix)
        self.topics = {name: f"{self.prefix}/{name}" for name in ("status", "state", "heartbeat")}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.id[:64],
                                  protocol=mqtt.MQTTv311)
        self.client.will_set(self.topics["status"], "offline", qos=1, retain=True)
        if user is not None:
            self.client.username_pw_set(user, password)
        if self.tls:
            try:
                self.client.tls_set(ca_certs=str(ca) if ca is not None else None)
            except (OSError, ValueError) as exc:
                raise MqttError(f"--mqtt-ca {escape_name(str(ca))}: cannot load it "
                                f"({getattr(exc, 'strerror', None) or exc}); give the broker's CA "
                                "certificate as a PEM file") from None
        self.client.reconnect_delay_set(*RECONNECT_SECONDS)
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.last: dict | None = None  # the newest result, published at each change and each connect
        self.label: str | None = None
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.up = False

    def start(self, model: dict, live, metrics) -> None:
        """Connect in the background (a broker that is not there yet is retried) and start the heartbeat."""
        self.model, self.live, self.metrics = model, live, metrics
        self.started = time.monotonic()
        self.client.connect_async(self.host, self.port, keepalive=KEEPALIVE)
        self.client.loop_start()
        threading.Thread(target=self._beat, name="mqtt-heartbeat", daemon=True).start()
        log(f"mqtt: publishing to {'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port} under "
            f"{shown(self.prefix, None)}/ (Home Assistant discovery {DISCOVERY}/sensor/{self.id}/config)")

    def discovery(self) -> dict:
        m = self.model
        return {
            "name": "label", "unique_id": f"{self.id}_label", "icon": "mdi:eye",
            "state_topic": self.topics["state"], "value_template": "{{ value_json.label }}",
            "json_attributes_topic": self.topics["state"],
            "availability_topic": self.topics["status"], "payload_available": "online",
            "payload_not_available": "offline",
            "device": {"identifiers": [self.id], "name": f"noodle {self.prefix}", "manufacturer": "noodle",
                       "model": f"{m['file']} ({m['variant']})", "sw_version": m["sha256"][:12]},
        }

    def _connected(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            log(f"warning: mqtt: {self.host}:{self.port} refused the connection ({reason}); "
                "check --mqtt-user and --mqtt-password; retrying")
            return
        self.up = True
        log(f"mqtt: connected to {self.host}:{self.port}")
        client.publish(self.topics["status"], "online", qos=1, retain=True)
        client.publish(f"{DISCOVERY}/sensor/{self.id}/config", to_json(self.discovery()), qos=1, retain=True)
        with self.lock:
            last = self.last
        if last is not None:
            client.publish(self.topics["state"], to_json(last), qos=1, retain=True)

    def _disconnected(self, client, userdata, flags, reason, properties) -> None:
        if self.up and not self.stop.is_set():
            log(f"warning: mqtt: lost {self.host}:{self.port} ({reason}); reconnecting "
                f"every {RECONNECT_SECONDS[0]}-{RECONNECT_SECONDS[1]} s")
        self.up = False

    def result(self, result: dict) -> None:
        """A camera result: published when its label differs from the last one's."""
        with self.lock:
            self.last = {**result, "at": time.time()}
            changed = result["label"] != self.label
            self.label = result["label"]
            last = self.last
        if changed and self.up:
            self.client.publish(self.topics["state"], to_json(last), qos=1, retain=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.heartbeat):
            if not self.up:
                continue
            counts = self.metrics.counts
            beat = {"at": time.time(), "uptime_s": round(time.monotonic() - self.started, 1),
                    "state": self.live.state, "fps": round(self.live.fps, 2),
                    "frames": sum(v for (n, _), v in list(counts.items()) if n == "noodle_frames_total"),
                    "label": self.label}
            self.client.publish(self.topics["heartbeat"], to_json(beat), qos=0)

    def close(self) -> None:
        """Say "offline" (a clean stop sends no last will), then disconnect."""
        self.stop.set()
        if self.up:
            info = self.client.publish(self.topics["status"], "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(GOODBYE_SECONDS)
            except (RuntimeError, ValueError):
                pass  # the broker went away meanwhile; its last will says the same
        self.client.disconnect()
        self.client.loop_stop()
