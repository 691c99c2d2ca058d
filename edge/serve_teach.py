"""serve's Teach routes: captures kept on the device, a head taught from them, the model swapped.

    GET    /v1/captures                  counts and bytes per class, the _unsure ring, the limit
    POST   /v1/captures/{label}          keep the camera's frame, or the image in the body
    POST   /v1/captures/{label}/{name}   move capture NAME from _unsure (or ?from=LABEL) into LABEL
    GET    /v1/captures/{label}/{name}   the capture's JPEG (the page's thumbnails)
    DELETE /v1/captures/{label}[/{name}] delete a capture, or a whole class
    POST   /v1/teach                     teach from the captures in a worker thread; 409 while one runs
    GET    /v1/teach                     its state: idle, running (seconds so far), done (figures), failed
    POST   /v1/model/rollback            back to the model served before the last swap
    GET    /v1/model                     as before, plus where the model came from and what came before

A teach runs edge.teach.teach (the `noodle-edge teach` command's code) from the model serve
started with, into CAPTURES/.models/<time>-<n>/ (hidden: neither the store nor `noodle train`
counts it), then loads the folder and swaps it in under the SharedModel's lock: a request
already invoking finishes on the old model, the next one runs on the new. The models served
before stay loaded and on disk (the last KEEP of them), so a rollback cannot fail. No path from
a request reaches the file system: labels are checked and names matched by edge.captures.

aiohttp (the `serve` extra), numpy and Pillow: this file ships to the device.
"""
from __future__ import annotations

import asyncio
import io
import json
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from edge.atomic import DISK_FULL, OutputError
from edge.captures import UNSURE, CaptureError, CaptureFull, CaptureStore, check_label, check_name
from edge.errors import NoodleError, first_line
from edge.escape import escape_name, shown
from edge.logs import logger
from edge.preprocess import ImageError, load_image
from edge.serve_conn import json_response
from edge.serve_http import BODY_WAIT, ROUTES, App, Problem, file_field, read_body
from edge.serve_state import MODELS, remember

# A kept photo's long side: a camera's 640x480 frame, three times lite0's 224 px input, so a
# capture can teach a later, larger backbone too.
CAPTURE_SIDE = 640
# Models kept loaded and on disk behind the one served: enough to undo a bad teach or two.
KEEP = 3
# Seconds between two frames kept in the _unsure ring: a doubtful minute is 60 photos, not 1,800.
UNSURE_EVERY = 1.0
# Names of the last captures per class GET /v1/captures lists (the page's thumbnails).
RECENT = 8
# Bytes of POST /v1/teach's JSON options: {"replace": false} and room to spare.
TEACH_BODY = 1024

TEACH_ROUTES = {
    "/v1/captures": ("GET", "captures"),
    "/v1/captures/{label}": ("POST, DELETE", "capture"),
    "/v1/captures/{label}/{name}": ("GET, POST, DELETE", "capture_named"),
    "/v1/teach": ("GET, POST", "teach"),
    "/v1/model/rollback": ("POST", "rollback"),
}

log = logger("serve.teach")


class Served:
    """One model serve can switch to: the loaded classifier and where it came from."""

    def __init__(self, clf, origin: dict):
        self.clf, self.origin = clf, origin


def origin_of(clf, kind: str | None = None, at: float | None = None) -> dict:
    folder = getattr(clf, "folder", None)
    return {"kind": kind or ("taught" if folder is not None else "shipped"),
            "path": str(folder if folder is not None else clf.path),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)) if at else None}


def swap(model, clf, top_k: int, origin: dict) -> None:
    """Serve `clf` from now on: checked (one invoke) first, then switched under the model's lock."""
    from edge.serve_model import SharedModel

    # Builds the info and runs one invoke: a broken model fails here, as does a taught class named
    # `unknown` under --threshold.
    fresh = SharedModel(clf, top_k, model.threshold)
    # What identifies a taught folder is its manifest (which holds every other file's sha256).
    folder = getattr(clf, "folder", None)
    info = {**fresh.info, "origin": origin}
    if folder is not None:
        info.update(file=folder.name, sha256=clf.sha256)
    with model.lock:  # a request invoking now finishes first, on the old model
        model.clf, model.k, model.sha256, model.info = fresh.clf, fresh.k, info["sha256"], info


def forget(served: Served) -> None:
    """A taught or deployed model no longer kept: its folder under .models goes."""
    path = Path(served.origin["path"])
    folder = path if path.is_dir() else path.parent
    if served.origin["kind"] in ("taught", "deployed") and folder.parent.name == MODELS:
        shutil.rmtree(folder, ignore_errors=True)


class Teaching:
    """The captures, the teach job (one at a time) and the models served, for one serve."""

    def __init__(self, model, store: CaptureStore | None, top_k: int, unsure: float,
                 threads: int | None = None, runtime: str | None = None, mqtt=None):
        self.model, self.store, self.top_k, self.unsure = model, store, top_k, unsure
        self.threads, self.runtime, self.mqtt = threads, runtime, mqtt
        clf = model.clf
        self.base = getattr(clf, "folder", None) or clf.path  # what every teach starts from
        self.current = Served(clf, origin_of(clf))
        self.shipped_sha256, self.log = model.sha256, log
        model.info = {**model.info, "origin": self.current.origin}
        self.before: list[Served] = []  # the models served before, oldest first
        self.lock = threading.Lock()
        self.job = {"state": "idle"}
        self.deploying = False  # a PUT /v1/model being checked (edge/serve_deploy.py)
        self.strict = False  # serve --strict: a deployed model's validation must have passed too
        self.last_unsure = 0.0
        self.n = 0

    # --- the teach job

    def claim(self, what: str) -> None:
        """One change of model at a time: a teach, a deploy or a rollback; a 409 for the second."""
        if self.job["state"] == "running":
            raise Problem(409, f"a teach is running; {what} waits until it has finished (GET /v1/teach "
                               "says how far it is)")
        if self.deploying:
            raise Problem(409, f"a deployed model is being checked; {what} waits until it is done")

    def begin_deploy(self) -> None:
        with self.lock:
            self.claim("a deploy")
            self.deploying = True

    def release(self) -> None:
        with self.lock:
            self.deploying = False

    def start(self, replace: bool) -> dict:
        with self.lock:
            self.claim("another teach")
            self.job = {"state": "running", "started": time.time(), "replace": replace}
            job = self.job
        threading.Thread(target=self._teach, args=(job,), name="teach", daemon=True).start()
        return self.progress()

    def progress(self) -> dict:
        with self.lock:
            job = dict(self.job)
        if job["state"] == "running":
            job["seconds"] = round(time.time() - job["started"], 1)
        job.pop("started", None)
        return job

    def _teach(self, job: dict) -> None:
        from edge.taught import TaughtClassifier
        from edge.teach import teach

        start = time.perf_counter()
        self.n += 1
        out = self.store.root / MODELS / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{self.n}"
        try:
            taught = teach(self.store.root, self.base, out, replace=job["replace"], threads=self.threads,
                           runtime=self.runtime, log=lambda line: log.warning("warning: teach: %s", line))
            clf = TaughtClassifier(out, threads=self.threads, runtime=self.runtime)
            self.switch(Served(clf, origin_of(clf, "taught", time.time())))
            result = {"state": "done", "seconds": round(time.perf_counter() - start, 2),
                      "teach_seconds": round(taught.seconds, 2), "invokes": taught.invokes,
                      "computed": taught.computed, "labels": clf.labels, "sha256": self.model.sha256,
                      "photos": taught.manifest.captures["photos"],
                      "accuracy": taught.manifest.solve["accuracy"],
                      "converged": taught.manifest.solve["converged"], "folder": out.name}
            log.info("taught %s in %.1f s: labels %s; serving it now", escape_name(out.name),
                     result["seconds"], ", ".join(map(shown, clf.labels)))
        except (NoodleError, OSError, ValueError) as exc:
            shutil.rmtree(out, ignore_errors=True)
            result = {"state": "failed", "seconds": round(time.perf_counter() - start, 2),
                      "error": f"{first_line(exc)}; the model served is as it was"}
            log.error("error: teach: %s", result["error"])
        except Exception as exc:  # noqa: BLE001 (a bug: one line, the old model serves on)
            shutil.rmtree(out, ignore_errors=True)
            result = {"state": "failed", "seconds": round(time.perf_counter() - start, 2),
                      "error": f"{type(exc).__name__}: {first_line(exc)}; the model served is as it was"}
            log.error("error: teach: %s", result["error"])
        with self.lock:
            self.job = {**result, "replace": job["replace"]}

    def switch(self, served: Served) -> None:
        """Serve `served`; the one served until now goes on the rollback list (the last KEEP kept)."""
        swap(self.model, served.clf, self.top_k, served.origin)
        self.before.append(self.current)
        self.current = served
        while len(self.before) > KEEP:
            forget(self.before.pop(0))
        remember(self)
        self.announce()

    def rollback(self) -> dict:
        with self.lock:
            self.claim("a rollback")
            if not self.before:
                raise Problem(409, "no earlier model to go back to: this is the one serve started with")
            previous = self.before.pop()
            swap(self.model, previous.clf, self.top_k, previous.origin)
            left = self.current
            self.current = previous
        forget(left)  # undone: nothing comes back to it
        remember(self)
        self.announce()
        return self.model.info

    def announce(self) -> None:
        """MQTT's discovery and state again, with the new labels."""
        if self.mqtt is not None and hasattr(self.mqtt, "model_changed"):
            try:
                self.mqtt.model_changed(self.model.info)
            except Exception as exc:  # noqa: BLE001 (the broker's trouble is not the swap's)
                log.warning("warning: mqtt: the new model was not announced (%s)", first_line(exc))

    # --- the _unsure ring

    def on_result(self, live, result: dict) -> None:
        """From the camera thread, after each frame: a frame scored under --unsure joins the ring."""
        now = time.monotonic()
        if self.store is None or result["score"] >= self.unsure or now - self.last_unsure < UNSURE_EVERY:
            return
        self.last_unsure = now
        frame = live.frame
        if frame is None:
            return
        try:
            self.store.add_unsure(frame, bgr=True)
        except (CaptureError, OSError) as exc:
            log.warning("warning: an unsure frame was not kept (%s)", first_line(exc))


class TeachApp(App):
    """App with the Teach routes."""

    routes = {**ROUTES, **TEACH_ROUTES}

    def __init__(self, *args, teaching: Teaching, **kwargs):
        super().__init__(*args, **kwargs)
        self.teaching = teaching

    def route_of(self, request) -> str:
        if request.path in self.routes:
            return request.path
        parts = segments(request)
        if parts[:3] == ["", "v1", "captures"] and len(parts) in (4, 5) and all(parts[3:]):
            return "/v1/captures/{label}" if len(parts) == 4 else "/v1/captures/{label}/{name}"
        return "other"

    def same_site(self, request) -> None:
        """A change (a capture, a delete, a teach, a rollback) only from this server's own page or a
        client that is no page: a browser names the page's origin, and another site's page could
        otherwise POST to a loopback server without a token (the token's cookie is SameSite=Strict)."""
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            raise Problem(403, "a page from another site may not change the captures or the model; use "
                               "this server's own page")

    def need_store(self) -> CaptureStore:
        if self.teaching.store is None:
            raise Problem(404, "this server keeps no captures (started without --captures DIR); start "
                               "it with --captures to teach it")
        return self.teaching.store

    async def in_thread(self, fn, *args):
        """`fn` in a worker thread; a capture refused becomes a 4xx in its own words."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.workers, fn, *args)
        except CaptureFull as exc:
            raise Problem(413, str(exc)) from None
        except CaptureError as exc:
            raise Problem(400 if "no such capture" not in str(exc) else 404, str(exc)) from None
        except OSError as exc:
            if exc.errno in DISK_FULL or isinstance(exc, OutputError):  # atomic_output's full disk
                raise Problem(413, "the device's disk is full; nothing was half-written: delete captures "
                                   "(DELETE /v1/captures/LABEL) or free some space") from None
            raise Problem(400, f"the captures folder cannot be written ({exc.strerror or exc})") from None

    # --- the routes

    async def on_model(self, request):
        info = self.model.info
        before = [s.origin for s in self.teaching.before]
        return json_response(200, {**info, "previous": before[-1] if before else None})

    async def on_captures(self, request):
        store = self.need_store()
        return json_response(200, await self.in_thread(store.listing, RECENT))

    async def on_capture(self, request):
        store = self.need_store()
        self.same_site(request)
        label = segments(request)[3]
        if request.method == "DELETE":
            removed = await self.in_thread(store.delete, label if label == UNSURE else check_label_(label))
            return json_response(200, {"deleted": removed, "label": label})
        check_label_(label)
        if request.content_length or request.headers.get("Transfer-Encoding"):
            pixels = await self.upload(request)
            path = await self.in_thread(store.add, label, pixels)
        else:
            self.need_source()
            with self.live.cond:
                frame = self.live.frame
            if frame is None:
                raise Problem(409, "the camera has no frame yet; try again in a moment")
            path = await self.in_thread(store.add, label, frame, True)
        return json_response(201, {"label": label, "name": path.name,
                                   "count": len(await self.in_thread(store._photos, label))})

    async def on_capture_named(self, request):
        store = self.need_store()
        _, _, _, label, name = segments(request)
        if label != UNSURE:
            check_label_(label)
        try:
            check_name(name)
        except CaptureError as exc:
            raise Problem(400, str(exc)) from None
        if request.method != "GET":
            self.same_site(request)
        if request.method == "DELETE":
            await self.in_thread(store.delete, label, name)
            return json_response(200, {"deleted": 1, "label": label, "name": name})
        if request.method == "GET":
            path = store.root / label / name
            try:
                data = await self.in_thread(path.read_bytes)
            except Problem:
                raise Problem(404, f"{shown(label)}/{escape_name(name)}: no such capture") from None
            return json_response(200, data, {"Content-Type": "image/jpeg", "Cache-Control": "max-age=3600"})
        source = request.query.get("from", UNSURE)
        if source != UNSURE:
            check_label_(source)
        dest = await self.in_thread(store.move, name, label, source)
        return json_response(200, {"label": label, "name": dest.name, "from": source})

    async def on_teach(self, request):
        if request.method == "GET":
            return json_response(200, self.teaching.progress())
        self.need_store()
        self.same_site(request)
        replace = False
        if request.content_length and request.content_length > TEACH_BODY:
            raise Problem(413, 'the body is a small JSON object such as {"replace": false}, or nothing')
        if request.content_length:
            try:
                body = json.loads(await self.within(read_body(request, self.body_size(request)), 1024))
                replace = body.get("replace", False) if isinstance(body, dict) else None
            except (ValueError, UnicodeDecodeError):
                replace = None
            if not isinstance(replace, bool):
                raise Problem(400, 'the body is a JSON object such as {"replace": false}, or nothing')
        return json_response(202, self.teaching.start(replace))

    async def on_rollback(self, request):
        self.same_site(request)
        info = await asyncio.get_running_loop().run_in_executor(self.workers, self.teaching.rollback)
        return json_response(200, info)

    # --- an uploaded capture: /v1/classify's limits, decoder and decode budget

    async def upload(self, request):
        size = self.body_size(request)
        async with self.bodies.hold(size, BODY_WAIT):
            if request.content_type == "multipart/form-data":
                body = await self.within(file_field(request), size)
            else:
                body = await self.within(read_body(request, size), size)
            return await asyncio.get_running_loop().run_in_executor(self.workers, self.decode_capture, body)

    def decode_capture(self, body) -> object:
        try:
            return load_image("upload", capture_size(body), data=body)
        except ImageError as exc:
            self.metrics.inc("noodle_errors_total", kind="upload")
            raise Problem(422, f"{exc.reason}") from None
        except MemoryError:
            self.metrics.inc("noodle_errors_total", kind="upload")
            raise Problem(413, "image too large for this device's memory") from None


def segments(request) -> list[str]:
    """The path's parts, each decoded on its own: a label's %2F is a slash in the label (refused in
    words), not a step into another folder."""
    return [unquote(part) for part in request.raw_path.split("?", 1)[0].split("/")]


def check_label_(label: str) -> str:
    try:
        return check_label(label)
    except CaptureError as exc:
        raise Problem(400, str(exc)) from None


def capture_size(body) -> tuple[int, int]:
    """(h, w) to decode an upload at: its own shape, the long side at most CAPTURE_SIDE.

    Only the header is read here; load_image then decodes under its guards (a bad header is its
    to refuse, in its words)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(body)) as img:
            w, h = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # turned a quarter by its EXIF
                w, h = h, w
    except Exception:  # noqa: BLE001 (load_image names what is wrong)
        return CAPTURE_SIDE, CAPTURE_SIDE
    scale = min(1.0, CAPTURE_SIDE / max(w, h, 1))
    return max(1, round(h * scale)), max(1, round(w * scale))
