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
# The matrix drawn whole; the other variants are drawn as their difference from it.
REFERENCE = "float32"


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
    """float32's confusion matrix, then each other variant's difference from it (only its non-zero
    cells written): the variants' matrices are near-identical, so the differences are what tells.
    None (and no file) without rows."""
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
    base = next((r for r in rows if r["variant"] == REFERENCE), rows[0])
    counts = np.asarray(base["confusion"]["counts"])[np.ix_(shown, shown)]
    others = [r for r in rows if r is not base]
    panels = 1 + len(others)
    side = max(2.6, 0.45 * k + 1.4)
    cols = min(CONFUSION_COLUMNS, panels)
    lines = math.ceil(panels / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(side * cols, (side + 0.5) * lines), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.axis("off")
    fontsize = 8 if k <= 8 else 6

    def frame(ax, title):
        ax.set_xticks(range(k), names, rotation=45 if k > 2 else 0, ha="right" if k > 2 else "center",
                      fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(title, fontsize=9)

    ax = axes.flat[0]
    ax.imshow(counts, cmap="Blues")
    for (t, p), n in np.ndenumerate(counts):
        if n:
            ax.text(p, t, str(n), ha="center", va="center", fontsize=fontsize,
                    color="white" if n > counts.max() / 2 else "black")
    frame(ax, f"{plain(base['variant'])} ({base['accuracy'] * 100:.1f} %)")
    for ax, r in zip(axes.flat[1:], others, strict=False):
        diff = np.asarray(r["confusion"]["counts"])[np.ix_(shown, shown)] - counts
        limit = max(1, int(np.abs(diff).max()))
        ax.imshow(diff, cmap="RdBu", vmin=-limit, vmax=limit)
        for (t, p), n in np.ndenumerate(diff):
            if n:
                ax.text(p, t, f"{n:+d}", ha="center", va="center", fontsize=fontsize,
                        color="white" if abs(n) > limit / 2 else "black")
        changed = int(np.abs(diff).sum()) // 2
        frame(ax, f"{plain(r['variant'])} minus {plain(base['variant'])}: "
                  + (f"{changed} moved" if changed else "no change"))
    if k < len(labels):
        fig.suptitle(f"the {k} of {len(labels)} classes with the most errors (report.json has every class)",
                     fontsize=9)
    fig.tight_layout()
    _save(fig, dest)
    return dest.name


def chart(report: dict, dest: Path) -> None:
    """Size, accuracy with its 95 % interval, and 1-thread latency under each runtime, one group per variant.

    Each panel's title is one short line (the caveats are report.md's words, not a clipped title).
    """
    from export.stats import wilson

    plt = _pyplot()
    rows = report["rows"]
    names = [plain(r["variant"], 12) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    axes[0].bar(names, [r["bytes"] / 1024 for r in rows], color="tab:blue")
    axes[0].set_title("file size (KiB)", fontsize=10)
    n = report["test"]["count"]
    accuracy = np.array([(r["accuracy"] or 0) * 100 for r in rows])
    bounds = (np.array([wilson(round(a * n / 100), n) for a in accuracy]) * 100 if n
              else np.zeros((len(rows), 2)))
    errors = np.abs(bounds.T - accuracy) if len(rows) else None
    axes[1].errorbar(names, accuracy, yerr=errors, fmt="o", color="tab:green", capsize=6)
    # From a round ten below the lowest interval to 100: the bars' overlap shows what is noise.
    low = max(0.0, math.floor((bounds[:, 0].min() if len(rows) else 0) / 10) * 10 - 5) if n else 0
    axes[1].set_ylim(low, 100.5)
    axes[1].set_title(f"accuracy, 95 % CI, on {n} photos (%)", fontsize=10)
    runtimes = report["benchmark"].get("runtimes") or [{"name": report["benchmark"].get("runtime", "?")}]
    width = 0.8 / len(runtimes)
    for i, rt in enumerate(runtimes):
        p50 = [(((r.get("latency") or {rt["name"]: r.get("latency_ms")}).get(rt["name"]) or {}).get("1")
                or {}).get("p50_ms", 0) for r in rows]
        label = rt["name"] + (" (int8 slow on this CPU)" if rt.get("slow_int8") else "")
        axes[2].bar([j + i * width for j in range(len(rows))], p50, width, label=label,
                    hatch="//" if rt.get("slow_int8") else None)
    axes[2].set_xticks([j + width * (len(runtimes) - 1) / 2 for j in range(len(rows))], names)
    axes[2].set_title("invoke p50 at 1 thread, this machine (ms)", fontsize=10)
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout(w_pad=2.0)
    _save(fig, dest)
