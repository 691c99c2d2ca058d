"""serve's guards before any route: the token (a header, a query once, a cookie) and the Host check.

Beyond loopback a token is required, compared in constant time; without one, only a request
that names this machine's loopback in its Host header is answered (DNS rebinding).

Standard library only: this file ships to the device.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from urllib.parse import urlsplit

from edge.errors import NoodleError
from edge.escape import escape_name, shown

# A token beyond loopback: long enough that guessing at --rate requests a second is hopeless.
TOKEN_MIN = 16
# What a token may hold: URL-safe characters, the same in a header, a query and a cookie.
TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
TOKEN_ENV = "NOODLE_TOKEN"
MAKE_TOKEN = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe())'"
COOKIE = "noodle_token"


class ServeError(NoodleError):
    pass


def same_secret(given: str, token: str) -> bool:
    """Whether `given` is the token, in time that depends on neither: digests of equal length,
    compared by hmac.compare_digest, so not even the token's length shows."""
    def digest(text: str) -> bytes:
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()

    return hmac.compare_digest(digest(given), digest(token))


# --- options checked before the model loads ------------------------------------------------

def is_loopback(host: str) -> bool:
    """Whether every address `host` names is this machine's own (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        raise ServeError(f"--host {shown(host)}: not an address or a name this machine can resolve; "
                         "use 127.0.0.1 (this machine only) or 0.0.0.0 (every network)") from None
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def loopback_name(host_header: str) -> bool:
    """Whether a Host header names this machine's loopback by an address or "localhost"."""
    try:
        host = urlsplit("//" + host_header.strip()).hostname or ""
    except ValueError:  # "[" without its "]"
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(token: str | None, token_file, host: str) -> str | None:
    """The token from --token (or $NOODLE_TOKEN) or --token-file; required beyond loopback."""
    if token is not None and token_file is not None:
        raise ServeError("--token and --token-file: give one")
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise ServeError(f"{escape_name(str(token_file))}: cannot read the token ({why}); "
                             "give a readable file holding it on its first line") from None
    if token is not None:
        if not token or not set(token) <= TOKEN_CHARS:
            raise ServeError("the token may hold only the letters A-Z and a-z, digits and - . _ ~ (printable "
                             f"ASCII that fits a header, an address and a cookie as it is); {MAKE_TOKEN}")
        return token
    if not is_loopback(host):
        raise ServeError(f"--host {shown(host)} serves beyond this machine, so a token is required: "
                         f"--token, ${TOKEN_ENV} or --token-file (at least {TOKEN_MIN} characters; "
                         f"{MAKE_TOKEN})")
    return None


def check_token_strength(token: str | None, host: str) -> None:
    if token is not None and len(token) < TOKEN_MIN and not is_loopback(host):
        raise ServeError(f"the token is {len(token)} characters; beyond loopback it must be at least "
                         f"{TOKEN_MIN}; {MAKE_TOKEN}")




def given_token(query: dict, headers) -> tuple[str | None, bool]:
    """The token a request carries, from ?token=, Authorization: Bearer or the cookie, and
    whether it came in the query (the page then moves it into the cookie)."""
    given = query.get("token")
    if given is not None:
        return given, True
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip(), False
    for part in headers.get("Cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value, False
    return None, False
