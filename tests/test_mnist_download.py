"""Tests of crowdpoison.mnist: downloads from HTTP servers on 127.0.0.1 and checks.

Every server runs in this process on 127.0.0.1; nothing else is contacted.
"""

import contextlib
import functools
import gzip
import http.server
import logging
import shutil
import socket
import threading

import pytest

from crowdpoison.cli import InputError
from crowdpoison.mnist import (
    MNIST_SHA256,
    TEST_LABELS,
    DownloadError,
    download_mnist,
    load_mnist_dir,
    verify_mnist_dir,
)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serve files from a folder without logging each request on stderr."""

    def log_message(self, format, *args):
        pass


@contextlib.contextmanager
def serve_folder(folder):
    """Serve ``folder`` over HTTP on 127.0.0.1 and yield its base URL and request log."""
    requests = []

    class Handler(QuietHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    handler = functools.partial(Handler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/mnist/", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def silent_server():
    """Yield the URL of a socket on 127.0.0.1 that accepts connections but never responds."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"


def closed_port_url():
    """Return a URL on 127.0.0.1 whose port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def mirror_root(mnist_dir, tmp_path_factory):
    """Folder whose mnist/ subfolder serves the real MNIST files."""
    root = tmp_path_factory.mktemp("mirror")
    (root / "mnist").symlink_to(mnist_dir.resolve(), target_is_directory=True)
    return root


@pytest.fixture
def cache_with_images(mnist_dir, tmp_path):
    """Download folder that already contains every MNIST file except the test labels."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in MNIST_SHA256:
        if name != TEST_LABELS:
            (cache / f"{name}.gz").symlink_to(mnist_dir / f"{name}.gz")
    return cache


def bad_mirror_root(mnist_dir, root):
    """Make ``root/mnist`` serve a test label file with one label changed."""
    (root / "mnist").mkdir(parents=True)
    content = bytearray(gzip.decompress((mnist_dir / f"{TEST_LABELS}.gz").read_bytes()))
    content[8] = (content[8] + 1) % 10
    (root / "mnist" / f"{TEST_LABELS}.gz").write_bytes(gzip.compress(bytes(content)))
    return root


def test_download_mnist_after_failing_mirrors(mirror_root, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="crowdpoison.mnist")
    empty = tmp_path / "empty"
    (empty / "mnist").mkdir(parents=True)
    dead = closed_port_url()
    with serve_folder(empty) as (missing, _), serve_folder(mirror_root) as (good, hits):
        paths = download_mnist(tmp_path / "cache", mirrors=[dead, missing, good])

    assert sorted(paths) == sorted(MNIST_SHA256)
    for name, path in paths.items():
        assert path == tmp_path / "cache" / f"{name}.gz"
    assert len(hits) == 4
    assert verify_mnist_dir(tmp_path / "cache") == paths
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        f"{name}.gz" for name in MNIST_SHA256
    )
    assert f"downloading {good}{TEST_LABELS}.gz" in caplog.text
    assert "connection failed" in caplog.text
    assert "HTTP error 404" in caplog.text


def test_download_mnist_checksum_mismatch(
    mnist_dir, mirror_root, cache_with_images, tmp_path, caplog
):
    bad_root = bad_mirror_root(mnist_dir, tmp_path / "bad")
    with (
        serve_folder(bad_root) as (bad, bad_hits),
        serve_folder(mirror_root) as (
            good,
            good_hits,
        ),
    ):
        paths = download_mnist(cache_with_images, mirrors=[bad, good])

    assert bad_hits == [f"/mnist/{TEST_LABELS}.gz"]
    assert good_hits == [f"/mnist/{TEST_LABELS}.gz"]
    assert "sha256 of the uncompressed content is" in caplog.text
    assert (
        paths[TEST_LABELS].read_bytes()
        == (mnist_dir / f"{TEST_LABELS}.gz").read_bytes()
    )


def test_download_mnist_all_mirrors_fail(mnist_dir, cache_with_images, tmp_path):
    bad_root = bad_mirror_root(mnist_dir, tmp_path / "bad")
    corrupt_root = tmp_path / "corrupt"
    (corrupt_root / "mnist").mkdir(parents=True)
    (corrupt_root / "mnist" / f"{TEST_LABELS}.gz").write_bytes(b"\x1f\x8b" + bytes(30))
    dead = closed_port_url()
    with (
        serve_folder(bad_root) as (bad, _),
        serve_folder(corrupt_root) as (corrupt, _),
        silent_server() as silent,
        pytest.raises(DownloadError) as error,
    ):
        mirrors = [dead, bad, corrupt, silent, "nonsense"]
        download_mnist(cache_with_images, mirrors=mirrors, timeout=0.3)

    message = str(error.value)
    assert message.startswith(f"could not download {TEST_LABELS}: ")
    assert f"{dead}{TEST_LABELS}.gz: connection failed" in message
    assert f"{bad}{TEST_LABELS}.gz: sha256 of the uncompressed content" in message
    assert f"{corrupt}{TEST_LABELS}.gz: invalid gzip data" in message
    assert f"{silent}{TEST_LABELS}.gz: timed out after 0.3 s" in message
    assert f"nonsense/{TEST_LABELS}.gz: invalid URL" in message
    assert "\n" not in message
    assert not (cache_with_images / f"{TEST_LABELS}.gz").exists()
    assert not any(path.name.endswith(".tmp") for path in cache_with_images.iterdir())


def test_download_mnist_skips_valid_files(mirror_root, cache_with_images, caplog):
    caplog.set_level(logging.INFO, logger="crowdpoison.mnist")
    with serve_folder(mirror_root) as (good, hits):
        download_mnist(cache_with_images, mirrors=[good])
        assert hits == [f"/mnist/{TEST_LABELS}.gz"]
        download_mnist(cache_with_images, mirrors=[good])
        assert hits == [f"/mnist/{TEST_LABELS}.gz"]
    assert "is present and valid, skipping its download" in caplog.text


def test_download_mnist_replaces_invalid_file(mirror_root, cache_with_images, caplog):
    stale = cache_with_images / TEST_LABELS
    stale.write_bytes(b"not the labels")
    with serve_folder(mirror_root) as (good, hits):
        paths = download_mnist(cache_with_images, mirrors=[good])
    assert hits == [f"/mnist/{TEST_LABELS}.gz"]
    assert paths[TEST_LABELS] == cache_with_images / f"{TEST_LABELS}.gz"
    assert not stale.exists()
    assert f"downloading {TEST_LABELS} again" in caplog.text


def test_download_mnist_file_url(mnist_dir, cache_with_images):
    paths = download_mnist(cache_with_images, mirrors=[mnist_dir.resolve().as_uri()])
    assert paths[TEST_LABELS].is_file()


def test_verify_mnist_dir_real(mnist_dir):
    paths = verify_mnist_dir(mnist_dir)
    assert paths[TEST_LABELS] == mnist_dir / f"{TEST_LABELS}.gz"


def test_verify_mnist_dir_uncompressed(mnist_dir, cache_with_images):
    raw = gzip.decompress((mnist_dir / f"{TEST_LABELS}.gz").read_bytes())
    (cache_with_images / TEST_LABELS).write_bytes(raw)
    assert verify_mnist_dir(cache_with_images)[TEST_LABELS].name == TEST_LABELS


def test_load_mnist_dir_shapes(mnist_dir):
    X_train, y_train, X_test, y_test = load_mnist_dir(mnist_dir)
    assert X_train.shape == (60000, 784)
    assert y_train.shape == (60000,)
    assert X_test.shape == (10000, 784)
    assert y_test[:3].tolist() == [7, 2, 1]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            "missing",
            rf"missing MNIST files in .*: {TEST_LABELS} \(expected as NAME\.gz or NAME\)",
        ),
        (
            "modified",
            r"sha256 of the uncompressed content is [0-9a-f]{64}, expected "
            + MNIST_SHA256[TEST_LABELS],
        ),
        ("corrupt", r"invalid gzip file"),
    ],
)
def test_verify_mnist_dir_invalid(mnist_dir, cache_with_images, change, match):
    target = cache_with_images / f"{TEST_LABELS}.gz"
    if change == "modified":
        bad_mirror_root(mnist_dir, cache_with_images.parent / "bad")
        shutil.copy(cache_with_images.parent / "bad" / "mnist" / target.name, target)
    elif change == "corrupt":
        target.write_bytes(b"\x1f\x8b" + bytes(40))
    with pytest.raises(InputError, match=match):
        verify_mnist_dir(cache_with_images)


def test_verify_mnist_dir_missing_folder(tmp_path):
    with pytest.raises(InputError, match=r"MNIST folder .*nowhere not found"):
        verify_mnist_dir(tmp_path / "nowhere")
