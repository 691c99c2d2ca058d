"""Run MediaPipe's Raspberry Pi image-classification example, unchanged, on a clip instead of a camera.

    python run_pi_example.py MODEL.tflite CLIP.avi FRAMES_PER_PHOTO

raspberry_pi/classify.py is google-ai-edge/mediapipe-samples' examples/image_classification/
raspberry_pi/classify.py at commit ece8a1f99726a364509be9d07835a69ef65d3e35, byte for byte
(Apache-2.0, its header kept). Its only camera input is `cv2.VideoCapture(int(--cameraId))`:
OpenCV opens /dev/video<N> through V4L2, and this host has no video device and no way to
make one (v4l2loopback is a kernel module). So this runner imports the example as it is and
hands OpenCV's VideoCapture the clip for camera 0, read at a camera's 30 frames a second;
the window calls (imshow, waitKey) are made headless, and the example's own result
callback is wrapped to record what it receives. Then the example's `main()` runs with its
own arguments. The clip's end is where the example exits ("Unable to read from webcam").

Prints one JSON object: the top-1 (label, score) the example received for each photo of
the clip, the majority over that photo's frames. Run in .venv-mediapipe.
"""
from __future__ import annotations

import collections
import json
import sys
import time
from pathlib import Path

import cv2
from mediapipe.tasks.python import vision

FRAME_SECONDS = 1 / 30


def main(model: str, clip: str, per_photo: int) -> dict:
    reads: list[int] = []  # each frame's read time, in the example's own timestamp unit (ms)
    results: list[tuple[int, str, float]] = []
    real_capture = cv2.VideoCapture

    class ClipCamera:
        """Camera 0 is the clip; frames come no faster than a camera gives them."""

        def __init__(self, index):
            assert index == 0, f"the example asked for camera {index}"
            self.clip = real_capture(clip)

        def isOpened(self):  # noqa: N802 (OpenCV's name)
            return self.clip.isOpened()

        def set(self, *args):
            return True

        def read(self):
            time.sleep(FRAME_SECONDS)
            ok, frame = self.clip.read()
            reads.append(time.time_ns() // 1_000_000)
            return ok, frame

        def release(self):
            self.clip.release()

    real_options = vision.ImageClassifierOptions

    def options(*args, result_callback=None, **kwargs):
        def recorded(result, image, timestamp_ms):
            top = max(result.classifications[0].categories, key=lambda c: c.score)
            results.append((timestamp_ms, top.category_name, float(top.score)))
            result_callback(result, image, timestamp_ms)
        return real_options(*args, result_callback=recorded, **kwargs)

    cv2.VideoCapture = ClipCamera
    cv2.imshow = lambda *args: None
    cv2.waitKey = lambda *args: -1
    cv2.destroyAllWindows = lambda: None
    vision.ImageClassifierOptions = options
    sys.path.insert(0, str(Path(__file__).resolve().parent / "raspberry_pi"))
    import classify

    sys.argv = ["classify.py", "--model", model, "--maxResults", "2", "--cameraId", "0"]
    try:
        classify.main()
        ended = "the example stopped by itself"
    except SystemExit as exc:
        ended = str(exc)
    time.sleep(0.5)  # the last frames' results
    votes: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    scores: dict[int, dict[str, float]] = collections.defaultdict(dict)
    for stamp, label, score in results:
        frame = sum(1 for t in reads if t <= stamp) - 1  # the frame read just before it was classified
        if frame >= 0:
            votes[frame // per_photo][label] += 1
            scores[frame // per_photo][label] = score
    photos = {i: [c.most_common(1)[0][0], scores[i][c.most_common(1)[0][0]]] for i, c in votes.items()}
    return {"ended": ended, "frames": len(reads), "results": len(results),
            "photos": [photos.get(i) for i in range(max(photos, default=-1) + 1)]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
