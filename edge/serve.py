"""`noodle-edge serve`: one camera loop, a live page, an HTTP API and MQTT, from one process.

The parts, each in its own file:

    edge/serve_config.py   the defaults the CLI shows, each with its reason (ServeConfig)
    edge/serve_auth.py     the token and the Host check
    edge/serve_model.py    the one interpreter, shared (SharedModel)
    edge/serve_live.py     the camera loop and what it leaves for readers (Live)
    edge/serve_metrics.py  the counters and the per-address rate limit
    edge/serve_conn.py     aiohttp's server: the connection cap, head deadline, JSON refusals
    edge/serve_http.py     the routes, the bodies' budget, the streams
    edge/serve_page.py     the live page
    edge/serve_mqtt.py     --mqtt: the label into home automation
    edge/serve_teach.py    --captures: the Teach routes, the teach job, the hot swap, rollback
    edge/serve_deploy.py   --captures: the pull's index and tar, PUT /v1/model (noodle pull, deploy)
    edge/serve_state.py    --captures: serving.json, so a restart resumes the model deployed or taught

HTTP is aiohttp's (Home Assistant serves its UI and API from it on the same Pis): its
llhttp parser refuses the malformed and ambiguous requests that a hand-written server
kept meeting. An upload is decoded in a worker thread by edge.preprocess.load_image, the
decoder `classify` uses (bomb and truncation guards, the process's decode budget); the one
interpreter runs one invoke at a time under a lock.

Safe by default: loopback only unless --host says otherwise, and beyond loopback a token is
required (compared in constant time). Bodies, connections, streaming clients and each
client's request rate are capped; a bad request is a 4xx with a one-line JSON error, never a
traceback. Labels reach the page as JSON and are set with textContent, never as HTML. The
log (edge.logs) is one line per event, repeats counted, the token never written.

This file ships to the device; it is imported only by the `serve` command, so `classify`
never pays for it (nor needs aiohttp).
"""
from __future__ import annotations

import asyncio
import signal
import socket
import threading
import warnings

from edge import logs
from edge.errors import Terminated
from edge.escape import escape_name, shown
from edge.preprocess import return_freed_decodes
from edge.serve_auth import ServeError, Tokens, check_token_strength, resolve_token  # noqa: F401 (the CLI's)
from edge.serve_config import DEFAULTS
from edge.serve_live import Live, guarded_camera_loop, need_opencv
from edge.serve_metrics import Metrics  # noqa: F401 (tests and serve_mqtt read its counts)
from edge.serve_model import SharedModel

AIOHTTP_FIX = "pip install 'aiohttp>=3.14,<4' (the `serve` extra; the Pi bundle's install.sh installs it)"

log = logs.logger("serve")


def decoder_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Pillow's warnings (a corrupt EXIF block, a malformed MPO) into the log, one line each."""
    logs.logger("serve.decode").warning("warning: decoder: %s: %s", category.__name__, message)


def url_of(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = f"{socket.gethostname()}.local"
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def listen_error(exc: OSError, host: str, port: int) -> ServeError:
    if isinstance(exc, PermissionError):
        return ServeError(f"port {port}: permission denied (ports below 1024 need root); "
                          f"use --port {DEFAULTS.port} or another above 1023")
    if exc.errno == 98 or "in use" in str(exc):
        return ServeError(f"port {port} on {shown(host)} is in use (another serve?); stop it or pass "
                          "another --port")
    return ServeError(f"--host {shown(host)} --port {port}: cannot listen there "
                      f"({exc.strerror or exc}); use an address of this machine")


def teaching_of(model, captures, captures_max_mb: float, top_k: int, unsure: float, threads, mqtt,
                strict: bool = False):
    """The Teach and deploy side (edge.serve_teach.Teaching), and the model serving.json resumes."""
    from edge.serve_state import resume
    from edge.serve_teach import Teaching

    store, runtime = None, getattr(model.clf, "runtime", None)
    if captures is not None:
        from edge.captures import CaptureStore

        store = CaptureStore(captures, captures_max_mb)
    teaching = Teaching(model, store, top_k, unsure, threads, runtime, mqtt)
    teaching.strict = strict
    resumed = resume(teaching, threads, runtime)
    if resumed is not None:
        (log.warning if resumed.startswith("warning:") else log.info)(resumed)
    return teaching


def ready_line(clf, url: str, live, token: bool) -> str:
    labels = ", ".join(map(shown, clf.labels[:10])) + (", ..." if len(clf.labels) > 10 else "")
    return (f"serving {escape_name(str(clf.path))} ({shown(clf.variant)}, labels {labels}) on {url}"
            + (f" from {shown(live.source)}" if live.source else ", the API only (no --source)")
            + (f"; open {url} with ?token= and the token once" if token else "") + "; Ctrl-C stops")


async def run(app, host: str, port: int, ready: str) -> bool:
    """Serve `app` until SIGTERM (True) or Ctrl-C (KeyboardInterrupt); `ready` is logged once listening."""
    from aiohttp import web

    from edge.serve_conn import BACKLOG, Server

    runner = web.ServerRunner(Server(app.handle, app), handle_signals=False)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host.strip("[]"), port, backlog=BACKLOG).start()
        except OSError as exc:
            raise listen_error(exc, host, port) from None
        log.info(ready)
        loop = asyncio.get_running_loop()
        stopped = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, lambda: stopped.done() or stopped.set_result(True))
        try:
            return await stopped
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
    finally:
        app.live.close()  # wakes every stream waiting for a frame
        await runner.cleanup()


def serve(clf, make_frames=None, host: str = DEFAULTS.host, port: int = DEFAULTS.port,
          token: str | None = None, top_k: int = DEFAULTS.top_k, threshold: float = DEFAULTS.threshold,
          repeat: bool = False, max_body: int = int(DEFAULTS.max_body_mb * 1e6),
          max_streams: int = DEFAULTS.max_streams, rate: float = DEFAULTS.rate, mqtt=None, captures=None,
          captures_max_mb: float = DEFAULTS.captures_max_mb, unsure: float = DEFAULTS.unsure,
          threads: int | None = None, max_model: int = int(DEFAULTS.max_model_mb * 1e6),
          strict: bool = False) -> None:
    """Serve until Ctrl-C or SIGTERM; `make_frames()` gives a fresh edge.camera.Frames (None: API only).

    `mqtt`: an edge.serve_mqtt.Publisher, or None. serve calls its start(model_info, live, metrics)
    before listening, result(result) from the camera thread for each frame's result (its label
    `unknown` under `threshold`), and close() at the end. `captures`: the folder of captures to
    teach from and to check deployed models on (edge/serve_teach.py's and edge/serve_deploy.py's
    routes), or None; `threads` are a teach's. `token`: edge.serve_auth.Tokens, a token, or None.
    `strict`: a deployed or resumed model too must record that its export's validation passed.
    """
    try:
        from edge.serve_deploy import DeployApp
    except ImportError:
        raise ServeError(f"serve needs aiohttp, which is not installed; {AIOHTTP_FIX}") from None
    token = Tokens.parse([token]) if isinstance(token, str) else token
    for secret in token.secrets if token is not None else []:
        logs.hide(secret)
    warnings.showwarning = decoder_warning
    return_freed_decodes()  # uploads decode in many threads: glibc must give their memory back
    model = SharedModel(clf, top_k, threshold)
    first = make_frames() if make_frames else None
    if first is not None and not first.picamera:
        need_opencv(first.source)
    live = Live(first.name.removeprefix("source ") if first else None)
    teaching = teaching_of(model, captures, captures_max_mb, top_k, unsure, threads, mqtt, strict)
    app = DeployApp(model, live, token, max_body, max_streams, rate, teaching=teaching, max_model=max_model)
    stop = threading.Event()

    def on_result(result: dict) -> None:
        teaching.on_result(live, result)
        if mqtt is not None:
            mqtt.result(result)

    if mqtt is not None:
        mqtt.start(model.info, live, app.metrics)
    if make_frames is not None:
        threading.Thread(target=guarded_camera_loop, name="camera", daemon=True,
                         args=(make_frames, model, live, app.metrics, stop, repeat, on_result)).start()
    ready = ready_line(model.clf, url_of(host, port), live, token is not None)
    try:
        terminated = asyncio.run(run(app, host, port, ready))
    finally:
        stop.set()
        live.close()
        app.workers.shutdown(wait=False, cancel_futures=True)
        app.waiters.shutdown(wait=False, cancel_futures=True)
        if mqtt is not None:
            mqtt.close()
    if terminated:
        raise Terminated()
