"""What each training lever buys on held-out photos (issue 13): an experiment log.

    python -m bench.levers train NAME --data PHOTOS [--seeds 0,1,2] [--set key=value ...]
    python -m bench.levers device NAME-s0 ...    float32 and int8 files, int8 accuracy (needs TF)
    python -m bench.levers invoke NAME-s0 ...    invoke and decode ms, models interleaved (no TF)
    python -m bench.levers table                 the markdown table of everything recorded

`train` runs its own short fit loop rather than `noodle train`, so one lever
at a time can change (a Recipe field) while the rest stays the default
recipe; the winner is then made the default in train/ and timed there. Each
run is appended as one JSON line under runs/levers/ the moment it ends, with
the load average beside its seconds (the machine is shared, so a second is
only comparable to one measured back to back with it).

Test photos (the data's given test split) only ever score a finished model:
the epoch is chosen on the validation photos carved from train, as in fit.py.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from edge.postprocess import predicted_index, widen

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

OUT = Path("runs/levers")
RESULTS = OUT / "results.jsonl"
DEVICE = OUT / "device.jsonl"
INVOKE = OUT / "invoke.jsonl"
# As export.convert: 300 shuffled training photos (seed 0) calibrate int8.
CALIBRATION_SAMPLES = 300


@dataclass
class Recipe:
    """One training recipe; the defaults are noodle's recipe before issue 13."""

    arch: str = "noodle"
    image_size: int = 64
    epochs: int = 30
    batch: int = 32
    # Peak rate: the start of the cosine decay, or the end of the warm-up.
    lr: float = 1e-3
    # Epochs of linear warm-up from lr/25 before the cosine decay (one-cycle-like).
    warmup: int = 0
    # 0: Adam; else AdamW's decoupled decay (Keras scales it by the rate).
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    # A name in AUGMENT.
    aug: str = "seed"
    # Beta(alpha, alpha) mixup of each batch with itself reversed; 0 = off.
    mixup: float = 0.0
    patience: int = 10


def augmentation(name: str, seed: int):
    """The augmentation levels screened; "seed" is fit.py's (flip, zoom, shear)."""
    import keras
    from keras import layers

    seed_recipe = [
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomZoom(0.2, seed=seed + 1),
        layers.RandomShear(x_factor=0.2, y_factor=0.0, seed=seed + 2),
    ]
    chosen = {
        "none": [],
        "seed": seed_recipe,
        # Shifts of up to a tenth of the side and turns of up to 18 degrees on top.
        "strong": [*seed_recipe, layers.RandomTranslation(0.1, 0.1, seed=seed + 3),
                   layers.RandomRotation(0.05, seed=seed + 4)],
    }[name]
    return keras.Sequential(chosen, name="augmentation") if chosen else None


# ------------------------------------------------------------------------- data

def splits(data: Path, size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train/val/test pixels at `size`, decoded once and cached under runs/levers/.

    The cache is named by the data's fingerprint, so other photos never reuse it.
    """
    from train.data import decode, find_dataset

    dataset = find_dataset(data)
    cache = OUT / "cache" / f"{data.resolve().name}-{dataset.fingerprint[:12]}-{size}.npz"
    if cache.is_file():
        z = np.load(cache)
        return {s: (z[f"{s}_x"], z[f"{s}_y"]) for s in ("train", "val", "test")}
    out = {}
    for split, items in dataset.splits.items():
        d = decode(items, (size, size))
        out[split] = (d.x, d.y)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **{f"{s}_{k}": v for s, (x, y) in out.items() for k, v in (("x", x), ("y", y))})
    return out


def targets(y: np.ndarray, classes: int) -> np.ndarray:
    """Float targets: 0/1 for a sigmoid, one-hot for a softmax (so both can smooth and mix)."""
    return y.astype(np.float32) if classes == 2 else np.eye(classes, dtype=np.float32)[y]


def accuracy(outputs: np.ndarray, y: np.ndarray) -> float:
    return float((predicted_index(widen(outputs)) == y).mean())


def pipeline(x, y, r: Recipe, seed: int):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).batch(r.batch, drop_remainder=True)
    ds = ds.map(lambda a, b: (tf.cast(a, tf.float32), b), num_parallel_calls=tf.data.AUTOTUNE)
    augment = augmentation(r.aug, seed)
    if augment is not None:
        ds = ds.map(lambda a, b: (augment(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)
    if r.mixup:
        def mix(a, b):
            # Beta(alpha, alpha) as a ratio of two gammas; each batch with its own reverse.
            g = tf.random.gamma([2], r.mixup)
            w = g[0] / (g[0] + g[1])
            return w * a + (1 - w) * tf.reverse(a, [0]), w * b + (1 - w) * tf.reverse(b, [0])

        ds = ds.map(mix)
    return ds.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------- training

def fit_one(r: Recipe, seed: int, data: Path, name: str) -> dict:
    """Train one recipe and seed, score it on the test photos, save the model."""
    import keras

    from train.models import build

    sets = splits(data, r.image_size)
    (xt, yt), (xv, yv), (xs, ys) = sets["train"], sets["val"], sets["test"]
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    steps_per_epoch = len(xt) // r.batch
    steps = r.epochs * steps_per_epoch
    warm = r.warmup * steps_per_epoch
    if warm:
        rate = keras.optimizers.schedules.CosineDecay(r.lr / 25, steps - warm, warmup_target=r.lr,
                                                      warmup_steps=warm)
    else:
        rate = keras.optimizers.schedules.CosineDecay(r.lr, steps)
    if r.weight_decay:
        optimizer = keras.optimizers.AdamW(rate, weight_decay=r.weight_decay)
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    else:
        optimizer = keras.optimizers.Adam(rate)
    classes = int(max(yt.max(), yv.max(), ys.max())) + 1
    model = build(r.arch, (r.image_size, r.image_size, 3), classes)
    loss = (keras.losses.BinaryCrossentropy(label_smoothing=r.label_smoothing) if classes == 2
            else keras.losses.CategoricalCrossentropy(label_smoothing=r.label_smoothing))
    model.compile(optimizer=optimizer, metrics=["accuracy"], loss=loss)
    train_ds = pipeline(xt, targets(yt, classes), r, seed)
    val = (xv.astype(np.float32), targets(yv, classes))
    # As fit.py: the kept epoch is the best validation loss of the last third.
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=r.patience, restore_best_weights=True,
                                         start_from_epoch=r.epochs * 2 // 3)
    load_before = os.getloadavg()
    started = time.perf_counter()
    history = model.fit(train_ds, validation_data=val, epochs=r.epochs, callbacks=[stop], verbose=0,
                        shuffle=False)
    seconds = time.perf_counter() - started
    h = history.history
    watched = range(r.epochs * 2 // 3, len(h["val_loss"]))
    best = min(watched, key=lambda i: h["val_loss"][i]) if len(h["val_loss"]) > r.epochs * 2 // 3 else None

    def score(x, y):
        return accuracy(model.predict(x.astype(np.float32), batch_size=256, verbose=0), y)

    models = OUT / "models"
    models.mkdir(parents=True, exist_ok=True)
    model.save(models / f"{name}-s{seed}.keras")
    return {"name": name, "seed": seed, "recipe": asdict(r), "params": int(model.count_params()),
            "train_seconds": round(seconds, 1), "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()], "epochs_run": len(h["val_loss"]),
            "best_epoch": None if best is None else best + 1,
            "val_accuracy": score(xv, yv), "test_accuracy": score(xs, ys),
            "final_train_accuracy": round(float(h["accuracy"][-1]), 4), "when": time.strftime("%H:%M:%S")}


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def parse_set(pairs: list[str]) -> Recipe:
    types = {f.name: f.type for f in fields(Recipe)}
    values = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in types:
            sys.exit(f"error: --set {pair}: no such recipe field; choose from {', '.join(types)}")
        kind = {"int": int, "float": float}.get(types[key], str)
        values[key] = kind(value)
    return Recipe(**values)


# ------------------------------------------------------------ the device's side

def device_one(name: str, data: Path) -> dict:
    """float32 and int8 files of one saved model, their sizes and test accuracy."""
    import keras

    from edge.runtime import find_runtime
    from export.convert import convert

    model = keras.models.load_model(OUT / "models" / f"{name}.keras", compile=False)
    size = int(model.inputs[0].shape[1])
    sets = splits(data, size)
    xt = sets["train"][0]
    order = list(range(len(xt)))
    random.Random(0).shuffle(order)  # the same permutation calibration_pixels draws
    calibration = xt[order[:CALIBRATION_SAMPLES]].astype(np.float32)
    folder = OUT / "tflite"
    folder.mkdir(parents=True, exist_ok=True)
    row = {"name": name, "image_size": size}
    xs, ys = sets["test"]
    _, interpreter_class = find_runtime()
    for variant in ("float32", "int8"):
        blob = convert(model, variant, calibration if variant == "int8" else None)
        (folder / f"{name}.{variant}.tflite").write_bytes(blob)
        row[f"{variant}_bytes"] = len(blob)
        interpreter = interpreter_class(model_content=blob)
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        interpreter.resize_tensor_input(inp["index"], [len(xs), size, size, 3])
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], xs.astype(inp["dtype"]))
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"]).astype(np.float32)
        scale, zero = out["quantization"]
        row[f"{variant}_test_accuracy"] = accuracy((raw - zero) * scale if scale else raw, ys)
    row["int8_of_float32"] = round(row["int8_bytes"] / row["float32_bytes"], 4)
    row["keras_test_accuracy"] = accuracy(model.predict(xs.astype(np.float32), verbose=0), ys)
    return row


def invoke(names: list[str], photos: list[str], rounds: int = 5, count: int = 200) -> dict:
    """Median over rounds of each int8 model's p50 invoke ms (batch 1, 1 thread), interleaved.

    Also the device's decode ms per photo (edge.preprocess.load_image) at
    each model's input size: a bigger input costs there too.
    """
    from edge.preprocess import load_image
    from edge.runtime import find_runtime

    runtime, interpreter_class = find_runtime()
    interpreters = {}
    for name in names:
        it = interpreter_class(model_path=str(OUT / "tflite" / f"{name}.int8.tflite"), num_threads=1)
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        x = np.random.default_rng(0).integers(0, 256, inp["shape"], dtype=np.uint8)
        it.set_tensor(inp["index"], x)
        interpreters[name] = (it, int(inp["shape"][1]))
    samples = {name: [] for name in names}
    decode = {name: [] for name in names}
    for _ in range(rounds):
        for name, (it, size) in interpreters.items():
            for _ in range(5):
                it.invoke()
            times = []
            for _ in range(count):
                t = time.perf_counter()
                it.invoke()
                times.append(time.perf_counter() - t)
            samples[name].append(statistics.median(times) * 1e3)
            t = time.perf_counter()
            for photo in photos:
                load_image(photo, (size, size))
            decode[name].append((time.perf_counter() - t) / len(photos) * 1e3)
    return {"runtime": runtime, "loadavg": [round(v, 2) for v in os.getloadavg()],
            "models": {name: {"invoke_ms": round(statistics.median(samples[name]), 4),
                              "decode_ms": round(statistics.median(decode[name]), 3)} for name in names}}


# ------------------------------------------------------------------------ report

def table() -> str:
    """One row per recipe name: test accuracy mean (and each seed), seconds, params, device figures."""
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines()] if RESULTS.exists() else []
    device = {}
    for line in DEVICE.read_text().splitlines() if DEVICE.exists() else []:
        d = json.loads(line)
        device[d["name"]] = d
    timing = {}
    for line in INVOKE.read_text().splitlines() if INVOKE.exists() else []:
        d = json.loads(line)
        for name, v in d["models"].items():
            timing.setdefault(name, {})[d["runtime"]] = v
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
    default = asdict(Recipe())
    out = ["| recipe (changes from the default) | test acc, mean of seeds 0-2 | per seed "
           "| train s (1-min load before) | params | int8 bytes (of float32) | int8 - Keras pp (seed 0) "
           "| int8 invoke ms, batch 1, 1 thread |",
           "|---|---|---|---|---|---|---|---|"]
    for name, runs in by_name.items():
        changes = ", ".join(f"{k}={v}" for k, v in runs[0]["recipe"].items() if default.get(k) != v)
        changes = changes or "default"
        # Seeds 0-2 or nothing: a mean over other seeds would not compare row to row.
        first = {r["seed"]: r["test_accuracy"] for r in runs if r["seed"] in (0, 1, 2)}
        mean = f"{statistics.mean(first.values()):.2%}" if len(first) == 3 else "(not 3 seeds)"
        seeds = " ".join(f"s{r['seed']}:{r['test_accuracy']:.2%}" for r in runs)
        secs = " ".join(f"{r['train_seconds']:.0f} ({r['loadavg_before'][0]:.1f})" for r in runs)
        d = next((device[f"{name}-s{r['seed']}"] for r in runs if f"{name}-s{r['seed']}" in device), None)
        t = next((timing[f"{name}-s{r['seed']}"] for r in runs if f"{name}-s{r['seed']}" in timing), {})
        dev = (f"{d['int8_bytes']:,} ({d['int8_of_float32']:.1%}) | "
               f"{(d['int8_test_accuracy'] - d['keras_test_accuracy']) * 100:+.2f}") if d else "| "
        inv = ", ".join(f"{v['invoke_ms']:.3f} ({k})" for k, v in t.items())
        out.append(f"| {name}: {changes} | {mean} | {seeds} | {secs} "
                   f"| {runs[0]['params']:,} | {dev} | {inv} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.levers", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("name")
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--seeds", default="0")
    t.add_argument("--set", action="append", default=[], dest="pairs", metavar="KEY=VALUE")
    d = sub.add_parser("device")
    d.add_argument("names", nargs="+")
    d.add_argument("--data", type=Path, required=True)
    i = sub.add_parser("invoke")
    i.add_argument("names", nargs="+")
    i.add_argument("--photos", type=Path, required=True, help="a folder of photos to time decoding on")
    i.add_argument("--rounds", type=int, default=5)
    sub.add_parser("table")
    args = parser.parse_args(argv)
    if args.command == "train":
        recipe = parse_set(args.pairs)
        for seed in [int(s) for s in args.seeds.split(",")]:
            row = fit_one(recipe, seed, args.data, args.name)
            append(RESULTS, row)
            print(json.dumps({k: row[k] for k in ("name", "seed", "test_accuracy", "val_accuracy",
                                                  "train_seconds", "loadavg_before", "best_epoch")}),
                  flush=True)
    elif args.command == "device":
        for name in args.names:
            row = device_one(name, args.data)
            append(DEVICE, row)
            print(json.dumps(row), flush=True)
    elif args.command == "invoke":
        photos = sorted(str(p) for p in args.photos.rglob("*.jpg"))[:100]
        result = invoke(args.names, photos, args.rounds)
        append(INVOKE, result)
        print(json.dumps(result), flush=True)
    else:
        print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
