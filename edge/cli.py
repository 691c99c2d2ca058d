"""`noodle-edge` (also `python -m edge`, `noodle edge`): classify files or a camera, collect
training photos from a camera, or time it.

Start-up time is the device's first impression, so this module imports only
typer; numpy, Pillow and the interpreter load inside the commands.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from edge.errors import NoodleError, one_line_errors
from edge.serve_config import DEFAULTS as SERVE
from edge.serve_options import (
    Captures,
    CapturesMaxMb,
    Host,
    Loop,
    MaxBodyMb,
    MaxModelMb,
    MaxStreams,
    Mqtt,
    MqttCa,
    MqttHeartbeat,
    MqttName,
    MqttPassword,
    MqttUser,
    Picamera,
    Port,
    Rate,
    Retries,
    Source,
    Threshold,
    Token,
    TokenFile,
    TopK,
    Unsure,
)
from edge.usage import OneLineUsage

app = typer.Typer(
    cls=OneLineUsage,
    name="edge",
    help="The device side: classify photos or camera frames with a .tflite from `noodle export`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# readable=False: click's own check prints a boxed usage error; an unreadable
# model gets our one line from the loader instead.
Model = Annotated[Path, typer.Argument(
    readable=False, help="A .tflite from `noodle export`, with the manifest.json written beside it, "
                        "or alone (it carries its labels and input size); or a folder "
                        "`noodle-edge teach` wrote.")]
Threads = Annotated[int | None, typer.Option(
    help="Interpreter threads (default: 1 for classify and bench, where decoding fills the other "
         "cores; one per core for camera, where each frame waits for its invoke).")]
Runtime = Annotated[str | None, typer.Option(
    help="Insist on tflite-runtime, ai-edge-litert or tensorflow (default: the first installed).")]
Batch = Annotated[int | None, typer.Option(
    min=1, help="Images per invoke (default: edge.files.BATCH); a model with a fixed batch runs 1.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Say which runtime and settings run.")]
NoVerify = Annotated[bool, typer.Option(
    "--no-verify", help="Run a model whose manifest entry has no sha256 (with a warning); "
                        "a recorded sha256 and the file's structure are always checked.")]
Strict = Annotated[bool, typer.Option(
    "--strict", help="Refuse a model whose manifest does not record that its export's validation "
                     "passed (without it: a warning). The boot service runs with it.")]
Workers = Annotated[int | None, typer.Option(help="Decode threads (default: one per core).")]


def _check_numbers(threads: int | None, workers: int | None = None) -> None:
    """--threads and --workers in range, before anything is loaded."""
    from edge.files import check_workers
    from edge.runtime import check_threads

    check_threads(threads)
    check_workers(workers)


def _load(model: Path, threads: int | None, runtime: str | None, verbose: bool, no_verify: bool = False,
          strict: bool = False, threshold: float = 0.0):
    from edge.escape import escape_name, shown
    from edge.postprocess import check_threshold
    from edge.runtime import load_classifier, package_version

    clf = load_classifier(model, threads=threads, runtime=runtime, allow_unverified=no_verify)
    check_threshold(threshold, clf.labels, escape_name(str(model)))
    if clf.validation != "passed":
        where = escape_name(str(model))
        why = (f"its export's validation {clf.validation} (as its manifest.json records)" if clf.validation
               else "no manifest.json beside it records that its export's validation passed")
        if strict:
            raise NoodleError(f"{where}: {why}; --strict runs only validated models: re-run "
                              "`noodle export` until it passes, and keep its manifest.json beside the model")
        print(f"warning: {where}: {why}, so its answers are unchecked; re-run `noodle export`, "
              "or pass --strict to refuse such a model", file=sys.stderr)
    if verbose:
        print(f"model {escape_name(str(model))} ({shown(clf.variant)}, {clf.size[0]}x{clf.size[1]}, "
              f"labels {', '.join(map(shown, clf.labels))} from its {clf.described_by}); "
              f"runtime {clf.runtime} {package_version(clf.runtime) or '(version unknown)'}; "
              f"interpreter threads {threads or 'default'}", file=sys.stderr)
    return clf


@app.command()
@one_line_errors
def classify(
    model: Model,
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or globs.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels to show per file.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV with a header row.")] = False,
    threshold: Threshold = SERVE.threshold,
    threads: Threads = None,
    workers: Workers = None,
    batch: Batch = None,
    runtime: Runtime = None,
    verbose: Verbose = False,
    no_verify: NoVerify = False,
    strict: Strict = False,
) -> None:
    """Classify image files; unreadable ones are reported on stderr and the exit code is 1.

    Names that are not UTF-8 print escaped as `ls` does in the table and CSV (byte 0xFF as \\377,
    a backslash as \\\\); JSON keeps Python's \\udcff form, which os.fsencode turns back into the
    exact bytes. Labels are escaped alike (a control or bidi character as \\ooo), and the table cuts
    long ones. A CSV cell that would start with = + - @ (a spreadsheet formula) or ' gets a ' in
    front; edge.escape.csv_value undoes both. The CSV and table get top_label with --threshold.
    """
    if as_json and as_csv:
        raise NoodleError("--json and --csv: choose one output format")
    _check_numbers(threads, workers)
    from edge import files as found
    from edge.escape import escape_name

    clf = _load(model, threads or 1, runtime, verbose, no_verify, strict, threshold)
    top_k = min(top_k, len(clf.labels))
    files, problems = found.expand(paths)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not files:
        raise NoodleError(f"nothing to classify in {' '.join(map(escape_name, paths))}; "
                          "pass image files, folders or globs")
    write = _writer(as_json, as_csv, top_k, files, clf.labels, threshold)
    start, failed = time.perf_counter(), 0
    try:
        for result in found.classify(clf, files, k=top_k, batch=batch, workers=workers):
            if result.error is None:
                write(result)
            else:
                failed += 1
                print(f"error: {escape_name(result.path)}: {result.error}", file=sys.stderr)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        sys.stderr.close()
        raise typer.Exit(0) from None
    seconds = time.perf_counter() - start
    if failed or problems or verbose or not (as_json or as_csv):
        print(f"{len(files) - failed} of {len(files)} files classified in {seconds:.2f} s "
              f"({len(files) / seconds:.0f} files/s)"
              + (f"; {failed + len(problems)} problem(s) above" if failed or problems else ""),
              file=sys.stderr)
    if failed or problems:
        raise typer.Exit(1)


def _writer(as_json: bool, as_csv: bool, k: int, files: list[str], labels: list[str], threshold: float = 0.0):
    """A function printing one Result in the chosen format (a header first for table and CSV).

    File names: JSON gives the name as Python holds it, a byte that is not UTF-8 as
    its surrogate escape (\\udcff for 0xFF), so os.fsencode(json.loads(line)["file"])
    is the exact name. The table and CSV print edge.escape.escape_name's form
    (0xFF as \\377, a backslash doubled), which edge.escape.unescape_name reverses;
    labels likewise. CSV cells are edge.escape.csv_cell's (formulas neutralized),
    which edge.escape.csv_value reverses. JSON escapes every control character itself.
    The label is edge.postprocess.answer's (`unknown` under --threshold); with a threshold
    the CSV and table add top_label, the model's best class, which `unknown` would hide.
    """
    from edge.escape import csv_cell, escape_name, shown
    from edge.postprocess import answer

    if as_json:
        import json

        return lambda r: print(json.dumps({"file": r.path, **answer(r.top, threshold)}))
    if as_csv:
        import csv

        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(["file", "label", "score"] + (["top_label"] if threshold else [])
                     + [f"{c}_{i}" for i in range(2, k + 1) for c in ("label", "score")])

        def csv_row(r):
            said = answer(r.top, threshold)
            out.writerow([csv_cell(r.path, None), csv_cell(said["label"], None), f"{r.top[0][1]:.6f}"]
                         + ([csv_cell(r.top[0][0], None)] if threshold else [])
                         + [v for label, s in r.top[1:] for v in (csv_cell(label, None), f"{s:.6f}")])
        return csv_row
    # Widths from all paths up front, so rows stream out aligned.
    wide = min(max(len(escape_name(f)) for f in files), 80)
    lw = max(5, *(len(shown(label)) for label in labels))
    print(f"{'file':<{wide}}  {'label':<{lw}}  score" + (f"  {'top_label':<{lw}}" if threshold else "")
          + ("  next" if k > 1 else ""))

    def row(r):
        (label, score), rest = r.top[0], r.top[1:]
        said = answer(r.top, threshold)["label"]
        line = f"{escape_name(r.path):<{wide}}  {shown(said):<{lw}}  {score:.3f}"
        line += f"  {shown(label):<{lw}}" if threshold else ""
        print(line + ("  " + ", ".join(f"{shown(n)} {s:.3f}" for n, s in rest) if rest else ""))
    return row


@app.command()
@one_line_errors
def camera(
    model: Model,
    source: Annotated[str, typer.Option(
        help="OpenCV source: 0 for /dev/video0, a video file or a stream URL.")] = "0",
    picamera: Annotated[bool, typer.Option(
        "--picamera", help="Read the Raspberry Pi camera via picamera2.")] = False,
    every: Annotated[int, typer.Option(min=1, help="Print a line every N frames.")] = 30,
    max_frames: Annotated[int | None, typer.Option(
        min=1, help="Stop after N frames (default: run until Ctrl-C).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per printed line.")] = False,
    retries: Annotated[int, typer.Option(
        min=0, help="Reopen attempts after a failed read before giving up.")] = SERVE.retries,
    show: Annotated[bool, typer.Option(
        "--show", help="Draw the label on a window when there is a display.")] = False,
    threshold: Threshold = SERVE.threshold,
    threads: Threads = None,
    runtime: Runtime = None,
    verbose: Verbose = False,
    no_verify: NoVerify = False,
    strict: Strict = False,
) -> None:
    """Classify camera or video frames: centre-crop, the same preprocessing, label and FPS."""
    _check_numbers(threads)
    from edge import camera as cam
    from edge.files import default_workers

    frames = cam.Frames(source, picamera=picamera, retries=retries)
    clf = _load(model, threads or default_workers(), runtime, verbose, no_verify, strict, threshold)
    summary = cam.run(clf, frames, every=every, max_frames=max_frames, as_json=as_json, show=show,
                      threshold=threshold)
    if summary.lost is not None:
        print(f"error: {summary.lost}", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
@one_line_errors
def capture(
    folder: Annotated[Path, typer.Argument(
        readable=False, help="OUT/LABEL: the class folder to fill, the layout `noodle train` reads.")],
    every: Annotated[str, typer.Option(
        help="Time between saved frames: 1s, 500ms, 2m (0 saves every frame).")] = "1s",
    count: Annotated[int, typer.Option(min=1, help="Frames to save.")] = 100,
    source: Annotated[str, typer.Option(
        help="OpenCV source: 0 for /dev/video0, a video file or a stream URL.")] = "0",
    picamera: Annotated[bool, typer.Option(
        "--picamera", help="Read the Raspberry Pi camera via picamera2.")] = False,
    retries: Annotated[int, typer.Option(
        min=0, help="Reopen attempts after a failed read before giving up.")] = SERVE.retries,
) -> None:
    """Collect training photos: save camera frames as JPEGs into a class folder.

    Each photo is the frame's centre square, the view `camera` classifies.
    """
    from edge import camera as cam
    from edge.escape import escape_name

    seconds = cam.parse_every(every)
    frames = cam.Frames(source, picamera=picamera, retries=retries)
    done = cam.capture(frames, folder, every=seconds, count=count)
    video = f" ({done.video_seconds:.1f} s of video)" if done.video_seconds is not None else ""
    print(f"{len(done.saved)} of {count} photo(s) saved in {escape_name(str(folder))} from {done.frames} "
          f"frame(s){video}" + ("; stopped by Ctrl-C" if done.interrupted else ""), file=sys.stderr)
    if frames.lost is not None:
        print(f"error: {frames.lost}", file=sys.stderr)
        raise typer.Exit(1)
    if len(done.saved) < count:
        # Fewer photos than asked for is not success: a script that goes on to train must know.
        why = "stopped by Ctrl-C"
        if done.video_seconds is not None and not done.interrupted:
            why = (f"the video ends at {done.video_seconds:.1f} s, which at --every {every} holds no more; "
                   "lower --every or --count, or give a longer video")
        elif not done.interrupted:
            why = "the source ended first"
        print(f"error: only {len(done.saved)} of the {count} photo(s) asked for were saved: {why}",
              file=sys.stderr)
        raise typer.Exit(130 if done.interrupted else 1)


@app.command()
@one_line_errors
def teach(
    captures: Annotated[Path, typer.Argument(
        readable=False, help="CAPTURES/<label>/*.jpg: a folder per class, the layout `noodle train` reads.")],
    model: Annotated[Path, typer.Option(
        readable=False, help="The model to teach: its export folder (or the bundle's model/, or a "
                             "folder taught before), holding embed.tflite and features.npz.")],
    out: Annotated[Path, typer.Option(
        readable=False, help="The folder to write, whole or not at all; an old one stays until the "
                             "new one is complete.")],
    replace: Annotated[bool, typer.Option(
        "--replace", help="Teach the captures' classes only (default: the shipped classes are kept, "
                          "and a capture class of the same name adds photos to it).")] = False,
    threads: Threads = None,
    runtime: Runtime = None,
) -> None:
    """Teach new classes on the device: the backbone's features of each capture, a head solved in numpy."""
    _check_numbers(threads)
    from edge.escape import escape_name, shown
    from edge.teach import teach as run

    done = run(captures, model, out, replace=replace, threads=threads, runtime=runtime,
               log=lambda line: print(line, file=sys.stderr))
    m = done.manifest
    photos = ", ".join(f"{shown(k)} {v}" for k, v in m.solve["photos"].items())
    print(f"taught {escape_name(str(out))}: labels {', '.join(map(shown, m.labels))} ({photos} photos); "
          f"head solved in {m.solve['iterations']} iterations ({m.solve['seconds']:.2f} s, training accuracy "
          f"{m.solve['accuracy']:.1%}); {done.computed} capture(s) embedded in {done.invokes} invoke(s); "
          f"{done.seconds:.1f} s in all", file=sys.stderr)
    if not m.solve["converged"]:
        print(f"warning: the head's solve stopped at its iteration limit ({m.solve['message']}); it is "
              "written, as `noodle train` keeps such a head, but more photos a class usually help",
              file=sys.stderr)


@app.command()
@one_line_errors
def bench(
    model: Model,
    photos: Annotated[list[str], typer.Argument(help="Image files, folders or globs to time on.")],
    threads: Threads = None,
    workers: Workers = None,
    batch: Batch = None,
    repeat: Annotated[int, typer.Option(
        min=1, help="End-to-end passes over the photos; the best is reported.")] = 3,
    runtime: Runtime = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of the table.")] = False,
    no_verify: NoVerify = False,
    strict: Strict = False,
) -> None:
    """Time it: invoke latency p50/p99 and end-to-end files per second (decode + invoke)."""
    _check_numbers(threads, workers)
    from edge.bench import bench as run
    from edge.bench import report
    from edge.files import expand

    files, problems = expand(photos)
    if problems or not files:
        raise NoodleError("; ".join(problems) or "no photos to time on")
    clf = _load(model, threads or 1, runtime, verbose=False, no_verify=no_verify, strict=strict)
    figures = run(clf, files, batch=batch, workers=workers, repeat=repeat)
    figures["interpreter_threads"] = threads or 1
    if as_json:
        import json

        print(json.dumps(figures))
    else:
        print(report(figures))


@app.command()
@one_line_errors
def serve(
    model: Model,
    source: Source = None,
    picamera: Picamera = False,
    host: Host = SERVE.host,
    port: Port = SERVE.port,
    token: Token = None,
    token_file: TokenFile = None,
    top_k: TopK = SERVE.top_k,
    threshold: Threshold = SERVE.threshold,
    loop: Loop = False,
    max_body_mb: MaxBodyMb = SERVE.max_body_mb,
    max_streams: MaxStreams = SERVE.max_streams,
    rate: Rate = SERVE.rate,
    retries: Retries = SERVE.retries,
    mqtt: Mqtt = None,
    mqtt_user: MqttUser = None,
    mqtt_password: MqttPassword = None,
    mqtt_ca: MqttCa = None,
    mqtt_heartbeat: MqttHeartbeat = SERVE.mqtt_heartbeat,
    mqtt_name: MqttName = None,
    captures: Captures = None,
    captures_max_mb: CapturesMaxMb = SERVE.captures_max_mb,
    unsure: Unsure = SERVE.unsure,
    max_model_mb: MaxModelMb = SERVE.max_model_mb,
    verbose: Verbose = False,
    threads: Threads = None,
    runtime: Runtime = None,
    no_verify: NoVerify = False,
    strict: Strict = False,
) -> None:
    """Serve a live page, an HTTP API and MQTT: one camera loop, each frame classified once.

    Open the printed URL in a browser. POST /v1/classify takes image bytes (curl --data-binary @photo.jpg)
    and answers the top-k as JSON; GET /v1/latest, /snapshot.jpg, /metrics...: docs/serve.md.
    """
    _check_numbers(threads)
    from edge import serve as srv
    from edge.files import default_workers

    token = srv.resolve_token(token, token_file, host)
    srv.check_token_strength(token, host)
    make_frames = _frames(source, picamera, retries)
    publisher = None
    if mqtt is not None:
        from edge.serve_mqtt import Publisher

        publisher = Publisher(mqtt, mqtt_user, mqtt_password, mqtt_ca, mqtt_heartbeat, mqtt_name)
    clf = _load(model, threads or default_workers(), runtime, verbose, no_verify, strict, threshold)
    srv.serve(clf, make_frames, host=host, port=port, token=token, top_k=top_k, threshold=threshold,
              repeat=loop, max_body=int(max_body_mb * 1e6), max_streams=max_streams, rate=rate,
              mqtt=publisher, captures=captures, captures_max_mb=captures_max_mb, unsure=unsure,
              threads=threads, max_model=int(max_model_mb * 1e6), strict=strict)


def _frames(source: str | None, picamera: bool, retries: int):
    """serve's maker of camera frames, or None (the API only); a missing file is one line, now."""
    from edge import camera as cam

    if source is None and not picamera:
        return None
    cam.Frames(source or "0", picamera=picamera, retries=retries)

    def make_frames():
        return cam.Frames(source or "0", picamera=picamera, retries=retries)
    return make_frames


def main() -> None:
    """The `noodle-edge` console script."""
    app(prog_name="noodle-edge")
