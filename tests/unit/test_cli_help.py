"""``xray-worker --help`` as a lean install shows it: the model it names is what that install
runs, a bundle on ONNX Runtime, with the learner as the other kind."""

from __future__ import annotations

from click.testing import CliRunner

from worker.cli import cli


def test_the_help_names_both_kinds_of_model():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    words = " ".join(result.output.split())  # click wraps the text
    assert "Screen chest X-rays (PNG, JPEG, DICOM) for pneumonia." in words
    assert "The model is a bundle (ONNX Runtime" in words and "or an exported fastai learner" in words
    assert "with a fastai model" not in words
