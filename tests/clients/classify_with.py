"""Classify photos with a real third-party client, as an app would: run in that client's own environment.

    python classify_with.py mediapipe|tasklib MODEL.tflite... -- PHOTO...

Prints one JSON object: {model: [[top-1 label, its score, every score by label], ...]} in
the photos' order, or {model: {"error": "..."}} when the client refuses the model. The
photos are given at the model's input size, so neither client resizes or crops them.
Also: `display MODEL` prints the metadata JSON and the packed files, as Google's
MetadataDisplayer shows them; `relabel MODEL OUT LABELS.txt` rewrites the model's
metadata with Google's own image_classifier writer (mean 0, std 1, those labels).
Imports nothing of noodle's: each environment holds its client and numpy only.
"""
from __future__ import annotations

import json
import sys


def _rows(result) -> list:
    categories = result.classifications[0].categories
    scores = {c.category_name: float(c.score) for c in categories}
    top = max(categories, key=lambda c: c.score)
    return [top.category_name, float(top.score), scores]


def mediapipe_client(models: list[str], photos: list[str]) -> dict:
    import mediapipe as mp
    from mediapipe.tasks import python as tasks
    from mediapipe.tasks.python import vision

    out = {}
    for model in models:
        try:
            options = vision.ImageClassifierOptions(base_options=tasks.BaseOptions(model_asset_path=model),
                                                    max_results=-1)
            with vision.ImageClassifier.create_from_options(options) as classifier:
                out[model] = [_rows(classifier.classify(mp.Image.create_from_file(p))) for p in photos]
        except Exception as exc:  # the client's refusal is the result
            out[model] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def tasklib_client(models: list[str], photos: list[str]) -> dict:
    from tflite_support.task import core, processor, vision

    out = {}
    for model in models:
        try:
            options = vision.ImageClassifierOptions(
                base_options=core.BaseOptions(file_name=model),
                classification_options=processor.ClassificationOptions(max_results=-1))
            classifier = vision.ImageClassifier.create_from_options(options)
            out[model] = [_rows(classifier.classify(vision.TensorImage.create_from_file(p))) for p in photos]
        except Exception as exc:  # the client's refusal is the result
            out[model] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def display(model: str) -> dict:
    try:
        from tflite_support import metadata  # the module, not a package: `from tflite_support.metadata` fails

        MetadataDisplayer = metadata.MetadataDisplayer
    except ImportError:
        from mediapipe.tasks.python.metadata.metadata import MetadataDisplayer
    shown = MetadataDisplayer.with_model_file(model)
    return {"metadata": json.loads(shown.get_metadata_json()),
            "packed": shown.get_packed_associated_file_list(),
            "labels": shown.get_associated_file_buffer("labels.txt").decode("utf-8")}


def relabel(model: str, out: str, labels: str) -> dict:
    with open(model, "rb") as f:
        buffer = f.read()
    names = open(labels, encoding="utf-8").read().splitlines()
    try:
        from tflite_support.metadata_writers import image_classifier

        writer = image_classifier.MetadataWriter.create_for_inference(buffer, [0.0], [1.0], [labels])
        written = writer.populate()
    except ImportError:
        try:
            from mediapipe.tasks.python.metadata.metadata_writers import image_classifier, metadata_writer
        except ImportError as exc:  # mediapipe 1.2.3's wheel lacks the writers' C module
            return {"error": f"{type(exc).__name__}: {exc}"}

        labelled = metadata_writer.Labels().add(names)
        writer = image_classifier.MetadataWriter.create(buffer, [0.0], [1.0], labelled)
        written, _ = writer.populate()
    with open(out, "wb") as f:
        f.write(written)
    return {"written": out, "bytes": len(written)}


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "display":
        print(json.dumps(display(args[0])))
    elif command == "relabel":
        print(json.dumps(relabel(*args)))
    else:
        split = args.index("--")
        client = {"mediapipe": mediapipe_client, "tasklib": tasklib_client}[command]
        print(json.dumps(client(args[:split], args[split + 1:])))
