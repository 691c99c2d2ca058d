"""serve's routes: the Host and token checks, the rate limit, the body budget, and each answer.

    GET  /              the live page: the stream, the label, top-k bars, FPS and invoke ms
    GET  /stream.mjpg   the camera's frames as JPEGs (multipart/x-mixed-replace)
    GET  /snapshot.jpg  the camera's current frame, one JPEG (Home Assistant's generic camera, scripts)
    GET  /events        server-sent events: each new camera result as JSON (the page's feed)
    POST /v1/classify   image bytes, or a multipart/form-data file field -> the top-k as JSON
    GET  /v1/model      labels, input, variant, quantization and the metadata the file carries
    GET  /v1/latest     the camera's last result
    GET  /healthz       "ok" and the camera's state
    GET  /metrics       Prometheus text: frames, classified, errors, reconnects, requests, latency
    GET  /favicon.ico   204: the page has no icon, and a browser asks on every visit

Only these routes exist, so no request path ever reaches the file system. A refusal is a
4xx (or a 503) with a one-line JSON error, never a traceback. An upload waits at most
BODY_WAIT seconds for its share of the bodies' budget, then arrives within REQUEST_TIMEOUT
plus what SLOWEST_BODY allows for its size, is decoded in a worker thread by
edge.preprocess.load_image (the decoder `classify` uses, under the process's decode budget)
and classified by the one interpreter.

aiohttp (the `serve` extra), numpy and Pillow: this file ships to the device.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import MultipartReader, web

from edge.errors import first_line
from edge.jsonout import to_json
from edge.logs import logger
from edge.preprocess import ImageError, load_image
from edge.serve_auth import COOKIE, given_token, loopback_name
from edge.serve_conn import COMMON_HEADERS, REQUEST_TIMEOUT, json_response
from edge.serve_metrics import Metrics, RateLimit
from edge.serve_page import PAGE, PAGE_HEADERS

# Bytes all request bodies being read may hold at once (a Pi 3 has 1 GB)...
BODIES_BYTES = 64 * 2**20
# ...and the seconds an upload waits for its share before a 503: slow uploads that hold the
# budget make the next one wait, never for ever.
BODY_WAIT = 10.0
# A body slower than this many bytes a second, after REQUEST_TIMEOUT, is cut off with a 408:
# weak Wi-Fi on a Pi still moves 1 MB/s, so an 8 MB photo has 90 s.
SLOWEST_BODY = 100_000
# Parts of a multipart/form-data upload: a form sends the file and a few fields.
MAX_PARTS = 16
# Threads that decode and classify uploads (the decode budget and the model's lock bound them).
WORKERS = 4
# Results a second /events sends a page: a 30 fps camera need not redraw the label 30 times.
EVENTS_PER_SECOND = 10
# With no new frame for this long, a stream resends its last one and /events a comment, so
# a client that went away is noticed and its slot freed.
KEEPALIVE_SECONDS = 5.0
# A stream or feed whose client has read nothing for this long (its socket's buffers full)
# is closed, and its slot freed...
STALL_SECONDS = 10.0
# ...and those buffers kept to a few frames: the kernel's own grow to megabytes, which a client
# that never reads took minutes to fill, holding its slot all along.
STREAM_SEND_BUFFER = 128 * 2**10

# The only routes: path -> (methods, handler name). Anything else is a 404.
ROUTES = {
    "/": ("GET", "page"),
    "/stream.mjpg": ("GET", "stream"),
    "/snapshot.jpg": ("GET", "snapshot"),
    "/events": ("GET", "events"),
    "/v1/classify": ("POST", "classify"),
    "/v1/model": ("GET", "model"),
    "/v1/latest": ("GET", "latest"),
    "/healthz": ("GET", "healthz"),
    "/metrics": ("GET", "metrics"),
    "/favicon.ico": ("GET", "favicon"),
}
# Routes open without the token: a health check and an empty icon carry no secret and tell nothing.
OPEN_ROUTES = {"/healthz", "/favicon.ico"}
# DELETE: the Teach routes (edge/serve_teach.py); PUT: a deployed model (edge/serve_deploy.py).
METHODS = ("GET", "POST", "DELETE", "PUT")

log = logger("serve.http")


class Problem(Exception):
    """A request refused: its status and the one line the client gets as {"error": ...}."""

    def __init__(self, status: int, message: str, headers: dict | None = None, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.headers, self.close = status, message, headers or {}, close


class BodyBudget:
    """DecodeBudget's bytes for the event loop: an upload waits for its share, at most `wait` s."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self.cond = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int, wait: float):
        async with self.cond:
            try:
                await asyncio.wait_for(self.cond.wait_for(lambda: self.used + nbytes <= self.limit), wait)
            except asyncio.TimeoutError:
                raise Problem(503, f"busy: other uploads hold the {self.limit // 2**20} MiB for bodies; "
                                   "try again in a few seconds", {"Retry-After": "5"}) from None
            self.used += nbytes
        try:
            yield
        finally:
            async with self.cond:
                self.used -= nbytes
                self.cond.notify_all()


class App:
    """Everything a request reads: the model, the camera's results, the limits, the counters."""

    routes = ROUTES  # edge.serve_teach.TeachApp adds its own

    def route_of(self, request: web.BaseRequest) -> str:
        """The route a request's path is (its metrics label), or "other"."""
        return request.path if request.path in self.routes else "other"

    def __init__(self, model, live, token: str | None, max_body: int, max_streams: int, rate: float):
        self.model, self.live, self.token, self.max_body = model, live, token, max_body
        self.metrics = Metrics()
        self.limit = RateLimit(rate)
        self.max_streams, self.open_streams, self.connections = max_streams, 0, 0
        self.bodies = BodyBudget(max(BODIES_BYTES, max_body))
        self.workers = ThreadPoolExecutor(WORKERS, "serve-decode")
        # A stream waits for the camera's next frame in a thread of its own.
        self.waiters = ThreadPoolExecutor(max_streams, "serve-stream")
        self.started = time.time()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """aiohttp's one request handler: dispatch, refusals as JSON, a metric for each."""
        start, status = time.perf_counter(), 500
        route = self.route_of(request)
        request.protocol.disarm()
        try:
            response = await self.dispatch(request, route)
            status = response.status
            return response
        except Problem as problem:
            status = problem.status
            if status >= 400:
                # The path only: a query may hold the token.
                log.warning(f"%s %s %s: {status} %s", request.remote, request.method, request.path[:200],
                            problem.message)
            response = json_response(status, {"error": problem.message} if status >= 400 else b"",
                                     problem.headers)
            if problem.close:
                response.force_close()
            return response
        except Exception as exc:  # noqa: BLE001 (a bug: one line in the log, JSON for the client)
            log.error("error: %s %s: %s: %s", request.method, route, type(exc).__name__, first_line(exc))
            response = json_response(500, {"error": "internal error; the server's log says what"})
            response.force_close()
            return response
        finally:
            self.metrics.request(route, status, time.perf_counter() - start)

    async def dispatch(self, request: web.BaseRequest, route: str) -> web.StreamResponse:
        if self.token is None and not loopback_name(request.headers.get("Host", "")):
            # A loopback server without a token trusts whoever reaches it, so only by a loopback
            # name: a web page elsewhere whose name was made to point here (DNS rebinding) is not.
            raise Problem(403, "without --token this server answers only to a loopback Host "
                               "(127.0.0.1, localhost, [::1]); open it by one of those, or start it "
                               "with --token")
        if request.method not in METHODS:
            raise Problem(405, "method not allowed; the routes take GET, POST, PUT or DELETE",
                          {"Allow": ", ".join(METHODS)})
        if route == "other":
            raise Problem(404, f"no such route; the routes are {', '.join(self.routes)}")
        methods, name = self.routes[route]
        if request.method not in methods.split(", "):
            raise Problem(405, f"{route} takes {methods}", {"Allow": methods})
        if not self.limit.allow(request.remote or ""):
            raise Problem(429, f"over {self.limit.rate:g} requests a second from this address (--rate); "
                               "slow down", {"Retry-After": "1"})
        if request.method == "GET" and (request.content_length or request.headers.get("Transfer-Encoding")):
            # A proxy that thinks a GET has no body would read this one as the next request.
            raise Problem(400, "a GET takes no body", close=True)
        if route not in OPEN_ROUTES:
            self.check_token(request, route)
        return await getattr(self, f"on_{name}")(request)

    def check_token(self, request: web.BaseRequest, route: str) -> None:
        """The token, or a 401; its name (never the secret) is kept as request["by"]."""
        request["by"] = None
        if self.token is None:
            return
        given, from_query = given_token(request.query, request.headers)
        name = self.token.match(given) if given is not None else None
        if name is None:
            raise Problem(401, "missing or wrong token; send it as Authorization: Bearer TOKEN, or open "
                               "the page as /?token=TOKEN once",
                          {"WWW-Authenticate": 'Bearer realm="noodle"'})
        request["by"] = name
        if from_query and route == "/":
            # Kept in a cookie the page's stream and feed send too, and dropped from the address bar.
            secret = self.token.named[name]
            raise Problem(303, "", {"Location": "/", "Set-Cookie":
                                    f"{COOKIE}={secret}; HttpOnly; SameSite=Strict; Path=/"})

    # --- the routes ---

    async def on_page(self, request) -> web.Response:
        return json_response(200, PAGE, dict(PAGE_HEADERS))

    async def on_favicon(self, request) -> web.Response:
        return json_response(204, b"")

    async def on_model(self, request) -> web.Response:
        return json_response(200, self.model.info)

    async def on_latest(self, request) -> web.Response:
        self.need_source()
        return json_response(200, self.live.snapshot())

    async def on_healthz(self, request) -> web.Response:
        return json_response(200, {"status": "ok", "camera": self.live.state,
                                   "uptime_s": round(time.time() - self.started, 1)})

    async def on_metrics(self, request) -> web.Response:
        gauges = {"noodle_stream_clients": ("Streams and event feeds open now.", self.open_streams),
                  "noodle_camera_fps": ("Frames a second the camera loop classifies.", self.live.fps)}
        return json_response(200, self.metrics.text(gauges), {"Content-Type": "text/plain; version=0.0.4"})

    async def on_snapshot(self, request) -> web.Response:
        """The camera's last frame as one JPEG, the stream's own (encoded once per frame)."""
        self.need_source()
        loop = asyncio.get_running_loop()
        seq, jpeg = await loop.run_in_executor(self.workers, self.live.jpeg)
        if not jpeg:
            raise Problem(503, f"no camera frame yet (the camera is {self.live.state}); try again in a "
                               "few seconds", {"Retry-After": "2"})
        # COMMON_HEADERS' no-store: each request is the frame of now, never a cached one.
        return json_response(200, jpeg, {"Content-Type": "image/jpeg", "X-Frame": str(seq)})

    def need_source(self) -> None:
        if self.live.source is None:
            raise Problem(404, "this server has no camera (started without --source or --picamera); "
                               "it serves the API only")

    async def on_classify(self, request: web.BaseRequest) -> web.Response:
        size = self.body_size(request)
        async with self.bodies.hold(size, BODY_WAIT):
            if request.headers.get("Expect", "").lower() == "100-continue":
                # The go-ahead only now: after the token, the size and a share of the budget.
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if request.content_type == "multipart/form-data":
                body = await self.within(file_field(request), size)
            else:
                body = await self.within(read_body(request, size), size)
            loop = asyncio.get_running_loop()
            pixels = await loop.run_in_executor(self.workers, self.decode, body)
            del body
        result = await loop.run_in_executor(self.workers, self.model.classify, pixels)
        self.metrics.classified("api", self.model.said_unknown(result))
        return json_response(200, {**result, "sha256": self.model.sha256, "variant": self.model.clf.variant})

    def body_size(self, request: web.BaseRequest, limit: int | None = None, what: str = "the image",
                  fix: str = "--max-body-mb; send a smaller image") -> int:
        """The upload's declared size, checked before a byte of it is read (at most `limit`)."""
        if request.headers.get("Transfer-Encoding", "identity").lower() != "identity":
            raise Problem(411, f"send {what} with a Content-Length (chunked bodies are not taken)",
                          close=True)
        size, limit = request.content_length, limit or self.max_body
        if size is None:
            raise Problem(411, f"no Content-Length; send {what} with one (curl --data-binary @photo.jpg)")
        if size > limit:
            raise Problem(413, f"a body of {size} bytes is over the {limit} byte limit ({fix})")
        if size == 0:
            raise Problem(400, f"empty body; send {what} (curl --data-binary @photo.jpg)")
        return size

    async def within(self, reading, size: int):
        """`reading` (a body's), cut off with a 408 after REQUEST_TIMEOUT plus its size's share."""
        try:
            return await asyncio.wait_for(reading, REQUEST_TIMEOUT + size / SLOWEST_BODY)
        except asyncio.TimeoutError:
            raise Problem(408, f"the body came too slowly or stopped ({size} bytes not in time); send it "
                               "whole within seconds", close=True) from None

    def decode(self, body) -> object:
        try:
            return load_image("upload", self.model.clf.size, data=body)
        except ImageError as exc:
            self.metrics.inc("noodle_errors_total", kind="upload")
            raise Problem(422, f"{exc.reason}") from None
        except MemoryError:
            self.metrics.inc("noodle_errors_total", kind="upload")
            raise Problem(413, "image too large for this device's memory") from None

    # --- streams ---

    @contextlib.asynccontextmanager
    async def streaming(self, request: web.BaseRequest, content_type: str):
        """A slot among --max-streams and the response, closed at the end or when the client stalls."""
        self.need_source()
        if self.open_streams >= self.max_streams:
            raise Problem(429, f"{self.max_streams} streams and event feeds are open already "
                               "(--max-streams); close a page or try again later", {"Retry-After": "5"})
        self.open_streams += 1
        try:
            headers = {**COMMON_HEADERS, "Content-Type": content_type}
            response = web.StreamResponse(status=200, headers=headers)
            response.force_close()
            # The body runs until the connection closes, as MJPEG and event-stream clients (and
            # OpenCV's) expect, not in HTTP/1.1 chunks: aiohttp's switch, as its WebSockets use it.
            response._length_check = False
            sock = request.transport.get_extra_info("socket") if request.transport else None
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SEND_BUFFER)
            await response.prepare(request)
            with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
                yield response, lambda data: asyncio.wait_for(response.write(data), STALL_SECONDS)
        finally:
            self.open_streams -= 1
        request.protocol.force_close()  # a client that stalled, or went away

    async def on_stream(self, request) -> web.StreamResponse:
        live, loop = self.live, asyncio.get_running_loop()
        async with self.streaming(request, "multipart/x-mixed-replace; boundary=frame") as (response, send):
            seq = -1
            while not live.closed:
                # A new frame, or none for a while: then the last one again, which finds a dead client.
                seq, jpeg = await loop.run_in_executor(self.waiters, live.next_jpeg, seq, KEEPALIVE_SECONDS)
                if jpeg:
                    await send(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                               % len(jpeg) + jpeg + b"\r\n")
        return response

    async def on_events(self, request) -> web.StreamResponse:
        live, loop = self.live, asyncio.get_running_loop()
        async with self.streaming(request, "text/event-stream") as (response, send):
            await send(b"retry: 2000\n\n")
            seen = -1
            while not live.closed:
                version = await loop.run_in_executor(self.waiters, live.wait, seen, KEEPALIVE_SECONDS,
                                                     "version")
                if version == seen:
                    await send(b": keepalive\n\n")  # finds a client that went away
                else:
                    snapshot = live.snapshot()
                    seen = snapshot["version"]
                    await send(b"data: " + to_json(snapshot) + b"\n\n")
                await asyncio.sleep(1 / EVENTS_PER_SECOND)
        return response


async def read_body(request: web.BaseRequest, size: int) -> bytearray:
    """The body, whole, in one buffer of its declared size."""
    body, got = bytearray(size), 0
    while got < size:
        chunk = await request.content.readany()
        if not chunk:
            raise Problem(400, f"the body ended after {got} of its {size} bytes", close=True)
        body[got : got + len(chunk)] = chunk
        got += len(chunk)
    return body


async def file_field(request: web.BaseRequest) -> bytearray:
    """The uploaded file of a multipart/form-data body: the field named file or image, else the
    first part with a file name. At most MAX_PARTS parts, none nested."""
    try:
        reader = MultipartReader(request.headers, request.content)
        chosen, parts = None, 0
        while (part := await reader.next()) is not None:
            parts += 1
            if parts > MAX_PARTS or isinstance(part, MultipartReader):
                raise Problem(400, f"a form of more than {MAX_PARTS} parts, or a nested one; send the "
                                   "image as one file field (curl -F file=@photo.jpg)", close=True)
            if part.name in ("file", "image"):
                return await part.read()
            if chosen is None and part.filename:
                chosen = await part.read()
            else:
                await part.release()
    except (ValueError, KeyError, AssertionError, RuntimeError, EOFError) as exc:
        raise Problem(400, f"not a multipart/form-data body ({first_line(exc)[:100]}); send the image as a "
                           "file field (curl -F file=@photo.jpg) or as the raw body (--data-binary "
                           "@photo.jpg)", close=True) from None
    if chosen is None:
        raise Problem(400, "the form has no file field; send the image as a field named file "
                           "(curl -F file=@photo.jpg)")
    return chosen
