"""The `noodle` command: one Typer app per stage, composed into one CLI.

Stages import TensorFlow inside their commands, so `noodle --help` and the
edge commands never pay for it.
"""
import os
import sys
from typing import Annotated

import typer

from edge.cli import app as edge_app
from edge.usage import OneLineUsage
from export.bundle import app as bundle_app
from export.cli import app as export_app
from export.loop import app as loop_app
from train.cli import app as train_app

app = typer.Typer(
    cls=OneLineUsage,
    help="noodle: from a folder of photos to an int8 classifier on a Raspberry Pi.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main(verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Also show TensorFlow's C++ start-up and converter log lines.")] = False):
    from train import quiet

    if verbose:
        os.environ[quiet.VERBOSE_ENV] = "1"  # the stages' child processes too
    # Only for the real terminal: a test runner's replaced stderr is left alone.
    elif quiet.enabled() and sys.stderr is sys.__stderr__:
        quiet.filter_stderr()


app.add_typer(train_app)
app.add_typer(export_app)
app.add_typer(bundle_app)
app.add_typer(loop_app)
app.add_typer(edge_app, name="edge")

if __name__ == "__main__":
    app()
