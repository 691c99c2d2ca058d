"""The comparison's pictures: the photos int8 changed, confusion matrices, the summary chart.

Each figure is written atomically; a figure with nothing to show is not drawn
(and a stale one from an earlier compare is removed), and the caller says so
in words instead. matplotlib is imported inside the functions.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edge.atomic import atomic_output
from edge.escape import shown as shown_text
from edge.postprocess import predicted_index


def plain(label: str, width: int = 24) -> str:
    """A label as matplotlib text: escaped, cut, and `$` literal (a pair would be read as TeX)."""
    return shown_text(label, width, "utf-8").replace("$", r"\$")

# Thumbnails per row of the contact sheet, and the most it draws: a broken
# int8 (a wrong calibration scale) changes hundreds of labels, and a sheet of
# the worst 120 already says what happened.
SHEET_COLUMNS = 6
SHEET_MAX = 120
# Confusion matrices per row of their figure.
CONFUSION_COLUMNS = 4
# Classes a confusion matrix shows; past this, those with the most errors (report.json has the
# whole matrix): at 117 classes the full one was 21,620 x 5,445 px, a "bomb" to Pillow and viewers.
CONFUSION_CLASSES = 16


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, dest: Path, dpi: int = 100) -> None:
    with atomic_output(dest, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi)
    _pyplot().close(fig)


def disagreements(scores, labels: list[str], dest: Path, variant: str, reference: str,
                  top_shifts: int) -> dict:
    """A contact sheet of every photo whose label `variant` changed, plus the largest shifts.

    Returns what was drawn, for report.json: the photos with both labels and
    probabilities, and the sheet's file name (None when no label changed).
    """
    probs = scores.probs
    if variant not in probs or reference not in probs:
        dest.unlink(missing_ok=True)
        return {"variant": variant, "changed": None, "file": None, "photos": [],
                "summary": f"No contact sheet: the export has no {variant} or no {reference} file."}
    p_ref, p_var = probs[reference], probs[variant]
    pred_ref, pred_var = predicted_index(p_ref), predicted_index(p_var)
    shift = np.abs(p_var - p_ref).max(axis=1)
    order = np.argsort(-shift, kind="stable")  # largest shift first, ties in photo order
    changed = [int(i) for i in order if pred_ref[i] != pred_var[i]]
    held = [int(i) for i in order if pred_ref[i] == pred_var[i]][:top_shifts]
    photos = [{"file": str(scores.files[i]), "true": labels[scores.y[i]],
               reference: {"label": labels[pred_ref[i]], "probability": float(p_ref[i, pred_ref[i]])},
               variant: {"label": labels[pred_var[i]], "probability": float(p_var[i, pred_var[i]])},
               "max_prob_shift": float(shift[i]), "label_changed": i in changed}
              for i in changed + held]
    info = {"variant": variant, "changed": len(changed), "largest_shifts": len(held), "photos": photos}
    if not changed:
        dest.unlink(missing_ok=True)
        largest = f"; the largest probability shift is {shift.max():.3f}" if len(shift) else ""
        return {**info, "file": None,
                "summary": f"No contact sheet: {variant} and {reference} give the same label on all "
                           f"{len(shift)} photos{largest}."}
    shown = (changed + held)[:SHEET_MAX]
    _draw_sheet(scores, labels, shown, set(changed), p_ref, p_var, pred_ref, pred_var, shift,
                variant, reference, dest=dest)
    capped = f" (the {SHEET_MAX} largest shifts drawn)" if len(changed) + len(held) > SHEET_MAX else ""
    return {**info, "file": dest.name,
            "summary": f"{len(changed)} photo(s) where {variant} and {reference} labels differ, plus "
                       f"the {len(held)} largest probability shifts{capped}: {dest.name}."}


def _draw_sheet(*args, dest: Path) -> None:
    _save(sheet_figure(*args), dest)


def sheet_figure(scores, labels, shown, changed, p_ref, p_var, pred_ref, pred_var, shift, variant,
                 reference):
    """The contact sheet: a photo a cell under its four caption lines, rows apart enough to hold them."""
    plt = _pyplot()
    labels = [plain(label, 18) for label in labels]  # a caption line stays within its photo's width
    cols = min(SHEET_COLUMNS, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 3.4 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, shown, strict=False):
        ax.imshow(scores.x[i])
        flipped = i in changed
        ax.set_title(f"{plain(Path(scores.files[i]).name, 22)}\ntrue {labels[scores.y[i]]}\n"
                     f"{reference}: {labels[pred_ref[i]]} {p_ref[i, pred_ref[i]]:.2f}\n"
                     f"{variant}: {labels[pred_var[i]]} {p_var[i, pred_var[i]]:.2f}",
                     fontsize=7, color="tab:red" if flipped else "black")
    fig.suptitle(f"{variant} vs {reference}: {len(changed)} label(s) changed (red), then the largest "
                 "probability shifts (black)", fontsize=9)
    # Room for the captions: a row's titles sit between it and the photos above.
    fig.tight_layout(h_pad=1.2, rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return fig


def confusion_figure(rows: list[dict], labels: list[str], dest: Path) -> str | None:
    """One confusion matrix per variant, counts in the cells; None (and no file) without rows."""
    if not rows:
        dest.unlink(missing_ok=True)
        return None
    plt = _pyplot()
    shown = list(range(len(labels)))
    if len(labels) > CONFUSION_CLASSES:
        total = sum(np.asarray(r["confusion"]["counts"]) for r in rows)
        errors = total.sum(0) + total.sum(1) - 2 * np.diag(total)  # as true or as predicted
        shown = sorted(np.argsort(-errors, kind="stable")[:CONFUSION_CLASSES].tolist())
    names = [plain(labels[i]) for i in shown]
    k = len(names)
    side = max(2.6, 0.45 * k + 1.4)
    cols = min(CONFUSION_COLUMNS, len(rows))
    lines = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(side * cols, (side + 0.4) * lines), squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, r in zip(axes.flat, rows, strict=False):
        counts = np.asarray(r["confusion"]["counts"])[np.ix_(shown, shown)]
        ax.imshow(counts, cmap="Blues")
        for (t, p), n in np.ndenumerate(counts):
            ax.text(p, t, str(n), ha="center", va="center", fontsize=8,
                    color="white" if n > counts.max() / 2 else "black")
        ax.set_xticks(range(k), names, rotation=45 if k > 2 else 0, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(f"{plain(r['variant'])} ({r['accuracy'] * 100:.1f} %)", fontsize=9)
    if k < len(labels):
        fig.suptitle(f"the {k} of {len(labels)} classes with the most errors (report.json has every class)",
                     fontsize=9)
    fig.tight_layout()
    _save(fig, dest)
    return dest.name


def latency_title(report: dict) -> str:
    """The latency plot's title, with the load it was measured under and any thread count that lost.

    More threads slower than one is the machine's other work (or a model too
    small to split), not the model's speed: the title says so beside the bars.
    """
    bench = report["benchmark"]
    threads, load = bench["threads"], bench.get("loadavg")
    title = "invoke latency p50 (ms)" + (f", load average {load[0]:.2f}" if load else "")
    slower = []
    for r in report["rows"]:
        lat = r.get("latency_ms") or {}
        one, most = lat.get(str(threads[0])), lat.get(str(threads[-1]))
        if len(threads) > 1 and one and most and most["p50_ms"] > 1.2 * one["p50_ms"]:
            slower.append(r["variant"])
    if slower:
        title += (f"\n{threads[-1]} threads slower than {threads[0]} for {', '.join(map(plain, slower))}: "
                  "other load; re-measure when idle")
    return title


def chart(report: dict, dest: Path) -> None:
    """Size, accuracy and latency side by side, one bar per variant."""
    plt = _pyplot()
    rows, threads = report["rows"], report["benchmark"]["threads"]
    names = [r["variant"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].bar(names, [r["bytes"] / 1024 for r in rows], color="tab:blue")
    axes[0].set_title("file size (KiB)")
    accuracy = [(r["accuracy"] or 0) * 100 for r in rows]
    axes[1].bar(names, accuracy, color="tab:green")
    axes[1].set_ylim(max(0, min(accuracy) - 5), 100)
    axes[1].set_title(f"accuracy on {report['test']['count']} photos (%)")
    width = 0.8 / len(threads)
    for i, n in enumerate(threads):
        p50 = [((r["latency_ms"] or {}).get(str(n)) or {}).get("p50_ms", 0) for r in rows]
        axes[2].bar([j + i * width for j in range(len(rows))], p50, width, label=f"{n} thread(s)")
    axes[2].set_xticks([j + width * (len(threads) - 1) / 2 for j in range(len(rows))], names)
    axes[2].set_title(latency_title(report), fontsize=9)
    axes[2].legend()
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    _save(fig, dest)
