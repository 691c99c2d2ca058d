"""`python -m bench.serve_load MODEL PHOTOS`: `noodle-edge serve` under load, beside `noodle-edge bench`.

A bounded loop on loopback: `noodle-edge serve MODEL --source CLIP --loop` in the
given environment's Python (so its runtime), then CLIENTS threads each POST REQUESTS of the
photos to /v1/classify over one kept-alive connection while VIEWERS read /stream.mjpg. That
first round is the timed one: requests/s, p50 and p99 latency. More rounds follow until
TOTAL requests have been served, the server's resident memory read from /proc every ROUND
requests: it must stay flat (no leak per request). Errors (any answer but 200, any broken
connection) must be 0. Then `noodle-edge bench` on the same model, photos and interpreter
threads, in the same Python: the server's requests/s against its files/s is the server's
overhead (at least 80 % is the aim).

The camera loop runs all along (a clip of the photos at CLIP_FPS), classifying its frames
through the same interpreter, as a real server's would; --rate 0, since every client here
has the one address 127.0.0.1. Needs OpenCV here (to write the clip) and in the server's
Python (to read it): --opencv DIR puts a folder holding it on the server's PYTHONPATH, for a
device environment without it (`make bench` installs one in .cache/serve-opencv).
Prints one JSON object with --json, else a few lines. Linux only (/proc).
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from edge.errors import NoodleError, one_line_errors

CLIENTS = 8
REQUESTS = 500
VIEWERS = 4
TOTAL = 10_000
# Requests between two readings of the server's memory.
ROUND = 1_000
# The clip the camera loop plays: this many photos, at this rate, this size.
CLIP_PHOTOS, CLIP_FPS, CLIP_SIDE = 50, 10, 320
# Seconds the server may take to answer /healthz, and any one request.
START_SECONDS, REQUEST_SECONDS = 120, 120
# Memory "flat": the last reading at most this much above the one after the timed round.
FLAT_MB = 5.0
# Clients that open a connection to /healthz at the same moment: each must be answered (200, or
# 429 past a cap) within BURST_SECONDS.
BURST, BURST_SECONDS = 200, 2.0


class LoadError(NoodleError):
    pass


def free_ports(n: int) -> list[int]:
    """n distinct ports free on the loopback now (all held open while choosing)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def write_clip(photos: list[str], path: Path) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), CLIP_FPS, (CLIP_SIDE, CLIP_SIDE))
    for photo in photos[:CLIP_PHOTOS]:
        frame = cv2.imread(photo)
        if frame is not None:
            writer.write(cv2.resize(frame, (CLIP_SIDE, CLIP_SIDE)))
    writer.release()
    return path


def memory_mb(pid: int) -> dict:
    """The process's resident memory now and at its peak (VmRSS, VmHWM), in MB (10^6 bytes)."""
    out = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key = {"VmRSS:": "rss_mb", "VmHWM:": "peak_rss_mb"}.get(line.split(":")[0] + ":")
            if key:
                out[key] = int(line.split()[1]) * 1024 / 1e6
    return out


class Server:
    """`PYTHON -m edge serve` on a free loopback port, its log in a temporary file."""

    def __init__(self, python: str, args: list, opencv: Path | None):
        self.port = free_port()
        self.log = tempfile.TemporaryFile()
        env = dict(os.environ)
        if opencv is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(opencv), env.get("PYTHONPATH")]))
        cmd = [python, "-m", "edge", "serve", *map(str, args), "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, env=env)
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self.proc.poll() is not None:
                raise LoadError(f"serve exited {self.proc.returncode}: {self.tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise LoadError(f"serve did not answer in {START_SECONDS} s: {self.tail()}")
            time.sleep(0.2)

    def tail(self) -> str:
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def client(port: int, bodies: list[bytes], start: int, count: int, latencies: list, errors: list) -> None:
    """POST `count` bodies over one kept-alive connection (a new one after any failure)."""
    conn = None
    for i in range(start, start + count):
        body = bodies[i % len(bodies)]
        began = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_SECONDS)
            conn.request("POST", "/v1/classify", body=body, headers={"Content-Type": "image/jpeg"})
            response = conn.getresponse()
            data = response.read()
            if response.status != 200 or b'"label"' not in data:
                errors.append(f"{response.status}: {data[:120]!r}")
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            conn = None
            continue
        latencies.append(time.perf_counter() - began)


def viewer(port: int, stop: threading.Event, frames: list, index: int) -> None:
    """Read /stream.mjpg until `stop`, counting its JPEG parts."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        tail = b""
        while not stop.is_set():
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            both = tail + chunk
            frames[index] += both.count(b"--frame\r\n")
            tail = both[-16:]


def camera_frames(port: int) -> int:
    """Frames the camera loop has classified so far, from /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_SECONDS)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return next((int(line.split()[-1]) for line in text.splitlines()
                 if line.startswith('noodle_classified_total{source="camera"}')), 0)


def burst(port: int, clients: int = BURST) -> dict:
    """`clients` connections to /healthz at once: how many got 200, 429 or nothing, and the slowest."""
    answers, gate = [], threading.Barrier(clients)

    def one():
        gate.wait()
        began = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            answers.append((int(data.split()[1]), time.perf_counter() - began))
        except (OSError, IndexError, ValueError):
            answers.append((None, time.perf_counter() - began))

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = [code for code, _ in answers]
    return {"clients": clients, "ok": codes.count(200), "limited": codes.count(429),
            "unanswered": clients - codes.count(200) - codes.count(429),
            "slowest_s": max(seconds for _, seconds in answers)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run_round(port: int, bodies: list[bytes], clients: int, per_client: int, offset: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    threads = [threading.Thread(target=client, args=(port, bodies, offset + c * per_client, per_client,
                                                     latencies, errors)) for c in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"seconds": time.perf_counter() - began, "latencies": latencies, "errors": errors}


def load(python: str, model: Path, photos: list[str], threads: int, runtime: str | None,
         opencv: Path | None, clients: int = CLIENTS, requests: int = REQUESTS, viewers: int = VIEWERS,
         total: int = TOTAL) -> dict:
    bodies = [Path(p).read_bytes() for p in photos]
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(photos, Path(tmp) / "clip.avi")
        args = [model, "--source", clip, "--loop", "--rate", 0, "--threads", threads,
                "--max-streams", max(8, viewers + 1)] + (["--runtime", runtime] if runtime else [])
        server = Server(python, args, opencv)
        stop = threading.Event()
        frames = [0] * viewers
        watchers = [threading.Thread(target=viewer, args=(server.port, stop, frames, i), daemon=True)
                    for i in range(viewers)]
        try:
            watched = time.perf_counter()
            for w in watchers:
                w.start()
            # One untimed request: the first invoke and decode allocate.
            run_round(server.port, bodies, 1, 1, 0)
            framed = camera_frames(server.port)
            first = run_round(server.port, bodies, clients, requests, 0)
            framed = camera_frames(server.port) - framed
            done, memory, errors = clients * requests, [], list(first["errors"])
            memory.append({"requests": done, **memory_mb(server.proc.pid)})
            while done < total:
                per_client = max(1, min(ROUND, total - done) // clients)
                more = run_round(server.port, bodies, clients, per_client, done)
                errors += more["errors"]
                done += clients * per_client
                memory.append({"requests": done, **memory_mb(server.proc.pid)})
            viewed = time.perf_counter() - watched
            stop.set()
            log = server.text()
        finally:
            stop.set()
            server.stop()
    lat = first["latencies"]
    api = api_only(python, model, bodies, threads, runtime, clients, requests)
    errors += api.pop("error_list")  # every request's answer counts, the API-only round's too
    return {
        # The same round against a server without a camera or viewers: HTTP and decoding alone.
        "api_only": api,
        "model": str(model), "python": python, "runtime": runtime, "threads": threads,
        "clients": clients, "requests_per_client": requests, "viewers": viewers, "total_requests": done,
        "requests_in_all": done + clients * requests + 2,  # with the API-only round and the warm-ups
        "requests_per_second": len(lat) / first["seconds"] if lat else 0.0,
        # The camera loop's share of the interpreter meanwhile: its frames are classified too.
        "camera_frames_per_second": framed / first["seconds"],
        "p50_ms": percentile(lat, 50) * 1000 if lat else None,
        "p99_ms": percentile(lat, 99) * 1000 if lat else None,
        "mean_ms": statistics.fmean(lat) * 1000 if lat else None,
        "errors": len(errors), "first_errors": errors[:3],
        "stream_fps_per_viewer": [round(f / viewed, 2) for f in frames],
        "memory": memory, "peak_rss_mb": memory[-1]["peak_rss_mb"],
        "rss_growth_mb": memory[-1]["rss_mb"] - memory[0]["rss_mb"],
        "tracebacks": log.count("Traceback"),
    }


def api_only(python: str, model: Path, bodies: list[bytes], threads: int, runtime: str | None,
             clients: int, requests: int) -> dict:
    args = [model, "--rate", 0, "--threads", threads] + (["--runtime", runtime] if runtime else [])
    server = Server(python, args, None)
    try:
        run_round(server.port, bodies, 1, 1, 0)
        timed = run_round(server.port, bodies, clients, requests, 0)
        crowd = burst(server.port)
        tracebacks = server.text().count("Traceback")
    finally:
        server.stop()
    lat = timed["latencies"]
    return {"requests_per_second": len(lat) / timed["seconds"] if lat else 0.0,
            "p50_ms": percentile(lat, 50) * 1000 if lat else None,
            "p99_ms": percentile(lat, 99) * 1000 if lat else None,
            "errors": len(timed["errors"]), "error_list": timed["errors"], "tracebacks": tracebacks,
            "burst": crowd}


def edge_bench(python: str, model: Path, photos: list[str], threads: int, runtime: str | None) -> dict:
    """`noodle-edge bench --json` on the same model, photos and interpreter threads, in the same Python."""
    cmd = [python, "-m", "edge", "bench", str(model), *photos, "--json", "--threads", str(threads)] \
        + (["--runtime", runtime] if runtime else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise LoadError(f"noodle-edge bench exited {done.returncode}: "
                        f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(python: str, model: Path, photos: list[str], threads: int = 1, runtime: str | None = None,
            opencv: Path | None = None, **sizes) -> dict:
    figures = load(python, model, photos, threads, runtime, opencv, **sizes)
    bench = edge_bench(python, model, photos, threads, runtime)
    figures["bench_files_per_second"] = bench["files_per_second"]
    figures["runtime"] = bench["runtime"]
    figures["vs_bench"] = figures["requests_per_second"] / bench["files_per_second"]
    figures["api_only"]["vs_bench"] = figures["api_only"]["requests_per_second"] / bench["files_per_second"]
    figures["rss_flat"] = figures["rss_growth_mb"] <= FLAT_MB
    return figures


def report(f: dict) -> str:
    a = f["api_only"]
    memory = ", ".join(f"{m['rss_mb']:.0f}" for m in f["memory"])
    return "\n".join([
        f"serve         {f['model']} ({f['runtime']}, {f['threads']} interpreter thread(s))",
        f"load          {f['clients']} clients x {f['requests_per_client']} POST /v1/classify, "
        f"{f['viewers']} stream viewers ({', '.join(map(str, f['stream_fps_per_viewer']))} frames/s each)",
        f"requests/s    {f['requests_per_second']:.1f}; p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms; "
        f"errors {f['errors']}; the camera loop classified {f['camera_frames_per_second']:.1f} frames/s "
        "meanwhile",
        f"vs bench      {f['vs_bench']:.0%} of `noodle-edge bench`'s "
        f"{f['bench_files_per_second']:.1f} files/s",
        f"API only      {a['requests_per_second']:.1f} requests/s ({a['vs_bench']:.0%} of bench) without the "
        f"camera and viewers; p50 {a['p50_ms']:.1f} ms, p99 {a['p99_ms']:.1f} ms",
        f"burst         {a['burst']['clients']} clients at once on /healthz: {a['burst']['ok']} x 200, "
        f"{a['burst']['limited']} x 429, {a['burst']['unanswered']} unanswered; slowest "
        f"{a['burst']['slowest_s']:.2f} s (at most {BURST_SECONDS:g} s wanted)",
        f"memory        RSS {memory} MB every {ROUND} requests up to {f['total_requests']}; "
        f"peak {f['peak_rss_mb']:.0f} MB; growth {f['rss_growth_mb']:+.1f} MB "
        f"({'flat' if f['rss_flat'] else 'NOT flat'})",
    ])


app = typer.Typer(add_completion=False)


@app.command()
@one_line_errors
def main(
    model: Annotated[Path, typer.Argument(help="A .tflite from `noodle export`.")],
    photos: Annotated[list[str], typer.Argument(help="Photos to POST (and to make the camera's clip of).")],
    python: Annotated[str, typer.Option(help="The Python whose runtime serves (e.g. .venv-edge/bin/python).")]
    = sys.executable,
    runtime: Annotated[str | None, typer.Option(help="Insist on this runtime.")] = None,
    threads: Annotated[int, typer.Option(min=1, help="Interpreter threads, for serve and bench.")] = 1,
    clients: Annotated[int, typer.Option(min=1)] = CLIENTS,
    requests: Annotated[int, typer.Option(min=1, help="Requests per client in the timed round.")] = REQUESTS,
    viewers: Annotated[int, typer.Option(min=0)] = VIEWERS,
    total: Annotated[int, typer.Option(min=1, help="Requests in all, for the memory readings.")] = TOTAL,
    opencv: Annotated[Path | None, typer.Option(
        help="A folder holding OpenCV for the server's Python.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Load `noodle-edge serve` and compare it with `noodle-edge bench` on the same model."""
    from edge.files import expand

    files, problems = expand(photos)
    if problems or not files:
        raise LoadError("; ".join(problems) or "no photos")
    figures = measure(python, model, files, threads, runtime, opencv, clients=clients, requests=requests,
                      viewers=viewers, total=total)
    print(json.dumps(figures) if as_json else report(figures))


if __name__ == "__main__":
    app()
