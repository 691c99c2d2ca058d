"""The device's one log: stdlib logging under the "noodle" logger, one line per write.

Every device module logs through `logger(name)` ("noodle.serve", "noodle.camera", ...), and one
handler on the "noodle" logger writes them all, so that

- a record is one line, written whole under the handler's lock: threads never merge lines, and
  a control character or line break in a message (a label, a file name) is escaped as
  edge.escape.escape_name writes it;
- a message that repeats (a flood of 429s) is written at most REPEATS times a minute; then one
  line says "N more like this in the last minute". Records are alike when their logger, level
  and format string are (so log with %-style arguments, not f-strings, where a line repeats);
- a report's lines (pi-check's, host-check's) go to stdout after their prefix instead;
- a secret the process was given (`hide`) and anything in a `token=` query or a Bearer header is
  written as ***.

Standard library only: this file ships to the device.
"""
from __future__ import annotations

import logging
import re
import sys
import threading
import time

from edge.escape import escape_name

ROOT = "noodle"
# Lines one kind of message may write a minute; a journald on a Pi keeps 10,000 lines per 30 s
# for the whole system, so a flood of one kind must not push the others out.
REPEATS = 10
WINDOW_SECONDS = 60.0
# The longest line written: a request line or a decoder's message can be anything.
LINE_MAX = 2000
HIDDEN = "***"
# Secrets in the shapes a request brings them, wherever a message quotes one.
_SECRET_SHAPES = re.compile(r"(?i)(token=|bearer\s+|noodle_token=)[^\s&;\"']+")


def one_line(text: str) -> str:
    """`text` with every unprintable character escaped (a line break becomes \\n), cut to LINE_MAX."""
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else escape_name(ch) for ch in text)
    return text if len(text) <= LINE_MAX else text[: LINE_MAX - 3] + "..."


class OneLineHandler(logging.Handler):
    """Writes each record as one escaped line to `stream` (None: sys.stderr, looked up at each
    write), with `prefix` in front; alike records past REPEATS a minute are counted instead."""

    def __init__(self, stream=None, prefix: str = ""):
        super().__init__(logging.INFO)
        self.stream, self.prefix = stream, prefix
        self.secrets: set[str] = set()
        self.windows: dict[tuple, list] = {}  # key -> [window start, written, held back]
        self.routes: dict[str, tuple[bool, str]] = {}  # logger name -> (to stdout, prefix)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            now = time.monotonic()
            lines = self._expired(now)
            key = (record.name, record.levelno, str(record.msg))
            window = self.windows.setdefault(key, [now, 0, 0])
            if window[1] < REPEATS:
                window[1] += 1
                lines.append(self.hidden(record.getMessage()))
            else:
                window[2] += 1
            self._write(lines, *self.routes.get(record.name, (False, self.prefix)))
        except Exception:  # noqa: BLE001 (logging's own rule: a log line never takes the program down)
            self.handleError(record)

    def hidden(self, text: str) -> str:
        text = _SECRET_SHAPES.sub(lambda m: m.group(1) + HIDDEN, text)
        for secret in self.secrets:
            text = text.replace(secret, HIDDEN)
        return text

    def _expired(self, now: float) -> list[str]:
        """The "N more" lines of windows that closed, which are forgotten."""
        lines = []
        for key in [k for k, w in self.windows.items() if now - w[0] >= WINDOW_SECONDS]:
            held = self.windows.pop(key)[2]
            if held:
                lines.append(f"{held} more like this in the last minute ({key[0]}: {one_line(key[2])[:80]})")
        return lines

    def _write(self, lines: list[str], to_stdout: bool = False, prefix: str | None = None) -> None:
        if not lines:
            return
        stream = self.stream or (sys.stdout if to_stdout else sys.stderr)
        prefix = self.prefix if prefix is None else prefix
        stream.write("".join(f"{prefix}{one_line(line)}\n" for line in lines))
        stream.flush()

    def close(self) -> None:
        """At exit: say what the open windows held back."""
        with self.lock:
            self._write(self._expired(float("inf")))
        super().close()


_setup = threading.Lock()


def handler() -> OneLineHandler:
    """The "noodle" logger's handler, made on first use (level INFO, not passed on to the root)."""
    root = logging.getLogger(ROOT)
    with _setup:
        found = next((h for h in root.handlers if isinstance(h, OneLineHandler)), None)
        if found is None:
            found = OneLineHandler()
            root.addHandler(found)
            root.setLevel(logging.INFO)
            root.propagate = False
        return found


def logger(name: str, stdout: bool = False, prefix: str = "") -> logging.Logger:
    """The logger "noodle.NAME", its output set up: its lines to stderr (or stdout), each after
    `prefix` (pi-check's "pi-check: ")."""
    found = handler()
    if stdout or prefix:
        found.routes[f"{ROOT}.{name}"] = (stdout, prefix)
    return logging.getLogger(f"{ROOT}.{name}")


def hide(secret: str | None) -> None:
    """Never write `secret` (serve's token): it becomes *** in every line."""
    if secret:
        handler().secrets.add(secret)
