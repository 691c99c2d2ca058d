"""report.md: `noodle compare`'s report (export.compare builds it) as a Markdown table and notes.

Labels, variants, paths and reasons go through edge.escape.markdown, so no
control character, `|`, newline or HTML from the data reaches the page raw.
"""
from __future__ import annotations

from edge.escape import LISTED, TABLE_WIDTH, escape_name, listed, markdown
from export.config import DEFAULTS


def to_markdown(report: dict) -> str:
    """report.md (also printed by `noodle compare`). Labels, variants, paths and reasons go
    through edge.escape.markdown: no control character, `|`, newline or HTML reaches it raw."""
    reference = report["statistics"]["reference"]
    verdicts = [markdown(r["verdict"]) for r in report["rows"]
                if r["variant"] != reference and r.get("verdict")]
    sheet = report["disagreements"]
    pictures = ["Confusion matrices: ![confusion](confusion.png) ([confusion.png](confusion.png))"
                if report["figures"]["confusion"] else "No confusion matrix: no variant was scored."]
    pictures.append(f"Photos whose label changed: [disagreements.png]({sheet['file']})\n\n"
                    f"![disagreements]({sheet['file']})" if sheet["file"] else sheet["summary"])
    return ("\n".join(_table(report)) + "\n\n"
            + ("## Verdicts\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n\n" if verdicts else "")
            + _gate_words(report)
            + "\n".join(f"- {n}" for n in _notes(report)) + "\n\n" + "\n\n".join(pictures) + "\n")


def _table(report: dict) -> list[str]:
    """Two tables, each within 120 columns: accuracy with the paired statistics, then speed and memory
    under each runtime; per-class accuracy below them, a line per variant."""
    reference = report["statistics"]["reference"]
    head = ["variant", "KiB", "vs float32", "accuracy", "delta, pp (95 % CI)", "only float32 / only it",
            "McNemar p", "agreement"]
    lines = _table_head(head)
    for r in report["rows"]:
        paired = "delta_pp" in r and r["variant"] != reference
        lo, hi = r.get("delta_ci95") or (0, 0)
        lines.append(_table_row([
            markdown(r["variant"], TABLE_WIDTH), f"{r['bytes'] / 1024:,.0f}", _pct(r["size_vs_float32"], 1),
            _pct(r["accuracy"], 2), f"{r['delta_pp']:+.2f} ({lo:+.2f}..{hi:+.2f})" if paired else "",
            f"{r['discordant']['float_only']} / {r['discordant']['variant_only']}" if paired else "",
            f"{r['mcnemar_p']:.3g}" if paired else "", _pct(r.get("agreement"), 2)]))
    lines += ["", *_speed_table(report), ""]
    lines += [f"- per-class accuracy, {markdown(r['variant'], TABLE_WIDTH)}: "
              f"{per_class_cell(r['per_class'])}" for r in report["rows"]]
    return lines


def _table_head(head: list[str]) -> list[str]:
    return [_table_row(head), "|" + "---|" * len(head)]


def _table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _speed_table(report: dict) -> list[str]:
    """p50 invoke ms per runtime ("1 / N" threads), peak RSS and integer-only, one row per variant."""
    b = report["benchmark"]
    threads = b["threads"]
    runtimes = b.get("runtimes") or [{"name": b["runtime"], "version": b["version"]}]
    head = ["variant"] + [f"{rt['name']}{' (flagged)' if rt.get('slow_int8') else ''}" for rt in runtimes]
    head += ["peak RSS MB", "integer only"]
    lines = [f"invoke p50 ms at {' / '.join(map(str, threads))} thread{'s' if len(threads) > 1 else ''}, "
             "under each runtime on this machine (notes below):", "", *_table_head(head)]
    for r in report["rows"]:
        latency = r.get("latency") or {runtimes[0]["name"]: r.get("latency_ms")}
        cells = [markdown(r["variant"], TABLE_WIDTH)]
        for rt in runtimes:
            lat = latency.get(rt["name"]) or {}
            cells.append(" / ".join(f"{lat[str(n)]['p50_ms']:.1f}" if lat.get(str(n)) else "n/a"
                                    for n in threads))
        cells += [f"{r['peak_rss_mb']:.1f}" if r["peak_rss_mb"] else "n/a",
                  "yes" if r["fully_integer"] else "no"]
        lines.append(_table_row(cells))
    return lines


# A load average above this share of the cores means other work shared them while timing: the
# multi-thread figure is then this machine's contention, never the device's.
BUSY_LOAD = 0.5


def speed_words(report: dict) -> list[str]:
    """int8 against float32 under each runtime, which runtime each Pi OS uses, and what the figures are not.

    Never a verdict on the Pi from a runtime flagged slow on this CPU, and never a multi-thread
    figure timed under load as the device's.
    """
    b, reference = report["benchmark"], report["statistics"]["reference"]
    rows = {r["variant"]: r for r in report["rows"]}
    words = [f"Speed on this machine ({b['cpus']} {b['machine']} CPUs), not on the Pi: `noodle-edge bench` "
             "on the Pi times its own. The Pi runs "
             + " and ".join(f"{r['name']} on {r['pi']}" for r in b.get("runtimes", []) if r.get("pi")) + "."]
    load = (b.get("loadavg") or [0])[0]
    busy = load > BUSY_LOAD * (b.get("cpus") or 1)
    for rt in b.get("runtimes", []):
        name = rt["name"]
        one = {v: ((r.get("latency") or {}).get(name) or {}).get("1") for v, r in rows.items()}
        if one.get("int8") and one.get(reference):
            ratio = one[reference]["p50_ms"] / one["int8"]["p50_ms"]
            said = (f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower")
            line = (f"{name} {rt['version']}: int8 {one['int8']['p50_ms']:.1f} ms against float32 "
                    f"{one[reference]['p50_ms']:.1f} ms at 1 thread, int8 {said}")
        else:
            line = f"{name} {rt['version']}: no int8 and float32 pair to compare"
        if rt.get("slow_int8"):
            line += (f" (FLAGGED: {name}'s int8 kernels are known slow on {b['machine']}; this says nothing "
                     "of int8 on the Pi's arm64, where they are optimized)")
        words.append(line + ".")
    if len(b["threads"]) > 1:
        n = b["threads"][-1]
        words.append(f"{n}-thread figures were timed at load average {load:.2f} on {b['cpus']} cores"
                     + (": other work shared the cores, so they are this machine's contention, not any "
                        "device's; re-run `noodle compare` when idle" if busy else
                        "; a Pi 4/5 has 4 cores of its own"))
    return words


def _gate_words(report: dict) -> str:
    """The gate as export.gate decides it on these photos, and what the export may do (export_outcome)."""
    decided, outcome = report.get("gate"), report.get("outcome")
    if not outcome:
        return ""
    lines = []
    if decided:
        lines = [f"- {markdown(decided['rule'])}",
                 *(f"- {markdown(v['line'])}" for v in decided["variants"].values()),
                 f"- On these {decided['count']} photos: **{decided['outcome']}**."]
    lines.append(f"- The export: **{outcome['outcome']}**, {markdown(outcome['line'])}"
                 + ("" if outcome["outcome"] == "passed" else
                    "; `make bundle` ships it only with FORCE=1 (`noodle bundle --force`)") + ".")
    return "## Gate\n\n" + "\n".join(lines) + "\n\n"


def _notes(report: dict) -> list[str]:
    """What the table's figures are of: the photos, calibration, runtimes, statistics, latency."""
    test, b, p = report["test"], report["benchmark"], report["parity"]
    skipped = len(test["skipped"])
    notes = [
        f"{test['count']} photos from {markdown(test['source'])} ({_split_words(test['split'])})"
        + (f"; {skipped} unreadable or missing file(s) skipped" if skipped else "")
        + (f"; its classes read as the model's labels: {markdown(mapping_words(test['mapping']))}"
           if test.get("mapping") else "")
        + f". Keras model accuracy on the training data's {report['validation']['count']} "
        f"{report['validation']['split']} photos"
        + (", another set than this report's" if test["split"] == "external" else "")
        + (": not reported, they share bursts with training photos." if report["keras_accuracy"] is None
           else f", as training scored it: {_pct(report['keras_accuracy'], 2)}.")
        + ("" if test["split"] == "external" else
           " These photos were carved from the data the model learned from; photos it never saw, taken "
           "another day, place or camera (make export TEST=folder, --test), are what really tells."),
        *(f"WARNING: {markdown(w)}" for w in report.get("data_warnings", [])),
        *(_calibration_words(v, c) for v, c in report["calibration"].items()),
        *_device_words(report["rows"]),
        boundary_words(report["rows"]),
        f"Statistics: each variant paired with float32 on the same photos; 95 % CI by "
        f"{report['statistics']['ci95']}; {report['statistics']['test']}; a difference counts as "
        f"detectable when p < {report['statistics']['alpha']}.",
        (f"float32 parity with Keras: labels agree on {_pct(p['agreement'], 2)}, max |prob diff| "
         f"{p['max_prob_diff']:.2g} ({'ok' if p['ok'] else 'FAILED'})." if p
         else "No float32 file: parity with Keras not checked."),
        f"Every file in the table ran under "
        f"{', '.join(f'{k} {v}' for k, v in report['runtimes'].items() if v)}"
        + ("" if report["runtimes"].get("tflite-runtime") else " (tflite-runtime 2.14 NOT checked)") + ".",
        f"Latency: interpreter.invoke() alone, batch 1, {b['runs']} runs (fewer, at least 10, where "
        f"they took over {b['budget_s']:g} s), under each installed runtime "
        f"(load average {' '.join(map(str, b['loadavg'] or ['?']))}); peak RSS of a fresh process that "
        f"loads and runs one model under {b['runtime']} (the bare process: {b['baseline_rss_mb']:.1f} MB).",
        *(speed_words(report) if b.get("runtimes") else []),
    ]
    if report["failed"]:
        notes.append("FAILED: " + "; ".join(f"{markdown(k)}: {markdown(v)}"
                                            for k, v in report["failed"].items()))
    return notes


def mapping_words(mapping: dict[str, str]) -> str:
    return ", ".join(f"{escape_name(c)} as {escape_name(label)}" for c, label in mapping.items())


def boundary_words(rows: list[dict]) -> str:
    """How many photos each variant scored exactly at the boundary, where the tie rule decides."""
    counts = ", ".join(f"{markdown(r['variant'])} {r.get('boundary', 0)}"
                       + (f" ({r['boundary_flips']} of them labelled otherwise than by float32)"
                          if r.get("boundary_flips") else "") for r in rows)
    return ("At the decision boundary (the top two scores exactly equal, so the tie rule gives the label "
            f"to the lower class index): {counts}.")


def _split_words(split: str) -> str:
    return "a separate labelled set, --test" if split == "external" else f"the training data's {split} split"


def _calibration_words(variant: str, info: dict) -> str:
    source = f"the {info['split']} split" if info.get("split") else info.get("from", "unknown photos")
    warn = (f" (fewer than {DEFAULTS.calibration_warn_below}: ranges may be too narrow)"
            if info.get("samples", 0) < DEFAULTS.calibration_warn_below else "")
    return f"{variant} calibrated on {info.get('samples')} photos from {source}{warn}."


def _pct(x, digits: int) -> str:
    return "" if x is None else f"{x * 100:.{digits}f} %"


def per_class_cell(per_class: dict) -> str:
    """Each class's accuracy; past LISTED classes the worst first, cut (report.json has them all)."""
    items = list(per_class.items())
    worst = len(items) > LISTED
    if worst:
        items.sort(key=lambda kc: 2 if kc[1]["accuracy"] is None else kc[1]["accuracy"])  # unscored last
    return ("worst: " if worst else "") + listed(
        [f"{markdown(k, TABLE_WIDTH)} {_pct(c['accuracy'], 1)} ({c['correct']}/{c['count']})"
         for k, c in items])


def _device_words(rows: list[dict]) -> list[str]:
    """What the Pi's runtime gives on the same photos, where it differs from the table's."""
    device = [r for r in rows if r.get("device_runtime")]
    if not device:
        return ["tflite-runtime 2.14 did not score these photos (no device environment: `make edge-env`)."]
    runtime = device[0]["device_runtime"]["runtime"]
    differ = [r for r in device if r["device_runtime"]["labels_differ"]]
    photos = device[0]["device_runtime"].get("photos")
    sample = f" on a sample of {photos} of these photos"
    if not differ:
        return [f"Under {runtime}{sample} every variant gives the same label as in the table."]
    return [f"Under {runtime}{sample}: " + "; ".join(
        f"{r['variant']} {_pct(r['device_runtime']['accuracy'], 2)} (ai-edge-litert on the same photos "
        f"{_pct(r['device_runtime']['accuracy_litert_same_photos'], 2)}; "
        f"{r['device_runtime']['labels_differ']} photo(s) labelled differently: its integer kernels "
        "round differently)" for r in differ)
        + ". `predictions.csv` has both runtimes' labels per photo (the device's on the sample only)."]
