"""`noodle-edge serve`'s and the camera's defaults, each stated once with its reason.

The CLI reads its option defaults from DEFAULTS (edge/cli.py); serve's modules read the
limits they are given, never a second copy of these numbers.

Standard library only: this file ships to the device.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    # This machine only: beyond loopback a token is required, so the safe start needs none.
    host: str = "127.0.0.1"
    # The usual unprivileged HTTP port (below 1024 needs root).
    port: int = 8080
    # Enough for a page's bars and an automation's "is it the second best?", small in every answer.
    top_k: int = 3
    # A phone photo is 2 to 6 MB; a Pi 3 has 1 GB for every upload being read at once.
    max_body_mb: float = 8.0
    # A page holds one stream and one event feed; eight pages at once is a household's worth,
    # and each slot is a JPEG encode per frame.
    max_streams: int = 8
    # Requests a second per client address: a page load is 3, a script classifying photos one
    # at a time does a few; a flood from one address gets 429s instead of the interpreter.
    rate: float = 20.0
    # Reopen attempts after a failed camera read before a pause: a glitch or a USB camera
    # re-enumerating (edge.camera.BACKOFF's pauses) passes within five.
    retries: int = 5
    # Captures take 200 MB at most: about 2,000 photos of a camera's 640x480 centre square, far
    # more than a class needs, and a small share of a Pi's SD card (edge.captures.MAX_MB).
    captures_max_mb: float = 200.0
    # A camera frame whose top score is under this is kept in captures/_unsure/ (a ring): the
    # runner-up was close, so it is a frame worth a look and perhaps a label.
    unsure: float = 0.6
    # Under this top score the answer is "unknown" (edge.postprocess.UNKNOWN). 0, off: every
    # answer is one of the model's classes, as before; a good value depends on the model and
    # the scene (the scores of frames of an empty room), so none is guessed here.
    threshold: float = 0.0
    # The largest model PUT /v1/model takes: lite0's float32 is 14 MB and its int8 5 MB; 50 MB admits
    # the float32 of a backbone three times lite0's, and a Pi 3's 1 GB holds it while it is checked.
    max_model_mb: float = 50.0
    # Seconds between MQTT heartbeats: Home Assistant notices a dead device within a minute.
    mqtt_heartbeat: float = 30.0


DEFAULTS = ServeConfig()
