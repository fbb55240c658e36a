"""Tests of the command-line helpers shared by every script."""

import pytest

from crowdpoison.cli import InputError, run


def _fail_with(exc):
    def main(argv):
        raise exc

    return main


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (FileNotFoundError(2, "No such file", "data/x.csv"), "data/x.csv: not found"),
        (PermissionError(13, "Denied", "out.csv"), "out.csv: permission denied"),
        (IsADirectoryError(21, "Is a dir", "runs"), "runs: is a folder; pass a file"),
        (NotADirectoryError(20, "Not a dir", "a.csv/b"), "a.csv/b: a part of the"),
        (FileNotFoundError("no file name"), "no file name"),
        (InputError("--step 2: invalid"), "--step 2: invalid"),
    ],
)
def test_run_reports_user_errors(capsys, exc, message):
    assert run(_fail_with(exc)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert message in err
    assert "Errno" not in err


def test_run_reports_interrupt(capsys):
    assert run(_fail_with(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err.strip().endswith("interrupted")
