"""edge.runtime: foreign and unfinished models, and the bounds the Classifier keeps.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge.cli import app as edge_app
from edge.preprocess import PREPROCESSING
from tests.hostile import (
    SIZE,
    error_line,
    write_export,
)

runner = CliRunner()


def test_threads_are_bounded_in_the_classifier_too(fuzz_model):
    from edge.errors import NoodleError
    from edge.runtime import Classifier

    with pytest.raises(NoodleError, match="--threads 32768: out of range"):
        Classifier(fuzz_model, threads=32768)


@pytest.mark.parametrize("kind", ["scalar", "map"])
def test_outputs_that_are_no_row_of_scores_are_refused(blobs, kind, tmp_path, three_photos):
    model = write_export(tmp_path / "export", ["a", "b"], blobs[kind])
    line = error_line(runner.invoke(edge_app, ["classify", str(model), str(three_photos)]))
    assert "not one row of class scores" in line


def test_logits_are_told_from_probabilities_and_softmax_applied(blobs, tmp_path, three_photos):
    from edge.runtime import Classifier

    model = write_export(tmp_path / "export", ["a", "b", "c"], blobs["logits"])
    result = runner.invoke(edge_app, ["classify", str(model), str(three_photos), "--json", "--top-k", "3"])
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "read as logits, softmax applied" in warnings[0]
    for line in result.stdout.splitlines():
        scores = [t["score"] for t in json.loads(line)["top"]]
        assert all(0 <= s <= 1 for s in scores) and sum(scores) == pytest.approx(1, abs=1e-4)
    # The probabilities are the softmax of the raw outputs.
    clf = Classifier(model)
    pixels = np.stack([clf.preprocess(p) for p in sorted(three_photos.iterdir())])
    raw = clf.invoke(pixels)
    expected = np.exp(raw - raw.max(1, keepdims=True))
    np.testing.assert_allclose(clf.probabilities(pixels), expected / expected.sum(1, keepdims=True),
                               atol=1e-5)
    # A softmax model is left alone, and says nothing.
    ok = write_export(tmp_path / "softmax", ["a", "b", "c"], blobs["softmax"])
    quiet = runner.invoke(edge_app, ["classify", str(ok), str(three_photos), "--json"])
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr


def test_one_unit_logits_get_a_sigmoid():
    from edge.runtime import Classifier

    clf = Classifier.__new__(Classifier)
    clf.path, clf.scores = Path("m.tflite"), "probabilities"
    out = clf._as_probabilities(np.array([[-2.0], [3.0]], np.float32))
    assert clf.scores == "logits"
    np.testing.assert_allclose(out[:, 0], 1 / (1 + np.exp([2.0, -3.0])), rtol=1e-6)


@pytest.mark.parametrize("validation", [None, {"passed": False}])
def test_an_unvalidated_export_warns_once_and_strict_refuses_it(blobs, tmp_path, three_photos, validation):
    model = write_export(tmp_path / "export", ["a", "b", "c"], blobs["softmax"], validation=validation)
    said = "never finished" if validation is None else "did not pass"
    result = runner.invoke(edge_app, ["classify", str(model), str(three_photos)])
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and said in warnings[0] and "--strict" in warnings[0]
    line = error_line(runner.invoke(edge_app, ["classify", str(model), str(three_photos), "--strict"]))
    assert said in line and "--strict runs only validated models" in line


def test_a_validated_export_runs_strict_without_a_word(blobs, tmp_path, three_photos):
    model = write_export(tmp_path / "export", ["a", "b", "c"], blobs["softmax"])
    result = runner.invoke(edge_app, ["classify", str(model), str(three_photos), "--strict"])
    assert result.exit_code == 0 and "warning" not in result.stderr, result.stderr


def test_a_lone_model_file_warns_that_no_validation_is_recorded(blobs, tmp_path, three_photos):
    from export.metadata import embed

    info = {"variant": "float32", "labels": ["a", "b", "c"], "output": "softmax",
            "input": {"height": SIZE, "width": SIZE, "channels": 3}, "preprocessing": PREPROCESSING}
    model = tmp_path / "alone.tflite"
    model.write_bytes(embed(blobs["softmax"], info))
    result = runner.invoke(edge_app, ["classify", str(model), str(three_photos)])
    assert result.exit_code == 0 and "no manifest.json beside it records" in result.stderr
    assert "validation" in error_line(runner.invoke(edge_app, ["classify", str(model), str(three_photos),
                                                               "--strict"]))
