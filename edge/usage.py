"""Usage errors (an option out of its range, an unknown option, a missing argument) as one line.

Typer draws them in a box under the usage text; noodle says every other
error as one `error:` line with exit code 2 (edge.errors), and these alike:
`error: No such option: --epoch (Possible options: --epochs); see noodle train
--help`. The ranges of numeric options are typer's own `min=`/`max=`, checked
before the command runs, in every CLI of noodle; their errors read as noodle's
others do: `error: --epochs 0: out of range; give 1 to 100,000`.
"""
from __future__ import annotations

import re
import sys

import typer
import typer.core

try:  # typer vendors click from 0.2x on; before, its errors are click's own
    from typer import TyperException as ClickException
except ImportError:
    from click import ClickException


class OneLineUsage(typer.core.TyperGroup):
    """A Typer app's group whose usage errors, its subcommands' included, are one line."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except ClickException as exc:
            _one_line(exc)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClickException as exc:
            _one_line(exc)


def _one_line(exc: ClickException):
    """Print a usage error as one line and exit 2; anything else (help on no arguments) goes on."""
    if getattr(exc, "exit_code", None) != 2 or type(exc).__name__ == "NoArgsIsHelpError":
        raise exc
    message = " ".join(exc.format_message().split()).rstrip(".")
    out_of_range = RANGE_ERROR.fullmatch(message)
    if out_of_range:
        option, value, bounds = out_of_range.groups()
        print(f"error: {option} {value}: out of range; give {_bounds(bounds)}", file=sys.stderr)
        raise typer.Exit(2)
    where = getattr(getattr(exc, "ctx", None), "command_path", None)
    print(f"error: {message}" + (f"; see {where} --help" if where else ""), file=sys.stderr)
    raise typer.Exit(2)


# What typer says of a value outside an option's min=/max=.
RANGE_ERROR = re.compile(r"Invalid value for '(--[\w-]+)'(?: / '-\w+')?: (\S+) is not in the range (\S+)")


def _bounds(bounds: str) -> str:
    """typer's `1<=x<=100000`, `x>=1` or `x<=9` in words: `1 to 100,000`, `1 or more`, `9 or less`."""
    numbers = [float(n) for n in re.findall(r"-?[\d.]+(?:e-?\d+)?", bounds)]
    shown = [f"{n:,.0f}" if n.is_integer() else f"{n:g}" for n in numbers]
    if len(shown) == 2:
        return f"{shown[0]} to {shown[1]}"
    return f"{shown[0]} or more" if bounds.startswith("x>") else f"{shown[0]} or less"
