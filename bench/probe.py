"""The measured sides of `python -m bench` that run in a process of their own.

    python -m bench.probe versions
    python -m bench.probe floor HEIGHT WIDTH --workers N PHOTOS...
    python -m bench.probe seed-loop MODEL.keras PHOTOS...
    python -m bench.probe seed-one MODEL.keras PHOTO

`versions` and `floor` also run in the device environment (.venv-edge: no
TensorFlow), so this module imports only the standard library at the top;
numpy, Pillow, edge and Keras load inside the subcommand that needs them.
Every subcommand but seed-one prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

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
    return json.loads((model_path.parent / "manifest.json").read_text())["labels"]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("versions")
    p = sub.add_parser("floor")
    p.add_argument("height", type=int)
    p.add_argument("width", type=int)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("photos", nargs="+")
    p = sub.add_parser("seed-loop")
    p.add_argument("model", type=Path)
    p.add_argument("photos", nargs="+")
    p = sub.add_parser("seed-one")
    p.add_argument("model", type=Path)
    p.add_argument("photo")
    args = parser.parse_args(argv)
    if args.command == "seed-one":
        seed_one(args.model, args.photo)
        return 0
    if args.command == "versions":
        out = versions()
    elif args.command == "floor":
        out = floor(args.photos, (args.height, args.width), args.workers)
    else:
        out = seed_loop(args.model, args.photos)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
