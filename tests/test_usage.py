"""edge.usage: a usage error of any noodle CLI is one `error:` line, exit 2; help still shows."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edge.cli import app as edge_app
from noodle import app

runner = CliRunner()


RANGE = "out of range; give"


@pytest.mark.parametrize("cli, args, line", [
    (edge_app, ["classify", "m.tflite", "a.jpg", "--top-k", "0"], f"error: --top-k 0: {RANGE} 1 or more"),
    (app, ["edge", "classify", "m.tflite", "a.jpg", "-k", "-3"], f"error: --top-k -3: {RANGE} 1 or more"),
    (app, ["train", "data", "--epochs", "0"], f"error: --epochs 0: {RANGE} 1 to 100,000"),
    (app, ["train", "data", "--image-size", "2048"], f"error: --image-size 2048: {RANGE} 32 to 1,024"),
    (app, ["train", "data", "--epochs", "many"], "error: Invalid value for '--epochs': 'many' is not"),
    (app, ["train", "data", "--epoch", "3"], "error: No such option: --epoch"),
    (app, ["export"], "error: Missing argument 'run_dir'"),
])
def test_a_usage_error_is_one_line(cli, args, line):
    result = runner.invoke(cli, args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(line), result.stderr
    assert "╭" not in result.output and "Usage:" not in result.output


@pytest.mark.parametrize("args", [[], ["train", "--help"], ["edge"], ["edge", "classify", "--help"]])
def test_help_still_shows(args):
    result = runner.invoke(app, args)
    assert "Usage:" in result.output and "error:" not in result.output
