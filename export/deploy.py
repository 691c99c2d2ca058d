"""`noodle deploy`: an exported model, with its manifest, onto the device's serve (PUT /v1/model).

The device checks it (sha256, its own runtime, input and output, accuracy on its captures), swaps it
in and keeps the one before for POST /v1/model/rollback (edge/serve_deploy.py); this side finds the
model and its manifest, sends them as multipart/form-data, and prints the verdict.
"""
from __future__ import annotations

import csv
import secrets
from pathlib import Path
from urllib.parse import quote

from edge.errors import NoodleError
from edge.escape import escape_name, shown
from edge.manifest import MANIFEST_NAME, ExportManifest, load_export
from export.device import Device, DeviceError

DEFAULT_VARIANT = "int8"


def find_model(path: Path, variant: str | None) -> tuple[Path, Path, ExportManifest, str, str]:
    """(model file, manifest file, manifest, variant, run name) for a run folder, its export/ or a .tflite."""
    if not path.exists():
        raise NoodleError(f"{escape_name(str(path))}: no such run folder, export folder or .tflite; give "
                          "what `noodle export` wrote (make export prints the run folder)")
    if path.is_dir():
        export = path / "export" if (path / "export").is_dir() else path
        manifest_path = export / MANIFEST_NAME
        manifest = load_export(manifest_path)
        variant = variant or DEFAULT_VARIANT
        entry = manifest.entry(variant)
        if entry is None:
            raise NoodleError(f"{escape_name(str(manifest_path))}: no variant {shown(variant)}; it lists "
                              f"{', '.join(map(shown, manifest.models))}: pass --variant with one of them")
        model = export / entry.file
    else:
        model, manifest_path = path, path.parent / MANIFEST_NAME
        manifest = load_export(manifest_path)
        found = [v for v, e in manifest.models.items() if e.file == path.name]
        if not found:
            raise NoodleError(f"{escape_name(str(path))}: not listed in {escape_name(str(manifest_path))}; "
                              "deploy a model `noodle export` wrote, with its manifest beside it")
        if variant is not None and variant != found[0]:
            raise NoodleError(f"{escape_name(str(path))} is the {shown(found[0])} variant, not "
                              f"{shown(variant)}")
        variant = found[0]
    if not model.is_file():
        raise NoodleError(f"{escape_name(str(model))}: no such file; run `noodle export` (make export) first")
    folder = model.parent
    run = folder.parent.name if folder.name == "export" else folder.name
    return model, manifest_path, manifest, variant, run


def form(fields: dict[str, bytes], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type."""
    boundary = "noodle-" + secrets.token_hex(16)
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + value + b"\r\n")
    for name, (filename, data) in files.items():
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{quote(filename)}"\r\nContent-Type: application/octet-stream\r\n\r\n')
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def deploy(device: Device, path: Path, variant: str | None, min_accuracy: float | None) -> dict:
    """PUT the model and its manifest; the device's verdict (DeviceError with its refusal), with
    `learned`: how many of the device's captures the run trained on (`learned_from`)."""
    model, manifest_path, _, variant, run = find_model(path, variant)
    fields = {"variant": variant.encode(), "run": run.encode()}
    if min_accuracy is not None:
        fields["min_accuracy"] = repr(min_accuracy).encode()
    body, content_type = form(fields, {"manifest": (MANIFEST_NAME, manifest_path.read_bytes()),
                                       "model": (model.name, model.read_bytes())})
    answer = device.json("PUT", "/v1/model", body, {"Content-Type": content_type})
    try:  # the model is in: a failed listing only leaves the note out
        files = device.json("GET", "/v1/captures?files=1").get("files") or []
    except DeviceError:
        files = []
    answer["learned"] = learned_from(manifest_path.parent.parent / "splits.csv", files)
    return answer


def learned_from(splits_csv: Path, files: list[dict]) -> tuple[int, int] | None:
    """(captures whose sha256 the run trained or validated on, captures listed), or None without a
    splits.csv. After `noodle pull` and `make export`, the device's captures are the training photos:
    its accuracy on them is then a fit, not a test score, and the verdict says so."""
    try:
        with open(splits_csv, newline="", encoding="utf-8", errors="surrogateescape") as f:
            seen = {row["sha256"] for row in csv.DictReader(f) if row.get("split") in ("train", "val")}
    except (OSError, KeyError, csv.Error):
        return None
    return sum(entry.get("sha256") in seen for entry in files), len(files)


def verdict(answer: dict, url: str) -> list[str]:
    """What a deploy prints: the device's verdict in a few lines."""
    acc = answer.get("accuracy") or {}
    labels = ", ".join(map(shown, answer.get("labels", [])))
    lines = [f"deployed {escape_name(str(answer.get('file')))} ({shown(str(answer.get('variant')))}) of run "
             f"{shown(str(answer.get('run')))} to {url}: sha256 {str(answer.get('sha256'))[:12]}, "
             f"labels {labels}"]
    if acc.get("accuracy") is None:
        lines.append("accuracy on the device's captures: not measured (none of its classes has captures)")
    else:
        per = ", ".join(f"{shown(k)} {v['correct']}/{v['photos']}" for k, v in acc["per_class"].items())
        lines.append(f"accuracy on the device's {acc['photos']} captures: {acc['accuracy']:.1%} ({per}); "
                     f"checked and swapped in {answer.get('seconds')} s")
    learned = answer.get("learned")
    if acc.get("accuracy") is not None and learned and learned[0]:
        lines.append(f"note: {learned[0]} of the device's {learned[1]} captures are photos this run trained "
                     "on, so that figure is partly how well it fits them, not how it does on new frames; the "
                     "run's report scores photos it never saw")
    if acc.get("not_in_model"):
        lines.append("captures of classes it does not know, not scored: " + ", ".join(
            f"{shown(k)} {v}" for k, v in acc["not_in_model"].items()))
    lines.append(f"the model before (sha256 {str(answer.get('previous_sha256'))[:12]}) is kept: "
                 f"curl -X POST -H 'Authorization: Bearer TOKEN' {url}/v1/model/rollback goes back to it")
    return lines
