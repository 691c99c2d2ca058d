"""`noodle-edge teach`: a new head on the device, from captures, in seconds; numpy only.

CAPTURES/<label>/*.jpg (the layout `noodle train` reads; `_unsure/` and hidden
entries skipped) -> each photo's features from embed.tflite, cached by the
file's sha256 -> the shipped classes' features (features.npz) joined, unless
--replace -> a softmax head solved by L-BFGS in numpy with train/head.py's
objective (mean cross-entropy + l2/2 |kernel|^2, bias unregularized, from
zeros, in float64) -> DIR written whole in a temporary folder, checked by
loading it back, then renamed over the old DIR, which stays until then.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.escape import escape_name, label_problem, listed, shown
from edge.preprocess import is_image_file, load_image
from edge.taught import (
    CACHE_NAME,
    EMBED_NAME,
    FEATURES_NAME,
    HEAD_NAME,
    TEACH_MANIFEST,
    Embedder,
    TaughtClassifier,
    TeachError,
    TeachManifest,
    bytes_sha256,
    file_sha256,
    head_probabilities,
    load_features,
)

# The capture store's folder of frames the model was unsure of: never a class.
UNSURE = "_unsure"
# L-BFGS: pairs kept (scipy's default), and when it has converged. GTOL is
# scipy's pgtol and FTOL its factr=1e7 times machine epsilon, the defaults
# train/head.py runs under, so both stop at the same point.
MEMORY = 10
GTOL = 1e-5
FTOL = 1e7 * np.finfo(float).eps
# Photos a class needs at least: one photo is a point, not a class.
MIN_PHOTOS = 2
# Captures decoded and embedded at a time: 64 photos at 192 px are 7 MB of pixels.
CHUNK = 64


# ------------------------------------------------------------------ the solver

@dataclass
class Solution:
    kernel: np.ndarray  # (features, classes) float32
    bias: np.ndarray  # (classes,) float32
    iterations: int
    converged: bool
    message: str
    loss: float  # the objective at the end
    accuracy: float  # on the photos solved on


def objective(theta: np.ndarray, x: np.ndarray, onehot: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
    """train/head.py's loss and gradient: mean cross-entropy + l2/2 |kernel|^2; theta = [kernel, bias]."""
    n, d = x.shape
    c = onehot.shape[1]
    kernel, bias = theta[: d * c].reshape(d, c), theta[d * c :]
    z = x @ kernel + bias
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    loss = -(onehot * logp).sum() / n + 0.5 * l2 * (kernel * kernel).sum()
    g = (np.exp(logp) - onehot) / n
    return float(loss), np.concatenate([(x.T @ g + l2 * kernel).ravel(), g.sum(0)])


def solve(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float, max_iterations: int = 1000) -> Solution:
    """L-BFGS (two-loop recursion, Armijo backtracking) from zeros; the problem is convex, so one answer."""
    x = np.asarray(x, np.float64)
    onehot = np.eye(num_classes)[np.asarray(y)]
    theta = np.zeros(x.shape[1] * num_classes + num_classes)
    f, g = objective(theta, x, onehot, l2)
    s_list: list[np.ndarray] = []
    y_list: list[np.ndarray] = []
    converged, message, it = False, "the iteration limit was reached", 0
    for it in range(1, max_iterations + 1):
        if np.abs(g).max() <= GTOL:
            converged, message, it = True, "the gradient is below GTOL", it - 1
            break
        direction = -_two_loop(g, s_list, y_list)
        slope = float(g @ direction)
        if slope >= 0:  # not a descent direction: forget the curvature pairs
            s_list.clear(), y_list.clear()
            direction, slope = -g, -float(g @ g)
        step = 1.0 if s_list else min(1.0, 1.0 / np.abs(g).sum())
        for _ in range(60):
            new = theta + step * direction
            f_new, g_new = objective(new, x, onehot, l2)
            if f_new <= f + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            message = "the line search found no lower point"
            converged = np.abs(g).max() <= 10 * GTOL
            break
        s, yy = new - theta, g_new - g
        if s @ yy > 1e-10 * np.sqrt((s @ s) * (yy @ yy)):
            s_list.append(s), y_list.append(yy)
            if len(s_list) > MEMORY:
                s_list.pop(0), y_list.pop(0)
        reduction = (f - f_new) / max(abs(f), abs(f_new), 1.0)
        theta, f, g = new, f_new, g_new
        if reduction <= FTOL:
            converged, message = True, "the loss stopped falling (relative reduction below FTOL)"
            break
    d, c = x.shape[1], num_classes
    kernel, bias = theta[: d * c].reshape(d, c), theta[d * c :]
    accuracy = float(((x @ kernel + bias).argmax(1) == np.asarray(y)).mean()) if len(x) else 0.0
    return Solution(kernel.astype(np.float32), bias.astype(np.float32), it, bool(converged), message, f,
                    accuracy)


def _two_loop(g: np.ndarray, s_list: list[np.ndarray], y_list: list[np.ndarray]) -> np.ndarray:
    """The inverse-Hessian estimate times g, from the last MEMORY (s, y) pairs."""
    q, alphas = g.copy(), []
    for s, y in zip(reversed(s_list), reversed(y_list), strict=True):
        a = (s @ q) / (y @ s)
        alphas.append(a)
        q -= a * y
    if s_list:
        q *= (s_list[-1] @ y_list[-1]) / (y_list[-1] @ y_list[-1])
    for (s, y), a in zip(zip(s_list, y_list, strict=True), reversed(alphas), strict=True):
        q += (a - (y @ q) / (y @ s)) * s
    return q


# ------------------------------------------------------------------ the captures

def read_captures(root: Path) -> dict[str, list[Path]]:
    """{label: sorted photos} of CAPTURES/<label>/; class names by training's rule (label_problem)."""
    if not root.is_dir():
        raise TeachError(f"{escape_name(str(root))}: no such folder; give CAPTURES, a folder per class "
                         "(CAPTURES/<label>/*.jpg, as `noodle-edge capture` and serve's Teach panel fill it)")
    out: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name == UNSURE:
            continue
        problem = label_problem(folder.name)
        if problem is not None:
            raise TeachError(f"{escape_name(str(folder))}: {problem}")
        photos = sorted(p for p in folder.iterdir()
                        if p.is_file() and not p.name.startswith(".") and is_image_file(p))
        if photos:
            out[folder.name] = photos
    if not out:
        raise TeachError(f"{escape_name(str(root))}: no class folder with photos; add CAPTURES/<label>/*.jpg")
    return out


def fingerprint(hashes: dict[str, list[str]]) -> str:
    """One sha256 of every capture's label and sha256: the same photos, the same fingerprint."""
    lines = sorted(f"{label}\0{sha}" for label, shas in hashes.items() for sha in shas)
    return bytes_sha256("\n".join(lines).encode())


# ------------------------------------------------------------------ the model taught from

def model_folder(model: Path) -> Path:
    """MODEL: an export folder, a bundle's model/, a teach DIR, or the embed.tflite in one."""
    folder = model if model.is_dir() else model.parent
    if not (folder / EMBED_NAME).is_file() or not (folder / FEATURES_NAME).is_file():
        raise TeachError(f"{escape_name(str(model))}: no {EMBED_NAME} and {FEATURES_NAME} there; give the "
                         "export folder (or the bundle's model/ or a teach DIR) of a lite0 model: "
                         "`noodle export` writes both")
    return folder


@dataclass
class Taught:
    folder: Path
    manifest: TeachManifest
    seconds: float
    invokes: int
    computed: int  # captures whose features were computed (the rest came from the cache)


def teach(captures: Path, model: Path, out: Path, replace: bool = False, l2: float | None = None,
          threads: int | None = None, runtime: str | None = None, log=print) -> Taught:
    """Teach CAPTURES onto MODEL's backbone; write OUT whole, or leave the old OUT as it was."""
    start = time.perf_counter()
    src, shipped, embed_sha = _source(Path(model))
    photos = read_captures(Path(captures))
    few = [label for label, paths in photos.items() if len(paths) < MIN_PHOTOS]
    if few:
        raise TeachError(f"{listed([shown(f) for f in few])}: fewer than {MIN_PHOTOS} photos; capture more")
    width = int(shipped.meta["features"])
    embedder = Embedder(src / EMBED_NAME, width, shipped.size, embed_sha, threads, runtime)
    cache = _read_cache(out / CACHE_NAME, embed_sha)
    seen = _embed(photos, embedder, cache, shipped.size)
    for line in seen.skipped:
        log(f"skipped {line}")
    kept = [] if replace else list(shipped.labels)
    labels = kept + [label for label in photos if label not in kept]
    if len(labels) < 2:
        raise TeachError(f"only the class {shown(labels[0]) if labels else '(none)'} to teach: a model needs "
                         "2 or more; capture another class, or leave out --replace to keep the shipped ones")
    x = np.array(seen.features, np.float32) if seen.features else np.zeros((0, width), np.float32)
    y = np.array([labels.index(label) for label in seen.labels], np.int64)
    if kept:
        x = np.concatenate([shipped.features.astype(np.float32), x])
        y = np.concatenate([shipped.y.astype(np.int64), y])
    l2 = float(shipped.meta["head_l2"]) if l2 is None else l2
    iterations = int(shipped.meta.get("head_iterations", 1000))
    solve_start = time.perf_counter()
    solution = solve(x, y, len(labels), l2, iterations)
    solve_seconds = time.perf_counter() - solve_start
    counts = {label: int((y == i).sum()) for i, label in enumerate(labels)}
    manifest = TeachManifest(
        labels=labels, input={"height": shipped.size[0], "width": shipped.size[1]}, features=width, files={},
        captures={"fingerprint": fingerprint(seen.hashes),
                  "photos": {k: len(v) for k, v in seen.hashes.items()}, "skipped": len(seen.skipped)},
        shipped={"replaced": replace, "kept": kept,
                 "photos": {label: counts[label] for label in kept},
                 "embed_sha256": embed_sha, "features_sha256": file_sha256(src / FEATURES_NAME)},
        solve={"method": "L-BFGS (numpy)", "objective": "mean cross-entropy + l2/2 |kernel|^2",
               "l2": l2, "max_iterations": iterations, "iterations": solution.iterations,
               "converged": solution.converged, "message": solution.message, "loss": solution.loss,
               "accuracy": solution.accuracy, "photos": counts, "seconds": round(solve_seconds, 3)},
        validation={})
    invokes = embedder.invokes
    _write(out, src, manifest, solution, cache, x, y, threads, runtime)
    written = TeachManifest.load(out)
    return Taught(out, written, time.perf_counter() - start, invokes, seen.computed)


def _source(model: Path):
    """MODEL's folder, its shipped features and embed.tflite's sha256, checked to belong together."""
    src = model_folder(model)
    shipped = load_features(src / FEATURES_NAME)
    embed_sha = file_sha256(src / EMBED_NAME)
    if shipped.meta.get("embed_sha256") != embed_sha:
        raise TeachError(f"{escape_name(str(src / EMBED_NAME))}: its sha256 is not the one "
                         f"{FEATURES_NAME} was made with; copy both from the same export")
    return src, shipped, embed_sha


@dataclass
class _Seen:
    """Each readable capture's features, label and sha256; the unreadable ones, said in words."""

    features: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    hashes: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    computed: int = 0  # features computed now (the rest came from the cache)

    def add(self, label: str, sha: str, row: np.ndarray) -> None:
        self.features.append(row)
        self.labels.append(label)
        self.hashes.setdefault(label, []).append(sha)


def _embed(photos: dict[str, list[Path]], embedder, cache: dict, size) -> _Seen:
    """The features of every capture: from the cache by sha256, else computed CHUNK photos at a time."""
    seen, pending = _Seen(), []
    for label, paths in photos.items():
        for path in paths:
            try:
                sha = file_sha256(path)
            except OSError as exc:
                seen.skipped.append(f"{escape_name(str(path))}: {exc.strerror or exc}")
                continue
            if sha in cache:
                seen.add(label, sha, cache[sha])
            else:
                pending.append((label, sha, path))
    for i in range(0, len(pending), CHUNK):  # decoded a chunk at a time: memory bounded by CHUNK photos
        good, pixels = [], []
        for label, sha, path in pending[i : i + CHUNK]:
            try:
                pixels.append(load_image(path, size))
                good.append((label, sha))
            except Exception as exc:  # edge.preprocess names a bad photo in one line
                # The reason alone: the error's own message repeats the path, unescaped.
                why = escape_name(getattr(exc, "reason", str(exc)))
                seen.skipped.append(f"{escape_name(str(path))}: {why}")
        rows = embedder.features(np.stack(pixels)) if pixels else []
        for (label, sha), row in zip(good, rows, strict=True):
            cache[sha] = row
            seen.add(label, sha, row)
        seen.computed += len(good)
    return seen


def _read_cache(path: Path, embed_sha: str) -> dict[str, np.ndarray]:
    """The features of earlier teaches by file sha256, if made by this embed.tflite; else none."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["embed_sha256"]) != embed_sha:
                return {}
            return dict(zip((str(s) for s in npz["sha256"]), npz["features"].astype(np.float32), strict=True))
    except (OSError, KeyError, ValueError):
        return {}


# Rows of the solved-on photos the written folder is checked on, loaded back: the head read
# from head.npz must give the probabilities the solve left in memory.
CHECK_ROWS = 64


def _write(out: Path, src: Path, manifest: TeachManifest, solution: Solution, cache: dict, x: np.ndarray,
           y: np.ndarray, threads, runtime) -> None:
    """OUT whole, in a temporary folder beside it, checked, then swapped in; the old OUT kept until then."""
    out = Path(out)
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise TeachError(f"{escape_name(str(out))}: cannot write beside it ({exc.strerror or exc}); "
                         "give an --out you may write to") from None
    old = parent / f".{out.name}.old"
    try:
        shutil.copyfile(src / EMBED_NAME, tmp / EMBED_NAME)
        shipped = load_features(src / FEATURES_NAME)
        shipped.save(tmp / FEATURES_NAME)
        with open(tmp / HEAD_NAME, "wb") as f:
            np.savez(f, kernel=solution.kernel, bias=solution.bias)
        shas = sorted(cache)
        with open(tmp / CACHE_NAME, "wb") as f:
            np.savez(f, embed_sha256=np.array(manifest.shipped["embed_sha256"]),
                     sha256=np.array(shas, dtype=str),
                     features=np.array([cache[s] for s in shas], np.float32).reshape(len(shas), -1))
        manifest.files = {name: file_sha256(tmp / name) for name in (EMBED_NAME, FEATURES_NAME, HEAD_NAME,
                                                                       CACHE_NAME)}
        manifest.validation = {"passed": False, "check": "not run"}
        _dump(tmp / TEACH_MANIFEST, manifest)
        # Loaded back as classify will load it: the head read from disk must score as solved.
        rows = np.random.default_rng(0).permutation(len(x))[:CHECK_ROWS]
        clf = TaughtClassifier(tmp, threads=threads, runtime=runtime)
        want = head_probabilities(x[rows], solution.kernel, solution.bias)
        got = head_probabilities(x[rows], clf.kernel, clf.bias)
        worst = float(np.abs(want - got).max()) if len(rows) else 0.0
        if worst > 1e-6:
            raise TeachError(f"{escape_name(str(out))}: the head read back from disk scores up to "
                             f"{worst:.1g} away from the one solved; nothing was replaced: teach again")
        check = (f"loaded back from disk: the head's probabilities on {len(rows)} solved-on photos "
                 f"within {worst:.1g} of the solve's")
        manifest.validation = {"passed": True, "check": check}
        _dump(tmp / TEACH_MANIFEST, manifest)
        for f in tmp.iterdir():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            if old.exists() and not out.exists():
                os.replace(old, out)  # put the old one back
            raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise TeachError(f"{escape_name(str(out))}: cannot write it ({exc.strerror or exc}); free some space "
                         "and teach again (the old folder, if any, is as it was)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _dump(path: Path, manifest: TeachManifest) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(manifest.to_dict(), indent=2) + "\n")


