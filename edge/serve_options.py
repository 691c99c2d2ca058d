"""`noodle-edge serve`'s options, one typed alias each (typer's Annotated), so that the command
reads as what it does. Their defaults are ServeConfig's (edge.serve_config), stated once there.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Source = Annotated[str | None, typer.Option(
    help="OpenCV source: 0 for /dev/video0, a video file or a stream URL. Without it (or "
         "--picamera) only the API is served.")]
Picamera = Annotated[bool, typer.Option(
    "--picamera", help="Read the Raspberry Pi camera via picamera2.")]
Host = Annotated[str, typer.Option(
    help="Address to listen on: this machine only by default; 0.0.0.0 for every network "
         "(then a token is required).")]
Port = Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")]
Token = Annotated[str | None, typer.Option(
    envvar="NOODLE_TOKEN", show_envvar=True,
    help="Required of every request but /healthz (Authorization: Bearer, or open /?token= once). "
         "Beyond loopback it is required.")]
TokenFile = Annotated[Path | None, typer.Option(
    readable=False, help="A file whose first line is the token (kept out of `ps` and the unit).")]
TopK = Annotated[int, typer.Option(
    "--top-k", "-k", min=1, help="Labels with scores per answer.")]
Threshold = Annotated[float, typer.Option(
    min=0, max=1, help="Under this top score the label is `unknown` (none of these); the score and "
                       "top-k stay the model's. 0: off.")]
Loop = Annotated[bool, typer.Option(
    "--loop", help="Play a video file again when it ends (without: its last result stays).")]
MaxBodyMb = Annotated[float, typer.Option(
    min=0.01, max=1024, help="Largest upload in MB: a phone photo is 2 to 6.")]
MaxStreams = Annotated[int, typer.Option(
    min=1, max=64,
    help="Streams and event feeds open at once; a page holds one of each.")]
Rate = Annotated[float, typer.Option(
    min=0, help="Requests a second per client address, in bursts of two seconds' worth; 0: "
                "no limit.")]
Retries = Annotated[int, typer.Option(
    min=0, help="Reopen attempts after a failed read; then a pause, and again: serve never "
                "gives up.")]
Mqtt = Annotated[str | None, typer.Option(
    help="mqtt://[USER[:PASSWORD]@]HOST[:PORT]/TOPIC-PREFIX (mqtts:// for TLS): publish each label "
         "change, a heartbeat and Home Assistant discovery.")]
MqttUser = Annotated[str | None, typer.Option(help="MQTT user name.")]
MqttPassword = Annotated[str | None, typer.Option(
    envvar="NOODLE_MQTT_PASSWORD", show_envvar=True, help="MQTT password.")]
MqttCa = Annotated[Path | None, typer.Option(
    readable=False, help="The broker's CA certificate (PEM) for mqtts:// (default: the "
                         "system's).")]
MqttHeartbeat = Annotated[float, typer.Option(
    min=0.1, help="Seconds between heartbeats.")]
MqttName = Annotated[str | None, typer.Option(
    help="The device's name in Home Assistant (default: the topic prefix's last level, by default "
         "the hostname).")]
Captures = Annotated[Path | None, typer.Option(
    file_okay=False, help="Keep captures here (DIR/<label>/*.jpg), teach from them and check deployed "
                          "models on them: the page's Teach panel, /v1/captures, /v1/teach, PUT /v1/model "
                          "(`noodle deploy`), /v1/model/rollback; DIR/.models/ keeps the models served.")]
CapturesMaxMb = Annotated[float, typer.Option(
    min=0.01, help="Megabytes the captures may use; a capture past it is refused in "
                   "words.")]
Unsure = Annotated[float, typer.Option(
    min=0, max=1, help="A camera frame whose top score is under this is kept in "
                       "captures/_unsure/ (the last 100).")]
MaxModelMb = Annotated[float, typer.Option(
    min=0.1, max=1024, help="Largest model PUT /v1/model takes (`noodle deploy`), in MB.")]
