"""Tests of pipeline.py's options: each is checked before the first stage runs."""

import re

import pytest

import pipeline
from crowdpoison.cli import run


def _user_error(capsys, tmp_path, *argv):
    out = tmp_path / "run"
    try:
        status = run(pipeline.main, ["--out", str(out), "--quiet", *argv])
    except SystemExit as exc:
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert not out.exists()
    return err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--levels", "0", "30"), "invalid --levels 30: a level is a number"),
        (("--bots", "5", "--levels", "6"), "in 0..5 \\(--bots 5\\)"),
        (("--behaviors", "foo"), "argument --behaviors: invalid choice: 'foo'"),
        (("--behaviors", "targeted"), "invalid choice: 'targeted'"),
        (("--models", "KNN(2)"), "unknown model 'KNN\\(2\\)'"),
        (("--models", "LR"), "--plot-model KNN\\(1\\): not among the trained models"),
        (("--plot-model", "XYZ"), "--plot-model XYZ: not among"),
        (("--n-jobs", "0"), "--n-jobs 0"),
    ],
)
def test_pipeline_rejects_before_any_stage(capsys, tmp_path, argv, message):
    err = _user_error(capsys, tmp_path, *argv)
    assert len(err.splitlines()) == 1
    assert re.search(message, err)


def test_pipeline_passes_overwrite_and_step(monkeypatch, tmp_path):
    commands = []

    def record(self, name, *args):
        commands.append((name, [str(arg) for arg in args]))

    monkeypatch.setattr(pipeline.Pipeline, "script", record)
    argv = ["--out", str(tmp_path), "--behaviors", "switch", "--votes", "1"]
    assert pipeline.main([*argv, "--overwrite", "--quiet"]) == 0
    generate = next(args for name, args in commands if name == "generate_datasets.py")
    train = next(args for name, args in commands if name == "run_ml.py")
    assert "--overwrite" in generate
    assert "--overwrite" in train
    assert generate[generate.index("-s") + 1] == str(pipeline.DIGITS_STEP)


def test_pipeline_mnist_step_default(monkeypatch, tmp_path):
    commands = []
    monkeypatch.setattr(
        pipeline.Pipeline, "script", lambda self, name, *args: commands.append(args)
    )
    argv = ["--out", str(tmp_path), "--mnist-dir", str(tmp_path), "--votes", "1"]
    assert pipeline.main([*argv, "--behaviors", "flip", "--quiet"]) == 0
    generate = [str(arg) for arg in commands[1]]
    assert generate[generate.index("-s") + 1] == str(pipeline.MNIST_STEP)
    assert "--overwrite" not in generate
