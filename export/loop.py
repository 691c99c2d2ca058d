"""`noodle pull` and `noodle deploy`: the loop between the device and this machine.

    noodle pull URL --out DIR        the device's captures -> DIR/<label>/*.jpg (only what is new)
    make export DATA=DIR             train, calibrate, validate, compare, as ever
    noodle deploy URL RUN            RUN's int8 model -> the device, checked there on its captures

No TensorFlow here: both talk to `noodle-edge serve --captures` over HTTP (export/device.py).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from edge.errors import one_line_errors
from edge.usage import OneLineUsage

app = typer.Typer(cls=OneLineUsage, no_args_is_help=True, add_completion=False)

Url = Annotated[str, typer.Argument(help="The device's serve, as it printed it: http://raspberrypi.local:8080/")]
Token = Annotated[str | None, typer.Option(
    envvar="NOODLE_TOKEN", show_envvar=True, help="The device's token (on the Pi: cat serve.token).")]
TokenFile = Annotated[Path | None, typer.Option(
    readable=False, help="A file whose first line is the token (kept out of `ps` and the shell's history).")]


def device_of(url: str, token: str | None, token_file: Path | None):
    from export.device import Device, read_token

    return Device(url, read_token(token, token_file))


@app.command("pull")
@one_line_errors
def pull_command(
    url: Url,
    out: Annotated[Path, typer.Option(
        readable=False, help="The dataset folder to fill: OUT/<label>/*.jpg, what `noodle train` reads.")
    ] = Path("data/captures"),
    unsure: Annotated[bool, typer.Option(
        "--unsure", help="Also the frames the device was unsure of, into OUT/_unsure/ (to label by hand).")
    ] = False,
    token: Token = None,
    token_file: TokenFile = None,
) -> None:
    """Fetch the device's captures into a dataset folder; a second pull fetches only what is new."""
    from export.pull import pull, summary

    device = device_of(url, token, token_file)
    done = pull(device, out, unsure)
    for line in summary(done, device.url):
        print(line, file=sys.stderr)


@app.command("deploy")
@one_line_errors
def deploy_command(
    url: Url,
    model: Annotated[Path, typer.Argument(
        readable=False, help="A run folder (its export/), an export folder, or a .tflite with its "
                             "manifest.json beside it.")],
    variant: Annotated[str | None, typer.Option(
        help="The variant to deploy from a run or export folder (default: int8, a quarter of float32's "
             "size, on the Pi's integer kernels).")] = None,
    min_accuracy: Annotated[float | None, typer.Option(
        min=0, max=1, help="Refuse the model when its accuracy on the device's captures is under this "
                           "fraction (0.9: 90 %).")] = None,
    token: Token = None,
    token_file: TokenFile = None,
) -> None:
    """Send an exported model to the device: checked on its captures there, swapped in, the old one kept."""
    from export.deploy import deploy, verdict

    device = device_of(url, token, token_file)
    answer = deploy(device, model, variant, min_accuracy)
    for line in verdict(answer, device.url):
        print(line)
