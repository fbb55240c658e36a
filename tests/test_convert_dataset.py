"""End-to-end tests of convert_dataset.py through its main()."""

import contextlib
import functools
import gzip
import http.server
import re
import socket
import threading

import numpy as np
import pytest

import convert_dataset
from crowdpoison.cli import run
from crowdpoison.csvio import read_labelled_csv
from crowdpoison.idx import read_idx_pair


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextlib.contextmanager
def serve_folder(folder):
    """Serve ``folder`` over HTTP on 127.0.0.1 and yield its base URL."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url():
    """Return a URL on 127.0.0.1 whose port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def run_status(argv):
    """Run the script like the command line does and return its exit status."""
    try:
        return run(convert_dataset.main, argv)
    except SystemExit as exc:
        return exc.code


def test_convert_dataset_mnist_dir(mnist_dir, tmp_path):
    out = tmp_path / "out"
    assert (
        convert_dataset.main(["--mnist-dir", str(mnist_dir), "-o", str(out), "-q"]) == 0
    )

    assert sorted(path.name for path in out.iterdir()) == ["test.csv", "train.csv"]
    for split, prefix in (("train", "train"), ("test", "t10k")):
        X, y = read_labelled_csv(out / f"{split}.csv", n_features=784, n_classes=10)
        X_idx, y_idx = read_idx_pair(
            mnist_dir / f"{prefix}-images-idx3-ubyte.gz",
            mnist_dir / f"{prefix}-labels-idx1-ubyte.gz",
        )
        np.testing.assert_array_equal(X, X_idx)
        np.testing.assert_array_equal(y, y_idx)


def test_convert_dataset_images_gzip_output(mnist_dir, tmp_path):
    out = tmp_path / "sub" / "test.csv.gz"
    argv = [
        "--images",
        str(mnist_dir / "t10k-images-idx3-ubyte.gz"),
        "--labels",
        str(mnist_dir / "t10k-labels-idx1-ubyte.gz"),
        "-o",
        str(out),
        "-q",
    ]
    assert convert_dataset.main(argv) == 0
    assert gzip.decompress(out.read_bytes()).startswith(b"7,0,0,")
    X, y = read_labelled_csv(out)
    assert X.shape == (10000, 784)
    assert y[:3].tolist() == [7, 2, 1]


def test_convert_dataset_digits_split(tmp_path):
    out = tmp_path / "digits"
    assert convert_dataset.main(["--digits", "-o", str(out), "-q"]) == 0

    X_train, y_train = read_labelled_csv(out / "train.csv")
    X_test, y_test = read_labelled_csv(out / "test.csv")
    assert X_train.shape == (1347, 64)
    assert X_test.shape == (450, 64)
    assert X_train.max() == 16
    train_counts = np.bincount(y_train, minlength=10)
    test_counts = np.bincount(y_test, minlength=10)
    np.testing.assert_allclose(
        test_counts / (train_counts + test_counts), 0.25, atol=0.02
    )


def test_convert_dataset_digits_seed(tmp_path):
    outputs = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        out = tmp_path / name
        argv = ["--digits", "--seed", seed, "--test-size", "0.2", "-o", str(out), "-q"]
        assert convert_dataset.main(argv) == 0
        outputs[name] = (out / "train.csv").read_bytes() + (
            out / "test.csv"
        ).read_bytes()
    assert outputs["a"] == outputs["b"]
    assert outputs["a"] != outputs["c"]
    assert len(read_labelled_csv(tmp_path / "a" / "test.csv")[1]) == 360


def test_convert_dataset_download(mnist_dir, tmp_path):
    root = tmp_path / "mirror"
    root.mkdir()
    (root / "mnist").symlink_to(mnist_dir.resolve(), target_is_directory=True)
    cache, out = tmp_path / "cache", tmp_path / "out"
    with serve_folder(root) as base:
        argv = [
            "--download",
            "--cache-dir",
            str(cache),
            "--mirror",
            closed_port_url(),
            "--mirror",
            f"{base}mnist/",
            "-o",
            str(out),
            "-q",
        ]
        assert convert_dataset.main(argv) == 0
    assert len(list(cache.glob("*.gz"))) == 4
    _, y = read_labelled_csv(out / "test.csv")
    assert y[:3].tolist() == [7, 2, 1]


def test_convert_dataset_overwrite(tmp_path):
    out = tmp_path / "digits"
    out.mkdir()
    (out / "test.csv").write_text("old\n")
    assert run_status(["--digits", "-o", str(out), "-q"]) == 2
    assert (out / "test.csv").read_text() == "old\n"
    assert not (out / "train.csv").exists()
    assert convert_dataset.main(["--digits", "-o", str(out), "--overwrite", "-q"]) == 0
    assert (out / "test.csv").read_text() != "old\n"


def make_bad_inputs(tmp_path, mnist_dir):
    """Create the files that the bad-input cases refer to."""
    (tmp_path / "corrupt.gz").write_bytes(b"\x1f\x8b" + bytes(30))
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "train-images-idx3-ubyte.gz").symlink_to(
        mnist_dir / "train-images-idx3-ubyte.gz"
    )
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "train.csv").write_text("")
    (tmp_path / "ok.csv").write_text("0,1\n")
    # Valid IDX headers of 0 images of 28 x 28 pixels and of 0 labels.
    (tmp_path / "no-images").write_bytes(
        bytes([0, 0, 8, 3, 0, 0, 0, 0]) + bytes([0, 0, 0, 28]) * 2
    )
    (tmp_path / "no-labels").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 0]))


BAD_INPUTS = [
    (["--images", "{mnist}/t10k-images-idx3-ubyte.gz"], r"--images needs --labels"),
    (["--digits", "--labels", "x"], r"--labels goes with --images"),
    (
        ["--digits", "--mirror", "http://127.0.0.1:1/"],
        (
            r"--mirror is only valid with "
            r"--download"
        ),
    ),
    (["--mnist-dir", "{mnist}", "--seed", "3"], r"--seed is only valid with --digits"),
    (
        ["--digits", "--test-size", "1.5"],
        (
            r"invalid --test-size 1\.5: expected a "
            r"fraction in \(0, 1\)"
        ),
    ),
    (["--download", "--timeout", "0"], r"invalid --timeout 0"),
    (["--digits", "--images", "x"], r"not allowed with argument"),
    (["--digits", "--seed", "-1"], r"argument --seed: invalid value '-1'"),
    (
        [
            "--images",
            "{tmp}/corrupt.gz",
            "--labels",
            "{mnist}/t10k-labels-idx1-ubyte.gz",
        ],
        r"corrupt\.gz: invalid gzip file",
    ),
    (
        [
            "--images",
            "{mnist}/t10k-images-idx3-ubyte.gz",
            "--labels",
            "{mnist}/train-labels-idx1-ubyte.gz",
        ],
        r"has 10000 images but .*train-labels-idx1-ubyte\.gz has 60000 labels",
    ),
    (
        ["--images", "{tmp}/missing", "--labels", "{tmp}/missing"],
        r"missing: not found; check the path",
    ),
    (["--mnist-dir", "{tmp}/nowhere"], r"MNIST folder .*nowhere not found"),
    (
        ["--mnist-dir", "{tmp}/partial"],
        (
            r"missing MNIST files in .*partial: train-labels-idx1-ubyte, "
            r"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
        ),
    ),
    (
        ["--mnist-dir", "{mnist}", "-o", "{tmp}/taken"],
        (
            r"taken/train\.csv exists: pass "
            r"--overwrite"
        ),
    ),
    (
        ["--download", "--cache-dir", "{tmp}/cache", "--mirror", "{dead}"],
        r"could not download train-images-idx3-ubyte: .*connection failed",
    ),
    (
        ["--images", "{tmp}/no-images", "--labels", "{tmp}/no-labels"],
        r"no-images contains 0 images \(its IDX header gives 0 x 28 x 28\)",
    ),
    (
        ["--digits", "--test-size", "0.001"],
        (
            r"invalid --test-size 0\.001: it puts 2 of the 1797 images in the test "
            r"set, .* 10 classes in each set; give a --test-size from 0\.0051 to "
            r"0\.9944$"
        ),
    ),
    (
        ["--digits", "--test-size", "0.999"],
        (
            r"invalid --test-size 0\.999: it puts 1796 of the 1797 images .* from "
            r"0\.0051 to 0\.9944$"
        ),
    ),
    (["--digits", "--seed", "4294967296"], r"--seed: invalid value '4294967296'"),
    (
        ["--digits", "-o", "{tmp}/ok.csv"],
        (
            r"-o .*ok\.csv is a file, but with --digits -o is the folder that receives "
            r"train\.csv and test\.csv"
        ),
    ),
    (
        ["--mnist-dir", "{mnist}", "-o", "{tmp}/ok.csv"],
        r"-o .*ok\.csv is a file, but with --mnist-dir -o is the folder",
    ),
    (
        ["--digits", "-o", "{tmp}/ok.csv/digits"],
        r"-o .*ok\.csv/digits lies below .*ok\.csv, which is a file, not a folder",
    ),
    (
        [
            "--images",
            "{mnist}/t10k-images-idx3-ubyte.gz",
            "--labels",
            "{mnist}/t10k-labels-idx1-ubyte.gz",
            "-o",
            "{tmp}/ok.csv/test.csv",
        ],
        r"-o .*ok\.csv/test\.csv lies below .*ok\.csv, which is a file",
    ),
    (
        [
            "--images",
            "{mnist}/t10k-images-idx3-ubyte.gz",
            "--labels",
            "{mnist}/t10k-labels-idx1-ubyte.gz",
            "-o",
            "{tmp}/taken",
        ],
        (
            r"output .*taken is a folder, expected a file name: with --images, -o is "
            r"the CSV file to write"
        ),
    ),
]


@pytest.mark.parametrize(("argv", "match"), BAD_INPUTS)
def test_convert_dataset_bad_input(mnist_dir, tmp_path, capsys, argv, match):
    make_bad_inputs(tmp_path, mnist_dir)
    names = {"mnist": mnist_dir, "tmp": tmp_path, "dead": closed_port_url()}
    argv = [arg.format(**names) for arg in argv]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "out")]
    before = sorted(tmp_path.rglob("*"))

    assert run_status([*argv, "-q"]) == 2

    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert ": error: " in lines[0]
    assert re.search(match, lines[0])
    after = [path for path in sorted(tmp_path.rglob("*")) if path not in before]
    assert [path for path in after if path.suffix in (".csv", ".tmp")] == []


def test_convert_dataset_digits_test_size_bounds(tmp_path):
    for test_size, n_test in (("0.0051", 10), ("0.9944", 1787)):
        out = tmp_path / test_size
        argv = ["--digits", "--test-size", test_size, "-o", str(out), "-q"]
        assert convert_dataset.main(argv) == 0
        assert len(read_labelled_csv(out / "test.csv")[1]) == n_test


def test_convert_dataset_csv_folder_warns(tmp_path, caplog):
    out = tmp_path / "digits.csv"
    assert convert_dataset.main(["--digits", "-o", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["test.csv", "train.csv"]
    assert f"-o {out} is used as a folder: with --digits" in caplog.text
