"""What serve serves, kept across a restart: CAPTURES/.models/serving.json.

After each swap (a teach, a deploy, a rollback) serve writes which model it serves, the sha256
it had, and the shipped model's sha256 it replaced; back on the shipped model, the file goes.
On start, serve resumes that model when the shipped model is the same one and the sha256
still checks, and says so in one line with the way back (POST /v1/model/rollback, or delete
the file). A model that no longer checks is not loaded, also said in one line, and the file
goes: serve then serves the shipped model, never a half-trusted one. Deployed models no
longer on the rollback list (a restart empties it) are removed at start.

Standard library (and edge's loaders): this file ships to the device.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from edge.atomic import write_json
from edge.errors import NoodleError, first_line
from edge.escape import escape_name, shown
from edge.manifest import sha256_file

SERVING = "serving.json"
MODELS = ".models"


def models_dir(teaching) -> Path | None:
    return teaching.store.root / MODELS if teaching.store is not None else None


def served_sha256(path: Path) -> str:
    """What identifies a served model: a .tflite's own sha256, a taught folder's manifest's."""
    if path.is_dir():
        from edge.taught import TEACH_MANIFEST

        return sha256_file(path / TEACH_MANIFEST)
    return sha256_file(path)


def remember(teaching) -> None:
    """serving.json for the model served now (removed when it is the shipped one)."""
    folder = models_dir(teaching)
    if folder is None:
        return
    origin, dest = teaching.current.origin, folder / SERVING
    try:
        if origin["kind"] == "shipped":
            dest.unlink(missing_ok=True)
            return
        path = Path(origin["path"])
        write_json(dest, {"format": "noodle", "kind": "serving", "origin": origin,
                          "model": str(path.relative_to(folder)), "sha256": teaching.model.sha256,
                          "over": teaching.shipped_sha256, "written": time.time()})
    except (OSError, ValueError) as exc:
        teaching.log.warning("warning: %s not written (%s); after a restart serve starts with the "
                             "shipped model", escape_name(str(dest)), first_line(exc))


def prune(folder: Path, keep: Path | None) -> None:
    """Deployed models a restart left behind (none is on the rollback list any more), but `keep`;
    and a deploy's hidden folder that a crash left half-written."""
    import shutil

    for old in folder.glob("*deployed-*"):
        if old.is_dir() and old.name.lstrip(".").startswith("deployed-") and old != keep:
            shutil.rmtree(old, ignore_errors=True)


def resume(teaching, threads: int | None, runtime: str | None) -> str | None:
    """The model serving.json names, swapped in; one line saying so (or why not), None with no file."""
    folder = models_dir(teaching)
    if folder is None:
        return None
    said = _resume(teaching, folder, threads, runtime)
    if said is not None and said.startswith("warning:"):
        (folder / SERVING).unlink(missing_ok=True)  # said once; the next start is the shipped model's
    current = Path(teaching.current.origin["path"])
    prune(folder, current.parent if teaching.current.origin["kind"] == "deployed" else None)
    return said


def _resume(teaching, folder: Path, threads: int | None, runtime: str | None) -> str | None:
    from edge.runtime import load_classifier
    from edge.serve_teach import Served

    if not (folder / SERVING).is_file():
        return None
    where = escape_name(str(folder / SERVING))
    try:
        state = json.loads((folder / SERVING).read_text(encoding="utf-8"))
        path = folder / state["model"]
        origin, sha = dict(state["origin"]), state["sha256"]
        if path.resolve().parent != folder.resolve() and path.resolve().parent.parent != folder.resolve():
            raise ValueError("it names a model outside the captures' .models folder")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"warning: {where}: not read ({first_line(exc)}); serving the shipped model, and it goes"
    origin["path"] = str(path)
    if state.get("over") != teaching.shipped_sha256:
        return (f"warning: {where} names a model served over another shipped model than this one; serving "
                "this one, and that file goes")
    try:
        if served_sha256(path) != sha:
            raise NoodleError("its sha256 differs from the one recorded; it was altered")
        clf = load_classifier(path, threads=threads, runtime=runtime)
        if teaching.strict and clf.validation not in ("passed", None) and not path.is_dir():
            raise NoodleError(f"its export's validation {clf.validation}, and serve runs with --strict")
        teaching.switch(Served(clf, origin))
    except (NoodleError, OSError, ValueError) as exc:
        return (f"warning: {escape_name(str(path))}: not resumed ({first_line(exc)}); serving the shipped "
                f"model, and {SERVING} goes")
    what = f"run {shown(origin['run'])}, " if origin.get("run") else ""
    return (f"resumed the {origin['kind']} model {escape_name(state['model'])} ({what}sha256 {sha[:12]}) "
            f"as {where} records; POST /v1/model/rollback, or delete that file and restart, serves the "
            "shipped one again")
