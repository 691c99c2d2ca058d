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


# What a token's name may hold (--token NAME:SECRET): it is logged and shown as "by whom".
NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._")
# A name is a word or two, never a second secret.
NAME_MAX = 40
# The name of a token given without one.
UNNAMED = "token"


class Tokens:
    """The tokens serve accepts, each with a name (who deployed a model: the name, never the secret).

    --token and each line of --token-file are SECRET or NAME:SECRET; ':' is no token character, so
    the two never mix. A request may send SECRET or NAME:SECRET; only the secret is compared, with
    each token's in constant time, and the name recorded is the matching token's own."""

    def __init__(self, named: dict[str, str]):
        self.named = named

    @classmethod
    def parse(cls, lines: list[str], where: str = "--token") -> Tokens:
        named: dict[str, str] = {}
        for i, line in enumerate(lines, 1):
            name, sep, secret = line.rpartition(":")
            if not sep:
                name = UNNAMED if len(lines) == 1 else f"{UNNAMED}-{i}"
            if not name or len(name) > NAME_MAX or not set(name) <= NAME_CHARS:
                raise ServeError(f"{where}: a token's name (NAME:SECRET) is 1 to {NAME_MAX} of the letters "
                                 "A-Z and a-z, digits and - . _; rename it")
            if not secret or not set(secret) <= TOKEN_CHARS:
                raise ServeError(f"{where}: the token may hold only the letters A-Z and a-z, digits and "
                                 "- . _ ~ (printable ASCII that fits a header, an address and a cookie as "
                                 f"it is), optionally after NAME: ; {MAKE_TOKEN}")
            if name in named:
                raise ServeError(f"{where}: two tokens named {name}; give each its own name (NAME:SECRET)")
            named[name] = secret
        return cls(named)

    @property
    def secrets(self) -> list[str]:
        return list(self.named.values())

    def match(self, given: str) -> str | None:
        """The name of the token `given` is (SECRET or NAME:SECRET), or None; every one compared."""
        secret = given.rpartition(":")[2]
        found = None
        for name, token in self.named.items():
            if same_secret(secret, token) and found is None:
                found = name
        return found


def resolve_token(token: str | None, token_file, host: str) -> Tokens | None:
    """The tokens from --token (or $NOODLE_TOKEN) or --token-file (a token a line, # comments);
    required beyond loopback."""
    if token is not None and token_file is not None:
        raise ServeError("--token and --token-file: give one")
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as f:
                lines = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise ServeError(f"{escape_name(str(token_file))}: cannot read the token ({why}); "
                             "give a readable file holding it on its first line") from None
        if not lines:
            raise ServeError(f"{escape_name(str(token_file))}: no token in it; write one a line, "
                             f"SECRET or NAME:SECRET ({MAKE_TOKEN})")
        return Tokens.parse(lines, escape_name(str(token_file)))
    if token is not None:
        return Tokens.parse([token])
    if not is_loopback(host):
        raise ServeError(f"--host {shown(host)} serves beyond this machine, so a token is required: "
                         f"--token, ${TOKEN_ENV} or --token-file (at least {TOKEN_MIN} characters; "
                         f"{MAKE_TOKEN})")
    return None


def check_token_strength(tokens: Tokens | None, host: str) -> None:
    short = min((len(t) for t in tokens.secrets), default=TOKEN_MIN) if tokens is not None else TOKEN_MIN
    if short < TOKEN_MIN and not is_loopback(host):
        raise ServeError(f"a token is {short} characters; beyond loopback each must be at least "
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
