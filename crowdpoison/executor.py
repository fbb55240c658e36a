"""Run independent tasks in worker processes, one BLAS/OpenMP thread each.

A task is a top-level function called with picklable keyword arguments. Large
arrays go through :meth:`LokyExecutor.share`, which stores each array once in a
``.npy`` file; tasks receive a small :class:`SharedArray` handle and call
:func:`resolve`, which memory-maps the file once per worker process. Another
backend only needs ``share`` (a Dask client would ``scatter(..., broadcast=True)``
and return the future, which Dask replaces by the array before the task runs) and
``run``.
"""

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
from threadpoolctl import threadpool_limits

logger = logging.getLogger(__name__)

# Memory-mapped arrays per worker process, keyed by file path.
_RESOLVED = {}
MAX_RESOLVED = 8
# Seconds between two checks of a worker process that its parent still runs.
PARENT_POLL_SECONDS = 1.0
# Process id of the parent that this worker process watches, once it does.
_WATCHED_PARENT = None


@dataclass(frozen=True)
class SharedArray:
    """Handle of an array stored once in a ``.npy`` file for the workers."""

    path: str
    shape: tuple
    dtype: str


def resolve(value):
    """Return the array behind a :class:`SharedArray`, or ``value`` itself."""
    if not isinstance(value, SharedArray):
        return value
    array = _RESOLVED.get(value.path)
    if array is None:
        if len(_RESOLVED) >= MAX_RESOLVED:
            _RESOLVED.pop(next(iter(_RESOLVED)))
        array = np.load(value.path, mmap_mode="r")
        _RESOLVED[value.path] = array
    return array


def call_with_one_thread(tag, function, kwargs, parent_pid=None):
    """Call ``function(**kwargs)`` with BLAS and OpenMP limited to one thread.

    Returns ``(tag, result)`` so that results arriving out of order can be matched
    to their task. With ``parent_pid``, a worker process first starts
    :func:`watch_parent`.
    """
    if parent_pid is not None:
        watch_parent(parent_pid)
    with threadpool_limits(limits=1):
        return tag, function(**kwargs)


def watch_parent(parent_pid):
    """Exit this worker process soon after the process ``parent_pid`` stops.

    Loky keeps its idle workers for minutes, and a worker in the middle of a
    fit finishes it, even when the main process was killed with SIGKILL. A
    daemon thread polls the parent process id and ends the worker when it
    changes. It does nothing in the main process itself (``n_jobs=1``) or when
    a watch already runs.
    """
    global _WATCHED_PARENT
    if _WATCHED_PARENT is not None or os.getpid() == parent_pid:
        return
    if os.getppid() != parent_pid:
        return
    _WATCHED_PARENT = parent_pid

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def effective_n_jobs(n_jobs):
    """Return the number of workers that ``n_jobs`` means (-1: every core)."""
    return joblib.effective_n_jobs(n_jobs)


class LokyExecutor:
    """Run tasks with joblib's loky backend and collect results as they finish.

    Parameters
    ----------
    n_jobs : int
        Worker processes; -1 uses every core. With 1, tasks run in this process.
    temp_dir : path-like, optional
        Folder for the shared arrays; a new temporary folder by default.
    """

    def __init__(self, n_jobs, temp_dir=None):
        self.n_jobs = n_jobs
        self._own_dir = temp_dir is None
        if temp_dir is None:
            temp_dir = tempfile.mkdtemp(prefix="crowdpoison-")
        self.temp_dir = Path(temp_dir)
        self._counter = 0
        # max_nbytes=None: arrays travel only through share(), never pickled twice.
        self._parallel = joblib.Parallel(
            n_jobs=n_jobs,
            backend="loky",
            return_as="generator_unordered",
            max_nbytes=None,
        )
        self._parallel.__enter__()

    def share(self, array):
        """Store ``array`` once for the workers and return its handle."""
        self._counter += 1
        path = self.temp_dir / f"array-{self._counter}.npy"
        np.save(path, np.ascontiguousarray(array))
        return SharedArray(str(path), tuple(array.shape), str(array.dtype))

    def release(self, handle):
        """Delete the file behind a handle returned by :meth:`share`."""
        _RESOLVED.pop(handle.path, None)
        try:
            os.remove(handle.path)
        except FileNotFoundError:
            pass

    def run(self, tasks):
        """Run tasks and yield ``(tag, result)`` in the order they finish.

        Parameters
        ----------
        tasks : iterable of (tag, function, kwargs)
            ``function`` must be a top-level function and ``kwargs`` picklable.
        """
        parent_pid = os.getpid()
        calls = (
            joblib.delayed(call_with_one_thread)(tag, function, kwargs, parent_pid)
            for tag, function, kwargs in tasks
        )
        yield from self._parallel(calls)

    def close(self):
        """Stop the workers and delete the shared arrays."""
        self._parallel.__exit__(None, None, None)
        _RESOLVED.clear()
        if self._own_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
