"""What `python -m bench` measured, reduced to figures, checked against its targets, as Markdown.

`summarize` turns the raw samples into medians (min, max) and ratios of
medians; `targets` checks them; `render` writes BENCHMARKS.md. A figure that
could not be measured carries {"not_measured": reason}, and every table cell
shows either a figure or that reason.
"""
from __future__ import annotations

import statistics

from train.config import DEFAULT_ARCH

# The targets: the clock on the real photos, classify against the
# seed's loop and against its decode floor, and the edge runner's cold start.
CLOCK_SECONDS = 120
SPEEDUP = 50
FLOOR_FRACTION = 0.8
COLD_SECONDS = 0.3
COLD_RSS_MB = 80
# serve's: `noodle-edge serve`'s requests/s at least this fraction of `noodle-edge bench`'s files/s
# on the same model and threads (its overhead at most a fifth), no errors, memory flat.
SERVE_FRACTION = 0.8
# What the rows compare (the same as bench.cli's).
VARIANTS = ("int8", "float32")
THREADS = (1, 2)


def figure(samples: list[dict] | None, key, reason: str | None = None) -> dict:
    """Median, min and max of one value over the samples that did not fail."""
    get = key if callable(key) else (lambda s: s[key])
    good = [get(s) for s in samples or [] if "error" not in s]
    if not good:
        errors = [s["error"] for s in samples or [] if "error" in s]
        return {"not_measured": reason or (errors[0] if errors else "no samples")}
    return {"median": statistics.median(good), "min": min(good), "max": max(good), "n": len(good)}


def ratio(a: dict, b: dict) -> dict:
    for side in (a, b):
        if "not_measured" in side:
            return {"not_measured": side["not_measured"]}
    return {"value": a["median"] / b["median"]}


def summarize(report: dict) -> dict:
    sides = report["sides"]
    seed = figure(sides["seed"], "files_per_second")
    out = {"seed": {"files_per_second": seed,
                    "preprocess_ms": figure(sides["seed"], "preprocess_ms_per_file"),
                    "predict_ms": figure(sides["seed"], "predict_ms_per_file")},
           "edge": {}, "floor": {}, "cold_start": {}}
    for env in report["environments"]:
        rt, missing = env["runtime"], env["missing"]
        floor = figure(sides["floor"].get(rt), "files_per_second", missing)
        out["floor"][rt] = floor
        for variant in VARIANTS:
            for threads in THREADS:
                samples = sides["edge"].get(f"{rt}/{variant}/{threads}")
                fps = figure(samples, "files_per_second", missing)
                out["edge"][f"{rt}/{variant}/{threads}"] = {
                    "files_per_second": fps, "vs_seed": ratio(fps, seed), "vs_floor": ratio(fps, floor),
                    "decode_ms": figure(samples, "decode_ms_per_file", missing),
                    "p50_ms": figure(samples, lambda s: s["latency"][0]["p50_ms"], missing),
                    "p99_ms": figure(samples, lambda s: s["latency"][0]["p99_ms"], missing),
                    # The last latency entry is the batched one (batch 1 when the model has a fixed batch).
                    "batch_ms_per_image": figure(samples, lambda s: s["latency"][-1]["per_image_ms"],
                                                 missing),
                }
    for side, samples in report["cold_start"]["samples"].items():
        out["cold_start"][side] = {"seconds": figure(samples, "seconds"),
                                   "peak_rss_mb": figure(samples, "peak_rss_mb")}
    gpus = next((s["gpus"] for s in sides["seed"] if "error" not in s), None)
    out["gpus"] = gpus
    out["tensorflow"] = next((s["tensorflow"] for s in sides["seed"] if "error" not in s), None)
    return out


def _target(row, what, fig: dict, target: float, higher: bool, unit: str, key="median") -> dict:
    t = {"row": row, "what": what, "target": target, "unit": unit, "higher_is_better": higher}
    if "not_measured" in fig:
        return {**t, "measured": None, "met": None, "not_measured": fig["not_measured"]}
    value = fig[key]
    return {**t, "measured": value, "met": value >= target if higher else value <= target}


def targets(report: dict) -> list[dict]:
    summary = report.setdefault("summary", summarize(report))
    clock = report["clock"]
    real = _default_on_real(clock)
    if "skipped" in clock:
        fig = {"not_measured": clock["skipped"]}
    elif not real:
        fig = {"not_measured": "the shared photos (../shared/data/cats-vs-dogs) are not beside the checkout"}
    elif "failed" in real[0]:
        fig = {"not_measured": real[0]["failed"]}
    else:
        fig = {"value": real[0]["total_seconds"]}
    out = [_target(1, "noodle clock on the real photos (data + train + export + compare)", fig,
                   CLOCK_SECONDS, False, "s", key="value")]
    for env in report["environments"]:
        rt = env["runtime"]
        for variant in VARIANTS:
            e = summary["edge"][f"{rt}/{variant}/1"]
            out.append(_target(2, f"classify {variant} ({rt}) vs the seed's Keras loop, files/s",
                               e["vs_seed"], SPEEDUP, True, "x", key="value"))
    for env in report["environments"]:
        rt = env["runtime"]
        for variant in VARIANTS:
            e = summary["edge"][f"{rt}/{variant}/1"]
            out.append(_target(3, f"classify {variant} ({rt}) vs its decode floor", e["vs_floor"],
                               FLOOR_FRACTION, True, "of floor", key="value"))
    cold = summary["cold_start"]["tflite-runtime"]
    out.append(_target(4, "cold start: `noodle-edge classify` int8, one photo (tflite-runtime)",
                       cold["seconds"], COLD_SECONDS, False, "s"))
    out.append(_target(4, "peak RSS of that process", cold["peak_rss_mb"], COLD_RSS_MB, False, "MB"))
    serve = report.get("serve", {})
    for env in report["environments"]:
        got = serve.get(env["runtime"]) or {"error": "not run"}
        what = (f"serve {serve.get('variant')} ({env['runtime']}): POST /v1/classify requests/s "
                "vs bench files/s")
        fig = {"not_measured": got["error"]} if "error" in got else {"value": got["vs_bench"]}
        out.append(_target("22", what, fig, SERVE_FRACTION, True, "of bench", key="value"))
        what = (f"the same without the camera and viewers (--source): HTTP and decoding alone "
                f"({env['runtime']})")
        fig = {"not_measured": got["error"]} if "error" in got else {"value": got["api_only"]["vs_bench"]}
        out.append(_target("22", what, fig, SERVE_FRACTION, True, "of bench", key="value"))
        fig = {"not_measured": got["error"]} if "error" in got else {"value": got["errors"]}
        what = f"errors in all its {got.get('requests_in_all', 'n')} requests ({env['runtime']})"
        out.append(_target("22", what, fig, 0, False, "errors", key="value"))
    return out


# --- Markdown ----------------------------------------------------------------------------------

def fmt(fig: dict, digits: int = 1, unit: str = "") -> str:
    if "not_measured" in fig:
        return f"not measured: {fig['not_measured']}"
    if "value" in fig:
        return f"{fig['value']:.{digits}f}{unit}"
    text = f"{fig['median']:.{digits}f}{unit}"
    if fig["n"] > 1:
        text += f" ({fig['min']:.{digits}f}–{fig['max']:.{digits}f})"
    return text


def _pct(fig: dict) -> str:
    return fmt({"value": fig["value"] * 100} if "value" in fig else fig, 0, " %")


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |"
    return [line(head), "|" + "---|" * len(head)] + [line(r) for r in rows] + [""]


def _measured(t: dict) -> str:
    if t["measured"] is None:
        return f"not measured: {t['not_measured']}"
    if t["unit"] in ("of floor", "of bench"):
        return f"{t['measured'] * 100:.0f} %"
    if t["unit"] == "errors":
        return f"{t['measured']:.0f}"
    if t["unit"] == "x":
        return f"{t['measured']:.1f}x"
    return f"{t['measured']:.2f} {t['unit']}" if t["unit"] == "s" and t["measured"] < 10 \
        else f"{t['measured']:.1f} {t['unit']}"


def _target_text(t: dict) -> str:
    value = f"{t['target'] * 100:.0f} %" if t["unit"] in ("of floor", "of bench") else (
        f"{t['target']:g}x" if t["unit"] == "x" else f"{t['target']:g} {t['unit']}")
    return (">= " if t["higher_is_better"] else "<= ") + value


def _env_label(env: dict) -> str:
    if env["missing"]:
        return f"{env['runtime']} (not measured: {env['missing']})"
    return f"{env['runtime']} {env['versions'][env['runtime']]} ({env['venv']})"


def render_device(report: dict) -> list[str]:
    """Rows 1-7 (the `device` section of bench.cli.SECTIONS)."""
    s = report.setdefault("summary", summarize(report))
    envs = report["environments"]
    lines = [f"Rows 1-7 written by `{report['command']}` on {report['generated']}. Each comparison "
             f"ran its sides back to back in this one run, {report['repeats']} time(s) interleaved; figures "
             "are medians with (min–max) over the repeats, and ratios are ratios of medians. "
             "Regenerate with `make bench`; the raw samples are in bench.json.", ""]
    lines += _machine(report, s)
    lines += ["## Targets (row 22: serve under load)", ""]
    lines += table(["row", "what", "measured", "target", "met"],
                   [[t["row"], t["what"], _measured(t), _target_text(t),
                     "not measured" if t["met"] is None else ("yes" if t["met"] else "**no**")]
                    for t in report["targets"]])
    lines += _clock(report)
    lines += _device_path(report, s, envs)
    lines += _floor(report, s, envs)
    lines += _cold(report, s, envs)
    lines += _variants(report, s, envs)
    lines += _training(report, s)
    lines += _serving(report, envs)
    lines += _limits(report, s, envs)
    return lines


def _machine(report: dict, s: dict) -> list[str]:
    m, la = report["machine"], report["loadavg"]
    here = next((e for e in report["environments"] if e["runtime"] == "ai-edge-litert"), {"versions": {}})
    v = here["versions"]
    gpus = s["gpus"]
    gpu = ("unknown: the Keras side did not run" if gpus is None
           else ", ".join(gpus) if gpus else f"none seen by TensorFlow {s['tensorflow']}")
    models = ", ".join(f"{path} ({report['sizes'].get(v_, 0):,} bytes)" if path else f"{v_}: not exported"
                       for v_, path in report["models"].items())
    source = ("trained and exported by this run's clock" if "runs" in report["clock"]
              else "reused (--run), trained and exported earlier")
    rows = [
        ["CPU", f"{m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable by this process)"],
        ["memory", f"{m['memory_gib']} GiB" if m["memory_gib"] else "unknown"],
        ["OS", m["os"]],
        ["Python", ", ".join(f"{e['versions']['python']} ({e['venv']})"
                             for e in report["environments"] if e["versions"])],
        ["TensorFlow, Keras", f"{v.get('tensorflow')}, {v.get('keras')}"],
        ["runtimes", "; ".join(
            _env_label(e) + ("" if e["missing"] else f", numpy {e['versions']['numpy']}, "
                             f"Pillow {e['versions']['pillow']}") for e in report["environments"])],
        ["GPU", gpu],
        ["load average (1, 5, 15 min)", f"before {la['before']}, after {la.get('after')}"],
        ["photos", f"{report['photos']['count']} from {report['photos']['folder']}"],
        ["models", f"{models}; {source}"],
    ]
    return ["## What was measured, on what", ""] + table(["what", "here"], rows)


def _default_on_real(clock: dict) -> list[dict]:
    """The clock's runs of the default architecture on the real photos (row 1's figure)."""
    return [c for c in clock.get("runs", [])
            if not c["data"].startswith("embedded") and c.get("arch", DEFAULT_ARCH) == DEFAULT_ARCH]


def _clock(report: dict) -> list[str]:
    lines = ["## 1. The noodle clock", "",
             "Wall time of each stage of `make export`, run as the Makefile runs it (a subprocess each, "
             "start-up included), into a fresh run folder; set-up (the virtual environments) excluded. "
             "One pass per dataset and architecture (the default on both, every architecture of "
             "train.config.ARCHITECTURES on the real photos): a training run takes minutes and is not "
             "repeated. Row 1 is the default's.", ""]
    clock = report["clock"]
    if "skipped" in clock:
        return lines + [f"Not measured: {clock['skipped']}.", ""]
    rows = []
    for c in clock["runs"]:
        st = c["stages"]

        def cell(name, c=c, st=st):
            if name not in st:
                return "(no data step: photos given)" if name == "data" and "failed" not in c else "not run"
            exit_code = st[name]["exit"]
            return f"{st[name]['seconds']:.1f}" + ("" if exit_code == 0 else f" (exit {exit_code})")
        acc = c.get("accuracy", {})
        pct = [f"{acc[k] * 100:.1f} %" if acc.get(k) is not None else "n/a"
               for k in ("keras", "float32", "int8")]
        rows.append([c["data"], f"`{c['arch']}`" + (" (default)" if c["arch"] == DEFAULT_ARCH else ""),
                     cell("data"), cell("train"), cell("export"), cell("compare"),
                     f"{c['total_seconds']:.1f}" if "total_seconds" in c else f"failed: {c['failed']}",
                     " / ".join(pct), f"{c['loadavg_before']} → {c.get('loadavg_after')}"])
    return lines + table(["data", "arch", "data s", "train s", "export s", "compare s", "total s",
                          "test accuracy Keras / float32 / int8", "load average before → after"], rows)


def _device_path(report: dict, s: dict, envs: list[dict]) -> list[str]:
    seed = s["seed"]
    here = next((e for e in envs if e["runtime"] == "ai-edge-litert"), {"versions": {}})["versions"]
    rows = [["the seed's loop: `load_img`, `img_to_array`, `expand_dims`, `model.predict` per file",
             f"Keras {here.get('keras')} (TensorFlow {here.get('tensorflow')})",
             fmt(seed["files_per_second"]), "1x"]]
    for e in envs:
        for v in VARIANTS:
            fig = s["edge"][f"{e['runtime']}/{v}/1"]
            rows.append([f"`noodle-edge classify` {v}", _env_label(e), fmt(fig["files_per_second"]),
                         fmt(fig["vs_seed"], 1, "x")])
    return ["## 2. The device path against the seed's way", "",
            f"Files per second over the same {report['photos']['count']} photos. The edge side is the "
            "runner's own end-to-end measure (`noodle-edge bench --json`: edge.files.classify, the decode "
            "pool and batched invokes, 1 interpreter thread as `classify` defaults to), one pass per repeat; "
            "start-up "
            "and model loading are excluded on both sides, and the seed's loop gets one untimed warm-up "
            f"file. The seed's loop spends {fmt(seed['preprocess_ms'], 2)} ms per file in "
            f"`load_img` + `img_to_array` and {fmt(seed['predict_ms'], 2)} ms in `model.predict`.", ""] \
        + table(["side", "runtime", "files/s", "vs the seed's loop"], rows)


def _floor(report: dict, s: dict, envs: list[dict]) -> list[str]:
    rows = []
    for e in envs:
        rt = e["runtime"]
        i8, f32 = s["edge"][f"{rt}/int8/1"], s["edge"][f"{rt}/float32/1"]
        rows.append([_env_label(e), fmt(s["floor"][rt]), fmt(i8["files_per_second"]), _pct(i8["vs_floor"]),
                     fmt(f32["files_per_second"]), _pct(f32["vs_floor"]), fmt(i8["decode_ms"], 2),
                     f"{fmt(i8['batch_ms_per_image'], 3)} / {fmt(f32['batch_ms_per_image'], 3)}"])
    workers = report["machine"]["usable_cores"]
    return ["## 3. Against the decode limit", "",
            "The floor is the bare work under `classify`: edge.preprocess.load_image of the same files on "
            f"a pool of {workers} threads (classify's decode threads), no model, in the same environment.",
            ""] \
        + table(["runtime", "floor files/s", "classify int8 files/s", "int8 of floor",
                 "classify float32 files/s", "float32 of floor", "decode ms/file, one core",
                 "invoke ms/image at batch 16, 1 thread (int8 / float32)"], rows)


def _cold(report: dict, s: dict, envs: list[dict]) -> list[str]:
    cold = report["cold_start"]
    rows = []
    for e in envs:
        c = s["cold_start"][e["runtime"]]
        rows.append([f"`noodle-edge classify int8.tflite {cold['photo']}`", _env_label(e),
                     fmt(c["seconds"], 3), fmt(c["peak_rss_mb"], 1)])
    here = next((e for e in envs if e["runtime"] == "ai-edge-litert"), {"versions": {}})["versions"]
    c = s["cold_start"]["keras"]
    rows.append(["the seed's way as a script: load model.keras, `load_img`, `predict`, print "
                 "(`python -m bench.probe seed-one`)", f"Keras {here.get('keras')}",
                 fmt(c["seconds"], 3), fmt(c["peak_rss_mb"], 1)])
    imports = cold.get("imports", {})
    where = ([f"The edge runner's imports (tflite-runtime, one run under `python -X importtime`): "
              f"{imports['total_ms']:.0f} ms, most in "
              + ", ".join(f"{name} {ms:.0f} ms" for name, ms in imports["top_ms"].items()) + ".", ""]
             if "total_ms" in imports else [])
    return ["## 4. Cold start and memory", "",
            "Wall time from just before the process is started to the first label line read from its "
            "stdout, and its peak RSS (ru_maxrss from os.wait4 of that child; MB = 10^6 bytes).", ""] \
        + table(["command", "runtime", "first label s", "peak RSS MB"], rows) + where


def _variants(report: dict, s: dict, envs: list[dict]) -> list[str]:
    rows = []
    for v in VARIANTS:
        size = report["sizes"].get(v)
        for e in envs:
            for t in THREADS:
                f = s["edge"][f"{e['runtime']}/{v}/{t}"]
                bytes_ = f"{size:,}" if size else \
                    f"not measured: not exported ({report['failed_variants'].get(v, 'absent')})"
                rows.append([v, bytes_, _env_label(e), t, fmt(f["p50_ms"], 3), fmt(f["p99_ms"], 3),
                             fmt(f["batch_ms_per_image"], 3), fmt(f["files_per_second"])])
    return ["## 5. int8 against float32", "",
            "`interpreter.invoke()` alone at batch 1 (edge.bench: 200 timed invokes after 5 warm-ups per "
            "repeat; the table gives the median over repeats of each repeat's p50 and p99), the per-image "
            "cost at batch 16, and end-to-end classify files/s at that interpreter thread count.", ""] \
        + table(["variant", "file bytes", "runtime", "threads", "invoke p50 ms", "invoke p99 ms",
                 "ms/image at batch 16", "classify files/s"], rows)


def _training(report: dict, s: dict) -> list[str]:
    rows = []
    for r in report["training"]:
        if "not_measured" in r:
            rows.append([r["data"], r["device"], r["train_images"], "—", "—", "—",
                         f"not measured: {r['not_measured']}", r["epochs"]])
            continue
        first = r["first_epoch"]
        with_decode = first.get("with_decode_images_per_second")
        rows.append([r["data"], r["device"], r["train_images"],
                     "n/a" if r["decode_seconds"] is None else f"{r['decode_seconds']:.1f}",
                     "n/a" if with_decode is None else f"{with_decode:.0f}",
                     f"{first['images_per_second']:.0f}", fmt(r["later_epochs"], 0), r["epochs"]])
    devices = {r["device"] for r in report["training"]}
    gpus = s["gpus"]
    if "GPU" not in devices:
        reason = ("TensorFlow did not run on the Keras side" if gpus is None
                  else f"no GPU on this machine (TensorFlow {s['tensorflow']} sees none)" if not gpus
                  else "the clock's runs trained on the CPU")
        rows.append(["—", "GPU", "—", "—", "—", "—", f"not measured: {reason}", "—"])
    if "CPU" not in devices:
        rows.append(["—", "CPU", "—", "—", "—", "—", "not measured: the runs trained on the GPU", "—"])
    source = "; ".join(sorted({r["source"] for r in report["training"]}))
    return ["## 6. Training throughput", "",
            f"Training images per second per epoch, from {source} (history.csv's epoch_seconds and "
            "images_per_second). Photos are decoded once before the first epoch (decode s, all splits); "
            "the first epoch also builds the graph; later epochs read the decoded pixels from memory.", ""] \
        + table(["data", "device", "training photos", "decode s", "epoch 1 images/s incl. decoding",
                 "epoch 1 images/s", "later epochs images/s", "epochs"], rows)


def _serving(report: dict, envs: list[dict]) -> list[str]:
    serve = report.get("serve")
    if not serve:
        return []
    rows = []
    for e in envs:
        f = serve.get(e["runtime"]) or {"error": "not run"}
        if "error" in f:
            rows.append([_env_label(e)] + [f"not measured: {f['error']}"] * 8)  # every cell says why
            continue
        memory = ", ".join(f"{m['rss_mb']:.0f}" for m in f["memory"])
        camera = f.get("camera_frames_per_second")
        rows.append([_env_label(e), f"{f['requests_per_second']:.1f}"
                     + (f" (+ {camera:.1f} camera frames/s)" if camera is not None else ""),
                     f"{f['p50_ms']:.1f} / {f['p99_ms']:.1f}", str(f["errors"]),
                     f"{f['bench_files_per_second']:.1f}", f"{f['vs_bench'] * 100:.0f} %",
                     f"{memory} ({f['rss_growth_mb']:+.1f})", f"{f['peak_rss_mb']:.0f}",
                     f"{f['api_only']['requests_per_second']:.1f}, {f['api_only']['vs_bench'] * 100:.0f} %"])
    first = next((f for f in serve.values() if isinstance(f, dict) and "clients" in f), None)
    how = (f"{first['clients']} clients × {first['requests_per_client']} POST /v1/classify of the same "
           f"photos (one kept-alive connection each) while {first['viewers']} viewers read /stream.mjpg "
           "and the camera loop classifies a clip of them; then more rounds to "
           f"{first['total_requests']:,} requests, the server's RSS read after each 1,000" if first else "")
    return ["## 7. `noodle-edge serve` under load", "",
            f"`python -m bench.serve_load` on {serve.get('variant')} with 1 interpreter thread: {how}. "
            "Requests/s, p50 and p99 are of the first round; API only is that round again against a server "
            "started without --source (no camera loop, no viewers); `noodle-edge bench` is the same file, "
            "photos and threads in the same Python (its files/s: the decode pool and batched invokes, no "
            "HTTP).",
            ""] + \
        table(["runtime", "requests/s", "p50 / p99 ms", "errors", "bench files/s", "vs bench",
               "RSS MB per 1,000 requests (growth)", "peak RSS MB", "API only: requests/s, vs bench"], rows)


def _limits(report: dict, s: dict, envs: list[dict]) -> list[str]:
    """For each target not met, the figures that bound it (computed, not asserted)."""
    notes = []
    failed = {(t["row"], t["what"]) for t in report["targets"] if t["met"] is False}
    rows = {row for row, _ in failed}
    if 1 in rows:
        c = _default_on_real(report["clock"])[0]
        st = c["stages"]
        t = next((r for r in report["training"] if r["run"] == c["run"]), None)
        later = fmt(t["later_epochs"], 0) if t and "later_epochs" in t else "n/a"
        notes.append(f"Clock: train {st['train']['seconds']:.1f} s of {c['total_seconds']:.1f} s "
                     f"({t['epochs'] if t else '?'} epochs, later ones {later} images/s on "
                     f"{t['device'] if t else '?'}); export {st['export']['seconds']:.1f} s, compare "
                     f"{st['compare']['seconds']:.1f} s.")
    seed = s["seed"]
    for e in envs:
        for v in VARIANTS:
            f = s["edge"][f"{e['runtime']}/{v}/1"]
            label = f"classify {v} ({e['runtime']})"
            if "median" not in f["files_per_second"] or "median" not in f["batch_ms_per_image"]:
                continue
            per_file = 1000 / f["files_per_second"]["median"]
            decode, invoke = f["decode_ms"]["median"], f["batch_ms_per_image"]["median"]
            cores = report["machine"]["usable_cores"]
            if (2, f"{label} vs the seed's Keras loop, files/s") in failed and "median" in seed["predict_ms"]:
                notes.append(f"{label} vs the seed: the seed's loop costs "
                             f"{seed['preprocess_ms']['median'] + seed['predict_ms']['median']:.1f} ms/file "
                             f"(`model.predict` {seed['predict_ms']['median']:.1f} ms of it); classify "
                             f"{per_file:.2f} ms/file (decode {decode:.2f} ms/file on one core, invoke "
                             f"{invoke:.3f} ms/image at batch 16 on one thread).")
            if (3, f"{label} vs its decode floor") in failed:
                cpu_bound = cores * 1000 / (decode + invoke)
                notes.append(f"{label} vs the floor: invoke {invoke:.3f} ms/image on one interpreter thread "
                             f"alone caps it at {1000 / invoke:.0f} files/s; decode + invoke cost "
                             f"{decode + invoke:.2f} CPU ms/file, at most {cpu_bound:.0f} "
                             f"files/s on {cores} cores; the floor is "
                             f"{fmt(s['floor'][e['runtime']], 0)} files/s, classify {per_file:.2f} ms/file.")
    if 4 in rows:
        c = s["cold_start"].get("tflite-runtime", {})
        imports = report["cold_start"].get("imports", {})
        spent = ("; imports alone (one run under `python -X importtime`) took "
                 f"{imports['total_ms']:.0f} ms: "
                 + ", ".join(f"{name} {ms:.0f} ms" for name, ms in imports["top_ms"].items())
                 if "total_ms" in imports else "")
        notes.append(f"Cold start (tflite-runtime): {fmt(c.get('seconds', {}), 3)} s to the first label, "
                     f"{fmt(c.get('peak_rss_mb', {}), 1)} MB peak RSS{spent}.")
    if not notes:
        return []
    return ["## What limits the targets not met", ""] + [f"- {n}" for n in notes] + [""]


# --- the sections measured on their own (bench.cli.SECTIONS) --------------------------------------

def stamp(section: dict) -> str:
    """A section's own date, command, machine and load average."""
    m, la = section["machine"], section["loadavg"]
    return (f"Measured {section['generated']} by `{section['command']}` on {m['cpu']}, {m['cores']} cores "
            f"({m['usable_cores']} usable), {m['memory_gib']} GiB; load average (1, 5, 15 min) before "
            f"{la['before']}, after {la.get('after')}.")


def _mb(value: float) -> str:
    return f"{value:,.0f}"


def render_growth(g: dict) -> list[str]:
    lines = ["## 8. Cost growth of the default", "", stamp(g), "",
             "`python -m bench.growth`: the default (lite0) trained by `noodle train` on N photos of the "
             "sample generator (80 % train, 20 % test), each size in a fresh process into an empty run "
             "folder, under nice, using every core. Peak RSS is that process's ru_maxrss; disk is the run "
             "folder with its cache at its largest while training (polled every 0.5 s); features a second "
             "are the photos over the seconds the log gives to decoding and embedding them.", ""]
    if "skipped" in g:
        return lines + [f"Not measured: {g['skipped']}.", ""]
    rows = []
    for r in g["rows"]:
        if "error" in r:
            rows.append([f"{r['photos']:,}"] + [f"not measured: {r['error']}"] * 6)
            continue
        fps = r.get("features_per_second")
        rows.append([f"{r['photos']:,}", f"{r['seconds']:.1f}", f"{r['seconds_a_photo'] * 1000:.1f}",
                     _mb(r["peak_rss_mb"]), f"{r['peak_disk_bytes'] / 1e6:.1f} "
                     f"({r['disk_bytes_a_photo'] / 1000:.1f} KB a photo)",
                     "n/a" if fps is None else f"{fps:.1f}", f"{r['loadavg_before']} → {r['loadavg_after']}"])
    lines += table(["photos", "wall s", "ms a photo", "peak RSS MB", "run folder + cache MB (a photo)",
                    "features a second", "load average before → after"], rows)
    c = g["checks"]
    if "not_measured" in c:
        return lines + [f"Checks not made: {c['not_measured']}.", ""]
    ratios = ", ".join(f"{a:,} → {b:,} photos: wall ×{r['wall_ratio']:.2f} for ×{r['photo_ratio']:.0f}"
                       for r in c["ratios"] for a, b in [r["photos"]])
    return lines + [
        f"- Time grows linearly (each wall ratio at most 1.15× the photo ratio): "
        f"{'yes' if c['linear'] else '**no**'} ({ratios}).",
        f"- Memory stays flat (peak RSS grows by at most 10 KB a photo): {'yes' if c['flat'] else '**no**'} "
        f"({c['rss_growth_mb']:+.0f} MB from the fewest photos to the most, "
        f"{c['rss_bytes_a_photo'] / 1000:.1f} KB a photo).",
        f"- The run folder and its cache under 20 KB a photo: {'yes' if c['disk_ok'] else '**no**'} "
        f"(at most {c['disk_bytes_a_photo'] / 1000:.1f} KB a photo).", ""]


def render_workers(w: dict) -> list[str]:
    lines = ["## 9. Two workers against one", "", stamp(w), "",
             "`python -m bench.growth --workers-only` (or `python -m bench --only workers`): the same photos "
             "trained by one `noodle train` pinned to one core (`taskset -c`), then by a chief and a worker "
             "on loopback (TF_CONFIG, `--cluster tf-config`), each pinned to a core of its own: each embeds "
             "its shard, the features are gathered by the strategy's collectives, the chief solves the head. "
             "Wall time from the first start to the last exit. One and two are run by turns; each row is "
             "that side's median run.", ""]
    if "not_measured" in w or "skipped" in w:
        return lines + [f"Not measured: {w.get('not_measured') or w['skipped']}.", ""]
    if "error" in w:
        return lines + [f"Not measured: {w['error']}.", ""]
    same = w["same"]
    rows = [["one worker, one core", f"{w['photos']:,}", f"{w['one']['seconds']:.1f}",
             f"{w['one']['photos_per_second']:.1f}", "1.00", _mb(w["one"]["peak_rss_mb"])],
            ["two workers, one core each", f"{w['photos']:,}", f"{w['two']['seconds']:.1f}",
             f"{w['two']['photos_per_second']:.1f}", f"{w['ratio']:.2f}",
             f"{_mb(w['two']['chief']['peak_rss_mb'])} + {_mb(w['two']['worker']['peak_rss_mb'])}"]]
    lines += table(["run", "photos", "wall s", "photos a second", "wall vs one worker", "peak RSS MB"], rows)
    head = ("not compared: " + same["not_measured"] if "not_measured" in same else
            f"largest head difference {same['head_max_difference']:.2g}, test accuracy "
            f"{same['test_accuracy'][0] * 100:.2f} % and {same['test_accuracy'][1] * 100:.2f} %")
    turns = ", ".join(f"{r:.2f}×" for r in w.get("ratios", []))
    turns = f"; each turn's: {turns}" if turns else ""
    return lines + [f"- Two workers at most 0.65× one's wall: {'yes' if w['met'] else '**no**'} "
                    f"({w['ratio']:.2f}× of the medians{turns}).",
                    f"- The same head (1e-5) and test accuracy: {'yes' if same.get('same') else '**no**'} "
                    f"({head}).", ""]


def render_teach(t: dict) -> list[str]:
    lines = ["## 10. Enrolment on the device", "", stamp(t), ""]
    if "skipped" in t:
        return lines + [f"Not measured: {t['skipped']}.", ""]
    lines += [f"`python -m bench.teach` on {t['data']}: for k photos a class (the first k of a seeded "
              "shuffle), `noodle train` + `noodle export --variants int8` on them, and `noodle-edge teach "
              "--replace` of the same photos as captures onto that export's embed.tflite; both scored on the "
              f"set's {t['test_photos']} test photos, under ai-edge-litert and tflite-runtime. Teach s is "
              "teach's own figure (load, decode, features, solve, write, check); an enrolment costs one "
              "embed.tflite invoke per batch of captures, so a Pi's figure is about captures × the Pi's "
              "per-photo int8 invoke time + a second.", ""]
    rows = []
    for r in t["rows"]:
        a, b = r["ai-edge-litert"], r["tflite-runtime"]
        rows.append([r["per_class"], f"{r['train_seconds']:.0f} + {r['export_seconds']:.0f}",
                     f"{a['export_int8'] * 100:.2f} %", f"{a['taught'] * 100:.2f} %",
                     f"{b['export_int8'] * 100:.2f} %", f"{b['taught'] * 100:.2f} %",
                     f"{a['teach_seconds']} / {b['teach_seconds']}",
                     f"{a['captures_embedded']} / {a['invokes']}", a["solve"]["iterations"]])
    lines += table(["photos a class", "train + export s", "export int8, litert", "taught, litert",
                    "export int8, tflite-runtime", "taught, tflite-runtime",
                    "teach s, litert / tflite-runtime",
                    "captures embedded / invokes", "solve iterations"], rows)
    third = t.get("third")
    if third:
        a, b = third["ai-edge-litert"], third["tflite-runtime"]
        lines += [f"A third class: {third['photos']} synthetic `{third['class']}` photos taught onto the "
                  f"last export ({third['shipped']}), its classes kept (labels {', '.join(a['labels'])}); "
                  f"the first two classes' test accuracy, shipped int8 → with the third class: "
                  f"ai-edge-litert {a['shipped_int8'] * 100:.2f} % → {a['three_classes'] * 100:.2f} %, "
                  f"tflite-runtime {b['shipped_int8'] * 100:.2f} % → {b['three_classes'] * 100:.2f} % "
                  f"(teach {a['teach_seconds']} s / {b['teach_seconds']} s).", ""]
    return lines
