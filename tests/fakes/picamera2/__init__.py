"""A stand-in for picamera2 (Raspberry Pi's libcamera binding) with its real API surface.

Built from picamera2 0.3's source (picamera2/picamera2.py, request.py) and its
manual's format table, so code written against it runs unchanged on a Pi:

- `Picamera2(camera_num=0, ...)` opens the camera; RuntimeError("Camera __init__
  sequence did not complete.") when there is none or it is busy.
- `create_preview_configuration(main={}, lores=None, raw={}, ...)` returns a dict;
  main defaults to {"format": "XBGR8888", "size": (640, 480)}, lores to YUV420 at
  main's size; a stream key other than format/size/stride/preserve_ar is a ValueError.
- `configure(config)`, `start()`, `stop()`, `close()` (close stops first, twice is fine).
- `capture_array(name="main", wait=None)`: the next frame of that stream as a copy.
  A number for `wait` is a timeout in seconds (TimeoutError when it passes).

Formats are libcamera's names, which describe a pixel as a little-endian word, so
the bytes in memory run the other way. From the manual's table and request.py's
PIL mode lookup ({"RGB888": "BGR", "BGR888": "RGB", "XBGR8888": "RGBX",
"XRGB8888": "BGRX"}):
  RGB888   (h, w, 3)  [B, G, R]
  BGR888   (h, w, 3)  [R, G, B]
  XRGB8888 (h, w, 4)  [B, G, R, 255]
  XBGR8888 (h, w, 4)  [R, G, B, 255]
  YUV420   (h * 3 // 2, w)  Y plane, then U and V at half size

What the fake sensor sees is `Picamera2.scene`, an (R, G, B) colour; tests set
`Picamera2.fail_open` / `Picamera2.stall` to make it fail the way cameras do.
"""
# picamera2's own signatures have {} defaults; the stand-in keeps them.
# ruff: noqa: B006
from __future__ import annotations

import numpy as np

STREAM_KEYS = ("format", "size", "stride", "preserve_ar")
CHANNELS = {"RGB888": [2, 1, 0], "BGR888": [0, 1, 2], "XRGB8888": [2, 1, 0, 3], "XBGR8888": [0, 1, 2, 3]}


def _stream(defaults: dict, updates: dict | None) -> dict | None:
    if updates is None:
        return None
    for key in updates:
        if key not in STREAM_KEYS:
            raise ValueError(f"Bad key {key!r}: valid stream configuration keys are {STREAM_KEYS}")
    return {**defaults, **updates}


class Picamera2:
    scene: tuple[int, int, int] = (0, 0, 0)  # the colour in front of the lens, R, G, B
    fail_open = False  # no camera, or another process holds it
    stall = False  # requests never complete (a loose ribbon cable)
    opened: list[Picamera2] = []  # every instance, for tests to inspect

    def __init__(self, camera_num: int = 0, verbose_console=None, tuning=None, allocator=None):
        if Picamera2.fail_open:
            raise RuntimeError("Camera __init__ sequence did not complete.")
        self.camera_num = camera_num
        self.is_open, self.started = True, False
        self.camera_config: dict | None = None
        Picamera2.opened.append(self)

    def create_preview_configuration(self, main={}, lores=None, raw={}, transform=None,
                                     colour_space=None, buffer_count=4, controls={}, display="main",
                                     encode="main", queue=True, sensor={}, use_case="preview") -> dict:
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        main = _stream({"format": "XBGR8888", "size": (640, 480), "preserve_ar": True}, main)
        lores = _stream({"format": "YUV420", "size": main["size"], "preserve_ar": False}, lores)
        return {"use_case": use_case, "buffer_count": buffer_count, "queue": queue, "main": main,
                "lores": lores, "raw": raw, "controls": controls, "display": display, "encode": encode}

    def configure(self, camera_config=None) -> None:
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if isinstance(camera_config, str) or camera_config is None:
            camera_config = self.create_preview_configuration()
        for name in ("main", "lores"):
            stream = camera_config.get(name)
            if stream is not None and stream["format"] not in (*CHANNELS, "YUV420"):
                raise RuntimeError(f"Format {stream['format']} not supported by this stand-in")
        self.camera_config = camera_config

    def start(self, config=None, show_preview=False) -> None:
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            self.configure("preview")
        self.started = True

    def capture_array(self, name: str = "main", wait=None, signal_function=None) -> np.ndarray:
        if not self.started:
            # The real call queues a job that only a running camera completes.
            raise RuntimeError("capture_array on a camera that was not started would wait forever")
        if Picamera2.stall:
            if wait is None or wait is True:
                raise RuntimeError("a stalled camera with no timeout would wait forever")
            raise TimeoutError()
        stream = self.camera_config.get(name)
        if stream is None:
            raise RuntimeError(f"Stream {name!r} is not defined")
        width, height = stream["size"]
        if stream["format"] == "YUV420":
            return np.zeros((height * 3 // 2, width), np.uint8)
        rgbx = np.array([*Picamera2.scene, 255], np.uint8)
        pixel = rgbx[CHANNELS[stream["format"]]]
        return np.broadcast_to(pixel, (height, width, len(pixel))).copy()

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        if not self.is_open:
            return
        self.stop()
        self.is_open = False
