"""`noodle-edge serve`: the HTTP API, the live page's routes and the safe defaults.

Every server here is the real command in a process of its own on a free loopback port,
fed the test model (conftest's exported_run) and, for the camera routes, a video made
from the sample's test photos. Bad requests go in over raw sockets where a client library
would refuse to send them; each must get a 4xx with a one-line JSON error, and no server
log may hold a traceback.
"""
from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tests.ports import free_ports

ROOT = Path(__file__).resolve().parent.parent
# Seconds a server may take to answer /healthz after it is started (loading the runtime).
START_SECONDS = 60
TOKEN = "s3cret-token-of-some-length"


def installed(package: str, *names: str) -> str:
    """The path of a program a test starts (mosquitto, chromium), from Debian's `package`.
    `make test` installs them, so under CI a missing one fails; elsewhere the test skips."""
    for name in names or (package,):
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
        if path:
            return path
    why = f"{package} is not installed; `make test` installs it (apt-get install {package})"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def free_port() -> int:
    return free_ports(1)[0]


class Served:
    """`python -m edge serve ARGS` on a free loopback port, its stderr kept in a log file."""

    def __init__(self, args: list, log: Path, env: dict | None = None, wait: bool = True):
        self.port, self.log = free_port(), log
        self.stderr = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "edge", "serve", *map(str, args),
                                      "--port", str(self.port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr, env={**os.environ, **(env or {})})
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.text()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"serve did not answer in {START_SECONDS} s: {self.text()}")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 30) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def get(self, path: str, **headers) -> tuple[int, dict, bytes]:
        return self.request("GET", path, headers=headers)

    def json(self, method: str, path: str, body: bytes | None = None, **headers) -> tuple[int, dict]:
        status, head, data = self.request(method, path, body, headers)
        assert head["Content-Type"] == "application/json", (status, head, data[:200])
        return status, json.loads(data)

    def raw(self, data: bytes, read_for: float = 5.0) -> bytes:
        """Bytes sent as they are on a new connection; what comes back until it closes, or until
        a whole response with a Content-Length has come (a kept-alive connection stays open)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=read_for) as s:
            s.sendall(data)
            got = b""
            with _suppress_timeout():
                while chunk := s.recv(65536):
                    got += chunk
                    head, sep, body = got.partition(b"\r\n\r\n")
                    length = [int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                              if line.startswith(b"content-length:")]
                    if sep and length and len(body) >= length[0] and b" 100 " not in head[:13]:
                        break
            return got

    def text(self) -> str:
        self.stderr.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serving(args: list, log: Path, **kwargs):
    """Served(ARGS) for the block (a fixture's or a test's), stopped after; its log must hold no traceback."""
    served = Served(args, log, **kwargs)
    try:
        yield served
    finally:
        text = served.stop()
    assert "Traceback" not in text, text


class _suppress_timeout:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, (TimeoutError, ConnectionError))


def response_json(raw: bytes) -> tuple[int, dict]:
    """(status, JSON body) of one raw HTTP response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert b"Content-Type: application/json" in head, raw[:300]
    return status, json.loads(body)


def one_line_error(status: int, payload: dict) -> str:
    assert 400 <= status < 500, (status, payload)
    assert set(payload) == {"error"} and "\n" not in payload["error"] and "Traceback" not in payload["error"]
    return payload["error"]


def png_bomb(side: int = 40_000) -> bytes:
    """A tiny PNG whose header claims side x side pixels."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 16  # the signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", side, side)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


def make_clip(path: Path, photos: list[Path], fps: float = 10.0, side: int = 160) -> Path:
    """An MJPG .avi, one photo a frame, each squashed to side x side."""
    cv2 = pytest.importorskip("cv2")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (side, side))
    assert writer.isOpened()
    for photo in photos:
        writer.write(cv2.resize(cv2.imread(str(photo)), (side, side)))
    writer.release()
    return path


# --- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip(photos, tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "photos.avi", photos[:30])


@pytest.fixture(scope="module")
def server(model, clip, tmp_path_factory):
    """The camera routes and the API, rate limit high enough for this module's requests."""
    with serving([model, "--source", clip, "--loop", "--rate", 500, "--max-body-mb", 1],
                 tmp_path_factory.mktemp("serve") / "serve.log") as served:
        yield served


@pytest.fixture(scope="module")
def api_only(model, tmp_path_factory):
    """Without --source, with a token, a low rate and one stream."""
    with serving([model, "--token", TOKEN, "--rate", 2],
                 tmp_path_factory.mktemp("api") / "serve.log") as served:
        yield served


def auth(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


# --- the API -----------------------------------------------------------------------------

def test_classify_raw_bytes_and_a_multipart_file_field_answer_the_same(server, model, photos):
    body = photos[0].read_bytes()
    status, raw = server.json("POST", "/v1/classify", body, **{"Content-Type": "image/jpeg"})
    assert status == 200
    labels = json.loads((model.parent / "manifest.json").read_text())["labels"]
    assert raw["label"] in labels and raw["label"] == raw["top"][0]["label"]
    assert [t["label"] for t in raw["top"]] == sorted(labels, key=lambda n: -next(
        t["score"] for t in raw["top"] if t["label"] == n))
    assert abs(sum(t["score"] for t in raw["top"]) - 1) < 0.02 and raw["invoke_ms"] > 0
    assert raw["sha256"] == server.json("GET", "/v1/model")[1]["sha256"] and raw["variant"] == "int8"

    boundary = "----noodle-test"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()
    status, form_result = server.json("POST", "/v1/classify", form,
                                      **{"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200 and form_result["top"] == raw["top"]


def test_model_latest_healthz_and_metrics(server, model):
    status, info = server.json("GET", "/v1/model")
    manifest = json.loads((model.parent / "manifest.json").read_text())
    assert status == 200 and info["labels"] == manifest["labels"] and info["variant"] == "int8"
    assert info["sha256"] == manifest["models"]["int8"]["sha256"]
    assert info["input"] == {"height": 56, "width": 56, "channels": 3, "dtype": "uint8"}
    assert info["quantization"]["output"]["dtype"] == "uint8"
    assert info["metadata"]["labels"] == manifest["labels"]

    deadline = time.monotonic() + 20
    while (latest := server.json("GET", "/v1/latest")[1])["frame"] < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert latest["state"] == "running" and latest["label"] in manifest["labels"] and latest["fps"] > 0
    assert server.json("GET", "/healthz")[1]["status"] == "ok"

    status, head, text = server.get("/metrics")
    assert status == 200 and head["Content-Type"].startswith("text/plain")
    metrics = dict(line.rsplit(" ", 1) for line in text.decode().splitlines() if not line.startswith("#"))
    assert int(metrics["noodle_frames_total"]) >= 3
    assert int(metrics['noodle_classified_total{source="camera"}']) >= 3
    assert 'noodle_requests_total{code="200",route="/v1/model"}' in metrics
    assert 'noodle_request_duration_seconds_bucket{route="/v1/model",le="+Inf"}' in metrics
    assert "noodle_camera_reconnects_total" in metrics


def test_the_page_stream_and_events(server):
    status, head, page = server.get("/")
    assert status == 200 and head["Content-Type"].startswith("text/html")
    assert b'id="label"' in page and b"://" not in page.replace(b"http://www.w3.org", b"")  # no CDN
    assert "script-src 'sha256-" in head["Content-Security-Policy"]

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while data.count(b"--frame") < 2:
            data += s.recv(65536)
    assert b"multipart/x-mixed-replace; boundary=frame" in data and b"Content-Type: image/jpeg" in data
    jpeg = data.split(b"\r\n\r\n", 2)[2]
    assert jpeg.startswith(b"\xff\xd8")  # a JPEG's first bytes

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while data.count(b"\ndata: ") < 2:
            data += s.recv(65536)
    events = [json.loads(line[6:]) for line in data.decode().splitlines() if line.startswith("data: ")]
    assert len(events) >= 2 and events[1]["version"] > events[0]["version"] and "label" in events[1]


# --- acceptance 3: bad requests are 4xx JSON, never a traceback -------------------------------

def test_bad_images_are_4xx_json_one_line(server, photos):
    good = photos[0].read_bytes()
    for body, why in [(b"this is not a picture", "not an image"), (good[: len(good) // 3], "truncated"),
                      (png_bomb(), "too large to decode safely"),
                      (b"%!PS-Adobe-3.0 EPSF-3.0\n", "not an image")]:
        status, payload = server.json("POST", "/v1/classify", body)
        assert status == 422 and why in one_line_error(status, payload), payload


def test_a_declared_gigabyte_body_is_refused_unread(server):
    raw = server.raw(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000000\r\n\r\n")
    status, payload = response_json(raw)
    assert status == 413 and "over the" in one_line_error(status, payload)
    # With curl's Expect: 100-continue, no go-ahead is given at all.
    raw = server.raw(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
    assert b"100 Continue" not in raw and response_json(raw)[0] == 413
    # A real body over --max-body-mb 1.
    status, payload = server.json("POST", "/v1/classify", b"\0" * 1_100_000)
    assert status == 413


def test_other_malformed_requests(server):
    for request, expected in [
        (b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"5\r\nhello\r\n0\r\n\r\n", 411),
        (b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 411),
        (b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n", 400),
        (b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n", 400),
        (b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data\r\n"
         b"Content-Length: 5\r\n\r\nhello", 400),
        (b"DELETE /v1/model HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
        (b"GET /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
        (b"BREW /coffee HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    ]:
        status, payload = response_json(server.raw(request))
        assert status == expected, (request[:60], status, payload)
        one_line_error(status, payload)


def test_without_a_token_only_a_loopback_host_is_answered(server):
    """DNS rebinding: a page from elsewhere whose name now points at 127.0.0.1 reads nothing."""
    for host in [b"evil.example", b"evil.example:8081", b"127.0.0.1.evil.example", b"[bad", b""]:
        raw = server.raw(b"GET /v1/model HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        status, payload = response_json(raw)
        assert status == 403 and "loopback Host" in one_line_error(status, payload), host
    for host in ["localhost:8081", "[::1]", "127.0.0.2"]:
        assert server.json("GET", "/v1/model", Host=host)[0] == 200


def test_no_path_from_a_request_reaches_the_disk(server):
    for path in [b"/../../etc/passwd", b"/%2e%2e/%2e%2e/etc/passwd", b"/v1/../../etc/passwd", b"//etc/passwd",
                 b"/v1/model/../../../etc/passwd", b"/index.html", b"/stream.mjpg/../../etc/shadow",
                 b"http://x/../../etc/passwd"]:
        raw = server.raw(b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, payload = response_json(raw)
        assert status == 404 and b"root:" not in raw, (path, raw[:200])
        one_line_error(status, payload)


def test_a_slow_client_is_cut_off_with_408_and_holds_up_nobody(server, photos):
    silent = socket.create_connection(("127.0.0.1", server.port))
    partial = socket.create_connection(("127.0.0.1", server.port))
    partial.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\n"
                    + b"x" * 100)
    # A byte of headers a second, for ever: each read comes well within any socket timeout.
    drip = socket.create_connection(("127.0.0.1", server.port))
    drip.sendall(b"GET /v1/model HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    start = time.monotonic()
    stop = threading.Event()

    def dripping():
        with contextlib.suppress(OSError):
            while not stop.wait(1):
                drip.sendall(b"X")

    threading.Thread(target=dripping, daemon=True).start()
    status, _ = server.json("POST", "/v1/classify", photos[0].read_bytes())
    assert status == 200 and time.monotonic() - start < 5  # while the slow clients hold on
    for s in (silent, partial, drip):
        s.settimeout(30)
        data = b""
        with _suppress_timeout():
            while chunk := s.recv(65536):
                data += chunk
        if s is drip:
            stop.set()
        s.close()
        status, payload = response_json(data)
        assert status == 408 and "s" in one_line_error(status, payload)
    assert 9 < time.monotonic() - start < 25


def test_the_token_guards_everything_but_healthz(api_only, photos):
    assert api_only.json("GET", "/healthz")[0] == 200
    for method, path in [("GET", "/"), ("GET", "/v1/model"), ("GET", "/metrics"), ("POST", "/v1/classify")]:
        status, head, data = api_only.request(method, path, b"x" if method == "POST" else None,
                                              auth("wrong-token-of-some-length"))
        assert status == 401 and head["WWW-Authenticate"].startswith("Bearer")
        one_line_error(status, json.loads(data))
        time.sleep(0.5)  # --rate 2
    assert api_only.json("GET", "/v1/model", **auth())[0] == 200
    time.sleep(0.5)
    # The page by ?token= once: a cookie, and the token dropped from the address.
    status, head, _ = api_only.get(f"/?token={TOKEN}")
    assert status == 303 and head["Location"] == "/" and "HttpOnly" in head["Set-Cookie"]
    time.sleep(0.5)
    cookie = head["Set-Cookie"].split(";")[0]
    assert api_only.get("/", Cookie=cookie)[0] == 200
    time.sleep(0.5)
    # No camera: the camera's routes say so.
    status, payload = api_only.json("GET", "/v1/latest", **auth())
    assert status == 404 and "no camera" in one_line_error(status, payload)


def test_the_rate_limit_is_per_client_and_429_json(api_only):
    time.sleep(2.5)  # a full bucket: --rate 2, two seconds' worth
    statuses = [api_only.json("GET", "/v1/model", **auth())[0] for _ in range(8)]
    assert statuses[:4] == [200] * 4 and statuses[-1] == 429
    status, payload = api_only.json("GET", "/v1/model", **auth())
    assert status == 429 and "--rate" in one_line_error(status, payload)


def test_streams_are_capped(model, clip, tmp_path):
    served = Served([model, "--source", clip, "--loop", "--max-streams", 1], tmp_path / "serve.log")
    try:
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
            s.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert b"200 OK" in s.recv(4096)
            status, payload = served.json("GET", "/events")
            assert status == 429 and "--max-streams" in one_line_error(status, payload)
    finally:
        assert "Traceback" not in served.stop()


# --- safe start-up ----------------------------------------------------------------------------

def serve_cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge", "serve", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**{k: v for k, v in os.environ.items() if k != "NOODLE_TOKEN"}, **(env or {})})


@pytest.mark.parametrize("args, says", [
    (["--host", "0.0.0.0"], "a token is required"),
    (["--host", "0.0.0.0", "--token", "short"], "at least 16"),
    (["--token", "has space"], "may hold only"),
    (["--token", "semi;colon-token-long"], "may hold only"),
    (["--source", "nowhere.mp4"], "no such video file"),
    (["--mqtt", "http://x/y"], "mqtt://HOST"),
    (["--mqtt", "mqtt://broker/a/#"], "wildcards"),
])
def test_refusals_at_start_are_one_line(model, args, says):
    done = serve_cli(model, *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], done.stderr


def test_beyond_loopback_with_a_token_file_and_a_port_in_use(model, tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    served = Served([model, "--host", "0.0.0.0", "--token-file", token], tmp_path / "serve.log")
    try:
        assert served.json("GET", "/v1/model")[0] == 401
        assert served.json("GET", "/v1/model", **auth())[0] == 200
        done = serve_cli(model, "--port", served.port)
        assert done.returncode == 2 and "is in use" in done.stderr and "Traceback" not in done.stderr
    finally:
        assert "Traceback" not in served.stop()


# --- labels from user data -----------------------------------------------------------------------

HOSTILE = ["<script>alert(1)</script>", 'say "hi" & \'bye\'', "multi\nline"]


@pytest.fixture(scope="module")
def hostile_model(tmp_path_factory) -> Path:
    from export.convert import convert
    from tests.hostile import keras_model, write_export

    return write_export(tmp_path_factory.mktemp("hostile") / "export", HOSTILE,
                        convert(keras_model("softmax", len(HOSTILE)), "float32"))


def test_every_label_is_escaped_in_json_events_and_the_log(hostile_model, photos, tmp_path):
    clip = make_clip(tmp_path / "clip.avi", photos[:5])
    served = Served([hostile_model, "--source", clip, "--loop"], tmp_path / "serve.log")
    try:
        for method, path, body in [("GET", "/v1/model", None), ("GET", "/v1/latest", None),
                                   ("POST", "/v1/classify", photos[0].read_bytes())]:
            deadline = time.monotonic() + 30
            while True:  # /v1/latest: the camera loop's first frame may not be classified yet
                status, head, data = served.request(method, path, body)
                if path != "/v1/latest" or "top" in json.loads(data) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert status == 200 and b"<" not in data and b">" not in data and b"\n" not in data
            labels = [t["label"] for t in json.loads(data).get("top", [])] or json.loads(data)["labels"]
            assert sorted(labels) == sorted(HOSTILE)  # escaped, and exactly the labels again
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
            s.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            while b"\ndata: " not in data or not data.endswith(b"\n\n"):
                data += s.recv(65536)
        line = next(x for x in data.split(b"\n") if x.startswith(b"data: "))
        assert b"<" not in line and json.loads(line[6:])["label"] in HOSTILE
    finally:
        log = served.stop()
    assert "<script>" in log and "multi\\nline" in log and "multi\nline" not in log  # one line each


def test_an_unexpected_camera_error_is_one_line_and_the_camera_is_opened_again(monkeypatch, capsys):
    from edge import camera, serve

    monkeypatch.setattr(camera, "BACKOFF", (0.01,))
    stop, opened = threading.Event(), []

    def make_frames():
        opened.append(1)
        if len(opened) == 3:
            stop.set()
        raise RuntimeError("the driver fell over\nwith a second line")

    live, metrics = serve.Live("cam0"), serve.Metrics()
    serve.guarded_camera_loop(make_frames, None, live, metrics, stop, repeat=False)
    err = capsys.readouterr().err
    assert len(opened) == 3 and live.state == "reconnecting" and "Traceback" not in err
    assert err.count("error: cam0: RuntimeError: the driver fell over; opening it again") == 3
    assert metrics.counts[("noodle_errors_total", (("kind", "camera"),))] == 3
