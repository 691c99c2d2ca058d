"""The measured sides of `python -m bench` that run in a process of their own.

    python -m bench.probe versions
    python -m bench.probe floor HEIGHT WIDTH --workers N PHOTOS...
    python -m bench.probe seed-loop MODEL.keras PHOTOS...
    python -m bench.probe seed-one MODEL.keras PHOTO

`versions` and `floor` also run in the device environment (.venv-edge: no
TensorFlow), so this module imports only the standard library and typer (a
dependency of the edge runner) at the top; numpy, Pillow, edge and Keras load
inside the subcommand that needs them. Every subcommand but seed-one prints
one JSON line. seed-one's cold start pays typer's import, as noodle-edge's
does.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

# What `versions` reports, by distribution name (None when not installed).
DISTRIBUTIONS = ("numpy", "pillow", "typer", "tflite-runtime", "ai-edge-litert", "tensorflow", "keras")


def versions() -> dict:
    from edge.runtime import package_version

    return {"python": sys.version.split()[0], **{dist: package_version(dist) for dist in DISTRIBUTIONS}}


def floor(photos: list[str], size: tuple[int, int], workers: int) -> dict:
    """The bare work under classify: edge.preprocess.load_image on a pool of `workers` threads.

    Timed like edge.files.classify's pass: the pool is made inside the timing,
    and an unreadable file costs what its failed decode costs.
    """
    from concurrent.futures import ThreadPoolExecutor

    from edge.files import expand
    from edge.preprocess import ImageError, load_image

    files, _ = expand(photos)

    def one(path: str) -> bool:
        try:
            load_image(path, size)
            return True
        except ImageError:
            return False

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        ok = sum(pool.map(one, files))
    seconds = time.perf_counter() - start
    return {"files": len(files), "unreadable": len(files) - ok, "workers": workers, "seconds": seconds,
            "files_per_second": len(files) / seconds}


def _seed_predict(model, path: str):
    """The seed's own prediction code for one file: load_img, img_to_array, expand_dims, predict."""
    import keras
    import numpy as np

    started = time.perf_counter()
    # The seed wrote target_size=(64, 64); the model's own size is the same thing for its models.
    img = keras.utils.load_img(path, target_size=tuple(model.input_shape[1:3]))
    x = np.expand_dims(keras.utils.img_to_array(img), axis=0)
    prepared = time.perf_counter()
    probs = model.predict(x, verbose=0)
    return probs[0], prepared - started, time.perf_counter() - prepared


def _label(probs, labels: list[str]) -> tuple[str, float]:
    if len(probs) == 1:  # sigmoid: the probability of the second class
        p = float(probs[0])
        return (labels[1], p) if p > 0.5 else (labels[0], 1.0 - p)
    best = int(probs.argmax())
    return labels[best], float(probs[best])


def _labels(model_path: Path) -> list[str]:
    from edge.manifest import load_run

    return load_run(model_path.parent).labels


def seed_loop(model_path: Path, photos: list[str]) -> dict:
    """The seed's loop over every photo, a file at a time, timed after one untimed warm-up file."""
    import keras
    import tensorflow as tf

    from edge.files import expand

    files, _ = expand(photos)
    model = keras.models.load_model(model_path)
    _seed_predict(model, files[0])  # builds the predict function once, as any long loop amortizes
    prep = infer = 0.0
    start = time.perf_counter()
    for path in files:
        _, p, i = _seed_predict(model, path)
        prep, infer = prep + p, infer + i
    seconds = time.perf_counter() - start
    return {"files": len(files), "seconds": seconds, "files_per_second": len(files) / seconds,
            "preprocess_ms_per_file": prep / len(files) * 1000,
            "predict_ms_per_file": infer / len(files) * 1000,
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]}


def seed_one(model_path: Path, photo: str) -> None:
    """The seed's way as a script: load model.keras, preprocess one photo, predict, print the label."""
    import keras

    model = keras.models.load_model(model_path)
    probs, _, _ = _seed_predict(model, photo)
    label, score = _label(probs, _labels(model_path))
    print(f"{photo}  {label}  {score:.3f}", flush=True)


app = typer.Typer(help=__doc__.split("\n")[0], no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
Photos = Annotated[list[str], typer.Argument(help="Files, folders (recursive) and globs, as classify takes.")]
Model = Annotated[Path, typer.Argument(help="A model.keras with its manifest.json beside it.")]


def _print(report: dict) -> None:
    print(json.dumps(report), flush=True)


@app.command("versions")
def versions_command() -> None:
    """Python and the versions of the distributions that matter here."""
    _print(versions())


@app.command("floor")
def floor_command(
    height: int, width: int, photos: Photos,
    workers: Annotated[int, typer.Option(help="Decode threads.")],
) -> None:
    """edge.preprocess.load_image over every photo on a pool of threads."""
    _print(floor(photos, (height, width), workers))


@app.command("seed-loop")
def seed_loop_command(model: Model, photos: Photos) -> None:
    """The seed's Keras loop over every photo, a file at a time."""
    _print(seed_loop(model, photos))


@app.command("seed-one")
def seed_one_command(model: Model, photo: str) -> None:
    """The seed's way as a script, for one photo: prints its label, not JSON."""
    seed_one(model, photo)


if __name__ == "__main__":
    app(prog_name="python -m bench.probe")
