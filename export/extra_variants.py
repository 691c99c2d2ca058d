"""Variants beyond the converter's four, added to an export after `export_run`.

`int8-mixed` (export.diagnose: int8 with the worst layers kept float) and
`int8-litert` (export.litert_quant: the LiteRT Quantizer's static int8) are
listed in the export manifest like the others, so validation, the
tflite-runtime 2.14 check and compare treat them alike. `export_run` writes a
manifest of its own variants only; an export that does not ask for an extra
again keeps the last export's (and its diagnosis) when they were made from
the same model.keras and their file is as listed, re-listing them so that
validation checks them again; otherwise, or with --drop-extras, it removes
them: the folder never holds a model the manifest does not vouch for.
"""
from __future__ import annotations

import logging
from pathlib import Path

from edge.atomic import write_json
from edge.errors import NoodleError, first_line
from edge.manifest import ModelEntry, load_export, sha256_file
from export.config import DEFAULTS
from export.convert import write_model
from train.rundir import RunDir

log = logging.getLogger(__name__)

MIXED = "int8-mixed"
LITERT = "int8-litert"
EXTRAS = (MIXED, LITERT)


def previous_extras(run_dir: Path) -> tuple[str | None, dict[str, ModelEntry]]:
    """The last export's model sha256 and extra entries, read before export_run rewrites its manifest."""
    try:
        manifest = load_export(RunDir(run_dir).export_manifest)
    except (NoodleError, OSError):
        return None, {}
    return (manifest.source or {}).get("sha256"), {v: e for v, e in manifest.models.items() if v in EXTRAS}


def keep_previous(run_dir: Path, previous: tuple[str | None, dict[str, ModelEntry]],
                  requested: set[str]) -> set:
    """Re-list the last export's extras that this one does not redo, when made from the same model and
    unchanged on disk; returns what was kept (variant names, and "diagnosis")."""
    run = RunDir(run_dir)
    manifest = load_export(run.export_manifest)
    source, entries = previous
    if source is None or source != (manifest.source or {}).get("sha256"):
        return set()
    kept = {v for v, e in entries.items() if v not in requested and run.tflite(v).is_file()
            and sha256_file(run.tflite(v)) == e.sha256}
    why = "(the last export's, of this model; --drop-extras removes it)"
    for variant in kept:
        manifest.models[variant] = entries[variant]
        log.info(f"kept     {run.tflite(variant)} {why}")
    if kept:
        write_json(run.export_manifest, manifest.to_dict())
    if "diagnosis" not in requested and run.diagnosis_md.is_file():
        kept.add("diagnosis")
        log.info(f"kept     {run.diagnosis_md} {why}")
    return kept


def remove_unrequested(run_dir: Path, requested: set[str]) -> None:
    """Delete extra files, and a diagnosis, left by an earlier export that this one does not redo."""
    run = RunDir(run_dir)
    paths = [run.tflite(v) for v in EXTRAS if v not in requested]
    if "diagnosis" not in requested:
        paths += [run.diagnosis_md, run.diagnosis_json]
    for path in paths:
        if path.is_file():
            path.unlink()
            log.info(f"removed  {path} (not asked for this time)")


def add_variant(run_dir: Path, variant: str, blob: bytes, **details) -> dict:
    """Write RUN/export/<variant>.tflite and list it in the export manifest; return its entry."""
    run = RunDir(run_dir)
    manifest = load_export(run.export_manifest)
    entry = {**write_model(run, variant, blob, manifest), **details}
    dest = run.tflite(variant)
    manifest.models[variant] = ModelEntry.from_dict(entry, f"models.{variant}")
    manifest.failed.pop(variant, None)
    write_json(run.export_manifest, manifest.to_dict())
    log.info(f"wrote    {dest}  ({entry['bytes']:,} bytes)")
    return entry


def record_failure(run_dir: Path, variant: str, reason: str) -> None:
    """List a variant that could not be made under the manifest's "failed", as export_run does."""
    run = RunDir(run_dir)
    manifest = load_export(run.export_manifest)
    manifest.models.pop(variant, None)
    manifest.failed[variant] = reason
    run.tflite(variant).unlink(missing_ok=True)
    write_json(run.export_manifest, manifest.to_dict())
    log.info(f"failed   {variant}.tflite: {reason}")


def calibration(run_dir: Path, samples: int, split: str, data=None) -> tuple:
    """The pixels export's int8 calibrated on (same photos, same shuffle), and their description."""
    from export.convert import calibration_set

    return calibration_set(run_dir, samples, split, data)


def make_extras(run_dir: Path, *, litert: bool, float_layers: str | None, diagnose: bool,
                samples: int, split: str, io: str = DEFAULTS.io, data=None,
                previous: tuple[str | None, dict] = (None, {})) -> dict | None:
    """int8-litert and/or a diagnosis with int8-mixed, as asked; returns the diagnosis report.

    `previous` (previous_extras, before export_run): the last export's extras, kept when not redone.
    """
    run_dir = Path(run_dir)
    requested = ({LITERT} if litert else set()) | ({MIXED} if float_layers else set())
    requested |= {"diagnosis"} if float_layers or diagnose else set()
    remove_unrequested(run_dir, requested | keep_previous(run_dir, previous, requested))
    if not (requested or diagnose):
        return None
    pixels, info = calibration(run_dir, samples, split, data)
    if litert:
        from export import litert_quant

        float32 = RunDir(run_dir).tflite("float32")
        if not float32.is_file():
            record_failure(run_dir, LITERT, "needs float32.tflite: export float32 too")
        else:
            try:
                blob, made_by = litert_quant.quantize(float32, pixels)
                add_variant(run_dir, LITERT, blob, calibration=info, made_by=made_by)
            except litert_quant.QuantizerMissing:
                raise
            except Exception as exc:  # the quantizer's failure is this variant's, not the export's
                record_failure(run_dir, LITERT, f"{type(exc).__name__}: {first_line(exc)}")
    if float_layers or diagnose:
        return diagnose_run(run_dir, pixels, info, "asked for with --diagnose" if diagnose
                            else f"--float-layers {float_layers}", io, float_layers)
    return None


def diagnose_run(run_dir: Path, pixels, info: dict, reason: str, io: str = DEFAULTS.io,
                 float_layers: str | None = None) -> dict | None:
    """diagnosis.{md,json} for RUN's model and, with `float_layers`, int8-mixed.tflite.

    None, with a warning, when the debugger itself fails on this model.
    """
    from export import diagnose
    from export.convert import load_model, read_run

    model = load_model(run_dir, read_run(run_dir))
    log.info(f"diagnosing int8 on {len(pixels)} calibration photos (TensorFlow's quantization debugger)")
    try:
        diagnosis = diagnose.diagnose(model, pixels, io)
    except Exception as exc:  # an experimental TensorFlow tool: its failure must not hide the export's
        reason = f"the quantization debugger failed: {type(exc).__name__}: {first_line(exc)}"
        log.warning(reason)
        if float_layers:
            record_failure(run_dir, MIXED, reason)
        return None
    chosen = diagnose.choose_layers(diagnosis["layers"], float_layers) if float_layers else None
    report = diagnose.write_report(RunDir(run_dir), diagnosis, info, chosen, reason)
    for row in diagnosis["layers"][:3]:
        log.info(f"  {row['rank']}. {row['layer']} ({row['op']}): rmse/scale {row['rmse_scale']:.3g}"
                 + ("  suspect" if row["suspect"] else ""))
    log.info(f"wrote    {RunDir(run_dir).diagnosis_md}")
    if chosen == []:
        log.info(f"no int8-mixed: no layer above {diagnose.SUSPECT_RMSE_SCALE} rmse/scale to keep float "
                 "(it would be int8 under another name)")
    if chosen:
        try:
            blob = diagnose.mixed_model(diagnosis, chosen, io)
        except Exception as exc:  # the converter's failure is this variant's, not the export's
            record_failure(run_dir, MIXED, f"{type(exc).__name__}: {first_line(exc)}")
        else:
            int8 = RunDir(run_dir).tflite("int8")
            if int8.is_file() and int8.read_bytes() == blob:  # the float layers changed nothing
                log.info(f"no int8-mixed: keeping {', '.join(chosen)} float gives int8's very bytes")
            else:
                add_variant(run_dir, MIXED, blob, calibration=info, float_layers=chosen)
    return report
