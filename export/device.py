"""The device's HTTP API from the laptop: `noodle pull` and `noodle deploy` talk to serve through this.

The standard library's urllib, with the token as Authorization: Bearer (never in the address,
never printed), and every failure one line: a device that cannot be reached, a wrong token, a
refusal in serve's own words (its {"error": ...}).
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from edge.errors import NoodleError, first_line
from edge.escape import shown

# Seconds to wait for the device's answer: a deploy is checked on its captures first (a Pi 4
# scores 100 captures in a few seconds; a Pi Zero far slower).
TIMEOUT = 300.0


class DeviceError(NoodleError):
    """The device said no, or could not be asked: one line, exit 1."""

    exit_code = 1


def read_token(token: str | None, token_file: Path | None) -> str | None:
    """The secret to send: --token (or $NOODLE_TOKEN) or --token-file's first line; NAME: dropped."""
    if token is not None and token_file is not None:
        raise NoodleError("--token and --token-file: give one")
    if token_file is not None:
        try:
            lines = [line.strip() for line in token_file.read_text(encoding="utf-8").splitlines()
                     if line.strip() and not line.lstrip().startswith("#")]
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise NoodleError(f"{token_file}: cannot read the token ({why}); "
                              "give a file holding it on its first line") from None
        token = lines[0] if lines else None
        if token is None:
            raise NoodleError(f"{token_file}: no token in it; write the device's token on its first line")
    # serve's token file may name each token (NAME:SECRET); the name is the device's to know.
    return token.rpartition(":")[2] if token else None


class Device:
    """serve at `url` (http:// or https://, as `noodle-edge serve` printed it)."""

    def __init__(self, url: str, token: str | None):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise NoodleError(f"{shown(url)}: not a device's address; give the URL serve printed, such as "
                              "http://raspberrypi.local:8080/")
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.token = token

    def open(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             timeout: float = TIMEOUT):
        """The response (a file-like object), or DeviceError in one line."""
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        try:
            return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http(s) only, checked)
        except urllib.error.HTTPError as exc:
            raise DeviceError(self.refusal(exc, method, path)) from None
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", None) or exc
            raise DeviceError(f"cannot reach {self.url} ({first_line(why)}); is `noodle-edge serve "
                              "--captures DIR` running there, and is the address right?") from None

    def refusal(self, exc, method: str, path: str) -> str:
        try:
            said = json.loads(exc.read(4096))["error"]
        except (ValueError, KeyError, TypeError, OSError):
            said = exc.reason
        where = f"{self.url} {method} {path.split('?')[0]}"
        if exc.code == 401:
            return (f"{where}: 401, the device wants its token ({shown(str(said))}); pass --token, "
                    "--token-file or $NOODLE_TOKEN (on the Pi: cat serve.token)")
        if exc.code == 404 and "no such route" in str(said):
            return (f"{where}: 404, this serve has no such route; install the device's noodle-edge from a "
                    "bundle of this noodle (make bundle)")
        return f"{where}: {exc.code}, {shown(str(said))}"

    def json(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             timeout: float = TIMEOUT) -> dict:
        with self.open(method, path, body, headers, timeout) as response:
            data = response.read()
        try:
            answer = json.loads(data)
        except ValueError:
            raise DeviceError(f"{self.url}{path.split('?')[0]}: the answer is not JSON; is that a "
                              "noodle-edge serve?") from None
        if not isinstance(answer, dict):
            raise DeviceError(f"{self.url}{path.split('?')[0]}: the answer is not a JSON object")
        return answer
