"""Classify a live camera, a video file or a stream, frame by frame; or save its frames as photos.

Frames come from OpenCV (`--source 0`, a file, a URL) or picamera2
(`--picamera`), are centre-cropped to a square and preprocessed by
edge.preprocess.from_frame, then classified one at a time. A read that fails
(a camera unplugged, a stream dropped, a file cut short) closes the source and
reopens it after a growing pause; after `retries` failures in a row the run
gives up and says how many frames it had. `capture` reads the same Frames and
saves every so often a frame into a class folder, for `noodle train`.

The seam for tests and other sources is `open_capture(source, picamera)`:
the one place a capture is made. Anything with OpenCV's `read() -> (ok,
frame)`, `release()` and `isOpened()` will do; frames are BGR like OpenCV's.

numpy and Pillow, plus OpenCV or picamera2 when they are installed.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import NoodleError, first_line
from edge.escape import escape_name, shown
from edge.logs import logger
from edge.preprocess import crop_square, from_frame
from edge.serve_config import DEFAULTS

# Pauses before each reopen, in seconds; the last repeats. Short first (a
# glitch), then long enough for a USB camera to re-enumerate.
BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)
# picamera2's capture size: 4:3 like the sensor, small enough to be cheap;
# the centre crop and resize to the model's input happen afterwards anyway.
PICAMERA_SIZE = (640, 480)
# Seconds a picamera2 capture may take before it counts as a failed read: a
# camera whose ribbon cable came loose never completes a request.
CAPTURE_TIMEOUT = 5.0
WINDOW = "noodle"
# Saved training photos: high enough that JPEG artefacts are not what the model learns.
JPEG_QUALITY = 95
# `capture` from a live camera saves nothing in its first seconds: exposure and white
# balance are still settling (picamera2's capture examples wait 2 s after start).
SETTLE_SECONDS = 2.0
# The largest camera index --source takes: /dev/video0 is 0, and OpenCV's
# "backend + index" numbers (200 is V4L2's first camera) stay below this.
MAX_DEVICE_INDEX = 9999

log = logger("camera").info


class SourceError(NoodleError):
    """A camera or video that cannot be opened at all."""


class PiCamera:
    """picamera2 behind OpenCV's capture interface (frames B, G, R like OpenCV's).

    picamera2 names formats after libcamera, whose "RGB888" is B, G, R in memory:
    capture_array gives (h, w, 3) arrays in OpenCV's order, the one from_frame(bgr=True)
    undoes, so camera and OpenCV frames take one path.

    Only the main stream is configured. picamera2's examples feed models from
    a small `lores` stream, but on a Pi 4 and earlier lores can only be YUV420
    and it is scaled by the ISP, not by Pillow's bilinear resize: the model would
    get pixels made differently from the ones it was trained on. The main
    stream is kept small (PICAMERA_SIZE) instead, so that work stays cheap.
    """

    def __init__(self, size: tuple[int, int] = PICAMERA_SIZE):
        from picamera2 import Picamera2

        self.camera = None
        self.problem: str | None = None
        try:
            self.camera = Picamera2()
            config = self.camera.create_preview_configuration(main={"format": "RGB888", "size": size})
            self.camera.configure(config)
            self.camera.start()
        except Exception as exc:  # noqa: BLE001 (no camera, busy, cable: each a failed open, retried)
            self.problem = first_line(exc)
            self.release()

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return self.camera is not None

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.camera is None:
            return False, None
        try:
            return True, self.camera.capture_array("main", wait=CAPTURE_TIMEOUT)
        except Exception:  # noqa: BLE001 (a timeout or driver error is a failed read, retried)
            return False, None

    def release(self) -> None:
        camera, self.camera = self.camera, None
        if camera is not None:
            try:
                camera.close()  # stops it first when it is running
            except Exception:  # noqa: BLE001 (closing a camera that failed must not hide why)
                pass


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
    index = device_index(source)
    return cv2.VideoCapture(source if index is None else index)


def device_index(source: str) -> int | None:
    """--source as a camera index (0 for /dev/video0), or None for a video file or URL.

    Only ASCII digits make an index, up to MAX_DEVICE_INDEX; other digits
    (a superscript, another script's) and larger numbers are refused, unless
    a file of that name exists.
    """
    if not source.isdigit() or os.path.exists(source):
        return None
    if source.isascii() and int(source) <= MAX_DEVICE_INDEX:
        return int(source)
    raise SourceError(f"--source {shown(source)}: not a camera index; a camera is 0 to {MAX_DEVICE_INDEX} "
                      "in digits 0-9 (0 is /dev/video0), else give a video file or a stream URL")


def _is_file(source: str) -> bool:
    return device_index(source) is None and "://" not in source


class Frames:
    """Iterate over a source's frames, reopening it with back-off when a read fails.

    A video file ends when it has given the frames its container counts, or,
    when it counts none, when it still has the size it had when first opened; a
    file that fails before that (truncated, deleted, a disk gone) is a failure
    like a camera's, retried and then reported with the frames it gave.
    """

    def __init__(self, source: str = "0", picamera: bool = False, retries: int = DEFAULTS.retries,
                 sleep: Callable[[float], None] = time.sleep):
        self.source, self.picamera, self.retries, self.sleep = source, picamera, retries, sleep
        self.name = "picamera" if picamera else f"source {source}"
        self.reopened = 0  # reopen attempts, reported in the summary
        self.frames_read = 0  # frames given so far
        self.lost: str | None = None  # why it gave up, if it did
        # A video file's time of the frame last given, in seconds from its start, by the
        # stream's own timestamps; None for a camera or stream, or a file that has none.
        self.position: float | None = None
        self._file = not picamera and _is_file(source)
        # What the file was at its first successful open: a failed reopen says nothing.
        self._count: int | None = None
        self._size: int | None = None
        if self._file and not os.path.exists(source):
            raise SourceError(f"{escape_name(source)}: no such video file; pass --source 0 for a camera, "
                              "a video file or a stream URL")

    def __iter__(self) -> Iterator[np.ndarray]:
        cap, failures = None, 0
        try:
            while True:
                if cap is None:
                    cap = open_capture(self.source, self.picamera)
                    opened = cap.isOpened()
                    if opened and self._file:
                        self._first_open(cap)
                    if opened and self.frames_read and self._file:
                        cap.set(1, self.frames_read)  # CAP_PROP_POS_FRAMES: carry on where it failed
                ok, frame = cap.read() if opened else (False, None)
                if ok and frame is not None:
                    failures = 0
                    self.frames_read += 1
                    if self._file:
                        self.position = self._stream_time(cap)
                    yield frame
                    continue
                if opened and self.frames_read and self._at_end():
                    return
                why = getattr(cap, "problem", None)
                cap.release()
                cap = None
                failures += 1
                if failures > self.retries:
                    if not self.frames_read:
                        raise SourceError(f"{self.name}: cannot open or read it"
                                          + (f" ({why})" if why else "")
                                          + "; check the camera is connected (ls /dev/video*, "
                                          "rpicam-hello --list-cameras) or the file/URL is right")
                    self.lost = (f"{self.name}: failed after {self.frames_read} frame(s)"
                                 + (f" of {self._count}" if self._count else "")
                                 + f" and {self.retries} {'retry' if self.retries == 1 else 'retries'}; "
                                 "giving up")
                    return
                pause = BACKOFF[min(failures, len(BACKOFF)) - 1]
                self.reopened += 1
                what = f"read failed after {self.frames_read} frame(s)" if opened else "cannot open it"
                log(f"warning: {self.name}: {what}; retry {failures}/{self.retries} in {pause:g} s")
                self.sleep(pause)
        finally:
            if cap is not None:
                cap.release()

    @property
    def is_file(self) -> bool:
        """A video file (it ends), not a camera or stream (they never do)."""
        return self._file

    def _first_open(self, cap) -> None:
        if self._size is not None:
            return
        with contextlib.suppress(OSError):
            self._size = os.path.getsize(self.source)
        # cv2.CAP_PROP_FRAME_COUNT: 0 when the container does not say.
        count = int(cap.get(7)) if hasattr(cap, "get") else 0
        self._count = count if count > 0 else None

    def _stream_time(self, cap) -> float | None:
        """The frame just read's time in the file: its timestamp, else its number over the frame rate."""
        if not hasattr(cap, "get"):
            return None
        # cv2.CAP_PROP_POS_MSEC: the timestamp of the frame read; 0 throughout when a container has none.
        msec = cap.get(0)
        if msec > 0 or (msec == 0 and self.frames_read == 1):
            return round(msec / 1000, 6)  # to the microsecond: 0.30000000000000004 is 0.3
        fps = cap.get(5)  # cv2.CAP_PROP_FPS
        return round((self.frames_read - 1) / fps, 6) if fps > 0 else None

    def _at_end(self) -> bool:
        """A video file that has given all its frames ends; a camera or stream never does."""
        if not self._file:
            return False
        if self._count:
            # Some containers count one frame more than they decode.
            return self.frames_read >= self._count - 1
        try:
            return os.path.getsize(self.source) == self._size
        except OSError:
            return False


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
        counts = ", ".join(f"{shown(label)} {n}" for label, n in self.labels.most_common())
        return (f"{self.frames} frames in {self.seconds:.1f} s ({fps:.1f} fps)"
                + (f"; labels: {counts}" if counts else "")
                + (f"; {self.reopened} reopen(s)" if self.reopened else "")
                + ("; stopped by Ctrl-C" if self.interrupted else ""))


def run(clf, frames: Frames, every: int = 30, max_frames: int | None = None, as_json: bool = False,
        show: bool = False, out: Callable[[str], None] = print, threshold: float = 0.0) -> Summary:
    """Classify each frame; print a line every `every` frames and a summary at the end.

    A frame whose top score is under `threshold` is `unknown` (edge.postprocess.answer)."""
    import json

    from edge.postprocess import answer

    summary = Summary()
    window = _Window() if show else None
    start = tick = time.perf_counter()
    try:
        for frame in frames:
            pixels = from_frame(frame, clf.size, bgr=True)
            said = answer(clf.top_k(clf.probabilities(pixels[None]), 1)[0], threshold)
            label, score = said["label"], said["score"]
            summary.frames += 1
            summary.labels[label] += 1
            if summary.frames % every == 0 or summary.frames == 1:
                now = time.perf_counter()
                fps = (every if summary.frames > 1 else 1) / max(now - tick, 1e-9)
                tick = now
                out(json.dumps({"frame": summary.frames, "label": label, "score": round(score, 4),
                                "fps": round(fps, 1)}) if as_json
                    else f"frame {summary.frames:>6}  {shown(label)}  {score:.3f}  {fps:6.1f} fps")
            if window is not None and not window.draw(frame, f"{shown(label, encoding='ascii')} {score:.2f}"):
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


def parse_every(text: str) -> float:
    """`--every`: seconds between saved frames, as 1s, 500ms, 2m or a bare number of seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    number, unit = text.strip().lower(), "s"
    for suffix in sorted(units, key=len, reverse=True):
        if number.endswith(suffix):
            number, unit = number[: -len(suffix)], suffix
            break
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise NoodleError(f"--every {text}: not a time; write it like 1s, 500ms or 2m")
    return seconds


@dataclass
class Captured:
    saved: list[str] = field(default_factory=list)
    frames: int = 0  # frames read, saved or not
    interrupted: bool = False
    # A video file's length read, in seconds by its timestamps (None for a camera or stream).
    video_seconds: float | None = None


def capture(frames: Frames, folder: str | os.PathLike, every: float = 1.0, count: int = 100,
            clock: Callable[[], float] = time.monotonic,
            out: Callable[[str], None] = print) -> Captured:
    """Save a frame every `every` seconds into `folder` as JPEG, until `count` are saved.

    The frame is centre-cropped to a square first, as `camera` crops it before
    classifying: `noodle train` squashes each photo to the model's size, so a
    square photo trains on the very view the camera will later classify. Frames
    in between are read and dropped, so a saved frame is fresh, not one that
    waited in the driver's queue. A live camera gets SETTLE_SECONDS first and
    is timed by `clock`; a video file, read far faster than it plays, is timed
    by its own timestamps: photo k is its first frame at or after k * `every`.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NoodleError(f"{folder}: exists and is not a folder; give OUT/LABEL, a folder per class")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = Captured()
    due = clock() + (0.0 if frames.is_file else SETTLE_SECONDS)  # by the clock
    due_in_video: float | None = None  # by the video's timestamps: the first frame's, then k * every on
    try:
        for frame in frames:
            result.frames += 1
            in_video = frames.is_file and frames.position is not None
            if in_video:
                now = result.video_seconds = frames.position
                due_in_video = now if due_in_video is None else due_in_video
                if now < due_in_video:
                    continue
                due_in_video += every
            else:
                if frames.is_file and result.frames == 1:
                    log(f"warning: {escape_name(frames.source)}: the video has no timestamps or frame rate; "
                        "--every is timed by the clock while it is read")
                now = clock()
                if now < due:
                    continue
                due = now + every
            if not result.saved:
                # Made at the first photo: a camera that never opened leaves no empty
                # class folder behind for `noodle train` to trip over.
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise NoodleError(f"{folder}: cannot make the folder ({exc.strerror or exc}); "
                                      "give a folder you may write to") from None
            result.saved.append(str(_save(frame, folder, stamp, len(result.saved))))
            at = f", {now:.1f} s into the video" if in_video else ""
            out(f"saved {escape_name(result.saved[-1])} ({len(result.saved)}/{count}{at})")
            if len(result.saved) >= count:
                break
    except KeyboardInterrupt:
        result.interrupted = True
    return result


def _save(frame: np.ndarray, folder: Path, stamp: str, saved: int) -> Path:
    """The frame, cropped square, as the next JPEG of `folder` (`saved` are there already), atomically."""
    from PIL import Image

    from edge.atomic import atomic_output

    square = crop_square(frame)
    rgb = square if square.ndim == 2 else square[:, :, 2::-1]  # frames are B, G, R(, A)
    path = _free_name(folder, f"{folder.name}-{stamp}-{saved + 1:04d}")
    try:
        with atomic_output(path) as tmp:
            Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, "JPEG", quality=JPEG_QUALITY)
    except OSError as exc:
        raise NoodleError(f"{path}: cannot save the photo ({exc.strerror or exc}); free some "
                          f"space or give another folder ({saved} saved)") from None
    return path


def _free_name(folder: Path, stem: str) -> Path:
    """`stem`.jpg, or `stem`-2.jpg and on when a run in the same second left one."""
    path, n = folder / f"{stem}.jpg", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.jpg"
    return path


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
