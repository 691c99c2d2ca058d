"""Classify a live camera, a video file or a stream, frame by frame.

Frames come from OpenCV (`--source 0`, a file, a URL) or picamera2
(`--picamera`), are centre-cropped to a square and preprocessed by
edge.preprocess.from_frame, then classified one at a time. A read that fails
(a camera unplugged, a stream dropped) closes the source and reopens it after
a growing pause; after `retries` failures in a row the run gives up.

The seam for tests and other sources is `open_capture(source, picamera)`:
the one place a capture is made. Anything with OpenCV's `read() -> (ok,
frame)`, `release()` and `isOpened()` will do; frames are BGR like OpenCV's.

numpy and Pillow, plus OpenCV or picamera2 when they are installed.
"""
from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from edge.errors import NoodleError
from edge.preprocess import from_frame

# Pauses before each reopen, in seconds; the last repeats. Short first (a
# glitch), then long enough for a USB camera to re-enumerate.
BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)
# picamera2's capture size: 4:3 like the sensor, small enough to be cheap;
# the centre crop and resize to the model's input happen afterwards anyway.
PICAMERA_SIZE = (640, 480)
WINDOW = "noodle"


class SourceError(NoodleError):
    """A camera or video that cannot be opened at all."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class PiCamera:
    """picamera2 behind OpenCV's capture interface."""

    def __init__(self, size: tuple[int, int] = PICAMERA_SIZE):
        from picamera2 import Picamera2

        self.camera = Picamera2()
        # libcamera's "RGB888" lays bytes out B, G, R: the order OpenCV frames have.
        config = self.camera.create_preview_configuration(main={"format": "RGB888", "size": size})
        self.camera.configure(config)
        self.camera.start()

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        try:
            return True, self.camera.capture_array()
        except Exception:  # noqa: BLE001 (any driver error is a failed read, retried)
            return False, None

    def release(self) -> None:
        self.camera.stop()
        self.camera.close()


def open_capture(source: str, picamera: bool = False):
    """A capture for `source`: picamera2, or OpenCV for a device index, file or URL."""
    if picamera:
        try:
            return PiCamera()
        except ImportError:
            raise SourceError("--picamera: picamera2 is not importable; on Raspberry Pi OS "
                              "`sudo apt install python3-picamera2` and make the venv with "
                              "--system-site-packages (install.sh does)") from None
    try:
        import cv2
    except ImportError:
        raise SourceError(f"--source {source}: OpenCV is not installed; "
                          "pip install opencv-python-headless") from None
    return cv2.VideoCapture(int(source) if source.isdigit() else source)


def _is_file(source: str) -> bool:
    return not source.isdigit() and "://" not in source


class Frames:
    """Iterate over a source's frames, reopening it with back-off when a read fails."""

    def __init__(self, source: str = "0", picamera: bool = False, retries: int = 5,
                 sleep: Callable[[float], None] = time.sleep):
        self.source, self.picamera, self.retries, self.sleep = source, picamera, retries, sleep
        self.name = "picamera" if picamera else f"source {source}"
        self.reopened = 0  # reopen attempts, reported in the summary
        self.lost: str | None = None  # why it gave up, if it did
        self._file = not picamera and _is_file(source)
        if self._file and not os.path.exists(source):
            raise SourceError(f"{source}: no such video file; pass --source 0 for a camera, "
                              "a video file or a stream URL")

    def __iter__(self) -> Iterator[np.ndarray]:
        cap, read, failures = None, 0, 0
        try:
            while True:
                if cap is None:
                    cap = open_capture(self.source, self.picamera)
                    if read and self._file:
                        cap.set(1, read)  # cv2.CAP_PROP_POS_FRAMES: carry on where it failed
                opened = cap.isOpened()
                ok, frame = cap.read() if opened else (False, None)
                if ok and frame is not None:
                    failures = 0
                    read += 1
                    yield frame
                    continue
                if read and self._at_end(cap, read):
                    return
                cap.release()
                cap = None
                failures += 1
                if failures > self.retries:
                    if not read:
                        raise SourceError(f"{self.name}: cannot open or read it; check the camera is "
                                          "connected (ls /dev/video*) or the file/URL is right")
                    self.lost = (f"{self.name}: no frames after {self.retries} "
                                 f"{'retry' if self.retries == 1 else 'retries'}; giving up")
                    return
                pause = BACKOFF[min(failures, len(BACKOFF)) - 1]
                self.reopened += 1
                what = f"read failed after {read} frame(s)" if opened else "cannot open it"
                log(f"warning: {self.name}: {what}; retry {failures}/{self.retries} in {pause:g} s")
                self.sleep(pause)
        finally:
            if cap is not None:
                cap.release()

    def _at_end(self, cap, read: int) -> bool:
        """A video file that has given all its frames ends; a camera or stream never does."""
        if not self._file or not hasattr(cap, "get"):
            return False
        # cv2.CAP_PROP_FRAME_COUNT: 0 when the container does not say; some
        # containers count one frame more than they decode.
        total = cap.get(7)
        return total <= 0 or read >= total - 1


@dataclass
class Summary:
    frames: int = 0
    seconds: float = 0.0
    labels: Counter = field(default_factory=Counter)
    reopened: int = 0
    lost: str | None = None
    interrupted: bool = False

    def line(self) -> str:
        fps = self.frames / self.seconds if self.seconds else 0.0
        counts = ", ".join(f"{label} {n}" for label, n in self.labels.most_common())
        return (f"{self.frames} frames in {self.seconds:.1f} s ({fps:.1f} fps)"
                + (f"; labels: {counts}" if counts else "")
                + (f"; {self.reopened} reopen(s)" if self.reopened else "")
                + ("; stopped by Ctrl-C" if self.interrupted else ""))


def run(clf, frames: Frames, every: int = 30, max_frames: int | None = None, as_json: bool = False,
        show: bool = False, out: Callable[[str], None] = print) -> Summary:
    """Classify each frame; print a line every `every` frames and a summary at the end."""
    import json

    summary = Summary()
    window = _Window() if show else None
    start = tick = time.perf_counter()
    try:
        for frame in frames:
            pixels = from_frame(frame, clf.size, bgr=True)
            (label, score), = clf.top_k(clf.probabilities(pixels[None]), 1)[0]
            summary.frames += 1
            summary.labels[label] += 1
            if summary.frames % every == 0 or summary.frames == 1:
                now = time.perf_counter()
                fps = (every if summary.frames > 1 else 1) / max(now - tick, 1e-9)
                tick = now
                out(json.dumps({"frame": summary.frames, "label": label, "score": round(score, 4),
                                "fps": round(fps, 1)}) if as_json
                    else f"frame {summary.frames:>6}  {label}  {score:.3f}  {fps:6.1f} fps")
            if window is not None and not window.draw(frame, f"{label} {score:.2f}"):
                break
            if max_frames and summary.frames >= max_frames:
                break
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.seconds = time.perf_counter() - start
        if window is not None:
            window.close()
    summary.reopened, summary.lost = frames.reopened, frames.lost
    if as_json:
        log(json.dumps({"summary": summary.line()}))
    else:
        out(summary.line())
    return summary


class _Window:
    """An OpenCV window showing the label; silently absent when there is no display."""

    def __init__(self):
        self.cv2 = None
        headless = not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
        if sys.platform.startswith("linux") and headless:
            log("warning: --show: no display (DISPLAY is not set); running without a window")
            return
        try:
            import cv2
        except ImportError:
            log("warning: --show needs OpenCV; running without a window")
            return
        self.cv2 = cv2

    def draw(self, frame: np.ndarray, text: str) -> bool:
        """Show the frame; False when the person pressed q or Esc."""
        if self.cv2 is None:
            return True
        cv2 = self.cv2
        try:
            shown = np.ascontiguousarray(frame)
            cv2.putText(shown, text, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 255, 0), 2)
            cv2.imshow(WINDOW, shown)
            return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)
        except cv2.error as exc:  # headless OpenCV builds have no windows
            log(f"warning: --show: OpenCV cannot open a window ({str(exc).strip().splitlines()[-1]}); "
                "running without one")
            self.cv2 = None
            return True

    def close(self) -> None:
        if self.cv2 is not None:
            self.cv2.destroyAllWindows()
