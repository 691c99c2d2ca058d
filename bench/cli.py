"""`python -m bench` (`make bench`): noodle's speed claims measured side by side.

BENCHMARKS.md is made of the sections of SECTIONS (one table: the --only
option, the dispatch and the list in BENCHMARKS.md come from it). `device`,
rows 1-7: the noodle clock (each stage of `make export` as a subprocess), the
device path against the seed's Keras loop, classify against its decode floor,
cold start and memory, int8 against float32, training throughput, serve under
load. Every comparison runs its sides back to back in one run, `repeats`
times interleaved; the report gives medians with min and max, and ratios of
medians. The edge side is the edge runner's own `bench` (start-up not
counted) in the device environment (.venv-edge, tflite-runtime 2.14, the
Pi's runtime) and in this one (ai-edge-litert). `growth` and `workers`: the
default's cost against the photos and a second worker (bench.growth);
`teach`: enrolment on the device (bench.teach). TensorFlow loads only in the
child processes. `--only` measures some sections and keeps the others'
figures from bench.json, each section with its own date and load average.
Writes BENCHMARKS.md and bench.json, each atomically.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

from bench import report as report_md
from edge.bench import loadavg, rss_mb
from edge.errors import NoodleError, one_line_errors
from edge.manifest import ExportManifest, load_export, load_run
from export.child import ChildFailed, ending, reason, run_json
from train.config import ARCHITECTURES, DEFAULT_ARCH
from train.quiet import quiet_tensorflow, show_progress
from train.results import read_history
from train.rundir import RunDir

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
# The shared cats-vs-dogs photos (400 test photos); $NOODLE_SHARED_PHOTOS moves them, as for the tests.
SHARED = Path(os.environ.get("NOODLE_SHARED_PHOTOS", ROOT.parent / "shared/data/cats-vs-dogs"))
# Repetitions of every comparison: odd, so the median is one of the runs.
REPEATS = 3
# The clock's data and run folders: under runs/, git-ignored, apart from the user's runs.
WORK = Path("runs/bench")
# A failed step's whole stderr, named in its "not measured" reason.
STEP_LOGS = WORK / "logs"
# What ships (int8) and the reference it is measured against (float32).
VARIANTS = ("int8", "float32")
# Interpreter threads: classify's default, and the two cores of this machine and of a Pi-class one.
THREADS = (1, 2)
# A training run on a slow machine; any other measured step.
STAGE_TIMEOUT = 3600
STEP_TIMEOUT = 900


class BenchError(NoodleError):
    pass


class StepFailed(Exception):
    """One measured step failed; its message becomes that figure's "not measured" reason."""


app = typer.Typer(no_args_is_help=True, add_completion=False)


@dataclass(frozen=True)
class Options:
    repeats: int = REPEATS
    photos: Path | None = None
    run: Path | None = None
    work: Path = WORK


@dataclass(frozen=True)
class Section:
    """One section of BENCHMARKS.md: what it measures, how (-> its figures), how it is shown."""

    what: str
    measure: Callable[[Options], dict]
    render: Callable[[dict], list[str]]


def _device(opts: Options) -> dict:
    return measure_device(opts.repeats, opts.photos, opts.run, opts.work)


def _growth(opts: Options) -> dict:
    from bench import growth

    return growth.growth(Path(opts.work) / "growth")


def _workers(opts: Options) -> dict:
    from bench import growth

    return growth.workers(Path(opts.work) / "growth")


def _teach(opts: Options) -> dict:
    from bench import teach

    if not (SHARED / "train").is_dir():
        return {"skipped": f"the shared photos ({rel(SHARED)}) are not beside the checkout"}
    scratch = Path(opts.work) / "teach"
    third = _third_class(scratch)
    try:
        return teach.enrolment(rel(SHARED), scratch, third=third, say=log.info)
    except teach.Failed as exc:
        return {"skipped": str(exc)}


# The sections, in BENCHMARKS.md's order: `--only` takes their names, `run_bench` measures the ones
# chosen, `render` shows every one bench.json holds, and `--help` lists them from here.
SECTIONS = {
    "device": Section("rows 1-7: the noodle clock, the device path against the seed's loop, its decode "
                      "floor, cold start, int8 against float32, training throughput, serve under load "
                      "(about an hour)", _device, report_md.render_device),
    "growth": Section("the default trained on 1,000, 4,000 and 16,000 photos: seconds a photo, peak RSS, "
                      "disk, features a second (about 6 minutes on 2 cores, and one to make the "
                      "photos once)",
                      _growth, report_md.render_growth),
    "workers": Section("two workers on loopback, one core each, against one worker on one core, the same "
                       "2,000 photos, three turns each (about 3 minutes)",
                       _workers, report_md.render_workers),
    "teach": Section("enrolment on the device (noodle-edge teach) against make export from 5, 10, 20 and "
                     "50 photos a class, and a third class, both runtimes (about 10 minutes)",
                     _teach, report_md.render_teach),
}


def _only(value: str | None) -> list[str] | None:
    if not value:
        return None
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise typer.BadParameter(f"no section {', '.join(unknown)}; the sections: {', '.join(SECTIONS)}")
    return names


@app.command("bench")
@one_line_errors
def bench_command(
    repeats: Annotated[int, typer.Option(min=1, help="Repetitions of every comparison.")] = REPEATS,
    photos: Annotated[Path | None, typer.Option(
        help="Photos to classify (default: the shared test photos when present, else the run's test split).")
    ] = None,
    run: Annotated[Path | None, typer.Option(
        help="Reuse this exported run folder and skip the clock (default: train and export afresh).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for BENCHMARKS.md and bench.json.")] = Path("."),
    work: Annotated[Path, typer.Option(help="Folder for the clock's data and run folders.")] = WORK,
    only: Annotated[str | None, typer.Option(
        help="Measure only these sections (comma-separated), keeping the others' figures from the existing "
             "bench.json: " + "; ".join(f"{name}: {s.what}" for name, s in SECTIONS.items()),
        callback=_only)] = None,
) -> None:
    """Benchmark noodle against the seed's way and the limits; write BENCHMARKS.md and bench.json."""
    show_progress()
    report = run_bench(repeats=repeats, photos=photos, run=run, out=out, work=work, only=only)
    met = sum(t["met"] is True for t in report.get("targets", []))
    typer.echo(f"wrote {out / 'BENCHMARKS.md'} and {out / 'bench.json'} "
               f"({met} of {len(report.get('targets', []))} targets met)")


def run_bench(repeats: int = REPEATS, photos: Path | None = None, run: Path | None = None,
              out: Path = Path("."), work: Path = WORK, only: list[str] | None = None) -> dict:
    """Measure the sections chosen (all by default), write out/BENCHMARKS.md and out/bench.json.

    With `only`, the other sections keep their figures from out/bench.json, each with its own date.
    """
    from edge.atomic import write_bytes, write_json

    if run is not None:  # bad input fails now, not after minutes of measuring
        exported_run(Path(run))
    if run is not None or photos is not None:
        photo_list(photos, Path(run) if run else None)
    chosen = only or list(SECTIONS)
    kept = Path(out) / "bench.json"
    report = json.loads(kept.read_text()) if only and kept.is_file() else {}
    opts = Options(repeats, photos, run, Path(work))
    for name in chosen:
        log.info(f"section {name}: {SECTIONS[name].what}")
        if name == "device":  # rows 1-7 keep their place at the top of bench.json
            report = {**report, **_device(opts)}
            continue
        stamp = {"generated": now(), "command": f"python -m bench --only {name}", "machine": machine(),
                 "loadavg": {"before": loadavg()}}
        figures = SECTIONS[name].measure(opts)
        stamp["loadavg"]["after"] = loadavg()
        report.setdefault("sections", {})[name] = {**stamp, **figures}
    write_json(Path(out) / "bench.json", report)
    write_bytes(Path(out) / "BENCHMARKS.md", render(report).encode())
    return report


def render(report: dict) -> str:
    """BENCHMARKS.md: every section bench.json holds, in SECTIONS' order."""
    lines = ["# noodle benchmarks", "",
             "Written by `make bench` (`python -m bench`); `python -m bench --only NAME[,NAME]` measures "
             "some sections again and keeps the others' figures. The sections:", ""]
    lines += [f"- `{name}`: {s.what}" for name, s in SECTIONS.items()] + [""]
    for name, s in SECTIONS.items():
        got = report if name == "device" else report.get("sections", {}).get(name)
        if got and (name != "device" or "sides" in got):
            lines += s.render(got)
    return "\n".join(lines).rstrip() + "\n"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def measure_device(repeats: int, photos: Path | None, run: Path | None, work: Path) -> dict:
    """Rows 1-7: the clock, the device path, its floor, cold start, the variants, training, serve."""
    from bench.report import targets
    from edge.files import default_workers

    command = ["python -m bench", f"--repeats {repeats}"] + ([f"--photos {photos}"] if photos else []) \
        + ([f"--run {run}"] if run else [])
    report = {"generated": now(), "command": " ".join(command), "repeats": repeats, "machine": machine(),
              "loadavg": {"before": loadavg()}}
    envs = environments()
    report["environments"] = envs
    if run is None:
        # The default on both; every architecture of the table on the real photos, beside it.
        clocks = [(None, DEFAULT_ARCH)] + ([(rel(SHARED), a) for a in ARCHITECTURES]
                                           if (SHARED / "train").is_dir() else [])
        report["clock"] = {"runs": [clock(d, Path(work), a) for d, a in clocks]}
        # The device rows measure what `make export` makes by default.
        usable = [c for c in report["clock"]["runs"] if "failed" not in c and c["arch"] == DEFAULT_ARCH]
        if not usable:
            raise BenchError(f"the clock's runs failed ({report['clock']['runs'][-1]['failed']}); "
                             "see the logs under " + str(work))
        run = Path(usable[-1]["run"])
    else:
        report["clock"] = {"skipped": f"--run {run} given: the run was reused, the clock not run"}
    run_dir, models, manifest = exported_run(Path(run))
    folder, files = photo_list(photos, run_dir)
    report.update(run=str(run_dir), models={v: str(p) if p else None for v, p in models.items()},
                  photos={"folder": str(folder), "count": len(files)})
    warm(files + [str(p) for p in models.values() if p])
    workers = default_workers()
    log.info(f"comparing on {len(files)} photos from {folder}, {repeats} repeat(s), "
             f"{workers} decode thread(s)")
    keras_model = RunDir(run_dir).model
    report["sides"] = sides(envs, models, keras_model, [str(folder)], manifest.input.size, workers, repeats)
    report["cold_start"] = cold_start(envs, models.get("int8"), keras_model, files[0], repeats)
    report["sizes"] = {v: e.bytes for v, e in manifest.models.items() if v in VARIANTS}
    report["serve"] = serve_load(envs, models, str(folder))
    report["failed_variants"] = {v: m for v, m in (manifest.failed or {}).items() if v in VARIANTS}
    runs = [(c["data"], Path(c["run"]), "this bench's clock") for c in report["clock"].get("runs", [])
            if "failed" not in c]
    report["training"] = training(runs or [(str(run_dir), run_dir, "the run's own history.csv")])
    report["loadavg"]["after"] = loadavg()
    report["targets"] = targets(report)
    return report


def _third_class(scratch: Path) -> Path:
    """20 synthetic `stripes` photos (the sample generator's): a class the cats-vs-dogs models never saw."""
    from train.sample import write_sample

    sample = scratch / "third-sample"
    if not sample.is_dir():
        write_sample(sample, seed=3, train_per_class=20, test_per_class=0)
    return sample / "train" / "stripes"


# --- the machine and the environments -------------------------------------------------------

def machine() -> dict:
    from edge.files import default_workers

    cpu = platform.processor() or platform.machine()
    memory = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
            memory = round(kb / 1024 / 1024, 1)
    except (OSError, StopIteration, ValueError):
        pass  # not Linux: the model name from platform, memory unknown
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": default_workers(), "memory_gib": memory,
            "os": platform.platform(), "machine": platform.machine()}


def rel(path: str | os.PathLike) -> Path:
    """A path as seen from the working directory: reports name no machine's folders."""
    return Path(os.path.relpath(path))


def environments() -> list[dict]:
    """The device environment (tflite-runtime) and this one (ai-edge-litert), with their versions."""
    from export.validate import edge_python, runtime_missing

    edge = edge_python()
    # A device environment made by Python 3.12+ (a Debian 13 host) has no tflite-runtime: said why.
    pairs = [("tflite-runtime", edge and rel(edge),
              runtime_missing(edge) if edge else "no device environment; run `make edge-env`"),
             ("ai-edge-litert", rel(sys.executable), None)]
    envs = []
    for runtime, python, missing in pairs:
        env = {"runtime": runtime, "venv": python.parent.parent.name if python else None,
               "python": str(python) if python else None, "versions": {}, "missing": missing}
        if python:
            try:
                env["versions"] = json_step([python, "-m", "bench.probe", "versions"])
            except StepFailed as exc:
                env["missing"] = f"{python} cannot run the probe: {exc}"
            if not env["missing"] and not env["versions"].get(runtime):
                env["missing"] = f"{runtime} is not installed in {env['venv']}"
        log.info(f"{runtime}: " + (env["missing"] or f"{env['versions'][runtime]} in {env['venv']}"))
        envs.append(env)
    return envs


# --- running children ------------------------------------------------------------------------

def child_env() -> dict:
    # PYTHONPATH: the bench package is not installed (it stays out of the wheel), and
    # its probes also run with the device environment's Python.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = quiet_tensorflow({**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path})
    env.pop("NOODLE_RUNTIME", None)  # each side names its runtime
    return env


def json_step(cmd: list, timeout: int = STEP_TIMEOUT) -> dict:
    """Run a child that prints one JSON line; its object, or StepFailed saying why, in words, with its log.

    A side that fails is reported so, and the others still run and report.
    """
    try:
        return run_json(cmd, timeout, env=child_env())
    except ChildFailed as exc:
        saved = ""
        if exc.log:
            import hashlib

            path = STEP_LOGS / f"step-{hashlib.sha256(' '.join(map(str, cmd)).encode()).hexdigest()[:8]}.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(" ".join(map(str, cmd)) + "\n\n" + exc.log)
            saved = f" (its log: {path})"
        raise StepFailed(f"{exc}{saved}") from None


def attempt(fn, *args) -> dict:
    try:
        return fn(*args)
    except StepFailed as exc:
        return {"error": str(exc)}


def first_label(cmd: list, marker: str, timeout: int = STEP_TIMEOUT) -> dict:
    """Seconds from process start to the first stdout line naming `marker`; the child's peak RSS."""
    import tempfile

    cmd = [str(c) for c in cmd]
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, env=child_env(), text=True)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        seconds = None
        for line in proc.stdout:
            if seconds is None and marker in line:
                seconds = time.perf_counter() - start
        _, status, usage = os.wait4(proc.pid, 0)  # this child's rusage alone
        killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        if proc.returncode != 0 or seconds is None:
            errors.seek(0)
            said = errors.read().decode(errors="replace")
            why = reason(said) if said.strip() else "no label printed"
            raise StepFailed(f"{ending(proc.returncode)}: {why}")
    return {"seconds": seconds, "peak_rss_mb": rss_mb(usage.ru_maxrss)}


# --- row 1: the noodle clock -----------------------------------------------------------------

def clock(data: Path | None, work: Path, arch: str = DEFAULT_ARCH) -> dict:
    """Time each stage of `make export ARCH=arch` as the Makefile runs it, into a fresh run folder."""
    noodle = [rel(sys.executable), "-m", "noodle"]
    result = {"data": "embedded default (noodle data sample)" if data is None else str(data)}
    stages = []
    if data is None:
        data = work / "data" / "sample"
        shutil.rmtree(data, ignore_errors=True)
        stages.append(("data", [*noodle, "data", "sample", data]))
    run = work / f"{data.name}-{arch}"
    shutil.rmtree(run, ignore_errors=True)
    stages += [("train", [*noodle, "train", data, "--arch", arch, "--out", run]),
               ("export", [*noodle, "export", run]), ("compare", [*noodle, "compare", run])]
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result.update(run=str(run), arch=arch, stages={}, loadavg_before=loadavg())
    for name, cmd in stages:
        log.info(f"clock: {name} ({result['data']})")
        path = logs / f"{run.name}-{name}.log"
        start = time.perf_counter()
        with open(path, "w") as f:
            try:
                rc = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT,
                                    env=child_env(), timeout=STAGE_TIMEOUT).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        result["stages"][name] = {"seconds": time.perf_counter() - start, "exit": rc, "log": str(path)}
        # `make export` goes on to compare when export exits 1 (some variant failed).
        if rc != 0 and not (name == "export" and rc == 1):
            lines = path.read_text(errors="replace").strip().splitlines() or ["no output"]
            result["failed"] = f"{name} exited {rc}: {lines[-1]}"
            log.info(f"clock: {result['failed']}")
            return result
    result["total_seconds"] = sum(s["seconds"] for s in result["stages"].values())
    result["loadavg_after"] = loadavg()
    result["accuracy"] = accuracy(run)
    log.info(f"clock: {result['total_seconds']:.1f} s in all")
    return result


def accuracy(run: Path) -> dict:
    """Test accuracy of the Keras model and of each exported variant, as compare reported it."""
    metrics = load_run(run).metrics
    out = {"keras": metrics.get("test", {}).get("accuracy")}
    report = RunDir(run).report_json
    if report.is_file():
        for row in json.loads(report.read_text())["rows"]:
            out[row["variant"]] = row["accuracy"]
    return out


# --- the run and the photos ------------------------------------------------------------------

def exported_run(run: Path) -> tuple[Path, dict, ExportManifest]:
    if not RunDir(run).model.is_file():
        raise BenchError(f"{run}: no model.keras; pass a run folder written by `noodle train`")
    manifest = load_export(RunDir(run).export_manifest)
    models = {v: RunDir(run).export / manifest.models[v].file if v in manifest.models else None
              for v in VARIANTS}
    if not any(models.values()):
        raise BenchError(f"{run}/export: neither int8 nor float32 was exported; run `noodle export {run}`")
    return run, models, manifest


def photo_list(photos: Path | None, run: Path | None) -> tuple[Path, list[str]]:
    from edge.files import expand

    if photos is None:
        root = (load_run(run).data or {}).get("root")
        candidates = [rel(SHARED / "test")] + ([Path(root) / "test"] if root else [])
        photos = next((c for c in candidates if c.is_dir()), None)
        if photos is None:
            raise BenchError(f"no test photos found (looked in {', '.join(map(str, candidates))}); "
                             "pass --photos DIR")
    files, problems = expand([str(photos)])
    if problems or not files:
        raise BenchError(f"--photos {photos}: {'; '.join(problems) or 'no images'}")
    return photos, files


def warm(paths: list[str]) -> None:
    """Read every file once, so no side pays for the first read from disk."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass


# --- rows 2, 3 and 5: the device path, its floor, the seed's loop ----------------------------

def edge_bench(env: dict, model: Path, photos: list[str], threads: int, workers: int) -> dict:
    """One end-to-end pass of `noodle-edge bench --json` (edge.bench), plus its latency figures."""
    return json_step([env["python"], "-m", "edge", "bench", model, *photos, "--json", "--repeat", 1,
                      "--threads", threads, "--workers", workers, "--runtime", env["runtime"]])


def sides(envs, models, keras_model, photos, size, workers, repeats) -> dict:
    """Every side, one pass each per repeat, interleaved: the seed's loop, the edge runs, the floor."""
    samples: dict = {"seed": [], "floor": {}, "edge": {}}
    for rep in range(repeats):
        log.info(f"repeat {rep + 1} of {repeats}: seed loop, edge runner, decode floor")
        samples["seed"].append(attempt(json_step, [rel(sys.executable), "-m", "bench.probe",
                                                   "seed-loop", keras_model, *photos]))
        for env in envs:
            if env["missing"]:
                continue
            for variant, model in models.items():
                for threads in THREADS:
                    key = f"{env['runtime']}/{variant}/{threads}"
                    samples["edge"].setdefault(key, []).append(
                        attempt(edge_bench, env, model, photos, threads, workers) if model
                        else {"error": f"{variant} was not exported"})
            samples["floor"].setdefault(env["runtime"], []).append(attempt(
                json_step, [env["python"], "-m", "bench.probe", "floor", *size,
                            "--workers", workers, *photos]))
    return samples


# --- row 4: cold start and memory ------------------------------------------------------------

def cold_start(envs, int8: Path | None, keras_model: Path, photo: str, repeats: int) -> dict:
    """`noodle-edge classify MODEL one.jpg` per environment against the seed's way as a script."""
    commands = {}
    for env in envs:
        if env["missing"] or int8 is None:
            commands[env["runtime"]] = env["missing"] or "int8 was not exported"
            continue
        script = Path(env["python"]).parent / "noodle-edge"
        edge = [script] if script.is_file() else [env["python"], "-m", "edge"]
        commands[env["runtime"]] = [*edge, "classify", int8, photo, "--runtime", env["runtime"]]
    commands["keras"] = [rel(sys.executable), "-m", "bench.probe", "seed-one", keras_model, photo]
    samples = {side: [] if isinstance(cmd, list) else [{"error": cmd}] for side, cmd in commands.items()}
    log.info(f"cold start: {', '.join(commands)}, {repeats} time(s) each")
    for _ in range(repeats):
        for side, cmd in commands.items():
            if isinstance(cmd, list):
                samples[side].append(attempt(first_label, cmd, photo))
    device = next((e for e in envs if e["runtime"] == "tflite-runtime" and not e["missing"]), None)
    imports = attempt(import_times, [device["python"], "-X", "importtime", "-m", "edge", "classify", int8,
                                     photo, "--runtime", "tflite-runtime"]) \
        if device and int8 else {"error": "no device environment or no int8 model"}
    return {"photo": photo, "commands": {s: [str(c) for c in cmd] if isinstance(cmd, list) else None
                                         for s, cmd in commands.items()}, "samples": samples,
            "imports": imports}


def import_times(cmd: list) -> dict:
    """Where the edge runner's start-up goes: ms per top-level import (`python -X importtime`), once."""
    cmd = [str(c) for c in cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=STEP_TIMEOUT)
    top = {}
    for line in done.stderr.splitlines():
        parts = line.split("|")
        # "import time: self [us] | cumulative | name": a top-level import's name is not indented.
        if line.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit() \
                and not parts[2].startswith("  "):
            top[parts[2].strip()] = top.get(parts[2].strip(), 0) + int(parts[1]) / 1000
    if done.returncode != 0 or not top:
        raise StepFailed(f"exit {done.returncode}: no import times")
    return {"total_ms": sum(top.values()), "top_ms": dict(sorted(top.items(), key=lambda kv: -kv[1])[:6])}


# --- `noodle-edge serve` under load ----------------------------------------------------------

# The variant served: float32, whose x86 kernels are quick in both runtimes (tflite-runtime 2.14's
# int8 ones are not: 10,000 requests would take half an hour). What is measured is the server's
# overhead, against `noodle-edge bench` on the same file.
SERVE_VARIANT = "float32"
# OpenCV for the device environment's server, which reads the camera's clip (`make bench` puts it here).
SERVE_OPENCV = Path(".cache/serve-opencv")
SERVE_TIMEOUT = 3600


def serve_load(envs: list[dict], models: dict, photos: str) -> dict:
    """bench.serve_load in each environment: 8 clients x 500 requests, 4 viewers, to 10,000 requests."""
    model = models.get(SERVE_VARIANT)
    out: dict = {"variant": SERVE_VARIANT}
    for env in envs:
        if env["missing"] or model is None:
            out[env["runtime"]] = {"error": env["missing"] or f"{SERVE_VARIANT} was not exported"}
            continue
        opencv = ["--opencv", SERVE_OPENCV] if env["runtime"] == "tflite-runtime" and SERVE_OPENCV.is_dir() \
            else []
        cmd = [rel(sys.executable), "-m", "bench.serve_load", model, photos, "--python", env["python"],
               "--runtime", env["runtime"], "--threads", 1, "--json", *opencv]
        out[env["runtime"]] = attempt(json_step, cmd, SERVE_TIMEOUT)
    return out


# --- row 6: training throughput --------------------------------------------------------------

def training(runs: list[tuple[str, Path, str]]) -> list[dict]:
    """Images/s per epoch from each run's history.csv: the first epoch (plus decoding), the rest."""
    rows = []
    for label, run, source in runs:
        manifest = load_run(run)
        metrics = manifest.metrics or {}
        history = read_history(RunDir(run).history)
        row = {"data": label, "run": str(run), "source": source,
               "device": (manifest.training or {}).get("device", "CPU"),
               "train_images": metrics.get(
                   "train_images", sum((manifest.data or {})["counts"]["train"].values())),
               "decode_seconds": metrics.get("decode_seconds"), "epochs": len(history)}
        if "head" in metrics:  # a pretrained head: the backbone's features once, then a solve
            head = metrics["head"]
            row["not_measured"] = (f"no epochs: the head was solved by {head['solver']} in "
                                   f"{head['iterations']} iterations, {metrics['train_seconds']} s")
        elif not history:
            row["not_measured"] = f"{run} has no history.csv"
        elif "images_per_second" not in history[0]:
            row["not_measured"] = f"{run}/history.csv has no images_per_second (trained by an older noodle)"
        else:
            first = history[0]
            row["first_epoch"] = {"seconds": first["epoch_seconds"],
                                  "images_per_second": first["images_per_second"]}
            if row["decode_seconds"] is not None:
                row["first_epoch"]["with_decode_images_per_second"] = (
                    row["train_images"] / (row["decode_seconds"] + first["epoch_seconds"]))
            later = [h["images_per_second"] for h in history[1:]]
            row["later_epochs"] = stats(later) if later else {"not_measured": "only one epoch ran"}
        rows.append(row)
    return rows


def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}
