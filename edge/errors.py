"""User-facing errors: one line naming the file and the fix, exit code 2.

Every stage raises a subclass of NoodleError for bad input; the CLIs turn it
into that one line instead of a traceback. SIGTERM (`kill`, systemd's stop, a
timeout) is raised as Terminated, a KeyboardInterrupt, so the same cleanup
runs as for Ctrl-C (atomic_output removes its temporary file); the process
then ends by SIGTERM, as its caller expects.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import threading


class NoodleError(Exception):
    """Bad input the user can fix; str() is the whole message."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """An exception's first line of text (its type when it has none), for one-line reports."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwind as Ctrl-C does, so every cleanup runs."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _catch_sigterm() -> bool:
    """Turn SIGTERM into Terminated while a command runs; False where that is not ours to do."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False  # someone else's handler (an outer command, a test runner)
    signal.signal(signal.SIGTERM, _raise_terminated)
    return True


def one_line_errors(command):
    """Decorate a CLI command: NoodleError -> `error: ...` on stderr, exit 2; SIGTERM cleans up."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        import typer  # the commands' own; the library modules that import this file need it not

        ours = _catch_sigterm()
        try:
            return command(*args, **kwargs)
        except NoodleError as exc:
            # One problem a line (a manifest may have several), each its own `error:` line.
            for line in str(exc).splitlines() or [""]:
                print(f"error: {line}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None
        except Terminated:
            print("terminated", file=sys.stderr)
            if ours:  # cleaned up: now end as SIGTERM ends a process
                sys.stderr.flush()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
            raise typer.Exit(128 + signal.SIGTERM) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
        finally:
            if ours:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return wrapper
