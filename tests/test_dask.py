"""Tests of ``--scheduler``: the grid and the generation on a real Dask cluster.

The clusters are separate processes on 127.0.0.1: a ``LocalCluster`` of two
worker processes, and ``dask scheduler`` with ``dask worker`` started as
commands. Their outputs must equal a local run's byte for byte. The data are
600 MNIST training images and 200 test images with pixels binarized to 0 and 1,
which keeps every fit well under a second.
"""

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster

import generate_datasets
import run_ml
from crowdpoison.cli import InputError, run
from crowdpoison.csvio import write_labelled_csv
from crowdpoison.dask_backend import DaskExecutor, check_scheduler
from crowdpoison.idx import read_idx_pair

REPO_ROOT = Path(__file__).resolve().parent.parent
# -l 4 -s 0.5: 180 trusted rows and two batches of 210 at every level.
GENERATION = ("-l", "4", "-s", "0.5", "--levels", "0", "2", "4")
MODELS = ("KNN(1)", "DT", "RF")
SEEDS = ("3", "7")
N_ROWS = 1 + 3 * 3 * len(SEEDS) * len(MODELS)


@pytest.fixture(scope="module")
def data(mnist_dir, tmp_path_factory):
    """Training and test CSVs and the folder that a local generation writes."""
    root = tmp_path_factory.mktemp("dask")
    X, y = read_idx_pair(
        mnist_dir / "train-images-idx3-ubyte.gz",
        mnist_dir / "train-labels-idx1-ubyte.gz",
    )
    X_test, y_test = read_idx_pair(
        mnist_dir / "t10k-images-idx3-ubyte.gz",
        mnist_dir / "t10k-labels-idx1-ubyte.gz",
    )
    write_labelled_csv(root / "train.csv", (X[:600] > 127).astype(np.uint8), y[:600])
    write_labelled_csv(
        root / "test.csv", (X_test[:200] > 127).astype(np.uint8), y_test[:200]
    )
    status = _generate("-i", root / "train.csv", "-o", root / "gen", *GENERATION)
    assert status == 0
    return root


@pytest.fixture(scope="module")
def local_results(data):
    """Bytes of the results CSV of a local ``--n-jobs 1`` run."""
    output = data / "local.csv"
    assert _run_ml(data, output, "--n-jobs", "1") == 0
    return output.read_bytes()


@pytest.fixture(scope="module")
def cluster():
    """Address of a scheduler with two worker processes of one thread each."""
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as local_cluster:
        yield local_cluster.scheduler_address


def _generate(*args):
    return run(generate_datasets.main, [*map(str, args), "--quiet"])


def _run_ml_argv(data, output, *extra):
    return [
        "-i",
        str(data / "gen"),
        "-t",
        str(data / "test.csv"),
        "-o",
        str(output),
        "--models",
        *MODELS,
        "--seeds",
        *SEEDS,
        "--cache-dir",
        str(data / "cache"),
        "--quiet",
        *extra,
    ]


def _run_ml(data, output, *extra):
    return run(run_ml.main, _run_ml_argv(data, output, *extra))


def _folder_bytes(folder):
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(Path(folder).rglob("*"))
        if path.is_file()
    }


def _closed_port_address():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def test_dask_run_ml_equals_local(data, local_results, cluster, tmp_path):
    output = tmp_path / "cluster.csv"
    assert _run_ml(data, output, "--scheduler", cluster) == 0
    assert len(output.read_bytes().splitlines()) == N_ROWS
    assert output.read_bytes() == local_results


def test_dask_run_ml_resumes_on_cluster(data, local_results, cluster, tmp_path):
    output = tmp_path / "resumed.csv"
    # Rows are in canonical order, so the last six are the last batch of level 4.
    first_rows = b"".join(local_results.splitlines(keepends=True)[:-6])
    output.write_bytes(first_rows)
    sidecar = (data / "local.csv.meta.json").read_bytes()
    (tmp_path / "resumed.csv.meta.json").write_bytes(sidecar)
    assert _run_ml(data, output, "--scheduler", cluster) == 0
    assert output.read_bytes() == local_results


def test_dask_generate_local_cluster_equals_local(data, tmp_path):
    output = tmp_path / "gen"
    arguments = ("-i", data / "train.csv", "-o", output, *GENERATION)
    assert _generate(*arguments, "--scheduler", "local", "--n-jobs", "2") == 0
    assert _folder_bytes(output) == _folder_bytes(data / "gen")
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert sorted(manifest["levels"]) == ["0", "2", "4"]


def _dask_command(folder, *args):
    """Start the ``dask`` command of this environment in its own session."""
    log = open(folder / f"{args[0]}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "dask"), *args],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return process


def _stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def command_cluster(tmp_path):
    """Address of ``dask scheduler`` with ``dask worker --nworkers 2``, as commands."""
    scheduler_file = tmp_path / "scheduler.json"
    scheduler = _dask_command(
        tmp_path,
        "scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--dashboard-address",
        "127.0.0.1:0",
        "--scheduler-file",
        str(scheduler_file),
    )
    workers = None
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.is_file() and time.monotonic() < deadline:
            assert scheduler.poll() is None, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.1)
        workers = _dask_command(
            tmp_path,
            "worker",
            "--scheduler-file",
            str(scheduler_file),
            "--nworkers",
            "2",
            "--nthreads",
            "1",
            "--host",
            "127.0.0.1",
            # The worker's HTTP server listens on every interface by default.
            "--dashboard-address",
            "127.0.0.1:0",
        )
        with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield json.loads(scheduler_file.read_text())["address"]
    finally:
        if workers is not None:
            _stop(workers)
        _stop(scheduler)


def _rows(path):
    return len(path.read_bytes().splitlines()) if path.is_file() else 0


def test_dask_run_ml_survives_killed_worker(
    data, local_results, command_cluster, tmp_path
):
    output = tmp_path / "killed.csv"
    argv = _run_ml_argv(data, output, "--scheduler", command_cluster)
    with open(tmp_path / "run_ml.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "run_ml.py"), *argv],
            cwd=tmp_path,
            stderr=log,
        )
    with Client(command_cluster, timeout="30s") as client:
        busy = []
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if _rows(output) > 2:
                processing = client.processing()
                busy = [worker for worker, keys in processing.items() if keys]
                if busy:
                    break
            time.sleep(0.02)
        assert process.poll() is None, "run_ml.py finished before a worker was killed"
        assert busy, "no worker was running a task"
        victim = min(busy)
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        rows_at_kill = _rows(output)
        process.wait(timeout=300)
    assert process.returncode == 0, (tmp_path / "run_ml.log").read_text()
    assert rows_at_kill < N_ROWS
    assert output.read_bytes() == local_results


def test_dask_run_ml_unreachable_scheduler(data, tmp_path, capsys):
    address = _closed_port_address()
    started = time.monotonic()
    status = _run_ml(data, tmp_path / "out.csv", "--scheduler", address)
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert elapsed < 30
    assert len(err.splitlines()) == 1
    assert address in err
    assert "dask scheduler" in err
    assert not (tmp_path / "out.csv").exists()


def test_dask_generate_unreachable_scheduler(data, tmp_path, capsys):
    address = _closed_port_address()
    arguments = ("-i", data / "train.csv", "-o", tmp_path / "gen", *GENERATION)
    status = _generate(*arguments, "--scheduler", address)
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1
    assert "no Dask scheduler responded within 8 s" in err
    assert not (tmp_path / "gen").exists()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def http_address():
    """Address of an HTTP server on 127.0.0.1, a port where no scheduler listens."""
    server = http.server.HTTPServer(("127.0.0.1", 0), QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_dask_run_ml_rejects_other_server(data, tmp_path, capsys, http_address):
    started = time.monotonic()
    status = _run_ml(data, tmp_path / "out.csv", "--scheduler", http_address)
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert elapsed < 30
    assert len(err.splitlines()) == 1
    assert "no Dask scheduler responded within 8 s" in err
    assert not (tmp_path / "out.csv").exists()


def test_dask_generate_rejects_other_server(data, tmp_path, capsys, http_address):
    arguments = ("-i", data / "train.csv", "-o", tmp_path / "gen", *GENERATION)
    status = _generate(*arguments, "--scheduler", http_address)
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert "no Dask scheduler responded within 8 s" in err
    assert not (tmp_path / "gen").exists()


BAD_ADDRESSES = [
    ("foo", "invalid --scheduler 'foo': missing port number"),
    ("127.0.0.1", "invalid --scheduler '127.0.0.1': missing port number"),
    ("xyz://127.0.0.1:8786", "unknown address scheme 'xyz'"),
]


@pytest.mark.parametrize(("address", "message"), BAD_ADDRESSES)
def test_check_scheduler_rejects_address(address, message):
    with pytest.raises(InputError, match=message):
        check_scheduler(address)


def test_dask_executor_sends_lost_array_again(cluster, caplog):
    with (
        Client(cluster, set_as_default=False) as client,
        DaskExecutor(client) as executor,
    ):
        handle = executor.share(np.arange(10))
        # Dask cancels a scattered array whose last worker stopped.
        client.cancel(handle)
        tasks = [(number, np.sum, {"a": handle}) for number in range(3)]
        results = dict(executor.run(tasks))
        executor.release(handle)
    assert results == {0: 45, 1: 45, 2: 45}
    assert "sending it again" in caplog.text


def test_check_scheduler_accepts_local_and_cluster(cluster):
    assert check_scheduler("local") is None
    assert check_scheduler(cluster) is None
