"""`--quantizer litert`: int8 by the LiteRT Quantizer, beside the converter's int8.

LiteRT calls post-training quantization inside the TFLite converter
deprecated; its successor is the LiteRT Quantizer (`litert-quantizer`, once
`ai-edge-quantizer`), which quantizes an existing float .tflite. This runs its
static int8 recipe (`static_wi8_ai8`: int8 weights per channel, int8
activations) on float32.tflite, calibrated on exactly the pixels the
converter's int8 calibrated on, and returns the bytes of `int8-litert.tflite`.
The result keeps int8 input/output tensors (the Classifier quantizes pixels
with the scale the file carries).

It installs beside TensorFlow 2.21 in one environment (the optional extra
`pip install -e '.[litert-quantizer]'`; its only additions are scipy,
immutabledict, litert-lm-builder and tomli).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np

from edge.errors import NoodleError
from edge.runtime import package_version
from export.convert import quiet_stdout

RECIPE = "static_wi8_ai8"
DISTRIBUTION = "litert-quantizer"


class QuantizerMissing(NoodleError):
    pass


def quantize(float_model: Path, calibration: np.ndarray) -> tuple[bytes, dict]:
    """(int8 .tflite bytes, what made them) from float32.tflite and the calibration pixels."""
    try:
        from litert_quantizer import Quantizer, calibrator, recipe, recipe_manager
        from litert_quantizer.utils import qsv_utils
    except ImportError:
        raise QuantizerMissing(f"--quantizer litert: the LiteRT Quantizer is not installed; "
                               f"pip install -e '.[{DISTRIBUTION}]'") from None
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_path=str(float_model)).get_signature_list()
    if len(signatures) != 1:
        raise NoodleError(f"{float_model}: {len(signatures)} signatures; the LiteRT Quantizer path "
                          "expects the one `noodle export` writes")
    (key, signature), = signatures.items()
    (name,) = signature["inputs"]
    samples = [{name: calibration[i : i + 1].astype(np.float32)} for i in range(len(calibration))]
    the_recipe = getattr(recipe, RECIPE)()
    quantizer = Quantizer(str(float_model), the_recipe)
    recipes = recipe_manager.RecipeManager()
    recipes.load_quantization_recipe(the_recipe)
    # Ranges are the min and max over all calibration photos, as the converter's
    # calibrator takes them. The quantizer's default, a moving average of each
    # photo's min and max, forgets all but the last few dozen photos: on the
    # shared photos it set the sigmoid's logit range to [0, 1.3], so every
    # probability under 0.5 came out as exactly 0.5.
    # Its calibrator draws a progress bar on stderr and warns that it keeps every
    # tensor (for calibration, which is the point): neither helps the user.
    with quiet_stdout(), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        ranges = calibrator.Calibrator(str(float_model), qsv_update_func=qsv_utils.min_max_update)
        ranges.calibrate({key: samples}, recipes)
        result = quantizer.quantize(ranges.get_model_qsvs(), enable_progress_report=False)
    info = {"quantizer": DISTRIBUTION, "version": package_version(DISTRIBUTION), "recipe": RECIPE,
            "ranges": "min/max over all calibration photos", "from": float_model.name}
    return bytes(result.quantized_model), info
