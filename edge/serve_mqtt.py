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

It speaks up: a broker it cannot reach, or one that takes the connection and never answers,
is a warning on the "noodle.mqtt" logger within WARN_AFTER seconds, then again at most every
WARN_EVERY seconds while it lasts, naming the cause. Each process has its own client id, so two
devices on one prefix (two Pis left as `raspberrypi`) do not knock each other off the broker.
A prefix the broker would drop ($SYS/..., wildcards, empty levels) is refused before starting.

paho-mqtt (the `serve` extra; the Pi bundle carries it), imported only with --mqtt.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import secrets
import socket
import ssl
import sys
import threading
import time
from collections import deque
from pathlib import Path
from urllib.parse import unquote, urlsplit

from edge.errors import NoodleError
from edge.escape import escape_name, shown
from edge.jsonout import to_json

log = logging.getLogger("noodle.mqtt")

# Home Assistant's default discovery prefix.
DISCOVERY = "homeassistant"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
# Pauses between reconnect attempts grow from the first to the second, in seconds.
RECONNECT_SECONDS = (1, 30)
# Seconds any one TCP (and TLS) connect may take before it counts as failed.
CONNECT_TIMEOUT = 5.0
# Seconds between pings the broker expects; it sends the last will after 1.5 times this of silence.
# A broker that takes the connection but never answers is also dropped and retried after this.
KEEPALIVE = 30
# Seconds without a broker before the first warning: "within seconds", yet no line for a broker
# that answers in the usual tens of milliseconds, or restarts in a second or two.
WARN_AFTER = 5.0
# Then at most one such line this often while it lasts: journald on a Pi keeps 10,000 lines per
# 30 s, so a flood would push out the lines that matter.
WARN_EVERY = 60.0
# "lost the broker" lines: at most this many per WARN_EVERY; the next says how many were held back.
LOST_BURST = 3
# Seconds `close` waits for "offline" to reach the broker before it disconnects anyway.
GOODBYE_SECONDS = 2.0
# A topic prefix's longest, in UTF-8 bytes: topics and Home Assistant's ids are made from it.
PREFIX_MAX = 200
# The longest device name shown in Home Assistant (--mqtt-name).
NAME_MAX = 64
# The distribution whose version is noodle's (pyproject.toml's [project] name); a bundle,
# which copies edge/ without that package, carries the version in VERSION_FILE beside it.
DISTRIBUTION = "noodle-kit"
VERSION_FILE = "VERSION"
INSTALL_FIX = "pip install 'paho-mqtt>=2,<3' (the Pi bundle's install.sh installs it)"
EXAMPLE = "mqtt://homeassistant.local:1883/noodle/door"
PREFIX_FIX = f"give one of plain levels, e.g. {EXAMPLE}"


class MqttError(NoodleError):
    pass


@dataclasses.dataclass(frozen=True)
class Broker:
    """Where to publish, from --mqtt's URL."""
    tls: bool
    host: str
    port: int
    prefix: str
    user: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)


def redacted(url: str) -> str:
    """The URL as printed: a password in it becomes ***."""
    return re.sub(r"^([^/]*//[^/@:]*):[^/@]*@", r"\1:***@", url)


def prefix_problem(prefix: str) -> str | None:
    """Why a broker would drop, or a subscriber miss, what is published under `prefix`; None if fine."""
    if prefix.startswith("$"):
        return "starts with $, which the broker keeps for itself ($SYS/...): it drops what we publish there"
    if any(c in prefix for c in "+#"):
        return "holds + or #, wildcards, which no message may be published to"
    if not prefix.isprintable():
        return "holds a control character or NUL"
    if "" in prefix.split("/"):
        return "has an empty level (// or a / at an end)"
    if len(prefix.encode("utf-8", "surrogatepass")) > PREFIX_MAX:
        return f"is longer than {PREFIX_MAX} bytes"
    return None


def parse_url(url: str, user: str | None = None, password: str | None = None) -> Broker:
    """--mqtt mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT]/PREFIX, with --mqtt-user and --mqtt-password.

    No prefix: noodle/<hostname>. A user or password given both ways must agree."""
    said = shown(redacted(url), None)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port out of 0-65535 or not a number, a broken [IPv6] address
        raise MqttError(f"--mqtt {said}: the port is not a number from 1 to 65535, or the host is "
                        f"malformed; give them as in {EXAMPLE}") from None
    # urlsplit reads "#" as the start of a fragment and "?" as a query: in a topic they are not.
    if parts.fragment or parts.query or url.endswith(("#", "?")):
        raise MqttError(f"--mqtt {said}: the topic prefix may not hold + or # (wildcards) or ?; "
                        f"{PREFIX_FIX}")
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise MqttError(f"--mqtt {said}: give mqtt://HOST[:PORT]/TOPIC-PREFIX (mqtts:// for TLS), "
                        f"e.g. {EXAMPLE}")
    if port == 0:
        raise MqttError(f"--mqtt {said}: port 0 is no port a broker listens on; give its port "
                        f"(1883 for mqtt://, 8883 for mqtts://) or leave it out")
    prefix = parts.path.strip("/") or f"noodle/{socket.gethostname()}"
    problem = prefix_problem(prefix)
    if problem is not None:
        raise MqttError(f"--mqtt {said}: the topic prefix {shown(prefix)} {problem}; {PREFIX_FIX}")
    # The URL's user and password are %-encoded (p%40ss for p@ss), as in any URL.
    in_url = [None if v is None else unquote(v) for v in (parts.username, parts.password)]
    for name, given, option in zip(("user", "password"), in_url, (user, password), strict=True):
        if given is not None and option is not None and given != option:
            raise MqttError(f"--mqtt {said}: the {name} is in the URL and in --mqtt-{name} (or "
                            f"$NOODLE_MQTT_PASSWORD), differently; give it once")
    user = in_url[0] or user
    password = in_url[1] if in_url[1] is not None else password
    if password is not None and not user:
        raise MqttError(f"--mqtt {said}: a password needs a user name (MQTT sends none without one); "
                        "give mqtt://USER:PASSWORD@HOST/... or --mqtt-user")
    port = port if port is not None else DEFAULT_PORTS[parts.scheme]
    return Broker(parts.scheme == "mqtts", parts.hostname, port, prefix, user or None, password)


def noodle_package() -> tuple[str | None, str | None]:
    """noodle's version and support URL (pyproject.toml's [project.urls], if any) from the installed
    package's metadata; on the Pi, where edge/ is copied without it, the version `noodle bundle`
    wrote beside it (edge/VERSION), else (None, None)."""
    import importlib.metadata

    try:
        meta = importlib.metadata.metadata(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        try:
            return (Path(__file__).with_name(VERSION_FILE).read_text().strip() or None), None
        except (OSError, UnicodeDecodeError):
            return None, None
    urls = [entry.split(",", 1)[-1].strip() for entry in meta.get_all("Project-URL") or []]
    url = next((u for u in [*urls, meta.get("Home-page")] if u and u.startswith(("https://", "http://"))),
               None)
    return meta.get("Version"), url


def connect_problem(exc: BaseException | None) -> str:
    """Why a TCP (or TLS) connect failed, in words."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"no answer to the connection in {CONNECT_TIMEOUT:g} s (host down, or a firewall)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: nothing listens on that port"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc}); check mqtts:// and --mqtt-ca"
    if isinstance(exc, OSError):
        return f"cannot connect ({exc.strerror or exc})"
    return "cannot connect"


class Publisher:
    """One MQTT connection for `serve`: status, discovery, label changes and the heartbeat."""

    def __init__(self, url: str, user: str | None = None, password: str | None = None, ca=None,
                 heartbeat: float = 30.0, name: str | None = None):
        broker = parse_url(url, user, password)
        self.tls, self.host, self.port, self.prefix = broker.tls, broker.host, broker.port, broker.prefix
        if name is not None and not (name.strip() and name.isprintable() and len(name) <= NAME_MAX):
            raise MqttError(f"--mqtt-name {shown(name)}: give a name of 1 to {NAME_MAX} printable "
                            "characters, e.g. 'Front door'")
        # Home Assistant's device name: by default the prefix's last level (noodle/<hostname>: the hostname).
        self.name = name or self.prefix.rsplit("/", 1)[-1]
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise MqttError(f"--mqtt needs paho-mqtt, which is not installed; {INSTALL_FIX}") from None
        if ca is not None and not self.tls:
            raise MqttError("--mqtt-ca is for TLS: write the broker as mqtts://")
        self.heartbeat = heartbeat
        # Home Assistant's ids take letters, digits, _ and - only; the prefix is the device's identity.
        self.id = "noodle_" + re.sub(r"[^A-Za-z0-9_-]", "_", self.prefix)
        self.topics = {t: f"{self.prefix}/{t}" for t in ("status", "state", "heartbeat")}
        # The client id is the process's, never the prefix's: a broker closes the older connection
        # of an id at each connect of the newer, so two processes sharing one knock each other off.
        host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:24]
        self.client_id = f"noodle-{host}-{os.getpid()}-{secrets.token_hex(3)}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=mqtt.MQTTv311)
        self.client.connect_timeout = CONNECT_TIMEOUT
        self.client.will_set(self.topics["status"], "offline", qos=1, retain=True)
        if broker.user is not None:
            self.client.username_pw_set(broker.user, broker.password)
        if self.tls:
            try:
                self.client.tls_set(ca_certs=str(ca) if ca is not None else None)
            except (OSError, ValueError) as exc:
                raise MqttError(f"--mqtt-ca {escape_name(str(ca))}: cannot load it "
                                f"({getattr(exc, 'strerror', None) or exc}); give the broker's CA "
                                "certificate as a PEM file") from None
        self.client.reconnect_delay_set(*RECONNECT_SECONDS)
        self.client.on_pre_connect = self._trying
        self.client.on_connect_fail = self._connect_failed
        self.client.on_socket_open = self._socket_opened
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.last: dict | None = None  # the newest result, published at each change and each connect
        self.label: str | None = None
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.up = False
        # While there is no broker: since when, why (the latest cause), and attempts since the last warning.
        self.down_since: float | None = None
        self.why = "no answer yet"
        self.attempts = 0
        self.warned_at: float | None = None
        self.lost_lines: deque[float] = deque()
        self.lost_held = 0

    def start(self, model: dict, live, metrics) -> None:
        """Connect in the background (a broker that is not there yet is retried) and start the heartbeat."""
        self.model, self.live, self.metrics = model, live, metrics
        self.started = self.down_since = time.monotonic()
        self.client.connect_async(self.host, self.port, keepalive=KEEPALIVE)
        self.client.loop_start()
        threading.Thread(target=self._beat, name="mqtt-heartbeat", daemon=True).start()
        threading.Thread(target=self._watch, name="mqtt-watch", daemon=True).start()
        log.info("publishing to %s://%s:%s under %s/ as client %s (Home Assistant discovery "
                 "%s/sensor/%s/config)", "mqtts" if self.tls else "mqtt", self.host, self.port,
                 shown(self.prefix, None), self.client_id, DISCOVERY, self.id)

    def discovery(self) -> dict:
        """Home Assistant's discovery payload: the device by name and noodle's version, the model it runs."""
        m, (version, url) = self.model, noodle_package()
        device = {"identifiers": [self.id], "name": self.name, "manufacturer": "noodle",
                  "model": f"{m['file']} ({m['variant']}, sha256 {m['sha256'][:12]})"}
        # Which program made this entity, as Home Assistant's MQTT discovery defines `origin`.
        origin = {"name": "noodle"}
        if version is not None:
            device["sw_version"] = origin["sw_version"] = version
        if url is not None:
            origin["support_url"] = url
        return {
            "name": "label", "unique_id": f"{self.id}_label", "icon": "mdi:eye",
            "state_topic": self.topics["state"], "value_template": "{{ value_json.label }}",
            "json_attributes_topic": self.topics["state"],
            "availability_topic": self.topics["status"], "payload_available": "online",
            "payload_not_available": "offline", "device": device, "origin": origin,
        }

    # --- paho's callbacks, on its network thread -------------------------------------------------

    def _trying(self, client, userdata) -> None:
        self.attempts += 1

    def _connect_failed(self, client, userdata) -> None:
        # paho calls this inside its `except OSError`, which is the cause; it passes none itself.
        self.why = connect_problem(sys.exc_info()[1])

    def _socket_opened(self, client, userdata, sock) -> None:
        self.why = ("it takes the connection but sends no MQTT answer (CONNACK); is that port an MQTT "
                    "broker's, and mqtt:// or mqtts:// as the broker expects?")

    def _connected(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            # paho's ReasonCode, compared by name as paho advises (MQTT 3.1.1's numbers differ).
            hint = ("; check the user and password (mqtt://USER:PASSWORD@HOST, or --mqtt-user and "
                    "--mqtt-password)" if str(reason) in ("Bad user name or password", "Not authorized")
                    else "")
            self.why = f"it refuses the connection ({reason}){hint}"
            return
        self.down_since = None
        log.info("connected to %s:%s as %s", self.host, self.port, self.client_id)
        client.publish(self.topics["status"], "online", qos=1, retain=True)
        client.publish(f"{DISCOVERY}/sensor/{self.id}/config", to_json(self.discovery()), qos=1, retain=True)
        # Up and the last state published under one lock with result(): a result that lands
        # meanwhile is published once, by whichever of the two comes second.
        with self.lock:
            self.up = True
            if self.last is not None:
                client.publish(self.topics["state"], to_json(self.last), qos=1, retain=True)

    def _disconnected(self, client, userdata, flags, reason, properties) -> None:
        if self.stop.is_set():
            self.up = False
            return
        if self.up:
            now = time.monotonic()
            self.down_since, self.why, self.attempts = now, f"lost it ({reason})", 0
            while self.lost_lines and now - self.lost_lines[0] >= WARN_EVERY:
                self.lost_lines.popleft()
            if len(self.lost_lines) < LOST_BURST:
                held, self.lost_held = self.lost_held, 0
                self.lost_lines.append(now)
                log.warning("lost the MQTT broker %s:%s (%s); reconnecting every %s-%s s%s", self.host,
                            self.port, reason, *RECONNECT_SECONDS,
                            f" ({held} more like this held back)" if held else "")
            else:
                self.lost_held += 1
        self.up = False

    # --- our own threads ----------------------------------------------------------------------------

    def _watch(self) -> None:
        """While there is no broker: a warning WARN_AFTER s in, then at most one each WARN_EVERY s."""
        while not self.stop.wait(0.5):
            down = self.down_since
            now = time.monotonic()
            if down is None or self.up or now - down < WARN_AFTER:
                continue
            if self.warned_at is not None and now - self.warned_at < WARN_EVERY:
                continue
            self.warned_at, attempts, self.attempts = now, self.attempts, 0
            log.warning("no MQTT broker at %s:%s for %.0f s: %s (%d attempt%s since the last such line); "
                        "retrying every %s-%s s", self.host, self.port, now - down, self.why, attempts,
                        "" if attempts == 1 else "s", *RECONNECT_SECONDS)

    def result(self, result: dict) -> None:
        """A camera result: published when its label differs from the last one's."""
        with self.lock:
            self.last = {**result, "at": time.time()}
            changed = result["label"] != self.label
            self.label = result["label"]
            if changed and self.up:  # paho's publish only queues: cheap under the lock
                self.client.publish(self.topics["state"], to_json(self.last), qos=1, retain=True)

    def model_changed(self, model: dict) -> None:
        """serve swapped its model (a teach, a rollback): discovery again with the new model, and the
        next result published whatever its label."""
        with self.lock:
            self.model, self.label = model, None
        if self.up:
            self.client.publish(f"{DISCOVERY}/sensor/{self.id}/config", to_json(self.discovery()), qos=1,
                                retain=True)

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
