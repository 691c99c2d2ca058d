"""`noodle` keeps TensorFlow's C++ chatter off the terminal, and `-v` brings it back."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from train.quiet import NOISE

NOISY = [
    "I0000 00:00:1795620498.781488    9024 port.cc:153] oneDNN custom operations are on. You may see",
    "I0000 00:00:1795620498.781796    9024 cudart_stub.cc:31] Could not find cuda drivers on your machine",
    "E0000 00:00:1795620500.686044    9024 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
    "fully_quantize: 0, inference_type: 6, input_inference_type: UINT8, output_inference_type: UINT8",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    "W0000 00:00:1795620500.686044    9024 tf_tfl_flatbuffer_helpers.cc:364] Ignored output_format.",
]
KEPT = [
    "error: runs/x: no such run folder; train one with `noodle train DATA --out runs/x`",
    "warning: only 40 photos calibrate int8; use 100 or more",
    "W0000 00:00:1795620500.686044    9024 some_op.cc:12] a TensorFlow warning that matters",
    "E0000 00:00:1795620500.686044    9024 loader.cc:52] could not open the model",
    "UserWarning: something a user should read",
]
# What a user must not see on a CPU-only machine (acceptance: no cuInit, oneDNN, absl or converter lines).
MARKERS = ("cuInit", "oneDNN", "absl", "fully_quantize", "cudart_stub")


@pytest.mark.parametrize("line", NOISY)
def test_noise_is_dropped(line):
    assert NOISE.search(line)


@pytest.mark.parametrize("line", KEPT)
def test_everything_else_is_kept(line):
    assert not NOISE.search(line)


@pytest.mark.slow
def test_export_prints_no_tensorflow_chatter_unless_verbose(trained_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "NOODLE_VERBOSE")}
    outputs = {}
    for name, flags in (("quiet", []), ("verbose", ["-v"])):
        run = tmp_path / name
        run.mkdir()
        for f in ("model.keras", "splits.csv", "manifest.json"):
            shutil.copy2(trained_run / f, run / f)
        done = subprocess.run([sys.executable, "-m", "noodle", *flags, "export", str(run),
                               "--variants", "float32,int8"],
                              capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[name] = done.stdout + done.stderr
    assert not [m for m in MARKERS if m in outputs["quiet"]], outputs["quiet"][-3000:]
    # The same command with -v shows them: the check above can fail.
    assert any(m in outputs["verbose"] for m in MARKERS)
