"""serve's half of the loop with a laptop: the captures pulled as a tar, an exported model deployed.

    GET  /v1/captures?files=1[&unsure=1]  the pull's index: every capture's label, name, bytes, sha256
    GET  /v1/captures.tar[?unsure=1]      every capture, as a tar stream of LABEL/NAME members
    POST /v1/captures.tar                 only those named, {"files": ["LABEL/NAME", ...]}: a pull's increment
    PUT  /v1/model                        an exported model, checked on the device's captures, then swapped in
    GET  /v1/model                        as before; `origin` says shipped, taught, or deployed from which
                                          run and variant, when and by whom (the token's name)

A pull reads the index first, then asks for the files it lacks by name (`noodle pull`, export/pull.py),
so a second pull moves only what is new. The tar is written member by member as it is sent (a capture
read at a time, in a worker thread), never the whole set in memory; the index's sha256 are cached by
(path, mtime, size) in the store, so a listing hashes only new photos.

PUT /v1/model takes multipart/form-data: `manifest` (the export's manifest.json), `model` (the .tflite
bytes), and optionally `variant`, `run` and `min_accuracy` (also a ?min_accuracy= query). The model is
accepted only when its sha256 is its manifest entry's, it loads under this device's own runtime with
noodle's metadata in it, its input is [1, H, W, 3] as described and its output one score per label,
and (with min_accuracy) it classifies the device's captures at least that well. Then it is kept in
CAPTURES/.models/deployed-<time>-<n>/ (written to a hidden name, then renamed), swapped in under the
model's lock (edge.serve_teach.swap: no request dropped), the one before kept for
POST /v1/model/rollback, MQTT's discovery republished, and serving.json written so a restart resumes
it (edge.serve_state). A refused model is a 4xx with one JSON line, and the old model serves on.

aiohttp (the `serve` extra), numpy and Pillow: this file ships to the device.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
from aiohttp import MultipartReader, web

from edge.atomic import write_bytes
from edge.captures import UNSURE, CaptureError, check_label, check_name
from edge.errors import NoodleError, first_line
from edge.escape import escape_name, shown
from edge.logs import logger
from edge.manifest import ExportManifest, ManifestError
from edge.serve_conn import COMMON_HEADERS, json_response
from edge.serve_http import BODY_WAIT, STALL_SECONDS, BodyBudget, Problem, read_body
from edge.serve_state import MODELS
from edge.serve_teach import Served, TeachApp, origin_of

# Bytes of POST /v1/captures.tar's list of names: a capture's LABEL/NAME is about 40 bytes, so
# 2 MB names the 50,000 photos no captures limit reaches.
TAR_BODY = 2 * 2**20
# The newest captures per class a deployed model is scored on: 50 give its accuracy within about
# +-10 points (95 %) and cost a Pi 4 about 3 s a class with lite0 int8.
CHECK_PER_CLASS = 50
# Images per invoke while scoring: the batch `classify` uses on the device.
CHECK_BATCH = 16
# Bytes of a form's small fields (variant, run, min_accuracy) and of its manifest.
FIELD_BYTES, MANIFEST_BYTES = 256, 2**20
FIELDS = ("manifest", "model", "variant", "run", "min_accuracy")

DEPLOY_ROUTES = {
    "/v1/model": ("GET, PUT", "model"),
    "/v1/captures.tar": ("GET, POST", "captures_tar"),
}

log = logger("serve.deploy")


class DeployApp(TeachApp):
    """TeachApp with the pull's tar and PUT /v1/model."""

    routes = {**TeachApp.routes, **DEPLOY_ROUTES}

    def __init__(self, *args, max_model: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_model = max_model
        self.bodies = BodyBudget(max(self.bodies.limit, max_model))

    # --- the pull

    async def on_captures(self, request):
        if request.query.get("files") != "1":
            return await super().on_captures(request)
        store = self.need_store()
        files = await self.in_thread(store.files, request.query.get("unsure") == "1")
        return json_response(200, {"files": files, "bytes": sum(f["bytes"] for f in files)})

    async def on_captures_tar(self, request):
        store = self.need_store()
        unsure, wanted = request.query.get("unsure") == "1", None
        if request.method == "POST":
            wanted = await self.wanted(request)
            unsure = any(name.startswith(UNSURE + "/") for name in wanted)
        files = await self.in_thread(store.files, unsure)
        chosen = [f for f in files if wanted is None or f"{f['label']}/{f['name']}" in wanted]
        response = web.StreamResponse(status=200, headers={
            **COMMON_HEADERS, "Content-Type": "application/x-tar", "X-Members": str(len(chosen))})
        response.enable_chunked_encoding()
        await response.prepare(request)
        loop, sent = asyncio.get_running_loop(), 0
        try:
            for f in chosen:
                block = await loop.run_in_executor(self.workers, tar_member, store.root, f["label"],
                                                   f["name"])
                if block:
                    await asyncio.wait_for(response.write(block), STALL_SECONDS)
                    sent += 1
            await asyncio.wait_for(response.write(b"\0" * 2 * tarfile.BLOCKSIZE), STALL_SECONDS)
            await response.write_eof()
        except (ConnectionError, asyncio.TimeoutError):
            log.warning("warning: %s: a pull stopped after %d of %d captures (the client went away)",
                        request.remote, sent, len(chosen))
            request.protocol.force_close()
        return response

    async def wanted(self, request) -> set[str]:
        """POST /v1/captures.tar's {"files": ["LABEL/NAME", ...]}, each name one the store makes."""
        size = self.body_size(request, TAR_BODY, 'a JSON {"files": ["LABEL/NAME", ...]}', "split the list")
        try:
            body = json.loads(await self.within(read_body(request, size), size))
            files = body["files"]
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise ValueError
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            raise Problem(400, 'the body is a JSON object {"files": ["LABEL/NAME", ...]}, the names '
                               "GET /v1/captures?files=1 lists") from None
        for name in files:
            label, _, photo = name.partition("/")
            try:
                check_name(photo)
                if label != UNSURE:
                    check_label(label)
            except CaptureError as exc:
                raise Problem(400, str(exc)) from None
        return set(files)

    # --- the deploy

    async def on_model(self, request):
        if request.method == "GET":
            return await super().on_model(request)
        self.need_store()
        self.same_site(request)
        size = self.body_size(request, self.max_model, "the model", "--max-model-mb")
        async with self.bodies.hold(size, BODY_WAIT):
            if request.headers.get("Expect", "").lower() == "100-continue":
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if request.content_type != "multipart/form-data":
                raise Problem(400, "send the model as multipart/form-data: manifest=@manifest.json, "
                                   "model=@int8.tflite (`noodle deploy` does)", close=True)
            form = await self.within(read_form(request), size)
            minimum = min_accuracy(request.query.get("min_accuracy", form.pop("min_accuracy", None)))
            self.teaching.begin_deploy()
            try:
                loop = asyncio.get_running_loop()
                verdict = await loop.run_in_executor(self.workers, deploy, self.teaching, form,
                                                     request.get("by"), minimum)
            finally:
                self.teaching.release()
        log.info("deployed %s (run %s, %s, sha256 %s) by %s: accuracy on the captures %s; serving it now",
                 escape_name(verdict["file"]), shown(verdict["run"] or "?"), shown(verdict["variant"]),
                 verdict["sha256"][:12], shown(verdict["origin"]["by"]), said(verdict["accuracy"]))
        return json_response(200, verdict)


async def read_form(request) -> dict:
    """PUT /v1/model's fields: the model's bytes, the manifest's, small text fields; nothing else."""
    form: dict = {}
    try:
        reader = MultipartReader(request.headers, request.content)
        while (part := await reader.next()) is not None:
            if part.name in form or isinstance(part, MultipartReader) or part.name not in FIELDS:
                raise Problem(400, f"a form field {shown(str(part.name))[:40]} (again, or unknown, or "
                                   f"nested): PUT /v1/model takes the fields {', '.join(FIELDS)}, once each",
                              close=True)
            data = await part.read()
            limit = {"model": None, "manifest": MANIFEST_BYTES}.get(part.name, FIELD_BYTES)
            if limit is not None and len(data) > limit:
                raise Problem(413, f"the form field {part.name} is over {limit} bytes", close=True)
            form[part.name] = data if part.name == "model" else bytes(data).decode("utf-8", "replace")
    except (ValueError, KeyError, AssertionError, RuntimeError, EOFError) as exc:
        raise Problem(400, f"not a multipart/form-data body ({first_line(exc)[:100]}); send manifest=@... "
                           "and model=@... (`noodle deploy` does)", close=True) from None
    for name in ("manifest", "model"):
        if name not in form:
            raise Problem(400, f"the form has no {name} field; send manifest=@manifest.json and "
                               "model=@int8.tflite (`noodle deploy` does)")
    return form


def min_accuracy(text: str | None) -> float | None:
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise Problem(400, f"min_accuracy {shown(text)[:20]}: give a fraction from 0 to 1 (0.9 for 90 %)")
    return value


def said(accuracy: dict) -> str:
    if accuracy["accuracy"] is None:
        return "not measured (no captures of its classes)"
    return f"{accuracy['accuracy']:.1%} of {accuracy['photos']}"


def tar_member(root: Path, label: str, name: str) -> bytes | None:
    """One capture as a tar member (header, bytes, padding), or None when it went meanwhile."""
    try:
        with open(root / label / name, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        return None
    info = tarfile.TarInfo(f"{label}/{name}")
    info.size, info.mtime, info.mode = len(data), int(st.st_mtime), 0o644
    pad = -len(data) % tarfile.BLOCKSIZE
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict") + data + b"\0" * pad


# --- the checks, in a worker thread

def deploy(teaching, form: dict, by: str | None, minimum: float | None) -> dict:
    """Check the uploaded model, keep it, swap it in; the verdict, or a Problem saying why not."""
    start = time.perf_counter()
    data, sha = form["model"], hashlib.sha256(form["model"]).hexdigest()
    manifest, variant, entry = described(form, sha)
    models = teaching.store.root / MODELS
    teaching.n += 1
    name = f"deployed-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{teaching.n}"
    folder, hidden = models / name, models / f".{name}"
    try:
        hidden.mkdir(parents=True)
        write_bytes(hidden / entry.file, bytes(data))
        write_bytes(hidden / "manifest.json", form["manifest"].encode())
        os.replace(hidden, folder)
    except OSError as exc:
        shutil.rmtree(hidden, ignore_errors=True)
        raise Problem(413, f"the model could not be kept on the device ({first_line(exc)}); free some "
                           "space (DELETE /v1/captures/LABEL) and deploy again") from None
    try:
        clf = loaded(folder / entry.file, teaching)
        accuracy = score(clf, teaching.store)
        if minimum is not None and (accuracy["accuracy"] is None or accuracy["accuracy"] < minimum):
            raise Problem(422, f"its accuracy on this device's captures is {said(accuracy)}, under "
                               f"min_accuracy {minimum:g}; the model served is as it was")
        origin = {**origin_of(clf, "deployed", time.time()), "run": form.get("run") or None,
                  "variant": variant, "sha256": sha, "by": by or "loopback (no token)"}
        before = teaching.model.sha256
        teaching.switch(Served(clf, origin))
    except Problem:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    except (NoodleError, OSError, ValueError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise Problem(422, f"refused: {first_line(exc)}; the model served is as it was") from None
    return {"deployed": True, "file": entry.file, "variant": variant, "run": origin["run"], "sha256": sha,
            "labels": clf.labels, "input": {"height": clf.size[0], "width": clf.size[1]},
            "accuracy": accuracy, "origin": origin, "previous_sha256": before,
            "seconds": round(time.perf_counter() - start, 2)}


def described(form: dict, sha: str):
    """The manifest, the variant and its entry for the uploaded bytes; 422 when they do not match."""
    try:
        document = json.loads(form["manifest"])
        manifest = ExportManifest.from_dict(document, "the manifest field")
    except (ValueError, ManifestError) as exc:
        raise Problem(422, f"the manifest is not an export's manifest.json ({first_line(exc)}); send the "
                           "one `noodle export` wrote") from None
    variant = form.get("variant") or next((v for v, e in manifest.models.items() if e.sha256 == sha), None)
    entry = manifest.entry(variant) if variant else None
    if entry is None:
        raise Problem(422, f"the manifest lists no variant {shown(variant or '')} of sha256 {sha[:12]}; "
                           f"it lists {', '.join(map(shown, manifest.models)) or 'none'}")
    if entry.sha256 != sha:
        raise Problem(422, f"the model's sha256 {sha[:12]} is not its manifest's {(entry.sha256 or '')[:12]} "
                           f"for {shown(variant)}: the file was altered or belongs to another export; "
                           "deploy the pair `noodle export` wrote")
    return manifest, variant, entry


def loaded(path: Path, teaching):
    """The model under this device's own runtime, with noodle's metadata and an image input."""
    from edge.runtime import Classifier, embedded_metadata, read_checked

    model = read_checked(path)
    if embedded_metadata(model, path) is None:
        raise Problem(422, "not a model noodle exported: it carries no noodle metadata (labels, input, "
                           "weights sha256); export it with `noodle export`")
    shape = list(model.inputs[0].shape) if len(model.inputs) == 1 else []
    if len(shape) != 4 or shape[0] not in (1, -1) or shape[3] != 3:
        raise Problem(422, f"its input is {shape}, not one [1, H, W, 3] image; noodle deploys image "
                           "classifiers `noodle export` wrote")
    clf = Classifier(path, threads=teaching.threads, runtime=teaching.runtime)
    if teaching.strict and clf.validation != "passed":
        raise Problem(422, f"its manifest records that its export's validation {clf.validation}; this serve "
                           "runs with --strict (as the boot service does): deploy an export that passed")
    return clf


def score(clf, store) -> dict:
    """The model's accuracy on the newest CHECK_PER_CLASS captures of each of its classes."""
    from edge.preprocess import ImageError, load_image

    per_class, not_in_model = {}, {}
    for label in store.labels():
        photos = store._photos(label)[-CHECK_PER_CLASS:]
        if label not in clf.labels:
            not_in_model[label] = len(photos)
            continue
        pixels = []
        for path in photos:
            try:
                pixels.append(load_image(path, clf.size))
            except (ImageError, OSError):
                continue  # deleted or damaged meanwhile: not scored
        if not pixels:
            continue
        answers = [top[0][0] for top in clf.top_k(clf.probabilities(np.stack(pixels), CHECK_BATCH))]
        right = sum(a == label for a in answers)
        per_class[label] = {"photos": len(answers), "correct": right,
                            "accuracy": round(right / len(answers), 4)}
    photos = sum(c["photos"] for c in per_class.values())
    correct = sum(c["correct"] for c in per_class.values())
    return {"accuracy": round(correct / photos, 4) if photos else None, "photos": photos, "correct": correct,
            "per_class": per_class, "not_in_model": not_in_model}
