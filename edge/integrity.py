"""The bundle's checksum list, SHA256SUMS: written by `noodle bundle`, checked on the Pi.

The list holds the sha256 of every file the bundle ships, in the format
`sha256sum --check` reads (64 hex digits, two spaces, the path), sorted by
path. install.sh checks all of it with sha256sum before it runs anything; the
runner, started from an installed bundle (the folder above edge/ holds the
list), checks at start the files it may read, which is all but wheels/ (only
install.sh reads those, and pip installs them by their pinned sha256). A
checkout has no list, so nothing is checked there and nothing is slowed.

What the list catches: a file that changed after `noodle bundle` wrote the
tarball (a partial copy, a damaged card, a file edited after unpacking). What
it cannot catch: someone who changes a file and rewrites the list to match.
Only the tarball's own sha256, which `noodle bundle` prints and the user
compares on the Pi, covers that (README-PI.md).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from edge.errors import NoodleError

SUMS = "SHA256SUMS"
# What only install.sh reads: the runner does not hash 60-130 MB of wheels at every start.
INSTALL_ONLY = "wheels/"
# Each path component starts with a letter, digit or '_': no `..`, no leading `/`, no hidden file.
LINE = re.compile(r"([0-9a-f]{64})  ([A-Za-z0-9_][A-Za-z0-9._-]*(?:/[A-Za-z0-9_][A-Za-z0-9._-]*)*)")


class IntegrityError(NoodleError):
    pass


def format_sums(digests: dict[str, str]) -> str:
    """SHA256SUMS's text: a line per file, sorted by path, as `sha256sum` writes them."""
    return "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))


def read_sums(path: Path) -> dict[str, str]:
    """The list at PATH: relative path -> sha256; a line of any other shape refuses it whole."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path}: unreadable ({type(exc).__name__}); copy the bundle again") from None
    sums = {}
    for number, line in enumerate(lines, 1):
        found = LINE.fullmatch(line)
        if found is None:
            raise IntegrityError(f"{path}: line {number} is not '<sha256>  <path inside the bundle>', so the "
                                 "list was altered or damaged; copy the bundle again")
        sums[found.group(2)] = found.group(1)
    if not sums:
        raise IntegrityError(f"{path}: lists no file; copy the bundle again")
    return sums


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(root: Path, skip: str | None = INSTALL_ONLY) -> int:
    """Check ROOT's files against ROOT/SHA256SUMS (but those under SKIP); return how many were checked."""
    sums = read_sums(root / SUMS)
    checked = 0
    for name, expected in sums.items():
        if skip and name.startswith(skip):
            continue
        path = root / name
        try:
            same = _sha256(path) == expected
        except OSError:
            raise IntegrityError(f"{path}: missing or unreadable, though {SUMS} lists it; the bundle is "
                                 "incomplete: copy it again and run ./install.sh") from None
        if not same:
            raise IntegrityError(f"{path}: differs from its sha256 in {SUMS}, so it changed after `noodle "
                                 "bundle` made the bundle; copy the bundle again (check the tarball's "
                                 "sha256) and run ./install.sh")
        checked += 1
    return checked


def installed_root() -> Path | None:
    """The bundle folder this edge/ was installed in, or None in a checkout (no list beside edge/)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / SUMS).is_file() else None


def check_at_start() -> None:
    """Run from an installed bundle: refuse to start when a file it may read differs from the list."""
    root = installed_root()
    if root is not None:
        verify(root)
