"""How the default's cost grows with the photos, and what a second worker buys.

    python -m bench.growth [--sizes 1000,4000,16000] [--work runs/bench/growth]
    python -m bench.growth --workers-only        # the two-worker row alone (about 3 minutes)

Photos: the sample generator's (train.sample, 80 % train, 20 % test, seeded),
made once per size under WORK/data-N and kept. Each size is one fresh
`noodle train` (the default, lite0) into an empty run folder, under nice:
its wall time, its peak RSS (ru_maxrss of that child, from os.wait4), the
run folder's disk with its cache (polled while it runs, the peak), and the
features a second (photos over the log's "decoded and embedded" seconds).
The workers row: the same WORKERS_PHOTOS photos trained by one process
pinned to one core (taskset -c), then by a chief and a worker on loopback
(TF_CONFIG) pinned to a core each; their walls, photos a second, and whether
they solved the same head and scored the same test accuracy. Each run's
log is kept beside its folder with its RSS every 0.5 s (.rss): where the peak falls.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.serve_load import free_ports
from edge.bench import loadavg, rss_mb

SIZES = (1000, 4000, 16000)
# The same 2,000 photos for one worker and for two: the target's size.
WORKERS_PHOTOS = 2000
# The checks printed beside the figures:
# wall(n2)/wall(n1) at most this much above n2/n1 is linear "with noise"
# (4.6x for 4x the photos, as the acceptance allows);
LINEAR_SLACK = 1.15
# peak RSS grows by at most this many bytes a photo (60 MB from 2,000 to 8,000);
RSS_BYTES_A_PHOTO = 10_000
# the run folder and its cache under this many bytes a photo;
DISK_BYTES_A_PHOTO = 20_000
# two workers, one core each, at most this fraction of one worker's wall.
TWO_WORKERS_RATIO = 0.65
# Turns of one worker and of two: a 2-core machine's walls vary by a tenth from run to run,
# about the margin the ratio is judged by, so the medians of three are compared.
WORKERS_REPEATS = 3
# A training on a slow, loaded machine.
TIMEOUT = 3600
EMBEDDED = re.compile(r"decoded and embedded in ([\d.]+)s")


def dataset(work: Path, photos: int) -> Path:
    """WORK/data-N: N sample photos, 80 % train and 20 % test, two classes; made once."""
    from train.sample import write_sample

    out = work / f"data-{photos}"
    if not out.is_dir():  # write_sample renames a finished folder into place: present means whole
        write_sample(out, seed=photos, train_per_class=photos * 4 // 10, test_per_class=photos // 10)
    return out


def disk(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass  # removed while walked (the cache at the end)
    return total


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def train(data: Path, run: Path, log: Path, cores: str | None = None, env: dict | None = None,
          extra: tuple = ()) -> dict:
    """One `noodle train` of the default in a fresh process: wall, peak RSS, peak disk, features a second."""
    from bench.cli import child_env

    shutil.rmtree(run, ignore_errors=True)
    cmd = ["nice", *(["taskset", "-c", cores] if cores else []), sys.executable, "-m", "noodle", "train",
           str(data), "--out", str(run), *extra]
    peak_disk, done, trace = [0], threading.Event(), []

    def poll():
        while not done.wait(0.5):
            peak_disk[0] = max(peak_disk[0], disk(run))
            trace.append(f"{time.perf_counter() - start:.1f} {_rss_kb(proc.pid)}")

    poller = threading.Thread(target=poll, daemon=True)
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env or child_env())
        poller.start()
        killer = threading.Timer(TIMEOUT, proc.kill)
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        killer.cancel()
    done.set()
    poller.join()
    # RSS (kB) every 0.5 s beside the log: where the peak falls.
    log.with_suffix(".rss").write_text("\n".join(trace) + "\n")
    proc.returncode = os.waitstatus_to_exitcode(status)
    said = log.read_text(errors="replace")
    if proc.returncode:
        lines = said.strip().splitlines() or ["no output"]
        return {"error": f"noodle train exited {proc.returncode}: {lines[-1]} (its log: {log})"}
    embedded = EMBEDDED.search(said)
    return {"seconds": wall, "peak_rss_mb": rss_mb(usage.ru_maxrss),
            "embed_seconds": float(embedded[1]) if embedded else None,
            "peak_disk_bytes": max(peak_disk[0], disk(run)), "disk_bytes": disk(run), "log": str(log)}


def growth(work: Path, sizes=SIZES) -> dict:
    """The default trained on each size of photos, one after the other, with the checks."""
    rows = []
    for photos in sizes:
        data = dataset(work, photos)
        print(f"growth: {photos} photos ...", file=sys.stderr, flush=True)
        row = {"photos": photos, "loadavg_before": loadavg(),
               **train(data, work / f"run-{photos}", work / f"train-{photos}.log")}
        row["loadavg_after"] = loadavg()
        if "error" not in row:
            row["seconds_a_photo"] = row["seconds"] / photos
            row["disk_bytes_a_photo"] = row["peak_disk_bytes"] / photos
            row["features_per_second"] = photos / row["embed_seconds"] if row["embed_seconds"] else None
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return {"rows": rows, "checks": checks(rows)}


def checks(rows: list[dict]) -> dict:
    good = [r for r in rows if "error" not in r]
    if len(good) < 2:
        return {"not_measured": "fewer than two sizes trained"}
    pairs = list(zip(good, good[1:], strict=False))
    ratios = [{"photos": [a["photos"], b["photos"]], "wall_ratio": b["seconds"] / a["seconds"],
               "photo_ratio": b["photos"] / a["photos"]} for a, b in pairs]
    first, last = good[0], good[-1]
    rss_growth = last["peak_rss_mb"] - first["peak_rss_mb"]
    per_photo = rss_growth * 1e6 / (last["photos"] - first["photos"])
    worst_disk = max(r["disk_bytes_a_photo"] for r in good)
    return {"linear": all(r["wall_ratio"] <= LINEAR_SLACK * r["photo_ratio"] for r in ratios),
            "ratios": ratios, "rss_growth_mb": rss_growth, "rss_bytes_a_photo": per_photo,
            "flat": per_photo <= RSS_BYTES_A_PHOTO, "disk_bytes_a_photo": worst_disk,
            "disk_ok": worst_disk < DISK_BYTES_A_PHOTO}


def workers(work: Path, photos: int = WORKERS_PHOTOS, repeats: int = WORKERS_REPEATS) -> dict:
    """One worker on one core against a chief and a worker on loopback, a core each, on the same photos.

    The two are run by turns, `repeats` times: the figures are each side's median run, and the
    ratio theirs; every pair's own ratio is kept beside it.
    """
    if len(os.sched_getaffinity(0)) < 2:
        return {"not_measured": "this process may use fewer than two cores (taskset needs two)"}
    data = dataset(work, photos)
    cores = sorted(os.sched_getaffinity(0))[:2]
    out = {"photos": photos, "repeats": repeats, "loadavg_before": loadavg()}
    ones, twos = [], []
    for turn in range(1, repeats + 1):
        print(f"workers ({turn} of {repeats}): one worker on core {cores[0]}, {photos} photos ...",
              file=sys.stderr, flush=True)
        ones.append(train(data, work / "one-worker", work / "one-worker.log", str(cores[0]),
                          extra=("--cluster", "none")))
        print(f"workers ({turn} of {repeats}): a chief on core {cores[0]}, a worker on core {cores[1]} ...",
              file=sys.stderr, flush=True)
        twos.append(_two_workers(data, work, cores))
        failed = [r["error"] for r in (ones[-1], *twos[-1].values()) if isinstance(r, dict) and "error" in r]
        if failed:
            return {**out, "error": failed[0], "loadavg_after": loadavg()}
    out["loadavg_after"] = loadavg()
    out["ratios"] = [two["seconds"] / one["seconds"] for one, two in zip(ones, twos, strict=True)]
    out["one"] = sorted(ones, key=lambda r: r["seconds"])[len(ones) // 2]
    out["two"] = sorted(twos, key=lambda r: r["seconds"])[len(twos) // 2]
    out["one"]["photos_per_second"] = photos / out["one"]["seconds"]
    out["two"]["photos_per_second"] = photos / out["two"]["seconds"]
    out["ratio"] = out["two"]["seconds"] / out["one"]["seconds"]
    out["met"] = out["ratio"] <= TWO_WORKERS_RATIO
    out["same"] = same_head(work / "one-worker", work / "two-workers-chief")
    return out


def _two_workers(data: Path, work: Path, cores: list[int]) -> dict:
    """A chief and a worker on loopback, each pinned to its core: their runs and the wall of both."""
    from bench.cli import child_env

    ports = free_ports(2)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{ports[1]}"]}
    # gRPC would send even loopback traffic through a proxy named in the environment.
    plain = {k: v for k, v in child_env().items() if k.lower() not in ("http_proxy", "https_proxy",
                                                                      "grpc_proxy", "all_proxy")}
    results = {}

    def task(kind: str, core: int):
        env = {**plain, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": kind, "index": 0}})}
        results[kind] = train(data, work / f"two-workers-{kind}", work / f"two-workers-{kind}.log", str(core),
                              env=env, extra=("--cluster", "tf-config"))

    threads = [threading.Thread(target=task, args=a) for a in (("chief", cores[0]), ("worker", cores[1]))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"seconds": time.perf_counter() - start, **results}


def same_head(a: Path, b: Path) -> dict:
    """The largest difference between the two runs' heads, and their test accuracies (in a child)."""
    code = ("import json,sys,keras,numpy as np\n"
            "w=[keras.saving.load_model(sys.argv[i]+'/model.keras').layers[-1].layers[-1].get_weights()"
            " for i in (1,2)]\n"
            "m=[json.load(open(sys.argv[i]+'/manifest.json'))['metrics']['test']['accuracy']"
            " for i in (1,2)]\n"
            "print(json.dumps({'head_max_difference':max(float(np.abs(x-y).max()) for x,y in zip(*w)),"
            "'test_accuracy':m}))")
    from bench.cli import child_env

    done = subprocess.run([sys.executable, "-c", code, str(a), str(b)], capture_output=True, text=True,
                          env=child_env(), timeout=600)
    if done.returncode:
        return {"not_measured": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    got = json.loads(done.stdout.strip().splitlines()[-1])
    got["same"] = got["head_max_difference"] <= 1e-5 and got["test_accuracy"][0] == got["test_accuracy"][1]
    return got


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.growth")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--work", type=Path, default=Path("runs/bench/growth"))
    parser.add_argument("--workers-only", action="store_true", help="only the two-worker row")
    parser.add_argument("--no-workers", action="store_true", help="leave the two-worker row out")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    report = {}
    if not args.workers_only:
        report["growth"] = growth(args.work, [int(s) for s in args.sizes.split(",")])
    if not args.no_workers:
        report["workers"] = workers(args.work)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
