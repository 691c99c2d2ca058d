"""How the default's streaming (train.stream) should share the CPU cores between decoding and TensorFlow.

Prints photos a second of `stream.embed` (decode + EfficientNet-Lite0 features,
ImageNet weights not needed: the arithmetic is the same) for each split of
decode threads and TensorFlow's intra-op threads, each in a fresh process
(TensorFlow's pools are fixed once it starts). Usage:

    python -m bench.stream_split DATA [--photos 512]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def one(data: str, photos: int, decode: int, intra: int) -> float:
    import tensorflow as tf

    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    from train.data import find_dataset
    from train.lite0 import backbone
    from train.stream import embed

    items = find_dataset(data).splits["train"][:photos]
    model = backbone(192)
    embed(items[:64], (192, 192), model, workers=decode)  # traced and warm
    started = time.perf_counter()
    embed(items, (192, 192), model, workers=decode)
    return len(items) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--photos", type=int, default=512)
    parser.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.data, args.photos, *args.one)))
        return
    from train.data import cores

    n = cores()
    splits = sorted({(n, 0), (n, n), (1, n), (n, max(1, n - 1)), (max(1, n - 1), 1), (1, 1)})
    print(f"{n} cores; decode threads, TensorFlow intra-op threads (0: its default), photos a second")
    for decode, intra in splits:
        out = subprocess.run([sys.executable, "-m", "bench.stream_split", args.data, "--photos",
                              str(args.photos), "--one", str(decode), str(intra)],
                             capture_output=True, text=True, check=True).stdout
        print(f"{decode:>3} {intra:>3} {float(out.strip().splitlines()[-1]):8.1f}", flush=True)


if __name__ == "__main__":
    main()
