import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import generate_datasets
from crowdpoison.cli import run
from crowdpoison.csvio import read_labelled_csv, write_labelled_csv
from crowdpoison.idx import read_idx_pair

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory):
    """A small synthetic training CSV: 300 rows of 16 pixels, 10 classes."""
    rng = np.random.default_rng(0)
    y = np.arange(300) % 10
    rng.shuffle(y)
    X = rng.integers(0, 256, size=(300, 16), dtype=np.uint8)
    path = tmp_path_factory.mktemp("data") / "train.csv"
    write_labelled_csv(path, X, y)
    return path


@pytest.fixture(scope="module")
def mnist_train_csv(mnist_dir, tmp_path_factory):
    """The first 3,000 MNIST training images as CSV."""
    X, y = read_idx_pair(
        mnist_dir / "train-images-idx3-ubyte.gz", mnist_dir / "train-labels-idx1-ubyte.gz"
    )
    path = tmp_path_factory.mktemp("mnist") / "train.csv"
    write_labelled_csv(path, X[:3000], y[:3000])
    return path


def generate(*args):
    """Run the script's entry point as the command line does; return its status."""
    return run(generate_datasets.main, [*map(str, args), "--quiet"])


def folder_bytes(folder):
    """Map each file below ``folder`` to its bytes, the manifest's volatile parts removed."""
    contents = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.name == "manifest.json":
                manifest = json.loads(data)
                manifest["input"].pop("path")
                data = json.dumps(manifest, sort_keys=True).encode()
            contents[str(path.relative_to(folder))] = data
    return contents


def test_generate_writes_levels_and_manifest(train_csv, tmp_path):
    out = tmp_path / "out"
    assert generate("-i", train_csv, "-o", out, "-l", "4", "-v", "3") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["n_bots"] == 4
    assert manifest["parameters"]["seed"] == 7
    assert manifest["n_trusted"] == 90
    assert manifest["pool_size"] == 210
    assert manifest["complete"] is True
    assert set(manifest["libraries"]) >= {"python", "numpy", "scikit-learn"}
    assert sorted(manifest["levels"], key=int) == ["0", "1", "2", "3", "4"]

    X, y = read_labelled_csv(train_csv)
    for level in range(5):
        entry = manifest["levels"][str(level)]
        files = sorted((out / str(level)).glob("dataset_*.csv"))
        assert [f.name for f in files] == [b["file"] for b in entry["batches"]]
        assert len(files) == 11
        parts = [read_labelled_csv(f) for f in files]
        X_level = np.concatenate([p[0] for p in parts])
        y_level = np.concatenate([p[1] for p in parts])
        assert X_level.shape == X.shape
        # Batch 1 is the trusted rows with their true labels, in input order.
        assert np.array_equal(parts[0][0], X[:90])
        assert np.array_equal(parts[0][1], y[:90])
        # Every image appears once; its label is wrong exactly as often as counted.
        order = [int(np.flatnonzero((X == row).all(axis=1))[0]) for row in X_level]
        assert sorted(order) == list(range(300))
        assert np.count_nonzero(y_level != y[order]) == entry["poisoned"]
        assert entry["batches"][-1]["cumulative_poisoned"] == entry["poisoned"]
        assert entry["accepted"] == 210
        assert (out / str(level) / "level.json").is_file()
    assert manifest["levels"]["0"]["poisoned"] == 0
    assert manifest["levels"]["4"]["poisoned"] == 210


def test_generate_no_voting_round_robin_poisons_share(train_csv, tmp_path):
    out = tmp_path / "out"
    args = ["-i", train_csv, "-o", out, "-l", "4", "-v", "1", "--assignment"]
    assert generate(*args, "round-robin", "--behavior", "switch", "--levels", "1") == 0
    entry = json.loads((out / "manifest.json").read_text())["levels"]["1"]
    # One vote per image, bots in turn with 3 images per captcha: one captcha
    # in four goes to the malicious bot 0.
    assert entry["captchas"] == 70
    assert entry["poisoned"] == 18 * 3


def test_generate_same_seed_same_bytes_any_n_jobs(train_csv, tmp_path):
    common = ["-i", train_csv, "-l", "3", "--behavior", "flip"]
    assert generate(*common, "-o", tmp_path / "a", "--n-jobs", "1") == 0
    assert generate(*common, "-o", tmp_path / "b", "--n-jobs", "2") == 0
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")


def test_generate_level_alone_matches_full_run(train_csv, tmp_path):
    common = ["-i", train_csv, "-l", "3"]
    assert generate(*common, "-o", tmp_path / "all") == 0
    assert generate(*common, "-o", tmp_path / "one", "--levels", "2") == 0
    for name in ("dataset_001.csv", "dataset_005.csv", "level.json"):
        full = (tmp_path / "all" / "2" / name).read_bytes()
        assert full == (tmp_path / "one" / "2" / name).read_bytes()


def test_generate_different_seed_differs(train_csv, tmp_path):
    common = ["-i", train_csv, "-l", "3", "--levels", "2"]
    assert generate(*common, "-o", tmp_path / "a", "--seed", "1") == 0
    assert generate(*common, "-o", tmp_path / "b", "--seed", "2") == 0
    a = (tmp_path / "a" / "2" / "dataset_002.csv").read_bytes()
    b = (tmp_path / "b" / "2" / "dataset_002.csv").read_bytes()
    assert a != b


def test_generate_rerun_skips_finished_levels(train_csv, tmp_path, caplog):
    out = tmp_path / "out"
    common = ["-i", train_csv, "-o", out, "-l", "3"]
    assert generate(*common, "--levels", "0", "1") == 0
    before = (out / "1" / "dataset_003.csv").stat().st_mtime_ns
    assert generate(*common) == 0
    assert (out / "1" / "dataset_003.csv").stat().st_mtime_ns == before
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["levels"], key=int) == ["0", "1", "2", "3"]


def test_generate_redoes_unfinished_level(train_csv, tmp_path):
    out = tmp_path / "out"
    common = ["-i", train_csv, "-o", out, "-l", "3"]
    assert generate(*common) == 0
    expected = folder_bytes(out)
    # A crash leaves a temporary folder and a level without its level.json.
    (out / "2" / "level.json").unlink()
    (out / "2" / "dataset_004.csv").write_text("torn")
    (out / ".level-3.tmp").mkdir()
    assert generate(*common) == 0
    assert folder_bytes(out) == expected
    assert not (out / ".level-3.tmp").exists()


def test_generate_refuses_other_parameters(train_csv, tmp_path, capsys):
    out = tmp_path / "out"
    assert generate("-i", train_csv, "-o", out, "-l", "3") == 0
    capsys.readouterr()
    assert generate("-i", train_csv, "-o", out, "-l", "3", "--seed", "8") == 2
    message = capsys.readouterr().err.strip()
    assert "other parameters" in message
    assert "--overwrite" in message
    assert generate("-i", train_csv, "-o", out, "-l", "3", "--seed", "8", "--overwrite") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["seed"] == 8


def test_generate_refuses_foreign_folder(train_csv, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert generate("-i", train_csv, "-o", out, "-l", "2") == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_generate_stops_at_max_passes(train_csv, tmp_path, caplog):
    out = tmp_path / "out"
    args = ["-i", train_csv, "-o", out, "-l", "2", "--levels", "2", "-v", "7"]
    assert generate(*args, "--max-passes", "10") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["levels"]["2"]
    assert entry["complete"] is False
    assert entry["unlabelled"] > 0
    assert entry["accepted"] + entry["unlabelled"] == 210
    assert manifest["complete"] is False
    rows = sum(len(read_labelled_csv(f)[1]) for f in (out / "2").glob("dataset_*.csv"))
    assert rows == 90 + entry["accepted"]
    assert "unlabelled" in caplog.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-b", "0"], "argument -b/--base: invalid value '0'"),
        (["-b", "1.5"], "argument -b/--base: invalid value '1.5'"),
        (["-s", "abc"], "argument -s/--step: invalid value 'abc'"),
        (["--left", "0"], "argument --left: invalid value '0'"),
        (["--right", "-1"], "argument --right: invalid value '-1'"),
        (["-v", "0"], "argument -v/--votes: invalid value '0'"),
        (["-l", "0"], "argument -l/--bots: invalid value '0'"),
        (["--behavior", "nope"], "argument --behavior: invalid choice: 'nope'"),
        (["--levels", "21"], "invalid --levels [21]"),
        (["--levels", "x"], "argument --levels: invalid value 'x'"),
        (["--left", "100"], "--left 100 exceeds the 90 trusted rows"),
        (["--behavior", "targeted"], "--behavior targeted needs --source"),
        (["--behavior", "targeted", "--source", "3", "--target", "12"], "--target 12"),
        (["--source", "3"], "apply only to --behavior targeted"),
        (["--n-jobs", "0"], "invalid --n-jobs 0"),
        (["--poison-rate", "2"], "argument --poison-rate: invalid value '2'"),
    ],
)
def test_generate_rejects_bad_input(train_csv, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as raised:
        raise SystemExit(run(generate_datasets.main, ["-i", str(train_csv), "-o", str(out), *args]))
    assert raised.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert message in err
    assert not out.exists()


def test_generate_rejects_missing_input(tmp_path, capsys):
    status = generate("-i", tmp_path / "none.csv", "-o", tmp_path / "o")
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert "none.csv" in err
    assert len(err.splitlines()) == 1


def test_generate_resumes_after_sigkill(train_csv, tmp_path):
    """Kill a run part-way with SIGKILL; the rerun's output equals a clean run's."""
    common = ["-i", str(train_csv), "-l", "12", "-v", "5", "--quiet"]
    clean = tmp_path / "clean"
    assert generate_datasets.main([*common, "-o", str(clean)]) == 0

    out = tmp_path / "killed"
    command = [sys.executable, str(REPO_ROOT / "generate_datasets.py"), *common, "-o", str(out)]
    process = subprocess.Popen(command, cwd=REPO_ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if len(list(out.glob("[0-9]*"))) >= 3:
            break
        time.sleep(0.01)
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert generate_datasets.main([*common, "-o", str(out)]) == 0
    assert folder_bytes(out) == folder_bytes(clean)


def test_generate_on_mnist_subset(mnist_train_csv, tmp_path):
    out = tmp_path / "out"
    args = ["-i", mnist_train_csv, "-o", out, "--levels", "0", "10", "20"]
    assert generate(*args, "--behavior", "switch") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["levels"]["0"]["poisoned"] == 0
    assert manifest["levels"]["20"]["poisoned"] == manifest["pool_size"]
    share = manifest["levels"]["10"]["poisoned"] / manifest["pool_size"]
    # Half the bots malicious, three independent votes: half the labels are
    # poisoned in expectation, with captcha-to-captcha variation.
    assert 0.35 < share < 0.65
