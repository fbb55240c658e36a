"""Fixtures shared by the tests.

Tests that need the real MNIST files read them from the folder that the
``MNIST_DIR`` environment variable names, by default ``../shared/mnist`` beside
the repository. They are skipped when the folder is missing, except under CI
(``CI=true``), where a missing folder fails them.
"""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MNIST_DIR = REPO_ROOT.parent / "shared" / "mnist"
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@pytest.fixture(scope="session")
def mnist_dir():
    """Path of the folder with the four MNIST IDX files."""
    path = Path(os.environ.get("MNIST_DIR", DEFAULT_MNIST_DIR))
    missing = [name for name in MNIST_FILES if not (path / name).is_file()]
    if missing:
        message = f"MNIST files {missing} not found in {path}; set MNIST_DIR"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
