"""End-to-end tests of run_ml.py on tiny generated folders made from MNIST.

The folders hold a few hundred MNIST images with pixels binarized to 0 and 1
(still valid pixel values), which lets the SGD models converge in a fraction of a
second. Labels of the later batches are poisoned at random, more at higher
levels, and batch 1 (the trusted rows) is the same at every level.
"""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import matthews_corrcoef
from sklearn.neighbors import KNeighborsClassifier

import generate_datasets
import run_ml
from crowdpoison import runner
from crowdpoison.cli import run
from crowdpoison.csvio import read_labelled_csv, write_labelled_csv
from crowdpoison.idx import read_idx_pair
from crowdpoison.models import MODEL_NAMES

REPO_ROOT = Path(__file__).resolve().parent.parent
HEADER = "seed,model,malicious,dataset_len,mcc"


def binarize(images):
    return (images > 127).astype(np.uint8)


def _mnist_subset(mnist_dir, n_train, n_test):
    X, y = read_idx_pair(
        mnist_dir / "train-images-idx3-ubyte.gz",
        mnist_dir / "train-labels-idx1-ubyte.gz",
    )
    X_test, y_test = read_idx_pair(
        mnist_dir / "t10k-images-idx3-ubyte.gz", mnist_dir / "t10k-labels-idx1-ubyte.gz"
    )
    return (
        binarize(X[:n_train]),
        y[:n_train],
        binarize(X_test[:n_test]),
        y_test[:n_test],
    )


def make_generated(folder, X, y, *, levels=(0, 3, 6), n_batches=3, seed=0):
    """Write a generated folder: batch 1 trusted, later batches poisoned by level."""
    rng = np.random.default_rng(seed)
    n_rows = len(y)
    n_trusted = n_rows * 3 // 10
    bounds = np.linspace(n_trusted, n_rows, n_batches).astype(int).tolist()
    bounds = [0, *bounds]
    for level in levels:
        order = np.concatenate(
            [np.arange(n_trusted), n_trusted + rng.permutation(n_rows - n_trusted)]
        )
        labels = y[order].copy()
        poisoned = rng.random(n_rows) < level / 10
        poisoned[:n_trusted] = False
        labels[poisoned] = rng.integers(0, 10, poisoned.sum())
        level_dir = folder / str(level)
        level_dir.mkdir(parents=True)
        for number in range(n_batches):
            rows = slice(bounds[number], bounds[number + 1])
            write_labelled_csv(
                level_dir / f"dataset_{number + 1:03d}.csv",
                X[order[rows]],
                labels[rows],
            )
    return folder


@pytest.fixture(scope="module")
def tiny(mnist_dir, tmp_path_factory):
    """A generated folder (levels 0 3 6, 150 rows in 3 batches) and a test CSV."""
    root = tmp_path_factory.mktemp("tiny")
    X, y, X_test, y_test = _mnist_subset(mnist_dir, 150, 60)
    make_generated(root / "gen", X, y)
    write_labelled_csv(root / "test.csv", X_test, y_test)
    return root


def _argv(data, output, *extra):
    return [
        "-i",
        str(data / "gen"),
        "-t",
        str(data / "test.csv"),
        "-o",
        str(output),
        "--cache-dir",
        str(data / "cache"),
        "--quiet",
        *extra,
    ]


def _exit_code(argv):
    try:
        return run(run_ml.main, argv)
    except SystemExit as exc:
        return exc.code


def _lines(path):
    return Path(path).read_text().splitlines()


CHEAP_MODELS = ("KNN(1)", "KNN(3)", "DT", "RF")


def test_run_ml_fast_equals_naive_all_models(tiny, tmp_path):
    fast = tmp_path / "fast.csv"
    naive = tmp_path / "naive.csv"
    grid = ("--seeds", "3", "7", "--levels", "0", "6", "--n-jobs", "2")
    assert _exit_code(_argv(tiny, fast, *grid)) == 0
    assert _exit_code(_argv(tiny, naive, *grid, "--engine", "naive")) == 0
    fast_lines = _lines(fast)
    naive_lines = _lines(naive)
    assert fast_lines[0] == HEADER
    # 2 levels x 3 batches x 2 seeds x 12 models
    assert len(fast_lines) == 1 + 2 * 3 * 2 * 12
    assert {line.split(",")[1] for line in fast_lines[1:]} == set(MODEL_NAMES)
    assert fast_lines == naive_lines
    assert fast.read_bytes() == naive.read_bytes()


def test_run_ml_sidecar_content(tiny, tmp_path):
    output = tmp_path / "out.csv"
    assert _exit_code(_argv(tiny, output, "--models", "KNN(1)", "--seeds", "3")) == 0
    sidecar = json.loads((tmp_path / "out.csv.meta.json").read_text())
    assert sidecar["format"] == "crowdpoison-results/1"
    assert sidecar["parameters"]["models"] == ["KNN(1)"]
    assert sidecar["parameters"]["seeds"] == [3]
    assert sidecar["parameters"]["levels"] == [0, 3, 6]
    assert len(sidecar["parameters"]["data_sha256"]) == 64
    assert sidecar["generation"]["manifest"] is None


def test_run_ml_sidecar_copies_manifest(tiny, tmp_path):
    data = tmp_path / "data"
    (data / "gen").mkdir(parents=True)
    for level in ("0", "3"):
        (data / "gen" / level).symlink_to(tiny / "gen" / level)
    (data / "test.csv").symlink_to(tiny / "test.csv")
    manifest = {
        "format": "crowdpoison-generation/1",
        "parameters": {
            "n_bots": 10,
            "behavior": "flip",
            "n_votes": 3,
            "assignment": "random",
            "seed": 1,
        },
        "n_rows": 240,
        "n_trusted": 72,
    }
    (data / "gen" / "manifest.json").write_text(json.dumps(manifest))
    output = tmp_path / "out.csv"
    assert _exit_code(_argv(data, output, "--models", "KNN(1)", "--seeds", "3")) == 0
    generation = json.loads((tmp_path / "out.csv.meta.json").read_text())["generation"]
    assert generation["n_bots"] == 10
    assert generation["n_trusted"] == 72
    assert generation["n_rows"] == 240
    assert generation["behavior"] == "flip"
    assert generation["n_votes"] == 3
    assert generation["assignment"] == "random"
    assert generation["manifest"] == str((data / "gen" / "manifest.json").resolve())


def test_run_ml_n_jobs_byte_identical(tiny, tmp_path):
    grid = (
        "--models",
        "LR",
        "KNN(3)",
        "VF(hard)",
        "--levels",
        "0",
        "6",
        "--seeds",
        "3",
        "7",
    )
    one = tmp_path / "one.csv"
    two = tmp_path / "two.csv"
    assert _exit_code(_argv(tiny, one, *grid, "--n-jobs", "1")) == 0
    assert _exit_code(_argv(tiny, two, *grid, "--n-jobs", "2")) == 0
    assert one.read_bytes() == two.read_bytes()
    assert len(_lines(one)) == 1 + 2 * 3 * 2 * 3


def test_run_ml_knn1_matches_sklearn_per_seed(tiny, tmp_path):
    output = tmp_path / "knn.csv"
    assert _exit_code(_argv(tiny, output, "--models", "KNN(1)", "--levels", "3")) == 0
    test = np.loadtxt(tiny / "test.csv", delimiter=",")
    files = sorted((tiny / "gen" / "3").glob("dataset_*.csv"))
    rows = [line.split(",") for line in _lines(output)[1:]]
    for number in range(1, len(files) + 1):
        train = np.concatenate(
            [np.loadtxt(path, delimiter=",") for path in files[:number]]
        )
        model = KNeighborsClassifier(n_neighbors=1).fit(train[:, 1:], train[:, 0])
        expected = matthews_corrcoef(test[:, 0], model.predict(test[:, 1:]))
        written = {
            int(row[0]): float(row[4]) for row in rows if int(row[3]) == len(train)
        }
        assert written == {3: expected, 7: expected, 11: expected}


def _reference(tiny, tmp_path, models):
    reference = tmp_path / "reference.csv"
    assert _exit_code(_argv(tiny, reference, "--models", *models)) == 0
    return reference.read_bytes()


def test_run_ml_resume_after_sigkill(tiny, tmp_path):
    expected = _reference(tiny, tmp_path, CHEAP_MODELS)
    output = tmp_path / "killed.csv"
    command = [
        sys.executable,
        str(REPO_ROOT / "run_ml.py"),
        *_argv(
            tiny,
            output,
            "--models",
            *CHEAP_MODELS,
            "--engine",
            "naive",
            "--n-jobs",
            "1",
        ),
    ]
    process = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if output.is_file() and len(output.read_bytes().splitlines()) > 3:
                break
            time.sleep(0.05)
        assert process.poll() is None, "run_ml.py finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    partial = output.read_bytes()
    assert 3 < len(partial.splitlines()) < len(expected.splitlines())

    assert _exit_code(_argv(tiny, output, "--models", *CHEAP_MODELS)) == 0
    assert output.read_bytes() == expected


def test_run_ml_resume_drops_torn_line(tiny, tmp_path, caplog):
    expected = _reference(tiny, tmp_path, ("KNN(1)", "DT"))
    output = tmp_path / "torn.csv"
    (tmp_path / "reference.csv.meta.json").rename(tmp_path / "torn.csv.meta.json")
    lines = expected.splitlines(keepends=True)
    # Keep the first rows, then half of the next line without its line end.
    output.write_bytes(b"".join(lines[:5]) + lines[5][:7])
    argv = _argv(tiny, output, "--models", "KNN(1)", "DT")
    argv.remove("--quiet")
    with caplog.at_level(logging.WARNING):
        assert _exit_code(argv) == 0
    assert output.read_bytes() == expected
    assert "torn last line" in caplog.text


def test_run_ml_resume_skips_present_rows(tiny, tmp_path, caplog):
    output = tmp_path / "out.csv"
    argv = _argv(tiny, output, "--models", "KNN(1)", "DT")
    assert _exit_code(argv) == 0
    first = output.read_bytes()
    argv.remove("--quiet")
    with caplog.at_level(logging.INFO):
        assert _exit_code(argv) == 0
    assert output.read_bytes() == first
    assert "every row is already in the results" in caplog.text


def test_run_ml_refuses_other_parameters(tiny, tmp_path, capsys):
    output = tmp_path / "out.csv"
    assert _exit_code(_argv(tiny, output, "--models", "KNN(1)", "--seeds", "3")) == 0
    before = output.read_bytes()
    capsys.readouterr()
    code = _exit_code(_argv(tiny, output, "--models", "KNN(1)", "--seeds", "5"))
    assert code == 2
    message = capsys.readouterr().err
    assert "seeds" in message
    assert "--overwrite" in message
    assert output.read_bytes() == before

    code = _exit_code(
        _argv(tiny, output, "--models", "KNN(1)", "--seeds", "5", "--overwrite")
    )
    assert code == 0
    seeds = {line.split(",")[0] for line in _lines(output)[1:]}
    assert seeds == {"5"}


def test_run_ml_refuses_other_data(tiny, tmp_path, capsys):
    output = tmp_path / "out.csv"
    assert _exit_code(_argv(tiny, output, "--models", "KNN(1)", "--seeds", "3")) == 0
    other = tmp_path / "other"
    (other / "gen").mkdir(parents=True)
    for level in ("0", "3", "6"):
        (other / "gen" / level).symlink_to(tiny / "gen" / level)
    test = (tiny / "test.csv").read_text().splitlines(keepends=True)
    (other / "test.csv").write_text("".join(test[:-1]))
    capsys.readouterr()
    code = _exit_code(_argv(other, output, "--models", "KNN(1)", "--seeds", "3"))
    assert code == 2
    assert "test_sha256" in capsys.readouterr().err


BAD_INPUTS = [
    (("--models", "KNN(2)"), "unknown model 'KNN\\(2\\)'"),
    (("--seeds", "three"), "invalid value 'three'"),
    (("--seeds", "-1"), "invalid value '-1': expected an integer in 0..4294967295"),
    (("--seeds", "4294967296"), "invalid value '4294967296'"),
    (("--levels", "5"), "--levels 5: no such level"),
    (("--n-jobs", "0"), "--n-jobs 0"),
    (("--engine", "turbo"), "invalid choice"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_INPUTS)
def test_run_ml_rejects_bad_flag(tiny, tmp_path, capsys, extra, message):
    output = tmp_path / "out.csv"
    assert _exit_code(_argv(tiny, output, *extra)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err)
    assert not output.exists()
    assert not (tmp_path / "out.csv.meta.json").exists()


def _bad_folder(tmp_path, tiny, kind):
    data = tmp_path / "data"
    gen = data / "gen"
    gen.mkdir(parents=True)
    test = data / "test.csv"
    test.symlink_to(tiny / "test.csv")
    if kind == "missing folder":
        gen.rmdir()
    elif kind == "missing test":
        test.unlink()
        (gen / "0").symlink_to(tiny / "gen" / "0")
    elif kind == "no batch files":
        (gen / "0").mkdir()
    elif kind == "batch gap":
        (gen / "0").mkdir()
        for name in ("dataset_001.csv", "dataset_003.csv"):
            (gen / "0" / name).symlink_to(tiny / "gen" / "0" / name)
    elif kind == "pixel count":
        (gen / "0").mkdir()
        (gen / "0" / "dataset_001.csv").write_text("1,0,0,0\n2,0,0,0\n")
    return data


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing folder", "generated folder .* not found"),
        ("missing test", "test CSV .* not found"),
        ("no batch files", "no batch files found"),
        ("batch gap", "lacks batch files dataset_002.csv"),
        ("pixel count", "has 3 pixel values per row but the test data has 784"),
    ],
)
def test_run_ml_rejects_bad_input(tiny, tmp_path, capsys, kind, message):
    data = _bad_folder(tmp_path, tiny, kind)
    output = tmp_path / "out.csv"
    assert _exit_code(_argv(data, output)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err)
    assert not output.exists()


def test_run_ml_degenerate_warnings(tiny, tmp_path, caplog):
    # Batch 1 contains four images of classes 0 and 1 only, and batch 2 three
    # more of class 0, so KNN(5) has no row for batch 1.
    data = tmp_path / "data"
    level = data / "gen" / "0"
    level.mkdir(parents=True)
    (data / "test.csv").symlink_to(tiny / "test.csv")
    X = np.zeros((7, 784), dtype=np.uint8)
    X[:, :10] = np.arange(70).reshape(7, 10) % 2
    write_labelled_csv(level / "dataset_001.csv", X[:4], [0, 0, 1, 1])
    write_labelled_csv(level / "dataset_002.csv", X[4:], [0, 0, 0])
    (level / "level.json").write_text('{"complete": false}')
    output = tmp_path / "out.csv"
    argv = _argv(data, output, "--models", "KNN(1)", "KNN(5)", "--seeds", "3")
    argv.remove("--quiet")
    with caplog.at_level(logging.WARNING):
        assert _exit_code(argv) == 0
    text = caplog.text
    assert "level 0 is marked incomplete" in text
    assert "level 0, batch 1: the training set lacks classes [2, 3, 4" in text
    assert "KNN(5) needs at least 5 training rows but the batch has 4" in text
    rows = _lines(output)[1:]
    assert "3,KNN(1),0,4," in "\n".join(rows)
    assert not any(row.startswith("3,KNN(5),0,4,") for row in rows)
    assert any(row.startswith("3,KNN(5),0,7,") for row in rows)


def test_run_ml_warns_single_class_prediction(tiny, tmp_path, caplog):
    data = tmp_path / "data"
    level = data / "gen" / "0"
    level.mkdir(parents=True)
    (data / "test.csv").symlink_to(tiny / "test.csv")
    X = np.zeros((3, 784), dtype=np.uint8)
    write_labelled_csv(level / "dataset_001.csv", X, [4, 4, 4])
    output = tmp_path / "out.csv"
    argv = _argv(data, output, "--models", "KNN(1)", "LR", "--seeds", "3")
    argv.remove("--quiet")
    with caplog.at_level(logging.WARNING):
        assert _exit_code(argv) == 0
    assert "KNN(1) predicts a single class" in caplog.text
    assert "LR failed" in caplog.text
    assert _lines(output)[1:] == ["3,KNN(1),0,3,0.0"]


def test_run_ml_fits_shared_batch_once(tiny, tmp_path, monkeypatch):
    # Batch 1 (the 45 trusted rows) is the same at levels 0, 3 and 6, which run
    # in one round, so each seed fits it once and writes its row at every level.
    calls = Counter()
    fit_and_score = runner.fit_and_score

    def counting_fit(**kwargs):
        calls[(kwargs["model"], kwargs["seed"], kwargs["n_rows"])] += 1
        return fit_and_score(**kwargs)

    monkeypatch.setattr(runner, "fit_and_score", counting_fit)
    output = tmp_path / "out.csv"
    argv = _argv(tiny, output, "--models", "DT", "--seeds", "3", "7", "--n-jobs", "1")
    assert _exit_code(argv) == 0
    assert calls[("DT", 3, 45)] == 1
    assert calls[("DT", 7, 45)] == 1
    # The other two batches differ between levels: 2 seeds x 3 levels x 2 fits.
    assert sum(calls.values()) == 2 + 12
    rows = [row.split(",") for row in _lines(output)[1:]]
    batch_1 = [row for row in rows if row[3] == "45"]
    assert len(batch_1) == 6
    assert len({row[4] for row in batch_1 if row[0] == "3"}) == 1


def test_run_ml_shared_failed_fit_drops_every_level(tiny, tmp_path, caplog):
    data = tmp_path / "data"
    X = np.zeros((3, 784), dtype=np.uint8)
    X[:, 0] = [0, 1, 2]
    for level in (0, 1):
        folder = data / "gen" / str(level)
        folder.mkdir(parents=True)
        write_labelled_csv(folder / "dataset_001.csv", X, [4, 4, 4])
    (data / "test.csv").symlink_to(tiny / "test.csv")
    output = tmp_path / "out.csv"
    argv = _argv(data, output, "--models", "KNN(1)", "LR", "VF(hard)", "--seeds", "3")
    argv.remove("--quiet")
    with caplog.at_level(logging.WARNING):
        assert _exit_code(argv) == 0
    assert caplog.text.count(": LR failed:") == 1
    assert caplog.text.count("voting member LR") == 1
    assert _lines(output)[1:] == ["3,KNN(1),0,3,0.0", "3,KNN(1),1,3,0.0"]


def test_run_ml_bad_later_level_leaves_nothing(tiny, tmp_path, capsys):
    # Level 6's last batch is torn, so the run fails after writing rows of
    # levels 0 and 3; the results file it started must not stay behind.
    data = tmp_path / "data"
    for level in ("0", "3", "6"):
        (data / "gen" / level).mkdir(parents=True)
        for path in (tiny / "gen" / level).glob("dataset_*.csv"):
            (data / "gen" / level / path.name).write_bytes(path.read_bytes())
    (data / "test.csv").symlink_to(tiny / "test.csv")
    torn = data / "gen" / "6" / "dataset_003.csv"
    torn.write_text(torn.read_text()[:-200])
    output = tmp_path / "out.csv"
    argv = _argv(data, output, "--models", "KNN(1)", "--seeds", "3", "--n-jobs", "1")
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert "dataset_003.csv, line" in err
    assert not output.exists()
    assert not (tmp_path / "out.csv.meta.json").exists()


def test_run_ml_warns_rows_without_result(tiny, tmp_path, caplog):
    data = tmp_path / "data"
    level = data / "gen" / "0"
    level.mkdir(parents=True)
    (data / "test.csv").symlink_to(tiny / "test.csv")
    write_labelled_csv(level / "dataset_001.csv", np.zeros((3, 784), np.uint8), [4] * 3)
    output = tmp_path / "out.csv"
    argv = _argv(data, output, "--models", "KNN(1)", "LR", "--seeds", "3")
    argv.remove("--quiet")
    with caplog.at_level(logging.WARNING):
        assert _exit_code(argv) == 0
    assert "1 of the 2 rows of the grid have no result" in caplog.text


def test_run_ml_workers_exit_after_sigkill(tiny, tmp_path, kill_and_wait_for_children):
    psutil = pytest.importorskip("psutil")
    output = tmp_path / "killed.csv"
    argv = _argv(tiny, output, "--models", "DT", "RF", "--n-jobs", "2")
    command = [sys.executable, str(REPO_ROOT / "run_ml.py"), *argv]
    process = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        # Wait until both workers have fitted something, so that they are busy
        # or idle, not starting.
        while time.monotonic() < deadline and process.poll() is None:
            started = output.is_file() and len(output.read_bytes().splitlines()) > 3
            children = psutil.Process(process.pid).children(recursive=True)
            if started and len(children) >= 3:
                break
            time.sleep(0.05)
        assert process.poll() is None, "run_ml.py finished before it could be killed"
        assert kill_and_wait_for_children(process) == []
    finally:
        process.kill()
        process.wait()


def test_run_ml_warns_missing_test_class_once(tiny, tmp_path, caplog):
    X_test, y_test = read_labelled_csv(tiny / "test.csv")
    y_test = y_test.copy()
    y_test[0] = 12
    data = tmp_path / "data"
    data.mkdir()
    (data / "gen").symlink_to(tiny / "gen")
    write_labelled_csv(data / "test.csv", X_test, y_test)
    argv = _argv(data, tmp_path / "out.csv", "--models", "KNN(1)", "--seeds", "3")
    argv.remove("--quiet")
    with caplog.at_level(logging.WARNING):
        assert _exit_code(argv) == 0
    assert caplog.text.count("lacks classes [12] of the test set;") == 1
    assert "7 training sets in all lack classes [12] of the test set" in caplog.text


@pytest.fixture
def generated(tmp_path):
    """A folder written by generate_datasets.py from 200 rows of 16 pixels."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(260, 16), dtype=np.uint8)
    y = np.arange(260) % 10
    write_labelled_csv(tmp_path / "train.csv", X[:200], y[:200])
    write_labelled_csv(tmp_path / "test.csv", X[200:], y[200:])
    argv = ["-i", str(tmp_path / "train.csv"), "-o", str(tmp_path / "gen")]
    argv += ["-l", "2", "-s", "0.5", "--quiet"]
    assert run(generate_datasets.main, argv) == 0
    return tmp_path


def _run_generated(folder, output):
    argv = ["-i", str(folder / "gen"), "-t", str(folder / "test.csv"), "-o"]
    argv += [str(output), "--models", "KNN(1)", "--seeds", "3"]
    argv += ["--cache-dir", str(folder / "cache")]
    return _exit_code(argv)


def test_run_ml_rejects_changed_batch_file(generated, tmp_path, capsys):
    batch = generated / "gen" / "2" / "dataset_002.csv"
    lines = batch.read_text().splitlines(keepends=True)
    batch.write_text("".join(lines[: len(lines) // 2]))
    output = tmp_path / "out.csv"
    assert _run_generated(generated, output) == 2
    err = capsys.readouterr().err
    assert "dataset_002.csv has" in err
    assert "the file changed after the level was generated" in err
    assert not output.exists()


def test_run_ml_warns_level_without_record(generated, tmp_path, caplog):
    (generated / "gen" / "1" / "level.json").unlink()
    with caplog.at_level(logging.WARNING):
        assert _run_generated(generated, tmp_path / "out.csv") == 0
    assert "has no level.json" in caplog.text
    assert "may not have finished" in caplog.text
