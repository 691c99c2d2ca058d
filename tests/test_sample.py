"""train.sample: the embedded default data set.
"""
from __future__ import annotations

from typer.testing import CliRunner

from tests.hostile import (
    error_line,
)

runner = CliRunner()


def test_data_sample_onto_a_file_is_one_line(tmp_path):
    from noodle import app

    (tmp_path / "file").write_text("in the way")
    for out in (tmp_path / "file", tmp_path / "file" / "sample"):
        result = runner.invoke(app, ["data", "sample", str(out), "--train-per-class", "1",
                                     "--test-per-class", "1"])
        assert "a file is where" in error_line(result)
