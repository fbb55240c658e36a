"""Fixtures shared by the tests.

Tests that need the real MNIST files read them from the folder that the
``MNIST_DIR`` environment variable names, by default ``../shared/mnist`` beside
the repository. They are skipped when the folder is missing, except under CI
(``CI=true``), where a missing folder fails them.
"""

import functools
import os
import signal
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


@pytest.fixture
def kill_and_wait_for_children():
    """Return a function that kills a process and its children's survivors.

    ``kill(process, timeout=20)`` sends SIGKILL to ``process`` and returns its
    child processes still alive ``timeout`` seconds later. The survivors are
    killed before it returns, so that a failing test leaves no process behind.
    """
    psutil = pytest.importorskip("psutil")
    return functools.partial(_kill_and_wait, psutil)


def _kill_and_wait(psutil, process, timeout=20):
    children = psutil.Process(process.pid).children(recursive=True)
    assert children, "the process has no child process to watch"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        child.kill()
    return alive
