"""Run identity: which data and settings a run folder's model was trained on.

A run folder is named `runs/<data name>-<arch>-<8 hex>`, the hex from the
data's fingerprint (its labelled file list with sizes and mtimes), the
settings that change the model and the training code's recipe number
(train.config.RECIPE). Other photos, or another arch, epoch count, seed or
recipe, get another folder, so a model is never reused for data it was not
trained on, or as the work of code that did not make it. A folder given
with --out that holds a run of other data is refused unless --force; the
same data and settings resume or (--reuse) keep it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from edge.atomic import write_json
from edge.errors import NoodleError
from train.config import GRADIENT_SETTINGS, RECIPE, resolved, solved_head, trains_on_val
from train.rundir import RunDir

# The TrainConfig fields that change the trained model. Not the output folder,
# verbosity, or --cpu-replicas (a testing aid).
MODEL_SETTINGS = ("arch", "image_size", "epochs", "fine_tune", "batch_size", "learning_rate", "patience",
                  "seed", "mixed_precision")
RUNS = Path("runs")
# Written into the resume state (RunDir.backup) when training starts, so a
# killed run is only resumed on the data and settings it started with.
BACKUP_IDENTITY = "identity.json"


class RunMismatch(NoodleError):
    """A run folder that holds a model of other data or settings."""


def identity(dataset, cfg) -> dict:
    """The data fingerprint, the model settings and their combined short id."""
    # No --epochs or --image-size means the architecture's own: the same model as passing it.
    full = resolved(cfg)
    # A solved head reads none of the gradient settings: another --epochs is the same model.
    unread = GRADIENT_SETTINGS if solved_head(full) else ()
    settings = {k: getattr(full, k) for k in MODEL_SETTINGS if k not in unread}
    # Likewise no --train-on-val/--hold-out-val: what the architecture and the data make of it.
    settings["train_on_val"] = trains_on_val(cfg, dataset)
    settings["recipe"] = RECIPE
    # The weights a pretrained backbone starts from, by content: another file is another model.
    settings["weights"] = _weights_id(full.weights)
    # Classes dropped for too few photos change the data (the fingerprint lists what is left);
    # recorded only when asked for, so runs that never used it keep their identity.
    if full.min_photos:
        settings["min_photos"] = full.min_photos
    settings_fp = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    run = hashlib.sha256(f"{dataset.fingerprint}\n{settings_fp}".encode()).hexdigest()[:16]
    return {"run": run, "data_fingerprint": dataset.fingerprint, "settings_fingerprint": settings_fp,
            "settings": settings}


def _weights_id(weights: str) -> str:
    if weights in ("none", "imagenet"):
        from train.lite0 import PACKAGE_SHA256

        return weights if weights == "none" else f"imagenet:{PACKAGE_SHA256[:12]}"
    from edge.manifest import sha256_file
    from train.lite0 import WeightsError

    try:
        return f"file:{sha256_file(Path(weights))[:16]}"
    except OSError:
        raise WeightsError(f"{weights}: cannot read this --weights file; pass imagenet, none or "
                           "a .weights.h5 file of the backbone") from None


def default_run_dir(data: str | Path, arch: str, ident: dict, runs: str | Path = RUNS) -> Path:
    """runs/<data name>-<arch>-<first 8 hex of the run id>."""
    return Path(runs) / f"{Path(data).resolve().stem}-{arch}-{ident['run'][:8]}"


def check_run_dir(out: Path, ident: dict, force: bool = False) -> str:
    """What `noodle train` finds in `out`: "empty", "resume" or "complete" (same identity).

    A complete or interrupted run of other data or settings is refused; with
    `force` its manifest and resume state are removed so it is trained afresh.
    """
    run = RunDir(out)
    if run.manifest.exists():
        recorded = _read(run.manifest).get("identity", {})
        if recorded.get("run") == ident["run"]:
            return "complete"
        return _mismatch(out, ident, recorded, "a model", force)
    if run.backup.exists():
        recorded = _read(run.backup / BACKUP_IDENTITY)
        if recorded.get("run") == ident["run"]:
            return "resume"
        return _mismatch(out, ident, recorded, "an interrupted run", force)
    return "empty"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _mismatch(out: Path, ident: dict, recorded: dict, what: str, force: bool) -> str:
    if force:
        RunDir(out).manifest.unlink(missing_ok=True)
        shutil.rmtree(RunDir(out).backup, ignore_errors=True)
        return "empty"
    raise RunMismatch(f"{out}: holds {what} {_difference(ident, recorded)}; "
                      "pass another --out (or none: each data set gets its own folder), "
                      "or --force to replace it")


def _difference(ident: dict, recorded: dict) -> str:
    if not recorded.get("data_fingerprint"):
        return "with no record of its data (made by an older noodle?)"
    if recorded["data_fingerprint"] != ident["data_fingerprint"]:
        return (f"trained on other data (fingerprint {recorded['data_fingerprint'][:8]}, "
                f"this data {ident['data_fingerprint'][:8]})")
    old, new = recorded.get("settings", {}), ident["settings"]
    changed = ", ".join(f"{k} {old.get(k)} -> {new[k]}" for k in new if old.get(k) != new[k])
    return f"trained with other settings ({changed or 'unknown'})"


def record_start(out: Path, ident: dict) -> None:
    """Mark the resume state with the identity it belongs to, before training writes it."""
    write_json(RunDir(out).backup / BACKUP_IDENTITY, ident)
