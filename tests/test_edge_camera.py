"""`noodle-edge camera`: a real video file made here from photos, and fake cameras that fail.

The fakes go in through edge.camera's documented seam, `open_capture`; the
back-off pauses are shortened through `BACKOFF`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge import camera
from edge.cli import app
from edge.manifest import read_manifest

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
    assert result.stderr.strip().splitlines()[-1] == "error: source 0: no frames after 2 retries; giving up"


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
