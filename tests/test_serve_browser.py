"""The live page in a real browser: headless Chromium against `serve --source clip.avi`.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON
messages ended by NUL on file descriptors 3 and 4), so no driver or client library is
needed. The clip is one class of the sample's test photos, then the other; the label on
the page must follow it. A screenshot of the page is saved to test-artifacts/ (or to
$NOODLE_TEST_ARTIFACTS). `make test` installs Debian's chromium; outside CI a machine
without it skips.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from test_serve import ROOT, Served, installed, make_clip

ARTIFACTS = Path(os.environ.get("NOODLE_TEST_ARTIFACTS", ROOT / "test-artifacts"))
# Seconds the page has to show both classes of the clip.
WAIT = 30


def page_reader(*texts: str, **expressions: str) -> str:
    """A script giving, as one JSON string read in the page itself, the frame number shown, the text
    of each element named in TEXTS (by id) and each of EXPRESSIONS (name: JavaScript)."""
    fields = {"frame": 'Number(document.getElementById("frame").textContent)',
              **{name: f'document.getElementById("{name}").textContent' for name in texts}, **expressions}
    return "JSON.stringify({" + ", ".join(f"{name}: {js}" for name, js in fields.items()) + "})"


# What the page shows.
READ_PAGE = page_reader("label", "state", "model", bars='document.querySelectorAll("#top li .fill").length',
                        stream='document.getElementById("stream").naturalWidth')


class Browser:
    """Headless Chromium and one page, over the DevTools protocol on a pipe."""

    def __init__(self, profile: Path):
        to_browser, self._in = os.pipe()
        self._out, from_browser = os.pipe()
        flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
                 "--disable-background-networking", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                 "--window-size=1100,800", "about:blank"]
        program = installed("chromium", "chromium", "chromium-browser")
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser}', program, *flags],
            pass_fds=(to_browser, from_browser), stdout=subprocess.DEVNULL,
            stderr=open(profile.parent / "chromium.log", "wb"))
        os.close(to_browser)
        os.close(from_browser)
        self.replies: dict[int, dict] = {}
        self.cond = threading.Condition()
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._out, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                reply = json.loads(message)
                if "id" in reply:
                    with self.cond:
                        self.replies[reply["id"]] = reply
                        self.cond.notify_all()

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        with self.cond:
            self.next_id += 1
            ident = self.next_id
        message = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._in, json.dumps(message).encode() + b"\0")
        with self.cond:
            assert self.cond.wait_for(lambda: ident in self.replies, timeout), f"{method}: no reply"
            reply = self.replies.pop(ident)
        assert "error" not in reply, (method, reply["error"])
        return reply["result"]

    def page(self, method: str, **params) -> dict:
        return self.call(method, self.session, **params)

    def evaluate(self, expression: str):
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"]["value"]

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._in)
        os.close(self._out)


def save_atomically(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def labels_of_frames(model: Path, clip: Path) -> list[tuple[str, float]]:
    """The label and score of each frame of `clip` as serve's camera loop sees it: OpenCV's
    decode, then edge.preprocess.from_frame and the model (a .tflite or a teach DIR), in this process."""
    import cv2

    from edge.files import default_workers
    from edge.preprocess import from_frame
    from edge.runtime import load_classifier

    clf = load_classifier(model, threads=default_workers(), allow_unverified=True)
    cap, labels = cv2.VideoCapture(str(clip)), []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        labels.append(clf.top_k(clf.probabilities(from_frame(frame, clf.size, bgr=True)[None]), 1)[0][0])
    cap.release()
    return labels


def follow_clip(read, expected: list[str], per_class: int, wanted: tuple[str, str], wait: float,
                stale: tuple[str, ...] = ()) -> list[dict]:
    """What the page showed (READ) at each change of frame, until it showed wanted[0] in the clip's
    first half, then wanted[1] in its second, on one page without reloading it. Each label must be its
    frame's (EXPECTED), whichever frame that is; one in STALE (a frame classified before a swap, still
    on the page) is passed over."""
    seen, deadline = [], time.monotonic() + wait
    for half, label in enumerate(wanted):
        while time.monotonic() < deadline:
            shown = read()
            if shown["frame"] and (not seen or seen[-1]["frame"] != shown["frame"]):
                seen.append(shown)
                at = (shown["frame"] - 1) % len(expected)
                if shown["label"] in stale:
                    continue
                assert shown["label"] == expected[at], (shown, expected)
                if shown["label"] == label and at // per_class == half:
                    break
            time.sleep(0.05)
        else:
            pytest.fail(f"the page never showed {label!r} in the clip's half {half}; it showed "
                        f"{[(s['frame'], s['label']) for s in seen]}")
    return seen


def test_the_page_follows_the_clip_from_one_class_to_the_other(exported_run, sample_data, tmp_path):
    model = exported_run / "export" / "int8.tflite"
    first, second = json.loads((exported_run / "export" / "manifest.json").read_text())["labels"][:2]
    # The sample's photos the small model gets right, clearly, as video frames: the clip's two halves.
    photos = [sorted(sample_data.glob(f"*/{label}/*.jpg")) for label in (first, second)]
    candidates = make_clip(tmp_path / "candidates.avi", photos[0] + photos[1])
    told = labels_of_frames(model, candidates)
    per_class = 8
    chosen = [[p for p, (label, score) in zip(photos[i], told[: len(photos[0])] if i == 0 else
                                               told[len(photos[0]):], strict=True)
               if label == (first, second)[i] and score >= 0.6][:per_class] for i in (0, 1)]
    assert min(map(len, chosen)) >= 4, ("the test model tells too few photos apart", told)
    per_class = min(map(len, chosen))
    clip = make_clip(tmp_path / "clip.avi", chosen[0][:per_class] + chosen[1][:per_class], fps=5)
    # What the page must show at each frame; and the model does tell this clip's halves apart.
    expected = [label for label, _ in labels_of_frames(model, clip)]
    assert len(expected) == 2 * per_class
    assert expected[:per_class].count(first) >= per_class * 3 // 4, expected
    assert expected[per_class:].count(second) >= per_class * 3 // 4, expected

    served = Served([model, "--source", clip, "--loop"], tmp_path / "serve.log")
    browser = Browser(tmp_path / "profile")
    try:
        browser.page("Page.navigate", url=f"http://127.0.0.1:{served.port}/")
        deadline = time.monotonic() + WAIT
        while not browser.evaluate('document.readyState !== "loading" && !!document.getElementById("label")'):
            assert time.monotonic() < deadline, "the page did not load"
            time.sleep(0.05)
        seen = follow_clip(lambda: json.loads(browser.evaluate(READ_PAGE)), expected, per_class,
                           (first, second), WAIT)
        time.sleep(0.4)  # the stream's image catches up with the label: a frame of the second class
        shot = browser.page("Page.captureScreenshot", format="png")["data"]
    finally:
        browser.close()
        log = served.stop()
    assert "Traceback" not in log, log
    last = seen[-1]
    assert last["label"] == second and last["state"] == "running" and len(seen) >= 2
    assert last["bars"] == 2 and first in last["model"] and second in last["model"]
    assert last["stream"] > 0  # the MJPEG stream showed a frame
    path = save_atomically(ARTIFACTS / "serve-page.png", base64.b64decode(shot))
    assert path.read_bytes().startswith(b"\x89PNG")
    print(f"screenshot: {path}")
