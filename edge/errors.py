"""User-facing errors: one line naming the file and the fix, exit code 2.

Every stage raises a subclass of NoodleError for bad input; the CLIs turn it
into that one line instead of a traceback.
"""
from __future__ import annotations

import functools
import sys


class NoodleError(Exception):
    """Bad input the user can fix; str() is the whole message."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """An exception's first line of text (its type when it has none), for one-line reports."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_line_errors(command):
    """Decorate a CLI command: NoodleError -> `error: ...` on stderr, exit 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except NoodleError as exc:
            # One problem a line (a manifest may have several), each its own `error:` line.
            for line in str(exc).splitlines() or [""]:
                print(f"error: {line}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
