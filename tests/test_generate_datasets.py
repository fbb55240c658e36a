import hashlib
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
import pipeline
from crowdpoison import generate as generate_module
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
        mnist_dir / "train-images-idx3-ubyte.gz",
        mnist_dir / "train-labels-idx1-ubyte.gz",
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
    assert (
        generate("-i", train_csv, "-o", out, "-l", "3", "--seed", "8", "--overwrite")
        == 0
    )
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
    assert entry["passes"] == 10
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
        (["--seed", "-5"], "argument --seed: invalid value '-5'"),
        (["--seed", "x"], "argument --seed: invalid value 'x'"),
    ],
)
def test_generate_rejects_bad_input(train_csv, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as raised:
        raise SystemExit(
            run(generate_datasets.main, ["-i", str(train_csv), "-o", str(out), *args])
        )
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
    command = [
        sys.executable,
        str(REPO_ROOT / "generate_datasets.py"),
        *common,
        "-o",
        str(out),
    ]
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


def test_generate_negative_seed_rerun(train_csv, tmp_path, capsys):
    out = tmp_path / "gen" / "x"
    with pytest.raises(SystemExit) as raised:
        generate("-i", train_csv, "-o", out, "-l", "2", "--seed", "-5")
    assert raised.value.code == 2
    assert "--seed: invalid value '-5'" in capsys.readouterr().err
    assert not (tmp_path / "gen").exists()
    assert generate("-i", train_csv, "-o", out, "-l", "2", "--seed", "5") == 0


@pytest.mark.parametrize("seeds", [["-1"], ["3", "-7"], [str(2**32)]])
def test_pipeline_rejects_invalid_seeds(tmp_path, capsys, seeds):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as raised:
        run(pipeline.main, ["--out", str(out), "--seeds", *seeds, "--quiet"])
    assert raised.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "argument --seeds: invalid value" in err
    assert "0..4294967295" in err
    assert not out.exists()


def test_generate_level_json_records_batch_files(train_csv, tmp_path):
    out = tmp_path / "out"
    assert generate("-i", train_csv, "-o", out, "-l", "2", "--levels", "1") == 0
    info = json.loads((out / "1" / "level.json").read_text())
    names = [batch["file"] for batch in info["batches"]]
    assert sorted(info["files"]) == names
    for name in names:
        data = (out / "1" / name).read_bytes()
        assert info["files"][name]["bytes"] == len(data)
        assert info["files"][name]["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("damage", ["delete", "truncate", "delete-unrecorded-sizes"])
def test_generate_rerun_redoes_damaged_level(train_csv, tmp_path, caplog, damage):
    out = tmp_path / "out"
    common = ["-i", train_csv, "-o", out, "-l", "3"]
    assert generate(*common) == 0
    expected = folder_bytes(out)
    kept_mtime = (out / "1" / "dataset_003.csv").stat().st_mtime_ns
    damaged = out / "2" / "dataset_004.csv"
    if damage == "truncate":
        damaged.write_bytes(damaged.read_bytes()[:100])
    else:
        damaged.unlink()
    if damage == "delete-unrecorded-sizes":
        # A level.json written before the sizes of the batch files were recorded.
        info = json.loads((out / "2" / "level.json").read_text())
        del info["files"]
        (out / "2" / "level.json").write_text(json.dumps(info))
    caplog.clear()
    assert generate(*common) == 0
    assert folder_bytes(out) == expected
    assert (out / "1" / "dataset_003.csv").stat().st_mtime_ns == kept_mtime
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert str(damaged) in warnings[0]
    assert "generating level 2 again" in warnings[0]


def test_generate_rerun_keeps_unrecorded_sizes(train_csv, tmp_path, caplog):
    out = tmp_path / "out"
    common = ["-i", train_csv, "-o", out, "-l", "2", "--levels", "1"]
    assert generate(*common) == 0
    info = json.loads((out / "1" / "level.json").read_text())
    del info["files"]
    (out / "1" / "level.json").write_text(json.dumps(info))
    before = (out / "1" / "dataset_002.csv").stat().st_mtime_ns
    caplog.clear()
    assert generate(*common) == 0
    assert (out / "1" / "dataset_002.csv").stat().st_mtime_ns == before
    assert "WARNING" not in [record.levelname for record in caplog.records]


def test_generate_interrupted_level_leaves_no_tmp(train_csv, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = []
    write_rows = generate_module.write_rows

    def interrupt_third_batch(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return write_rows(*args, **kwargs)

    monkeypatch.setattr(generate_module, "write_rows", interrupt_third_batch)
    assert generate("-i", train_csv, "-o", out, "-l", "2") == 130
    assert calls[-1].parent.name == ".level-0.tmp"
    assert sorted(path.name for path in out.iterdir()) == ["manifest.json"]


def test_generate_failed_level_leaves_no_tmp(train_csv, tmp_path, monkeypatch):
    out = tmp_path / "out"

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(generate_module, "simulate_level", fail)
    with pytest.raises(OSError, match="No space left"):
        generate("-i", train_csv, "-o", out, "-l", "2", "--levels", "1")
    assert sorted(path.name for path in out.iterdir()) == ["manifest.json"]


@pytest.fixture(scope="module")
def slow_train_csv(tmp_path_factory):
    """20,000 rows of 16 pixels: a level with five votes takes 1 to 2 s on two cores."""
    rng = np.random.default_rng(1)
    y = np.arange(20_000) % 10
    X = rng.integers(0, 256, size=(20_000, 16), dtype=np.uint8)
    path = tmp_path_factory.mktemp("slow") / "train.csv"
    write_labelled_csv(path, X, y)
    return path


def _start_two_running_levels(train_csv, out, stderr):
    """Start generate_datasets.py --n-jobs 2 and wait until two levels are running."""
    command = [
        sys.executable,
        str(REPO_ROOT / "generate_datasets.py"),
        *["-i", str(train_csv), "-o", str(out), "-l", "6", "-v", "5"],
        *["--n-jobs", "2", "--quiet"],
    ]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stderr=stderr)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if len(list(out.glob(".level-*.tmp/dataset_002.csv"))) == 2:
            break
        time.sleep(0.01)
    return process


def test_generate_parallel_interrupt_removes_tmp(slow_train_csv, tmp_path):
    """SIGINT to the main process of --n-jobs 2 removes its workers' tmp folders."""
    out = tmp_path / "out"
    process = _start_two_running_levels(slow_train_csv, out, subprocess.PIPE)
    try:
        assert process.poll() is None, "the run ended before two levels were running"
        os.kill(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130
    assert err.decode().strip().endswith("interrupted")
    assert not list(out.glob(".level-*"))
    assert "manifest.json" in [path.name for path in out.iterdir()]


def test_generate_skipped_classes_message(tmp_path, capsys):
    y = np.arange(300) % 10
    y[41] = 200
    path = tmp_path / "train.csv"
    write_labelled_csv(path, np.zeros((300, 4), dtype=np.uint8), y)
    assert generate("-i", path, "-o", tmp_path / "out", "-l", "2") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert len(err) - len(str(path)) < 250
    assert str(path) in err
    assert "largest label is 200 (first on line 42)" in err
    assert "190 classes of 0..200 are missing (10, 11, 12, 13, 14, ...)" in err
    assert "renumber the 11 classes as 0..10" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{bad", "manifest.json is not valid JSON (Expecting property name"),
        ("", "manifest.json is not valid JSON (Expecting value"),
        ("[1, 2]", "contains a manifest.json that is not a generation manifest"),
        ('{"a": 1}', "contains a manifest.json that is not a generation manifest"),
    ],
)
def test_generate_invalid_manifest(train_csv, tmp_path, capsys, content, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(content)
    common = ["-i", train_csv, "-o", out, "-l", "2"]
    assert generate(*common) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert message in err
    assert "--overwrite" in err
    assert sorted(path.name for path in out.iterdir()) == ["manifest.json"]
    assert generate(*common, "--overwrite") == 0
    assert json.loads((out / "manifest.json").read_text())["complete"] is True


def test_generate_rerun_drops_unrequested_level(train_csv, tmp_path, caplog):
    out = tmp_path / "out"
    common = ["-i", train_csv, "-o", out, "-l", "3"]
    assert generate(*common) == 0
    damaged = out / "0" / "dataset_002.csv"
    damaged.unlink()
    caplog.clear()
    assert generate(*common, "--levels", "1") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["levels"], key=int) == ["1", "2", "3"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    expected = (
        f"{damaged} is missing; level 0 is left out of the manifest, pass --levels 0 "
        "to generate it again"
    )
    assert warnings == [expected]


def test_generate_parallel_workers_exit_after_sigkill(
    slow_train_csv, tmp_path, kill_and_wait_for_children
):
    """Workers of --n-jobs 2 stop soon after their main process is killed."""
    out = tmp_path / "out"
    process = _start_two_running_levels(slow_train_csv, out, subprocess.DEVNULL)
    try:
        assert process.poll() is None, "the run ended before two levels were running"
        assert kill_and_wait_for_children(process) == []
    finally:
        process.kill()
        process.wait()
