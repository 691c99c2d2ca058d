"""`noodle-edge camera`: a real video file made here from photos, and fake cameras that fail.

The fakes go in through edge.camera's documented seam, `open_capture`; the
back-off pauses are shortened through `BACKOFF`.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edge import camera
from edge.cli import app
from edge.manifest import read_manifest
from tests.hostile import (
    error_line,
)

runner = CliRunner()
FRAME = (240, 320)  # 4:3, so the centre crop matters


@pytest.fixture(scope="module")
def model(exported_run) -> Path:
    return exported_run / "export" / "int8.tflite"


@pytest.fixture(scope="module")
def video(sample_data, tmp_path_factory) -> tuple[Path, int]:
    """An MJPG .avi of the sample's test photos, one photo a frame."""
    cv2 = pytest.importorskip("cv2")
    photos = sorted((sample_data / "test").rglob("*.jpg"))[:40]
    path = tmp_path_factory.mktemp("video") / "photos.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, FRAME[::-1])
    assert writer.isOpened()
    for photo in photos:
        writer.write(cv2.resize(cv2.imread(str(photo)), FRAME[::-1]))
    writer.release()
    return path, len(photos)


def camera_cli(*args):
    return runner.invoke(app, ["camera", *map(str, args)])


def test_video_prints_labels_and_fps_and_stops_at_max_frames(model, video):
    path, _ = video
    result = camera_cli(model, "--source", path, "--every", "10", "--max-frames", "25")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    frames = [line for line in lines if line.startswith("frame")]
    assert [int(line.split()[1]) for line in frames] == [1, 10, 20]
    labels = read_manifest(model.parent)["labels"]
    assert all(line.endswith("fps") and line.split()[2] in labels for line in frames)
    assert lines[-1].startswith("25 frames in ") and "fps" in lines[-1]
    assert "retry" not in result.stderr


def test_video_to_the_end_json(model, video):
    path, count = video
    result = camera_cli(model, "--source", path, "--every", "5", "--json")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[-1]["frame"] == count - count % 5 and {"label", "score", "fps"} <= set(rows[-1])
    assert f'"{count} frames in' in result.stderr  # the summary, kept off stdout
    assert "retry" not in result.stderr  # the end of a file is not a failure


def test_missing_video_file_is_one_line_exit_2(model, tmp_path):
    result = camera_cli(model, "--source", tmp_path / "nope.mp4")
    assert result.exit_code == 2 and "no such video file" in result.stderr
    assert "Traceback" not in result.stderr


class FakeCapture:
    """OpenCV's capture interface: `good` frames, then `fail` failed reads, or an exception."""

    def __init__(self, good: int, fail_with: BaseException | None = None, opens: bool = True):
        self.good, self.fail_with, self.opens = good, fail_with, opens
        self.released = False

    def isOpened(self):  # noqa: N802 (OpenCV's name)
        return self.opens

    def read(self):
        if self.good > 0:
            self.good -= 1
            return True, np.full((*FRAME, 3), 200, np.uint8)
        if self.fail_with is not None:
            raise self.fail_with
        return False, None

    def release(self):
        self.released = True


@pytest.fixture
def fake_camera(monkeypatch):
    """Install a sequence of FakeCaptures, one per open; returns the list of those opened."""
    opened = []

    def install(*captures):
        queue = list(captures)

        def open_capture(source, picamera=False):
            opened.append(queue.pop(0) if queue else FakeCapture(0, opens=False))
            return opened[-1]

        monkeypatch.setattr(camera, "open_capture", open_capture)
        monkeypatch.setattr(camera, "BACKOFF", (0.01, 0.02))
        return opened

    return install


def test_a_source_that_fails_mid_stream_is_retried_and_reported(model, fake_camera):
    opened = fake_camera(FakeCapture(7), FakeCapture(0, opens=False), FakeCapture(100))
    result = camera_cli(model, "--source", "0", "--every", "5", "--max-frames", "12", "--retries", "3")
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: source 0")]
    assert [w.split("retry ")[1].split(" ")[0] for w in warnings] == ["1/3", "2/3"]
    assert "read failed after 7 frame(s)" in warnings[0] and "cannot open it" in warnings[1]
    assert result.stdout.splitlines()[-1].startswith("12 frames in ") and "2 reopen(s)" in result.stdout
    assert len(opened) == 3 and all(c.released for c in opened)


def test_gives_up_after_retries(model, fake_camera):
    fake_camera(FakeCapture(3))  # then every reopen fails
    result = camera_cli(model, "--source", "0", "--retries", "2")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[-1].startswith("3 frames in ")
    assert result.stderr.strip().splitlines()[-1] == (
        "error: source 0: failed after 3 frame(s) and 2 retries; giving up")


def test_a_camera_that_never_opens_is_exit_2(model, fake_camera):
    fake_camera()
    result = camera_cli(model, "--source", "0", "--retries", "1")
    assert result.exit_code == 2 and "cannot open or read it" in result.stderr


def test_ctrl_c_stops_cleanly_with_a_summary(model, fake_camera):
    opened = fake_camera(FakeCapture(4, fail_with=KeyboardInterrupt()))
    result = camera_cli(model, "--source", "0", "--every", "2")
    assert result.exit_code == 0, result.stderr
    assert "4 frames in" in result.stdout and "stopped by Ctrl-C" in result.stdout
    assert opened[0].released


def test_show_without_a_display_warns_and_runs(model, video, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = camera_cli(model, "--source", video[0], "--max-frames", "3", "--show")
    assert result.exit_code == 0 and "no display" in result.stderr


# -- a video file that breaks mid-run -------------------------------------------

@pytest.fixture
def noise_mp4(tmp_path) -> tuple[Path, int]:
    """An mp4 of random frames: big enough (3 MB) that OpenCV has not buffered it all."""
    cv2 = pytest.importorskip("cv2")
    path, count = tmp_path / "clip.mp4", 150
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (320, 240))
    assert writer.isOpened()
    for _ in range(count):
        writer.write(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    writer.release()
    return path, count


def test_a_video_truncated_while_read_uses_its_retries_and_says_how_far_it_got(noise_mp4, capsys):
    path, count = noise_mp4
    pauses = []
    frames = camera.Frames(str(path), retries=3, sleep=pauses.append)
    read = 0
    for _ in frames:
        read += 1
        if read == 40:
            path.write_bytes(b"")  # truncated to zero bytes under the reader
    assert 40 <= read < count and frames.frames_read == read
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert [w.split("retry ")[1].split(" ")[0] for w in warnings] == ["1/3", "2/3", "3/3"]
    assert len(pauses) == 3
    assert frames.lost == f"source {path}: failed after {read} frame(s) of {count} and 3 retries; giving up"


def test_a_whole_video_still_ends_quietly(noise_mp4, capsys):
    path, count = noise_mp4
    frames = camera.Frames(str(path), retries=3, sleep=lambda s: pytest.fail("retried at the end"))
    assert sum(1 for _ in frames) >= count - 1 and frames.lost is None
    assert "warning" not in capsys.readouterr().err


# -- picamera2, through the stand-in built from its API --------------------------

FAKES = Path(__file__).parent / "fakes"


@pytest.fixture
def picamera2(monkeypatch):
    """The stand-in picamera2 module, importable as `picamera2`, reset for each test."""
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    module = importlib.import_module("picamera2")
    assert module.__file__.startswith(str(FAKES))
    monkeypatch.setattr(module.Picamera2, "scene", (255, 0, 0))
    monkeypatch.setattr(module.Picamera2, "fail_open", False)
    monkeypatch.setattr(module.Picamera2, "stall", False)
    monkeypatch.setattr(module.Picamera2, "opened", [])
    monkeypatch.setattr(camera, "BACKOFF", (0.01, 0.02))
    return module


def test_stand_in_keeps_libcameras_byte_orders(picamera2):
    cam = picamera2.Picamera2()
    with pytest.raises(ValueError, match="Bad key"):
        cam.create_preview_configuration(main={"colour": "red"})
    for fmt, pixel in [("RGB888", [0, 0, 255]), ("BGR888", [255, 0, 0]),
                       ("XRGB8888", [0, 0, 255, 255]), ("XBGR8888", [255, 0, 0, 255])]:
        cam.configure(cam.create_preview_configuration(main={"format": fmt, "size": (64, 48)}))
        cam.start()
        frame = cam.capture_array("main")
        assert frame.shape == (48, 64, len(pixel)) and frame[0, 0].tolist() == pixel, fmt
        cam.stop()
    cam.close()
    cam.close()


def test_picamera_frames_reach_the_model_as_rgb(model, picamera2, monkeypatch):
    from edge.runtime import Classifier

    seen = []
    probabilities = Classifier.probabilities

    def spy(self, pixels, *args, **kwargs):
        seen.append(pixels.copy())
        return probabilities(self, pixels, *args, **kwargs)

    monkeypatch.setattr(Classifier, "probabilities", spy)
    result = camera_cli(model, "--picamera", "--max-frames", "3", "--every", "1")
    assert result.exit_code == 0, result.stderr
    spec = read_manifest(model.parent)["input"]
    assert len(seen) == 3 and seen[0].shape[1:] == (spec["height"], spec["width"], 3)
    red = seen[0][0]
    assert (red[..., 0] == 255).all() and (red[..., 1:] == 0).all()  # R=255, G=B=0: red, not blue
    (cam,) = picamera2.Picamera2.opened
    assert cam.camera_config["main"]["format"] == "RGB888" and cam.camera_config["lores"] is None
    assert not cam.is_open  # closed at the end


def test_picamera_that_stalls_is_retried_then_reported(picamera2, monkeypatch):
    monkeypatch.setattr(camera, "CAPTURE_TIMEOUT", 0.01)
    picamera2.Picamera2.stall = True
    frames = camera.Frames(picamera=True, retries=2, sleep=lambda s: None)
    with pytest.raises(camera.SourceError, match="picamera: cannot open or read it"):
        list(frames)
    assert len(picamera2.Picamera2.opened) == 3 and not any(c.is_open for c in picamera2.Picamera2.opened)


def test_picamera_that_will_not_open_is_one_line(picamera2):
    picamera2.Picamera2.fail_open = True
    frames = camera.Frames(picamera=True, retries=1, sleep=lambda s: None)
    with pytest.raises(camera.SourceError, match=r"cannot open or read it \(Camera __init__ sequence"):
        list(frames)


# -- collecting training photos ----------------------------------------------

def capture_cli(*args):
    return runner.invoke(app, ["capture", *map(str, args)])


def test_capture_saves_square_jpegs_into_a_class_folder(video, tmp_path):
    path, count = video
    out = tmp_path / "photos" / "cats"
    result = capture_cli(out, "--source", path, "--every", "0", "--count", "5")
    assert result.exit_code == 0, result.stderr
    saved = sorted(out.iterdir())
    assert len(saved) == 5 and all(p.suffix == ".jpg" and p.name.startswith("cats-") for p in saved)
    assert result.stdout.splitlines()[-1].startswith(f"saved {out}") and "(5/5, 0.4 s into" in result.stdout
    with Image.open(saved[0]) as img:
        assert img.format == "JPEG" and img.size == (FRAME[0], FRAME[0])  # the centre square
    assert "5 of 5 photo(s) saved" in result.stderr
    # Again into the same folder: new names, nothing overwritten.
    again = capture_cli(out, "--source", path, "--every", "0", "--count", "2")
    assert again.exit_code == 0 and len(list(out.iterdir())) == 7


def test_capture_stops_when_the_video_ends_and_says_so(video, tmp_path):
    """Was: fewer photos than --count, and exit 0."""
    path, count = video
    result = capture_cli(tmp_path / "out" / "dogs", "--source", path, "--every", "0", "--count", "1000")
    assert result.exit_code == 1, result.stderr
    saved = len(list((tmp_path / "out" / "dogs").iterdir()))
    assert saved >= count - 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: only {saved} of the 1000 photo(s) asked for were saved: the video ends at "
        f"{(saved - 1) / 10:.1f} s, which at --every 0 holds no more; lower --every or --count, or give a "
        "longer video")


def test_capture_from_a_video_is_timed_by_its_timestamps(video, tmp_path):
    """Was: `--every 1s --count 5` on a 20 s clip saved 1 photo, timed by the clock it was read in."""
    path, count = video  # 40 frames at 10 fps: 0.0 to 3.9 s
    out = tmp_path / "cats"
    result = capture_cli(out, "--source", path, "--every", "500ms", "--count", "5")
    assert result.exit_code == 0, result.stderr
    assert [line.split("(")[1] for line in result.stdout.splitlines()] == [
        f"{n}/5, {n / 2 - 0.5:.1f} s into the video)" for n in range(1, 6)]
    # The photos are the frames at 0, 0.5, 1, 1.5 and 2 s: frames 0, 5, 10, 15 and 20.
    import cv2
    reader, frames = cv2.VideoCapture(str(path)), []
    while (frame := reader.read()[1]) is not None:
        frames.append(frame)
    saved = [np.asarray(Image.open(p).convert("RGB"), np.float32) for p in sorted(out.iterdir())]
    for photo, index in zip(saved, (0, 5, 10, 15, 20), strict=True):
        distances = [np.abs(photo - camera.crop_square(f)[:, :, ::-1]).mean() for f in frames]
        assert int(np.argmin(distances)) == index
    # More than the video holds: what it holds is saved, and the shortfall is an error.
    short = capture_cli(tmp_path / "dogs", "--source", path, "--every", "1s", "--count", "5")
    assert short.exit_code == 1 and len(list((tmp_path / "dogs").iterdir())) == 4
    assert "only 4 of the 5 photo(s) asked for were saved: the video ends at 3.9 s" in short.stderr
    assert "4 of 5 photo(s) saved in" in short.stderr and "from 40 frame(s) (3.9 s of video)" in short.stderr


def test_capture_stopped_by_ctrl_c_says_how_many_and_fails(tmp_path, fake_camera, monkeypatch):
    fake_camera(FakeCapture(100))
    monkeypatch.setattr(camera, "SETTLE_SECONDS", 0)
    saves = iter([None, None, KeyboardInterrupt])

    def interrupted(self, fp, *args, **kwargs):
        error = next(saves)
        if error is not None:
            raise error
        Path(fp).write_bytes(b"jpeg")

    monkeypatch.setattr(Image.Image, "save", interrupted)
    result = capture_cli(tmp_path / "cats", "--source", "0", "--every", "0", "--count", "5")
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines()[-1] == ("error: only 2 of the 5 photo(s) asked for were saved: "
                                                      "stopped by Ctrl-C")


def test_capture_every_is_a_time_between_saved_frames(tmp_path, fake_camera):
    fake_camera(FakeCapture(50))
    ticks = iter(range(1000))  # one second a read
    frames = camera.Frames("0", retries=0)
    done = camera.capture(frames, tmp_path / "c", every=10, count=3, clock=lambda: next(ticks),
                          out=lambda line: None)
    # A live camera settles for SETTLE_SECONDS (2): then frames 2, 12 and 22 are saved.
    assert camera.SETTLE_SECONDS == 2
    assert len(done.saved) == 3 and done.frames == 22


def test_capture_from_the_picamera_saves_what_it_sees(picamera2, tmp_path, monkeypatch):
    monkeypatch.setattr(camera, "SETTLE_SECONDS", 0.05)
    out = tmp_path / "red"
    result = capture_cli(out, "--picamera", "--every", "0", "--count", "2")
    assert result.exit_code == 0, result.stderr
    with Image.open(sorted(out.iterdir())[0]) as img:
        assert img.size == (480, 480)
        r, g, b = img.convert("RGB").getpixel((240, 240))
        assert r > 240 and g < 15 and b < 15


def test_capture_writes_atomically(video, tmp_path, monkeypatch):
    def full_disk(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\xff\xd8 half a jpeg")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    out = tmp_path / "x"
    result = capture_cli(out, "--source", video[0], "--every", "0", "--count", "3")
    assert result.exit_code == 2 and "No space left on device" in result.stderr
    assert "Traceback" not in result.stderr and list(out.iterdir()) == []  # no half photo, no temp file


@pytest.mark.parametrize("every", ["soon", "-1s", "1h"])
def test_capture_rejects_a_bad_interval(tmp_path, every):
    result = capture_cli(tmp_path / "x", "--source", "0", "--every", every)
    assert result.exit_code == 2 and "not a time" in result.stderr


def test_capture_from_a_camera_that_never_opens_leaves_no_folder(tmp_path, fake_camera):
    fake_camera()
    result = capture_cli(tmp_path / "out" / "cats", "--source", "0", "--retries", "1")
    assert result.exit_code == 2 and "cannot open or read it" in result.stderr
    assert not (tmp_path / "out").exists()


def test_capture_into_a_file_is_one_line(video, tmp_path):
    (tmp_path / "taken").write_text("")
    result = capture_cli(tmp_path / "taken", "--source", video[0])
    assert result.exit_code == 2 and "is not a folder" in result.stderr


@pytest.mark.parametrize("source", ["2147483648", "9" * 20, "\u00b2", "\u0663"])
def test_camera_source_that_is_no_index_is_one_line(source, tmp_path):
    result = runner.invoke(app, ["camera", str(tmp_path / "m.tflite"), "--source", source])
    assert "not a camera index" in error_line(result)


def test_camera_indexes_and_files(tmp_path, monkeypatch):
    from edge.camera import device_index

    assert device_index("0") == 0 and device_index("200") == 200 and device_index("video.mp4") is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "2147483648").write_bytes(b"")
    assert device_index("2147483648") is None  # a file of that name
