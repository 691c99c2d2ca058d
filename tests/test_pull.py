"""`noodle pull` against a planted server: a tarball with `../`, absolute and link members, a lying
index, a wrong token, nothing listening. Each is refused in one line and nothing lands outside DIR.

The fake device is the standard library's http.server on loopback, answering serve's two routes
(GET /v1/captures?files=1, POST /v1/captures.tar) with what each test plants. The real serve's side
of the pull is tested in test_deploy.py.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

GOOD = b"\xff\xd8 a photo's bytes \xff\xd9"
NAME = "20261206T101010-1.jpg"


def member(name: str, data: bytes = GOOD, kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    return name, data, kind, link


def tarball(members: list[tuple]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return out.getvalue()


def entry(label: str, name: str = NAME, data: bytes = GOOD) -> dict:
    return {"label": label, "name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


class Fake:
    """A device on loopback that answers the index and the tar as planted, and counts the tars asked."""

    def __init__(self, index: dict, tar: bytes, status: int = 200):
        fake = self
        self.index, self.tar, self.status, self.asked = index, tar, status, []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if fake.status != 200:
                    return self.answer(fake.status, b'{"error": "wrong token"}', "application/json")
                self.answer(200, json.dumps(fake.index).encode(), "application/json")

            def do_POST(self):
                fake.asked.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.answer(200, fake.tar, "application/x-tar")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def pull(url: str, out: Path, *args: str):
    from noodle import app

    return CliRunner().invoke(app, ["pull", url, "--out", str(out), "--token", "a" * 20, *args])


def one_error(result) -> str:
    assert "Traceback" not in result.output + result.stderr
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def everything(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


PLANTED = {
    "dot-dot": ([member(f"../{NAME}")], "would land outside"),
    "deeper dot-dot": ([member(f"cat/../../{NAME}")], "would land outside"),
    "absolute": ([member(f"/{NAME}")], "would land outside"),
    "link out": ([member(f"cat/{NAME}", b"", tarfile.SYMTYPE, "../../../outside")],
                 "LinkOutsideDestinationError"),
    "symlink out": ([member(f"cat/{NAME}", b"", tarfile.SYMTYPE, "/etc/passwd")], "AbsoluteLinkError"),
    "symlink in": ([member(f"cat/{NAME}", b"", tarfile.SYMTYPE, "other.jpg")], "a link or a device"),
    "hard link": ([member(f"cat/{NAME}", b"", tarfile.LNKTYPE, "cat/x.jpg")], "a link or a device"),
    "device": ([member(f"cat/{NAME}", b"", tarfile.CHRTYPE)], "SpecialFileError"),
    "not asked for": ([member(f"dog/{NAME}")], "was not asked for"),
    "other size": ([member(f"cat/{NAME}", GOOD + b"more")], "the index said"),
    "other bytes": ([member(f"cat/{NAME}", GOOD[::-1])], "sha256 is not the index's"),
}


@pytest.mark.parametrize("case", PLANTED)
def test_a_planted_tarball_writes_nothing_outside_dir_and_says_why(case, tmp_path):
    members, said = PLANTED[case]
    root = tmp_path / "here"
    out = root / "data" / "pulled"
    root.mkdir()
    fake = Fake({"files": [entry("cat")]}, tarball(members))
    try:
        line = one_error(pull(fake.url, out))
    finally:
        fake.close()
    assert said in line and ("nothing of it was written" in line or "pull again" in line), line
    # Nothing but OUT's own folders, and no file of the member's under a name of its own.
    assert everything(root) <= {"data", "data/pulled", "data/pulled/cat"}, everything(root)
    assert not list(tmp_path.parent.glob(NAME)) and not Path("/", NAME).exists()


def test_an_index_naming_a_path_is_refused_before_anything_is_fetched(tmp_path):
    fake = Fake({"files": [entry("../../etc")]}, tarball([member(f"cat/{NAME}")]))
    try:
        line = one_error(pull(fake.url, tmp_path / "out"))
    finally:
        fake.close()
    assert "the index lists" in line and "nothing was fetched" in line and fake.asked == []
    assert not (tmp_path / "out").exists()


def test_a_good_tar_is_written_and_a_second_pull_asks_for_nothing(tmp_path):
    dog = b"\xff\xd8 a dog \xff\xd9"
    files = [entry("cat"), entry("dog", data=dog)]
    fake = Fake({"files": files}, tarball([member(f"cat/{NAME}"), member(f"dog/{NAME}", dog)]))
    try:
        first = pull(fake.url, tmp_path / "out")
        second = pull(fake.url, tmp_path / "out")
    finally:
        fake.close()
    assert first.exit_code == 0, first.stderr
    assert "pulled 2 new captures" in first.stderr and "0 of the 2 listed were there already" in first.stderr
    assert (tmp_path / "out" / "dog" / NAME).read_bytes() == dog
    assert second.exit_code == 0 and "pulled 0 new captures" in second.stderr, second.stderr
    assert "2 of the 2 listed were there already" in second.stderr
    assert fake.asked == [{"files": [f"cat/{NAME}", f"dog/{NAME}"]}]  # the second pull asked for none


def test_unsure_frames_come_only_when_asked_and_training_skips_them(tmp_path):
    from train.data import find_dataset
    from train.names import DataError

    files = [entry("cat"), entry("dog", data=GOOD + b"dog"), entry("_unsure", data=GOOD + b"?")]
    fake = Fake({"files": files}, tarball([member(f"cat/{NAME}"), member(f"dog/{NAME}", GOOD + b"dog"),
                                           member(f"_unsure/{NAME}", GOOD + b"?")]))
    try:
        result = pull(fake.url, tmp_path / "out", "--unsure")
    finally:
        fake.close()
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out" / "_unsure" / NAME).read_bytes() == GOOD + b"?"
    assert "_unsure/ holds the frames the device was unsure of; `noodle train` skips it" in result.stderr
    with pytest.raises(DataError) as err:  # a photo a class is too few, but the classes are these two
        find_dataset(tmp_path / "out")
    assert "2 class(es) with too few training photos ('cat' has 1, 'dog' has 1)" in str(err.value)


def test_a_wrong_token_and_no_device_are_one_line_each(tmp_path):
    fake = Fake({}, b"", status=401)
    try:
        line = one_error(pull(fake.url, tmp_path / "out"))
    finally:
        fake.close()
    assert "401" in line and "--token" in line and "a" * 20 not in line
    from test_serve import free_port

    line = one_error(pull(f"http://127.0.0.1:{free_port()}", tmp_path / "out"))
    assert "cannot reach http://127.0.0.1:" in line and "Connection refused" in line


def test_a_tar_cut_off_midway_keeps_nothing_half_written(tmp_path):
    whole = tarball([member(f"cat/{NAME}", GOOD * 100)])
    fake = Fake({"files": [entry("cat", data=GOOD * 100)]}, whole[: tarfile.BLOCKSIZE + 300])
    try:
        line = one_error(pull(fake.url, tmp_path / "out"))
    finally:
        fake.close()
    assert "broke off after 0 files" in line and "pull again" in line, line
    assert everything(tmp_path / "out") <= {"cat"}  # no partial photo, no temporary file left
