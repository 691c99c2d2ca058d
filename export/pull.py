"""`noodle pull`: the device's captures into a dataset folder `noodle train` reads (OUT/<label>/*.jpg).

1. GET /v1/captures?files=1: the index, every capture's label, name, bytes and sha256. A label or
   name that is not one serve makes (edge.captures' rules) refuses the whole index.
2. The captures OUT already holds with the same bytes and sha256 are skipped; the others are asked
   for by name, POST /v1/captures.tar {"files": [...]}, so a second pull moves only what is new.
3. The tar is read as a stream, member by member. Each must pass tarfile's 'data' filter (no absolute
   name, nothing outside OUT, no link out, no device) and noodle's own checks: a regular file, one of
   the names asked for, the index's size and sha256. It is written to a temporary name beside its
   place and renamed when whole and checked. The first member that fails stops the pull in one line;
   what came before it is kept, each file checked.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edge.atomic import atomic_output
from edge.captures import UNSURE, CaptureError, check_label, check_name
from edge.errors import NoodleError
from edge.escape import escape_name, shown
from edge.manifest import sha256_file
from export.device import Device, DeviceError

# Bytes read from the tar at a time.
CHUNK = 1 << 20


@dataclass
class Wanted:
    label: str
    name: str
    bytes: int
    sha256: str

    @property
    def key(self) -> str:
        return f"{self.label}/{self.name}"


@dataclass
class Pulled:
    out: Path
    listed: int = 0
    new: Counter = field(default_factory=Counter)  # label -> files written
    skipped: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)  # listed, but not in the tar (deleted meanwhile)


def read_index(answer: dict, where: str) -> list[Wanted]:
    """The index's entries, each checked: a label and a name serve makes, a size, a sha256."""
    files = answer.get("files")
    if not isinstance(files, list):
        raise DeviceError(f"{where}: the index has no list of files; is the device's noodle-edge this one's?")
    out = []
    for item in files:
        try:
            label, name, size, sha = item["label"], item["name"], item["bytes"], item["sha256"]
            if label != UNSURE:
                check_label(label)
            check_name(name)
            if not isinstance(size, int) or size < 0 or not isinstance(sha, str) or len(sha) != 64 \
                    or set(sha) - set("0123456789abcdef"):
                raise CaptureError(f"{shown(name)}: a size or sha256 that is not one")
        except (KeyError, TypeError) as exc:
            raise DeviceError(f"{where}: an index entry without {exc}; is the device's noodle-edge this "
                              "one's?") from None
        except CaptureError as exc:
            raise DeviceError(f"{where}: the index lists {exc}; nothing was fetched") from None
        out.append(Wanted(label, name, size, sha))
    return out


def have(path: Path, want: Wanted) -> bool:
    try:
        return path.is_file() and path.stat().st_size == want.bytes and sha256_file(path) == want.sha256
    except OSError:
        return False


def pull(device: Device, out: Path, unsure: bool = False) -> Pulled:
    """Fetch the captures OUT lacks; what was fetched, skipped and missed."""
    index = read_index(device.json("GET", "/v1/captures?files=1" + ("&unsure=1" if unsure else "")),
                       f"{device.url}/v1/captures")
    done = Pulled(out, listed=len(index))
    wanted = {}
    for want in index:
        if have(out / want.label / want.name, want):
            done.skipped += 1
        else:
            wanted[want.key] = want
    if not wanted:
        return done
    body = json.dumps({"files": sorted(wanted)}).encode()
    with device.open("POST", "/v1/captures.tar", body, {"Content-Type": "application/json"}) as response:
        extract(response, out, wanted, done, f"{device.url}/v1/captures.tar")
    done.missing = sorted(wanted)
    return done


def extract(stream, out: Path, wanted: dict[str, Wanted], done: Pulled, where: str) -> None:
    """The tar's members into OUT, each checked; DeviceError at the first that is not what was asked."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                want = checked(member, out, wanted, where, sum(done.new.values()))
                source = tar.extractfile(member)
                write(source, out / want.label / want.name, want, where)
                del wanted[want.key]
                done.new[want.label] += 1
                done.bytes += want.bytes
    except (tarfile.ReadError, EOFError, OSError, http.client.HTTPException) as exc:
        if isinstance(exc, NoodleError):
            raise
        raise DeviceError(f"{where}: the tar broke off after {sum(done.new.values())} files ({exc}); "
                          "those are kept, each checked: pull again for the rest") from None


def checked(member: tarfile.TarInfo, out: Path, wanted: dict[str, Wanted], where: str,
            written: int) -> Wanted:
    """The member's entry of the index, or DeviceError saying why it is not written."""
    kept = f"nothing of it was written ({written} files before it were, each checked)"
    if member.name.startswith(("/", "\\")) or ".." in member.name.replace("\\", "/").split("/"):
        raise DeviceError(f"{where}: member {escape_name(member.name)}: an absolute name or one with '..', "
                          f"which would land outside {escape_name(str(out))}; {kept}")
    try:
        tarfile.data_filter(member, str(out))
    except tarfile.FilterError as exc:
        raise DeviceError(f"{where}: member {escape_name(member.name)}: {type(exc).__name__}, "
                          f"{exc}; {kept}") from None
    if not member.isreg():
        raise DeviceError(f"{where}: member {escape_name(member.name)} is a link or a device, not a photo; "
                          f"{kept}")
    want = wanted.get(member.name)
    if want is None:
        raise DeviceError(f"{where}: member {escape_name(member.name)} was not asked for (or came twice); "
                          f"{kept}")
    if member.size != want.bytes:
        raise DeviceError(f"{where}: member {escape_name(member.name)} is {member.size} bytes, the index "
                          f"said {want.bytes}; {kept}")
    return want


def write(source, dest: Path, want: Wanted, where: str) -> None:
    """`source`'s bytes to `dest`, renamed into place only when the sha256 is the index's."""
    digest = hashlib.sha256()
    with atomic_output(dest) as tmp, open(tmp, "wb") as f:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            f.write(chunk)
        f.flush()
        if digest.hexdigest() != want.sha256:
            raise DeviceError(f"{where}: member {escape_name(want.key)}: its sha256 is not the index's "
                              "(changed on the device meanwhile, or damaged on the way); pull again")


def summary(done: Pulled, url: str) -> list[str]:
    """What a pull prints: a few lines."""
    classes = ", ".join(f"{shown(label)} {n}" for label, n in sorted(done.new.items()))
    lines = [f"pulled {sum(done.new.values())} new captures ({done.bytes / 1e6:.1f} MB"
             + (f"; {classes}" if classes else "") + f") from {url} into {escape_name(str(done.out))}; "
             f"{done.skipped} of the {done.listed} listed were there already"]
    if done.missing:
        lines.append(f"warning: {len(done.missing)} listed captures did not come (deleted on the device "
                     "meanwhile?); pull again to check")
    if (done.out / UNSURE).is_dir():
        lines.append(f"note: {UNSURE}/ holds the frames the device was unsure of; `noodle train` skips it: "
                     "move each into its class folder to train on it")
    counts = {p.name: sum(1 for _ in p.glob("*.jpg")) for p in sorted(done.out.iterdir())
              if p.is_dir() and not p.name.startswith(".")} if done.out.is_dir() else {}
    if counts:
        lines.append(f"{escape_name(str(done.out))} now holds " + ", ".join(
            f"{shown(k)} {v}" for k, v in counts.items()) + f"; train on it: make export DATA={done.out}")
    return lines
