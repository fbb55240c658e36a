"""Download and verify the four MNIST IDX files.

The files are checked by the sha256 of their uncompressed content, because the gzip
wrappers differ between mirrors while the content is the same.
"""

import gzip
import hashlib
import http.client
import logging
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from tqdm.auto import tqdm

from .cli import InputError
from .csvio import GZIP_MAGIC, atomic_write, read_decompressed
from .idx import pair_arrays, parse_idx

logger = logging.getLogger(__name__)

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"

# sha256 of each uncompressed file.
MNIST_SHA256 = {
    TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# Folders that serve the files as NAME.gz, tried in this order.
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# Seconds to wait for a connection and for each read from it.
DEFAULT_TIMEOUT = 30.0
_READ_BYTES = 1 << 20


class DownloadError(InputError):
    """No mirror delivered a valid copy of an MNIST file."""


def find_mnist_file(folder, name):
    """Return the path of ``NAME.gz`` or, failing that, ``NAME`` in ``folder``.

    Parameters
    ----------
    folder : str or os.PathLike
        Folder to look in.
    name : str
        File name without ``.gz``, a key of :data:`MNIST_SHA256`.

    Returns
    -------
    pathlib.Path or None
        The file, or None when neither exists.
    """
    for candidate in (Path(folder) / f"{name}.gz", Path(folder) / name):
        if candidate.is_file():
            return candidate
    return None


def read_verified(path, name):
    """Read an MNIST file, plain or gzip-compressed, and check its sha256.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    name : str
        Which MNIST file it is, a key of :data:`MNIST_SHA256`.

    Returns
    -------
    bytes
        The uncompressed content.

    Raises
    ------
    InputError
        If the file is a corrupt gzip file or its content has another sha256.
    """
    content = read_decompressed(path)
    problem = _checksum_problem(content, name)
    if problem:
        raise InputError(
            f"{path}: {problem}; the file is damaged or is not the MNIST "
            f"{name} file, so download it again (convert_dataset.py --download)"
        )
    return content


def _checksum_problem(content, name):
    actual = hashlib.sha256(content).hexdigest()
    if actual == MNIST_SHA256[name]:
        return None
    return (
        f"sha256 of the uncompressed content is {actual}, expected {MNIST_SHA256[name]}"
    )


def verify_mnist_dir(path):
    """Check that a folder contains the four MNIST files with the right content.

    Each file may be gzip-compressed (``NAME.gz``) or not (``NAME``).

    Parameters
    ----------
    path : str or os.PathLike
        The folder.

    Returns
    -------
    dict of str to pathlib.Path
        The file found for each name of :data:`MNIST_SHA256`.

    Raises
    ------
    InputError
        If the folder is missing, a file is missing or a file has the wrong content.
    """
    paths = _find_all(path)
    for name, file in paths.items():
        read_verified(file, name)
    return paths


def load_mnist_dir(path):
    """Read the four MNIST files of a folder, checking their sha256.

    Parameters
    ----------
    path : str or os.PathLike
        Folder as :func:`verify_mnist_dir` expects it.

    Returns
    -------
    X_train : ndarray of shape (60000, 784), dtype uint8
    y_train : ndarray of shape (60000,), dtype int64
    X_test : ndarray of shape (10000, 784), dtype uint8
    y_test : ndarray of shape (10000,), dtype int64
    """
    paths = _find_all(path)
    arrays = {}
    for name, file in paths.items():
        arrays[name] = parse_idx(read_verified(file, name), source=file)
    X_train, y_train = pair_arrays(
        arrays[TRAIN_IMAGES],
        paths[TRAIN_IMAGES],
        arrays[TRAIN_LABELS],
        paths[TRAIN_LABELS],
    )
    X_test, y_test = pair_arrays(
        arrays[TEST_IMAGES], paths[TEST_IMAGES], arrays[TEST_LABELS], paths[TEST_LABELS]
    )
    return X_train, y_train, X_test, y_test


def _find_all(folder):
    if not Path(folder).is_dir():
        raise InputError(
            f"MNIST folder {folder} not found: give the folder with the four MNIST "
            "files, or download them with --download"
        )
    paths = {name: find_mnist_file(folder, name) for name in MNIST_SHA256}
    missing = [name for name, file in paths.items() if file is None]
    if missing:
        raise InputError(
            f"missing MNIST files in {folder}: {', '.join(missing)} (expected as "
            "NAME.gz or NAME); copy them there, or download them with --download"
        )
    return paths


def download_mnist(
    dest_dir, *, mirrors=DEFAULT_MIRRORS, timeout=DEFAULT_TIMEOUT, progress=False
):
    """Download the four MNIST files into a folder, skipping valid ones already there.

    For each file the mirrors are tried in order. A mirror is skipped after an HTTP
    error, a connection error, a time-out or a download whose uncompressed sha256 is
    wrong. A file is written as ``NAME.gz`` (``NAME`` if the mirror serves it
    uncompressed) and only once it is verified.

    Parameters
    ----------
    dest_dir : str or os.PathLike
        Folder for the files, created if missing.
    mirrors : sequence of str, default DEFAULT_MIRRORS
        Base URLs that serve ``NAME.gz``. Any URL scheme that urllib supports works,
        including ``file://``.
    timeout : float, default DEFAULT_TIMEOUT
        Seconds to wait for a connection and for each read from it.
    progress : bool, default False
        Whether to show a tqdm progress bar per download.

    Returns
    -------
    dict of str to pathlib.Path
        The verified file for each name of :data:`MNIST_SHA256`.

    Raises
    ------
    DownloadError
        If no mirror delivered a valid copy of a file. The message names every URL
        tried and why it failed.
    """
    mirrors = list(mirrors)
    if not mirrors:
        raise ValueError("mirrors is empty: give at least one base URL")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in MNIST_SHA256:
        existing = find_mnist_file(dest_dir, name)
        if existing is not None:
            try:
                read_verified(existing, name)
            except InputError as exc:
                logger.warning("downloading %s again: %s", name, exc)
            else:
                logger.info("%s is present and valid, skipping its download", existing)
                paths[name] = existing
                continue
        paths[name] = _download_file(name, dest_dir, mirrors, timeout, progress)
        if existing is not None and existing != paths[name]:
            existing.unlink()
    return paths


def _download_file(name, dest_dir, mirrors, timeout, progress):
    failures = []
    for mirror in mirrors:
        url = f"{mirror.rstrip('/')}/{name}.gz"
        logger.info("downloading %s", url)
        payload, reason = _fetch_verified(url, name, timeout, progress)
        if reason is None:
            compressed = payload.startswith(GZIP_MAGIC)
            target = dest_dir / (f"{name}.gz" if compressed else name)
            with atomic_write(target) as file:
                file.write(payload)
            logger.info("wrote %s (%d bytes)", target, len(payload))
            return target
        logger.warning("download of %s failed: %s", url, reason)
        failures.append(f"{url}: {reason}")
    raise DownloadError(
        f"could not download {name}: {'; '.join(failures)}. Check the network "
        "connection, give other mirrors with --mirror URL, or copy the MNIST files "
        "into a folder and use --mnist-dir"
    )


def _fetch_verified(url, name, timeout, progress):
    """Download ``url`` and return (payload, None), or (None, why it failed)."""
    try:
        payload = _fetch(url, timeout, progress)
    except urllib.error.HTTPError as exc:
        return None, f"HTTP error {exc.code} {exc.reason}"
    except ValueError as exc:
        return None, f"invalid URL ({exc})"
    except http.client.HTTPException as exc:
        return None, f"invalid HTTP response ({exc!r})"
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        return None, _describe_connection_error(exc, timeout)

    content = payload
    if payload.startswith(GZIP_MAGIC):
        try:
            content = gzip.decompress(payload)
        except (OSError, EOFError, zlib.error) as exc:
            return None, f"invalid gzip data ({exc})"
    return payload, _checksum_problem(content, name)


def _describe_connection_error(exc, timeout):
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout:g} s"
    return f"connection failed: {reason}"


def _fetch(url, timeout, progress):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        size = response.headers.get("Content-Length")
        total = int(size) if size and size.isdigit() else None
        parts = []
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=url.rsplit("/", 1)[-1],
            disable=not progress,
            leave=False,
        ) as bar:
            while part := response.read(_READ_BYTES):
                parts.append(part)
                bar.update(len(part))
    data = b"".join(parts)
    if total is not None and len(data) != total:
        raise http.client.IncompleteRead(data, total - len(data))
    return data
