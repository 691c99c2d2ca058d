"""`noodle-edge serve` under attack: each way a hostile round broke it, one test each (edge/serve_conn.py,
edge/serve_http.py, edge/logs.py, edge/preprocess.py's decode budget).

Each server is the real command in its own process on a free loopback port (test_serve's
Served); hostile requests go in over raw sockets. Every answer to a bad request must be a
4xx (or 503) with one JSON line, or a closed connection that the test names as intended.
"""
from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from test_serve import TOKEN, Served, auth, make_clip, one_line_error, response_json, serving

# Bytes a header-flood connection sends: 99 lines of 65 KB each, as the hostile round's.
FLOOD_LINES, FLOOD_LINE = 99, 65_000


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    """The API on loopback, with the defaults' rate limit and body size."""
    with serving([model], tmp_path_factory.mktemp("http") / "serve.log") as served:
        yield served


@pytest.fixture(scope="module")
def guarded(model, tmp_path_factory):
    """With a token and a low rate."""
    with serving([model, "--token", TOKEN, "--rate", 2],
                 tmp_path_factory.mktemp("guarded") / "serve.log") as served:
        yield served


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def answers(raw: bytes) -> int:
    """How many HTTP responses `raw` holds."""
    return raw.count(b"HTTP/1.1 ") + raw.count(b"HTTP/1.0 ")


def webp(side: int, frames: int = 1) -> bytes:
    """A lossless WebP of side x side black pixels: a few dozen bytes (frames > 1: animated)."""
    out = io.BytesIO()
    images = [Image.new("RGB", (side, side), (i * 80, 0, 0)) for i in range(frames)]
    images[0].save(out, "WEBP", lossless=True, method=0, save_all=frames > 1, append_images=images[1:])
    return out.getvalue()


# --- WebP's real memory is counted before decoding -------------------------------------------------

def test_a_tiny_huge_webp_is_refused_undecoded_by_classify_and_serve(server, tmp_path):
    from edge.preprocess import ImageError, load_image

    still, animated = webp(8000), webp(4000, frames=2)
    assert len(still) < 100 and len(animated) < 300
    for data in (still, animated):
        with pytest.raises(ImageError, match="too large to decode safely"):
            load_image("x.webp", (56, 56), data=data)
        status, payload = server.json("POST", "/v1/classify", data)
        assert status == 422 and "too large to decode safely" in one_line_error(status, payload)
    # A WebP that fits the budget still decodes.
    small = tmp_path / "small.webp"
    small.write_bytes(webp(1000))
    assert load_image(small, (56, 56)).shape == (56, 56, 3)


# --- the headers' size is capped before the token is looked at -------------------------------------

HEAD = b"GET /v1/model HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def test_a_header_line_or_count_over_the_cap_is_431(guarded):
    line = b"X-Big: " + b"a" * 9000 + b"\r\n"
    status, payload = response_json(guarded.raw(HEAD + line + b"\r\n"))
    assert status == 431 and "header" in one_line_error(status, payload)
    many = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 4000) for i in range(40))
    status, payload = response_json(guarded.raw(HEAD + many + b"\r\n"))
    assert status == 431 and "headers" in one_line_error(status, payload)


def test_64_header_flood_connections_move_memory_little(model, tmp_path):
    served = Served([model, "--token", TOKEN], tmp_path / "serve.log")
    flood, before = [], rss_mb(served.proc.pid)
    try:
        for _ in range(64):
            s = socket.create_connection(("127.0.0.1", served.port), timeout=5)
            s.sendall(b"GET /v1/model HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            flood.append(s)
        line = b"X-Flood: " + b"a" * FLOOD_LINE + b"\r\n"
        for _ in range(FLOOD_LINES):
            for s in flood:
                try:
                    s.sendall(line)  # never the blank line that ends the headers
                except OSError:
                    pass  # refused and closed: as intended
        peak = rss_mb(served.proc.pid)
        print(f"64 header-flood connections: RSS {before:.0f} -> {peak:.0f} MB")
        assert peak - before < 50
        assert served.json("GET", "/healthz")[0] == 200  # and the server answers others meanwhile
    finally:
        for s in flood:
            s.close()
        assert "Traceback" not in served.stop()


# --- multipart is capped in parts and nesting ------------------------------------------------------

def multipart(parts: bytes, boundary: str = "b") -> tuple[bytes, dict]:
    head = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return parts + f"--{boundary}--\r\n".encode(), head


def test_many_parts_and_deep_nesting_are_400_at_once(server):
    empty = b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n\r\n"
    body, head = multipart(empty * 40_000)
    start = time.monotonic()
    status, payload = server.json("POST", "/v1/classify", body, **head)
    assert status == 400 and "parts" in one_line_error(status, payload) and time.monotonic() - start < 5
    nested = b""
    for depth in range(1200):
        nested += f"--n{depth}\r\nContent-Type: multipart/mixed; boundary=n{depth + 1}\r\n\r\n".encode()
    body, head = multipart(nested, "n0")
    status, payload = server.json("POST", "/v1/classify", body[:1_000_000], **head)
    assert status == 400 and "nested" in one_line_error(status, payload)


# --- a burst of clients is queued, and answered ----------------------------------------------------

def test_200_concurrent_clients_are_all_answered_200_or_429(server):
    statuses, times, gate = [], [], threading.Barrier(200)

    def client():
        gate.wait()
        start = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            statuses.append(int(data.split()[1]))
        except (OSError, IndexError) as exc:
            statuses.append(f"{type(exc).__name__}: {exc}")
        times.append(time.monotonic() - start)

    threads = [threading.Thread(target=client) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    print(f"200 concurrent /healthz: slowest answer {max(times):.2f} s; "
          f"{statuses.count(200)} x 200, {statuses.count(429)} x 429")
    assert len(statuses) == 200 and set(statuses) <= {200, 429}, [s for s in statuses if s not in (200, 429)]
    assert max(times) < 2.0


# --- an upload waits for the bodies' budget only so long -------------------------------------------

def test_slow_uploads_do_not_starve_an_honest_one(model, photos, tmp_path):
    served = Served([model, "--rate", 0], tmp_path / "serve.log")
    slow, stop = [], threading.Event()
    try:
        # 8 x 8 MB and one of 3.1 MB declared, a byte of each a second: the whole 64 MiB budget
        # held, for minutes.
        for size in [8_000_000] * 8 + [2**26 - 8_000_000 * 8]:
            s = socket.create_connection(("127.0.0.1", served.port), timeout=5)
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\nxx" % size)
            slow.append(s)

        def trickle():  # never silent long enough to be cut off as idle
            while not stop.wait(1):
                for s in slow:
                    with contextlib.suppress(OSError):
                        s.sendall(b"x")

        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(0.5)
        start = time.monotonic()
        status, head, data = served.request("POST", "/v1/classify", photos[0].read_bytes(), timeout=30)
        took = time.monotonic() - start
        assert status in (200, 503) and took < 15, (status, took)
        if status == 503:
            payload = json.loads(data)
            assert head["Retry-After"] and set(payload) == {"error"} and "busy" in payload["error"]
    finally:
        stop.set()
        for s in slow:
            s.close()
        assert "Traceback" not in served.stop()


# --- a 4xx with one JSON line, never a 5xx or silence; no desync -----------------------------------

BAD = [
    ("Content-Length: \xb2 (a digit to Python)", b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
     b"Content-Length: \xb2\r\n\r\nabc"),
    ("a 5,000-digit Content-Length", b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
     + b"9" * 5000 + b"\r\n\r\n"),
    ("the same with Expect: 100-continue", b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
     b"Expect: 100-continue\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"),
    ("two different Content-Lengths", b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
     b"Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"),
    ("Content-Length with a space before the colon", b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
     b"Content-Length : 3\r\n\r\nabc"),
    ("a NUL byte in a header", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b\x00c\r\n\r\n"),
    ("bare LF line ends", b"GET /healthz HTTP/1.1\nHost: 127.0.0.1\n\n"),
    ("a second Host", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n"),
]


@pytest.mark.parametrize("why, request_bytes", BAD, ids=[why for why, _ in BAD])
def test_malformed_and_ambiguous_requests_are_400_json(server, why, request_bytes):
    raw = server.raw(request_bytes)
    assert b"100 Continue" not in raw and answers(raw) == 1, (why, raw[:300])
    status, payload = response_json(raw)
    assert status == 400, (why, status, payload)
    one_line_error(status, payload)


def test_a_gets_body_is_never_read_as_the_next_request(server):
    smuggled = b"GET /v1/model HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    raw = server.raw(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
                     + smuggled)
    status, payload = response_json(raw)
    assert status == 400 and "no body" in one_line_error(status, payload)
    assert answers(raw) == 1 and b"labels" not in raw  # the smuggled request got no answer


def test_nested_multipart_and_an_empty_line_first(server):
    raw = server.raw(b"\r\nGET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # RFC 9112: ignored
    assert response_json(raw)[0] == 200
    nested = b"".join(f"--n{d}\r\nContent-Type: multipart/mixed; boundary=n{d + 1}\r\n\r\n".encode()
                      for d in range(1200))
    status, payload = server.json("POST", "/v1/classify", nested,
                                  **{"Content-Type": "multipart/form-data; boundary=n0"})
    assert status == 400
    one_line_error(status, payload)


# --- the token never reaches the log ---------------------------------------------------------------

def test_the_token_is_never_logged(model, tmp_path):
    served = Served([model, "--token", TOKEN], tmp_path / "serve.log")
    try:
        for method, path in [("GET", f"/nowhere?token={TOKEN}"), ("POST", f"/v1/model?token={TOKEN}"),
                             ("GET", f"/v1/model?token={TOKEN}x")]:
            assert served.request(method, path)[0] in (401, 404, 405)
        assert served.request("GET", "/nowhere", headers=auth())[0] == 404
    finally:
        log = served.stop()
    assert TOKEN not in log and "/nowhere" in log, log


# --- a flood of refusals is counted, not written; lines never merge --------------------------------

def test_a_flood_of_429s_writes_a_few_lines(guarded):
    for _ in range(300):
        guarded.request("GET", "/v1/model", headers=auth())
    lines = guarded.text().splitlines()
    refused = [line for line in lines if ": 429 " in line]
    assert 1 <= len(refused) <= 10, len(refused)
    assert all(line.startswith(("127.0.0.1", "serving ", "warning: ")) or "more like this" in line
               for line in lines), lines


def test_the_log_writes_whole_lines_from_many_threads_and_counts_repeats(monkeypatch):
    from edge import logs

    out = io.StringIO()
    handler = logs.OneLineHandler(out)
    log = logs.logging.getLogger("noodle.test-threads")
    log.addHandler(handler)
    log.propagate = False
    try:
        monkeypatch.setattr(logs, "WINDOW_SECONDS", 1.0)

        def write(n):
            for i in range(50):
                log.warning("thread %d line %d\nwith a second line", n, i)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(1.1)
        log.warning("after the window")
    finally:
        log.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert lines[-1] == "after the window"
    written = [line for line in lines if line.startswith("thread ")]
    assert len(written) == logs.REPEATS and all(line.endswith("\\nwith a second line") for line in written)
    assert f"{400 - logs.REPEATS} more like this in the last minute" in lines[-2]


def test_secrets_are_hidden_in_every_line():
    from edge import logs

    out = io.StringIO()
    handler = logs.OneLineHandler(out)
    handler.secrets.add("s3cret-value")
    record = logs.logging.LogRecord("noodle.x", logs.logging.WARNING, "", 0,
                                    "GET /?token=abc&x=1 Authorization: Bearer xyz s3cret-value", (), None)
    handler.emit(record)
    assert out.getvalue() == "GET /?token=***&x=1 Authorization: Bearer *** ***\n"


# --- a stalled stream frees its slot; no go-ahead before the token ---------------------------------

def test_a_stream_that_never_reads_loses_its_slot(model, photos, tmp_path):
    clip = make_clip(tmp_path / "clip.avi", photos[:20])  # 10 frames a second of a few kB each
    served = Served([model, "--source", clip, "--loop", "--max-streams", 1], tmp_path / "serve.log")
    try:
        stalled = socket.create_connection(("127.0.0.1", served.port))
        stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # and never reads
        time.sleep(1)
        assert served.json("GET", "/events")[0] == 429  # the one slot is taken
        deadline, status = time.monotonic() + 30, 429
        while status == 429 and time.monotonic() < deadline:
            time.sleep(1)
            status = _stream_status(served)
        assert status == 200, "the stalled stream still holds the only slot after 30 s"
        stalled.close()
    finally:
        assert "Traceback" not in served.stop()


def _stream_status(served) -> int:
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        s.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        return int(s.recv(64).split()[1])


def test_expect_100_continue_comes_only_after_the_token(guarded):
    request = (b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n"
               b"Expect: 100-continue\r\n\r\n")
    time.sleep(2.5)  # --rate 2: a full bucket
    raw = guarded.raw(request)
    assert b"100 Continue" not in raw and response_json(raw)[0] == 401
    time.sleep(1)  # --rate 2
    raw = guarded.raw(request.replace(b"Expect", b"Authorization: Bearer " + TOKEN.encode() + b"\r\nExpect"),
                      read_for=2)
    assert raw.startswith(b"HTTP/1.1 100 Continue\r\n")


# --- decoder warnings, the icon and the Server header ----------------------------------------------

def test_pillows_warnings_reach_the_log_prefixed_in_one_line(server):
    out = io.BytesIO()
    Image.new("RGB", (64, 64)).save(out, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\xff")
    assert server.json("POST", "/v1/classify", out.getvalue())[0] == 200
    lines = server.text().splitlines()
    assert any(line.startswith("warning: decoder: UserWarning: Corrupt EXIF data") for line in lines), lines
    assert not any(line.lstrip().startswith("warnings.warn") for line in lines), lines


def test_favicon_is_204_and_the_server_header_is_clean(server):
    status, head, body = server.get("/favicon.ico")
    assert status == 204 and body == b""
    assert head["Server"] == "noodle-edge" and not head["Server"].endswith(" ")
