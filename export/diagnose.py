"""When int8 loses accuracy: which layer did it, and an int8 model with that layer kept float.

`diagnose` runs TensorFlow's quantization debugger
(`tf.lite.experimental.QuantizationDebugger`) on the calibration photos, with
the converter set up exactly as export's int8 (`export.convert.make_converter`).
The debugger runs every quantized op and its float twin on the same quantized
input, so each layer's error is its own, not inherited from earlier layers.
Layers are ranked by rmse/scale: the root-mean-square error of the layer's
output in units of its quantization step. Rounding alone gives 1/sqrt(12)
~ 0.29; a layer far above that is losing information (weights with a very
wide range, an activation range stretched by a few outliers).

`mixed_model` re-quantizes the same calibrated model with chosen layers left
float (`denylisted_nodes`), keeping int8's input/output types, so it is
int8 everywhere else and drops in where int8 did. It is not fully integer.

Writes RUN/export/diagnosis.{md,json}; the export command writes the mixed
model as the `int8-mixed` variant (export.extra_variants).
"""
from __future__ import annotations

import csv
import io as text_io
import math
import re
import warnings

import numpy as np

from edge.atomic import write_bytes, write_json
from edge.errors import NoodleError
from export.convert import make_converter, quiet_stdout

# Above this rmse/scale a layer is suspect (TensorFlow's debugger guide uses
# the same cut-off; pure rounding error is ~0.29). `--float-layers auto` keeps
# every suspect layer float, or the single worst when none is.
SUSPECT_RMSE_SCALE = 0.7
# Rows shown in diagnosis.md; diagnosis.json has them all.
TABLE_ROWS = 20


class DiagnosisError(NoodleError):
    """A --float-layers choice that names no layer of the model."""


def diagnose(model, calibration: np.ndarray, io: str = "uint8") -> dict:
    """Per-layer quantization error of export's int8 set-up, worst first.

    Returns {"layers": [...], "calibrated": bytes, "converter": the converter},
    the last two for `mixed_model`, which reuses the calibration.
    """
    import tensorflow as tf

    converter = make_converter(model, "int8", calibration, io)

    def dataset():
        for i in range(len(calibration)):
            yield [calibration[i : i + 1].astype(np.float32)]

    with quiet_stdout(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        # The debugger runs TensorFlow's own interpreter, which warns it is deprecated.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=dataset)
        debugger.run()
    dump = text_io.StringIO()
    debugger.layer_statistics_dump(dump)
    names = keras_layer_names(model)
    last = model.layers[-1].name  # the output's activation (LOGISTIC, SOFTMAX) is its op
    layers = [_layer_row(row, names, last) for row in csv.DictReader(text_io.StringIO(dump.getvalue()))]
    layers.sort(key=lambda r: -r["rmse_scale"] if math.isfinite(r["rmse_scale"]) else -math.inf)
    for rank, row in enumerate(layers, start=1):
        row["rank"] = rank
        row["suspect"] = row["rmse_scale"] > SUSPECT_RMSE_SCALE
    return {"layers": layers, "calibrated": debugger.calibrated_model, "converter": converter}


def _layer_row(row: dict, keras_names: set[str], output_layer: str | None = None) -> dict:
    scale = float(row["scale"])
    mse = float(row["mean_squared_error"])
    rmse = math.sqrt(mse)
    tensor = row["tensor_name"]
    fused = list(dict.fromkeys(layer_name(piece, keras_names, output_layer) for piece in tensor.split(";")))
    return {"tensor": tensor, "layer": fused[0], "fused": fused[1:], "op": row["op_name"],
            "rmse_scale": rmse / scale if scale else math.inf, "rmse": rmse,
            "max_abs_error": float(row["max_abs_error"]), "mean_error": float(row["mean_error"]),
            "scale": scale, "zero_point": int(float(row["zero_point"])),
            "elements": int(float(row["num_elements"]))}


def keras_layer_names(model) -> set[str]:
    """Every layer's name, inside nested models too (lite0's backbone is one model in the model)."""
    names = set()
    for layer in model.layers:
        names.add(layer.name)
        if hasattr(layer, "layers"):
            names |= keras_layer_names(layer)
    return names


def layer_name(tensor: str, keras_names: set[str], output_layer: str | None = None) -> str:
    """The innermost Keras layer a tensor came from: `model_1/<nested>_1/<layer>_1/op` -> `<layer>`.

    Tracing the model for conversion adds one numeric suffix to every scope
    (`re_lu` becomes `re_lu_1`, `re_lu_1` becomes `re_lu_1_2`), so one suffix
    is dropped when that leaves a layer of the model. The deepest scope that
    names a layer wins, so a layer of a nested model (lite0's backbone) is
    named, not the model holding it. A tensor of no scope is the model's
    output: it is named by `output_layer` (the last Keras layer, whose
    activation it is), else kept as it is.
    """
    parts = tensor.split(";")[0].split("/")
    if len(parts) < 3:
        return f"{output_layer} (output)" if output_layer else parts[0]
    for part in reversed(parts[1:-1]):
        stripped = re.sub(r"_\d+$", "", part)
        for name in (stripped, part):
            if name in keras_names:
                return name
    return parts[1]


def choose_layers(layers: list[dict], spec: str) -> list[str]:
    """Tensor names to keep float: `auto`, the N worst, or names (tensor or Keras layer) by comma."""
    spec = spec.strip()
    if not layers:
        raise DiagnosisError("--float-layers: the debugger found no quantized layer to keep float")
    if spec == "auto":
        chosen = [r for r in layers if r["suspect"]]  # none: no int8-mixed (it would be int8 renamed)
    elif spec.isdigit():
        if int(spec) < 1:
            raise DiagnosisError(f"--float-layers {spec}: keep at least 1 layer float, or say auto")
        chosen = layers[: int(spec)]
    else:
        chosen = []
        for name in (n.strip() for n in spec.split(",")):
            match = [r for r in layers if name in (r["tensor"], r["layer"], *r.get("fused", []))]
            if not match:
                known = ", ".join(dict.fromkeys(r["layer"] for r in layers))
                raise DiagnosisError(f"--float-layers {name}: no such layer; choose from {known} "
                                     "(or auto, or a number of worst layers)")
            chosen += match
    return list(dict.fromkeys(r["tensor"] for r in chosen))


def mixed_model(diagnosis: dict, float_tensors: list[str], io: str = "uint8") -> bytes:
    """int8 with the layers producing `float_tensors` left float, from the same calibration."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tflite_convert

    converter = diagnosis["converter"]
    # The call the converter itself makes for int8 (TFLiteConverter._quantize),
    # the same calibration and per-channel settings, plus the denylist.
    with quiet_stdout():
        return tflite_convert.mlir_quantize(
            diagnosis["calibrated"],
            disable_per_channel=converter._experimental_disable_per_channel,
            input_data_type=getattr(tf, io), output_data_type=getattr(tf, io),
            denylisted_nodes=float_tensors,
            disable_per_channel_for_dense_layers=(
                converter._experimental_disable_per_channel_quantization_for_dense_layers))


def write_report(run, diagnosis: dict, calibration_info: dict, float_tensors: list[str] | None,
                 reason: str) -> dict:
    """diagnosis.json (every layer) and diagnosis.md (the worst TABLE_ROWS); returns the json."""
    layers = diagnosis["layers"]
    report = {"reason": reason, "metric": "rmse/scale (output error in quantization steps)",
              "suspect_above": SUSPECT_RMSE_SCALE, "rounding_only": 1 / math.sqrt(12),
              "calibration": calibration_info, "kept_float": float_tensors or [],
              "layers": layers}
    write_json(run.diagnosis_json, report)
    suspects = [r for r in layers if r["suspect"]]
    lines = [
        "# int8 quantization diagnosis", "",
        f"Why: {reason}. TensorFlow's quantization debugger on {calibration_info.get('samples')} "
        f"calibration photos ({calibration_info.get('from', 'the calibration set')}), export's int8 "
        "converter set-up. Each layer's float and int8 outputs are compared from the same int8 "
        "input, so a layer's error is its own.", "",
        f"rmse/scale is that error in quantization steps: rounding alone gives "
        f"{1 / math.sqrt(12):.2f}; above {SUSPECT_RMSE_SCALE} a layer is suspect.", "",
        "| rank | layer | op | rmse/scale | rmse | max abs error | scale | elements | tensor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in layers[:TABLE_ROWS]:
        mark = " **suspect**" if r["suspect"] else ""
        lines.append(f"| {r['rank']} | {r['layer']} | {r['op']} | {r['rmse_scale']:.3g}{mark} | "
                     f"{r['rmse']:.3g} | {r['max_abs_error']:.3g} | {r['scale']:.3g} | {r['elements']} | "
                     f"`{r['tensor']}` |")
    if len(layers) > TABLE_ROWS:
        lines.append(f"\n{len(layers) - TABLE_ROWS} more layer(s) in diagnosis.json.")
    lines.append("")
    if suspects:
        lines.append(f"{len(suspects)} suspect layer(s), worst {suspects[0]['layer']} "
                     f"({suspects[0]['op']}, rmse/scale {suspects[0]['rmse_scale']:.3g}).")
    else:
        lines.append(f"No layer above {SUSPECT_RMSE_SCALE}: int8's loss is spread thin, not one layer's; "
                     "more or more varied calibration photos may help more than float layers.")
    if float_tensors:
        named = {r["tensor"]: r["layer"] for r in layers}
        lines.append(f"int8-mixed.tflite keeps {len(float_tensors)} layer(s) float: "
                     + ", ".join(f"{named.get(t, t)} (`{t}`)" for t in float_tensors) + ".")
    elif float_tensors is not None:
        lines.append(f"--float-layers auto: no layer is above {SUSPECT_RMSE_SCALE}, so no int8-mixed.tflite "
                     "was written: it would be int8 under another name.")
    else:
        lines.append("To keep the worst layers float: `noodle export RUN --float-layers auto` "
                     "(or a number, or layer names) writes int8-mixed.tflite.")
    write_bytes(run.diagnosis_md, ("\n".join(lines) + "\n").encode())
    return report
