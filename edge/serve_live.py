"""serve's camera loop and what it leaves for every reader (the page, the stream, the API, MQTT).

One thread reads the source through edge.camera.Frames (its retries and back-off) and
classifies every frame once; viewers only read what it left, so clients never drive the
camera and ten viewers cost what one does.

numpy and Pillow (OpenCV or picamera2 through edge.camera): this file ships to the device.
"""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from edge import camera
from edge.errors import NoodleError, first_line
from edge.escape import escape_name, shown
from edge.logs import logger
from edge.preprocess import from_frame

# The stream's JPEG quality: the frame is for people to look at, not to classify.
STREAM_QUALITY = 80
# Frames per second a video file is played at when its container does not say.
FILE_FPS = 25.0
# The page's FPS: frames over the last this many.
FPS_WINDOW = 30

log = logger("serve.camera")


class Live:
    """The camera's last frame and result, and a condition to wait on for the next.

    `seq` counts frames; `version` also counts changes of state (running, ended, ...),
    which a page shows too.
    """

    def __init__(self, source: str | None):
        self.source = source  # None: no camera, the API only
        self.cond = threading.Condition()
        self.seq = self.version = 0
        self.frame: np.ndarray | None = None
        self.result: dict | None = None
        self.state = "starting" if source else "none"
        self.closed = False
        self._times: deque = deque(maxlen=FPS_WINDOW)
        self._jpeg: tuple[int, bytes] = (0, b"")
        self._encoding = threading.Lock()

    def publish(self, frame: np.ndarray, result: dict) -> None:
        with self.cond:
            self.seq += 1
            self.version += 1
            self.frame, self.result = frame, result
            self._times.append(time.monotonic())
            self.cond.notify_all()

    def set_state(self, state: str) -> None:
        with self.cond:
            self.state = state
            self.version += 1
            self._times.clear()  # a pause is not a slow frame
            self.cond.notify_all()

    @property
    def fps(self) -> float:
        times = self._times
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def wait(self, seen: int, timeout: float, key: str = "seq") -> int:
        """`seq` (or `version`) once it differs from `seen`, or after `timeout` seconds."""
        with self.cond:
            self.cond.wait_for(lambda: getattr(self, key) != seen or self.closed, timeout)
            return getattr(self, key)

    def snapshot(self) -> dict:
        with self.cond:
            return {"state": self.state, "source": self.source, "frame": self.seq, "version": self.version,
                    "fps": round(self.fps, 2), **(self.result or {})}

    def next_jpeg(self, seen: int, timeout: float) -> tuple[int, bytes]:
        """The frame after `seen` as JPEG, or the last one again after `timeout` seconds (a
        stream's keep-alive, which finds a client that went away)."""
        self.wait(seen, timeout)
        return self.jpeg()

    def jpeg(self) -> tuple[int, bytes]:
        """The last frame as JPEG, encoded once per frame by the first viewer who asks."""
        from PIL import Image

        with self._encoding:
            with self.cond:
                seq, frame = self.seq, self.frame
            if frame is not None and self._jpeg[0] != seq:
                rgb = frame if frame.ndim == 2 else frame[:, :, 2::-1]  # frames are B, G, R(, A)
                out = _Buffer()
                Image.fromarray(np.ascontiguousarray(rgb)).save(out, "JPEG", quality=STREAM_QUALITY)
                self._jpeg = (seq, out.getvalue())
            return self._jpeg


class _Buffer(list):
    """A write-only file for Pillow's save: cheaper than BytesIO's growing copies."""

    def write(self, data) -> int:
        self.append(bytes(data))
        return len(data)

    def getvalue(self) -> bytes:
        return b"".join(self)


def file_fps(source: str) -> float:
    """A video file's frame rate, to play it as a camera would: its container's, else FILE_FPS."""
    cap = camera.open_capture(source)
    try:
        fps = float(cap.get(5)) if hasattr(cap, "get") else 0.0  # cv2.CAP_PROP_FPS
    finally:
        cap.release()
    return fps if 0 < fps <= 240 else FILE_FPS


def need_opencv(source: str) -> None:
    """OpenCV for --source, checked before listening: edge.camera.open_capture's one line otherwise."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise camera.SourceError(f"--source {shown(source)}: OpenCV is not installed; "
                                 "pip install opencv-python-headless") from None


def camera_loop(make_frames, model, live: Live, metrics, stop: threading.Event,
                repeat: bool, on_result=None) -> None:
    """Read and classify frames until `stop`; a source that gives up is opened again, for ever.

    A video file is played at its own frame rate, once (or again and again with `repeat`);
    a camera or stream sets its own pace.
    """
    pace = None
    while not stop.is_set():
        frames = make_frames()
        given = 0
        try:
            if frames.is_file and pace is None:
                pace = 1.0 / file_fps(frames.source)
            live.set_state("running")
            start = time.monotonic()
            for frame in frames:
                metrics.inc("noodle_frames_total")
                try:
                    result = model.classify(from_frame(frame, model.clf.size, bgr=True))
                except NoodleError as exc:
                    metrics.inc("noodle_errors_total", kind="camera")
                    log.error(f"error: {live.source}: a frame could not be classified ({first_line(exc)})")
                    break
                given += 1
                metrics.classified("camera", model.said_unknown(result))
                live.publish(frame, result)
                if on_result is not None:
                    on_result(result)
                if stop.is_set():
                    return
                if pace is not None:
                    stop.wait(max(0.0, start + given * pace - time.monotonic()))
        except camera.SourceError as exc:
            metrics.inc("noodle_errors_total", kind="camera")
            log.error(f"error: {exc}")
        finally:
            metrics.inc("noodle_camera_reconnects_total", frames.reopened)
        if frames.lost is not None:
            metrics.inc("noodle_errors_total", kind="camera")
            log.error(f"error: {frames.lost}")
        elif frames.is_file and given:
            if repeat:
                continue
            live.set_state("ended")
            log.info(f"{escape_name(frames.source)}: ended after {given} frame(s); the last result stays, "
                "the API goes on (--loop plays it again)")
            return
        live.set_state("reconnecting")
        log.warning(f"warning: {frames.name}: opening it again in {camera.BACKOFF[-1]:g} s")
        metrics.inc("noodle_camera_reconnects_total")
        stop.wait(camera.BACKOFF[-1])


def guarded_camera_loop(make_frames, model, live: Live, metrics, stop: threading.Event, repeat: bool,
                        on_result=None) -> None:
    """camera_loop, and after anything it did not expect (a driver's or OpenCV's own error), one line
    in the log and the source opened again after a pause: the thread never dies with a traceback."""
    while not stop.is_set():
        try:
            camera_loop(make_frames, model, live, metrics, stop, repeat, on_result)
            return
        except Exception as exc:  # noqa: BLE001 (the server goes on; the log says what happened)
            metrics.inc("noodle_errors_total", kind="camera")
            live.set_state("reconnecting")
            log.error(f"error: {live.source}: {type(exc).__name__}: {first_line(exc)}; opening it again in "
                f"{camera.BACKOFF[-1]:g} s")
            stop.wait(camera.BACKOFF[-1])
