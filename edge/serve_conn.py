"""serve's connections: aiohttp's HTTP/1.1 server, with noodle's guards below the routes.

aiohttp's parser (llhttp) reads request lines, headers and bodies, and refuses what is
malformed or ambiguous: two Content-Lengths, a length that is not digits, bare LF line
ends, NUL bytes, a second Host, a header line over MAX_LINE, more than MAX_HEADERS
headers. On top of it, this file
- caps the connections open at once (one past the cap gets a 429 and is closed);
- gives a request's line and headers REQUEST_TIMEOUT seconds from its first byte (or from
  the connection's start), then answers 408 and closes: a client dripping a byte now and
  then holds nothing for longer;
- answers every refusal of the parser as one JSON line with the status that says why
  (431, 414, 405, 400), and logs it in one line, never aiohttp's traceback.

aiohttp (the `serve` extra): this file ships to the device.
"""
from __future__ import annotations

import re
from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from edge.jsonout import to_json
from edge.logs import logger

# Open connections at once, streams included. An idle one costs a few kB here (no thread),
# one filling its headers at most MAX_HEADERS * MAX_LINE: 128 of those stay under 40 MB.
MAX_CONNECTIONS = 128
# Connections the kernel queues before serve accepts them: a burst of clients waits there
# instead of being dropped (socketserver's 5 dropped 99 of 200). Linux caps it at somaxconn.
BACKLOG = 1024
# Seconds for a request's line and all its headers; an idle kept-alive connection is closed
# silently a second after this.
REQUEST_TIMEOUT = 10.0
# The longest request line and header line, in bytes (aiohttp's default, nginx's is 8 kB).
MAX_LINE = 8190
# Headers in one request: a browser sends about 15, a proxy adds a few.
MAX_HEADERS = 32
# After refusing a body it has not read, the server reads and drops what the client still sends
# for up to this long, so that the client gets the answer and not a reset connection.
LINGER_SECONDS = 2.0
# The Server header of every answer.
SERVER_NAME = "noodle-edge"
# Headers every answer carries.
COMMON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Server": SERVER_NAME}
# A request line aiohttp refused only for its method: an unknown method, not garbage.
_METHOD_LINE = re.compile(r"b'[!#$%&'*+.^_`|~0-9A-Za-z-]+ \S+ HTTP/1\.[01]'")

log = logger("serve.http")


def json_response(status: int, payload, headers: dict | None = None) -> web.Response:
    """An answer: JSON unless `payload` is bytes (then Content-Type comes in `headers`)."""
    headers = {**COMMON_HEADERS, **(headers or {})}
    if status in (204, 303):
        return web.Response(status=status, headers=headers)
    if isinstance(payload, bytes):
        headers.setdefault("Content-Type", "application/octet-stream")
        return web.Response(status=status, body=payload, headers=headers)
    headers["Content-Type"] = "application/json"
    return web.Response(status=status, body=to_json(payload), headers=headers)


def raw_response(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 JSON error response, for where no request is being handled."""
    body = to_json({"error": message})
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nServer: {SERVER_NAME}\r\nConnection: close\r\n\r\n"
            ).encode() + body


def refusal(status: int, exc: BaseException | None) -> tuple[int, str]:
    """The status and one-line reason for a request the parser refused (or a handler's 500)."""
    if isinstance(exc, LineTooLong):
        if "status line" in str(exc).lower() or "url" in str(exc).lower():
            return 414, f"the request line is over {MAX_LINE} bytes"
        return 431, f"a header line is over {MAX_LINE} bytes; send shorter headers"
    if isinstance(exc, BadHttpMethod) and _METHOD_LINE.search(str(exc)):
        return 405, "method not allowed; the routes take GET, /v1/classify POST"
    if isinstance(exc, HttpProcessingError):
        what = next((line.strip().rstrip(":") for line in (exc.message or "").splitlines() if line.strip()),
                    "")
        if "too many headers" in what.lower():
            return 431, f"more than {MAX_HEADERS} headers; send fewer"
        # The parser's own words, first line only; the bytes it quotes stay out of the answer.
        return 400, f"malformed request ({what[:120] or 'not HTTP/1.1'})"
    if status == 504 or status >= 500 or exc is not None:
        return 500, "internal error; the server's log says what"
    return status, HTTPStatus(status).phrase


class Connection(RequestHandler):
    """aiohttp's connection with a connection cap, a head deadline and JSON refusals."""

    def __init__(self, manager: Server, **kwargs):
        super().__init__(manager, **kwargs)
        self.app = manager.app
        self.refused = self.broken = False
        self.head_deadline = None

    def connection_made(self, transport) -> None:
        if self.app.connections >= MAX_CONNECTIONS:
            self.refused = True
            self.app.metrics.request("other", 429, 0.0)
            transport.write(raw_response(429, f"{MAX_CONNECTIONS} connections are open already; "
                                              "try again later"))
            # Closed only after LINGER_SECONDS: closing on the unread request would reset the
            # connection, and the client would never read its answer.
            transport.write_eof()
            self._loop.call_later(LINGER_SECONDS, transport.close)
            return
        self.app.connections += 1
        super().connection_made(transport)
        self.arm()

    def connection_lost(self, exc) -> None:
        if self.refused:
            return
        self.app.connections -= 1
        self.disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused or self.broken:
            return  # over the cap, or refused by the parser: what else comes is dropped
        heads = self._request_count
        super().data_received(data)
        for message, _ in self._messages:
            if getattr(message, "exc", None) is not None:
                # The parser refused the request. Its error's traceback holds the bytes read (up to
                # 256 kB) in a cycle only the garbage collector frees, late: 64 header floods held
                # 32 MB so. Cut now, and nothing more is read from this connection.
                message.exc.__traceback__ = None
                self.broken = True
        if self._request_count != heads:
            self.disarm()  # a request's line and headers are whole
        elif self.head_deadline is None and not self._request_in_progress and not self._messages:
            self.arm()  # the first bytes of the next request on a kept-alive connection

    def arm(self) -> None:
        self.disarm()
        self.head_deadline = self._loop.call_later(REQUEST_TIMEOUT, self.too_slow)

    def disarm(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def too_slow(self) -> None:
        """REQUEST_TIMEOUT passed without a whole request head: 408, and the connection closed."""
        self.head_deadline = None
        if self._request_in_progress or self._messages or self.transport is None:
            return  # a request is being answered: its handler keeps its own time
        self.app.metrics.request("other", 408, REQUEST_TIMEOUT)
        self.transport.write(raw_response(408, f"no complete request within {REQUEST_TIMEOUT:g} s; "
                                               "connection closed"))
        self.force_close()

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """The parser's refusals (and a 500 no handler caught) as one JSON line, logged in one line."""
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had begun; the connection is closed instead")
        status, why = refusal(status, exc)
        if status >= 500:
            log.error("error: %s: %s: %s", request.remote, type(exc).__name__, str(exc).split("\n")[0])
        else:
            log.warning(f"%s: {status} %s", request.remote, why)
        self.app.metrics.request("other", status, 0.0)
        response = json_response(status, {"error": why})
        response.force_close()
        return response

    def log_exception(self, *args, **kwargs) -> None:
        pass  # handle_error logs each refusal itself, in one line

    def log_debug(self, *args, **kwargs) -> None:
        pass


class Server(web.Server):
    """aiohttp's low-level server, making Connections that know the App."""

    def __init__(self, handler, app, **kwargs):
        super().__init__(handler, access_log=None, max_line_size=MAX_LINE, max_field_size=MAX_LINE,
                         max_headers=MAX_HEADERS, keepalive_timeout=REQUEST_TIMEOUT + 1,
                         lingering_time=LINGER_SECONDS, **kwargs)
        self.app = app

    def __call__(self) -> Connection:
        return Connection(self, loop=self._loop, **self._kwargs)
