"""Run the grid's fits and the generation's levels on a Dask cluster.

``--scheduler ADDRESS`` connects a :class:`distributed.Client` to a running Dask
scheduler, and ``--scheduler local`` starts a :class:`distributed.LocalCluster` of
worker processes with one thread each on this machine.

Data moves through the client, so the workers need no access to the client's
files:

- run_ml.py reads the batch files and the test set on the client and scatters
  each level's pixels and labels, and the test set, to every worker
  (``broadcast=True``) once rather than with every task. Tasks receive the
  scattered futures, which Dask replaces by the arrays on the worker. The KNN
  models come from the neighbour search on the client, so no neighbour data goes
  to the workers. Results come back to the client, which appends them to the
  results CSV as they arrive.
- generate_datasets.py scatters the training pixels and labels. A worker
  simulates a level into a local temporary folder and returns the bytes of its
  files, and the client writes them into the output folder.

Dask's active memory manager later drops copies that no running task needs, and
a worker copies an array from another worker when a task needs it.

The naive engine is the exception: its tasks read the batch files and the test
CSV by path, so every worker must see them under the same path.

Every task runs with BLAS and OpenMP limited to one thread, as with the local
executor, so a cluster writes the same bytes as ``--n-jobs 1``.
"""

import asyncio
import hashlib
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from distributed import Client, Future, KilledWorker, LocalCluster, as_completed
from distributed.client import FutureCancelledError
from distributed.comm import connect
from distributed.comm.addressing import parse_address, parse_host_port
from distributed.comm.registry import get_backend
from tqdm import tqdm

import crowdpoison

from .cli import InputError
from .executor import call_with_one_thread, effective_n_jobs

logger = logging.getLogger(__name__)

LOCAL = "local"
# Seconds to wait for the scheduler to respond, and for a first worker to join it.
CONNECT_TIMEOUT = 5
WORKER_TIMEOUT = 60
# Seconds a scheduler has to respond to its identity request once connected.
IDENTITY_TIMEOUT = 3
# Packages whose source must be the same on the client and on every worker.
SOURCE_PACKAGES = ("crowdpoison", "bots")
EXAMPLE_ADDRESS = "tcp://10.0.0.5:8786"


# Connecting to a cluster


def check_scheduler(address):
    """Check that a Dask scheduler responds at ``address``, unless it is ``local``.

    Parameters
    ----------
    address : str
        ``--scheduler`` value: ``local`` or a scheduler address.

    Raises
    ------
    InputError
        If the address is invalid or the connection times out after
        :data:`CONNECT_TIMEOUT` seconds.
    """
    if address == LOCAL:
        return
    client = _connect(address)
    client.close()


def _check_address(address):
    # Checked before Client(), because a Client that fails on a malformed address
    # stays half open, and its cleanup at exit times out after 10 s with a
    # traceback (distributed 2026.8.0).
    try:
        scheme, location = parse_address(address)
        get_backend(scheme)
        parse_host_port(location)
    except ValueError as exc:
        raise InputError(
            f"invalid --scheduler {address!r}: {exc}. Pass '{LOCAL}' or a "
            f"scheduler address such as {EXAMPLE_ADDRESS}"
        ) from None


def _connect(address):
    _check_address(address)
    _identify_scheduler(address)
    try:
        return Client(address, timeout=f"{CONNECT_TIMEOUT}s", set_as_default=False)
    except OSError:
        raise _unreachable_error(address) from None


def _unreachable_error(address):
    deadline = CONNECT_TIMEOUT + IDENTITY_TIMEOUT
    return InputError(
        f"--scheduler {address}: no Dask scheduler responded within {deadline} s "
        "(nothing listens there, or another program does); start one with 'dask "
        "scheduler' on that machine and pass the address it prints (see "
        f"docs/cluster.md), or pass --scheduler {LOCAL}"
    )


def _identify_scheduler(address):
    """Check that a Dask scheduler responds at ``address`` within a few seconds.

    A ``Client`` pointed at a port where another kind of server listens waits
    for a reply that never comes (distributed 2026.8.0), so this sends the
    scheduler's ``identity`` request first, with a deadline.
    """

    async def identity():
        comm = await connect(address, timeout=CONNECT_TIMEOUT)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    deadline = CONNECT_TIMEOUT + IDENTITY_TIMEOUT
    try:
        reply = asyncio.run(asyncio.wait_for(identity(), deadline))
    except (OSError, TimeoutError):
        reply = None
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        raise _unreachable_error(address)


@contextmanager
def cluster_client(address, *, n_workers):
    """Connect to a Dask scheduler, or start a local cluster, and yield a client.

    Parameters
    ----------
    address : str
        ``local``, or the address of a running scheduler such as
        ``tcp://10.0.0.5:8786``.
    n_workers : int
        Worker processes of the local cluster; -1 uses every core. Ignored for
        a remote scheduler, whose workers are those started with ``dask worker``.

    Yields
    ------
    distributed.Client
        A client whose workers run the same source and library versions as this
        process.

    Raises
    ------
    InputError
        If the scheduler cannot be reached, no worker joins it within
        :data:`WORKER_TIMEOUT` seconds, or a worker runs other code.
    """
    distributed_logger = logging.getLogger("distributed")
    previous_level = distributed_logger.level
    if not logger.isEnabledFor(logging.DEBUG):
        # The scheduler of a local cluster runs in this process and logs every
        # connection at INFO.
        distributed_logger.setLevel(logging.WARNING)
    try:
        with _open_client(address, n_workers) as client:
            yield client
    finally:
        distributed_logger.setLevel(previous_level)


@contextmanager
def _open_client(address, n_workers):
    cluster = None
    if address == LOCAL:
        n_workers = effective_n_jobs(n_workers)
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            # Port 0: any free port, so that several local clusters can run.
            dashboard_address="127.0.0.1:0",
        )
        logger.info("started a local Dask cluster of %d worker processes", n_workers)
    try:
        client = (
            _connect(address)
            if cluster is None
            else Client(cluster, set_as_default=False)
        )
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    try:
        _wait_for_workers(client, address)
        check_workers(client)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _wait_for_workers(client, address):
    workers = client.scheduler_info(n_workers=-1)["workers"]
    if not workers:
        logger.info(
            "scheduler %s has no worker yet; waiting up to %d s for one",
            address,
            WORKER_TIMEOUT,
        )
        try:
            client.wait_for_workers(1, timeout=WORKER_TIMEOUT)
        except TimeoutError:
            raise InputError(
                f"--scheduler {address}: no Dask worker joined within "
                f"{WORKER_TIMEOUT} s; start workers from the repository folder "
                f"with 'PYTHONPATH=$PWD dask worker {address} --nthreads 1' "
                "(see docs/cluster.md)"
            ) from None
        workers = client.scheduler_info(n_workers=-1)["workers"]
    threads = sum(worker["nthreads"] for worker in workers.values())
    logger.info(
        "Dask scheduler %s: %d workers, %d threads",
        client.scheduler.address,
        len(workers),
        threads,
    )
    if threads > len(workers):
        logger.warning(
            "Dask workers run %d threads in %d processes; start them with "
            "'--nworkers N --nthreads 1', because the threads of a process share "
            "the GIL and its limit of one BLAS/OpenMP thread",
            threads,
            len(workers),
        )


def source_digest():
    """Return the sha256 over the Python files of the packages the tasks import."""
    digest = hashlib.sha256()
    root = Path(crowdpoison.__file__).resolve().parent.parent
    for package in SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(f"{path.relative_to(root).as_posix()}\n".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def environment():
    """Return what must agree between the client and the workers for equal bytes.

    Returns
    -------
    dict
        ``numpy``, ``scikit-learn`` and ``scipy`` versions, and ``source``, the
        :func:`source_digest` of this process.
    """
    import scipy
    import sklearn

    return {
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "scipy": scipy.__version__,
        "source": source_digest(),
    }


def check_workers(client):
    """Check that every worker runs this process's source and library versions.

    Raises
    ------
    InputError
        If the scheduler fails to import this project, or a worker fails to
        import it or differs in one of the :func:`environment` entries.
    """
    try:
        # The scheduler unpickles the task graph, so it imports this project too.
        client.run_on_scheduler(source_digest)
    except ImportError as exc:
        raise InputError(
            f"the Dask scheduler failed to import this project ({exc}); start it "
            "from the repository folder with 'PYTHONPATH=$PWD dask scheduler'"
        ) from None
    remote = client.run(environment, on_error="return")
    local = environment()
    for worker, values in sorted(remote.items()):
        if isinstance(values, Exception):
            # A worker that cannot import this project fails to unpickle the call.
            raise InputError(
                f"Dask worker {worker} failed to run this project's code ({values}); "
                "start workers from the repository folder with "
                "'PYTHONPATH=$PWD dask worker ADDRESS'"
            )
        different = [name for name in local if values.get(name) != local[name]]
        if different:
            mismatches = ", ".join(
                f"{name} {values.get(name)} instead of {local[name]}"
                if name != "source"
                else "other source files"
                for name in different
            )
            raise InputError(
                f"Dask worker {worker} runs {mismatches}; install requirements.txt and "
                "the same checkout of this repository on every machine"
            )


def _killed_worker_error(exc):
    return InputError(
        "Dask gave up on a task because the workers running it died too often, "
        f"most often because they ran out of memory (Dask: {exc}). Give the "
        "workers more memory with 'dask worker --memory-limit' and rerun the same "
        "command, which resumes where this run stopped"
    )


def _lost_data_error(exc):
    return InputError(
        f"Dask cancelled a task {MAX_ATTEMPTS} times because the workers holding "
        f"its input data stopped or the scheduler restarted (Dask: {exc}). Check "
        "the workers and rerun the same command, which resumes where this run "
        "stopped"
    )


# Running tasks


def timed_call(function, kwargs):
    """Call ``function(**kwargs)`` with one BLAS/OpenMP thread; time it.

    Returns
    -------
    seconds : float
        Wall time of the call on the worker.
    result : object
        What ``function`` returned.
    """
    started = time.perf_counter()
    _, result = call_with_one_thread(None, function, kwargs)
    return time.perf_counter() - started, result


# Submissions of a task before its lost input stops the run.
MAX_ATTEMPTS = 4


class DaskExecutor:
    """Run tasks on a Dask cluster and collect results as they finish.

    The interface is that of :class:`crowdpoison.executor.LokyExecutor`. Dask
    reruns the tasks of a stopped worker on the others. Arrays sent by
    :meth:`share` are the exception: Dask's active memory manager keeps as few
    copies as the running tasks need, and when the last worker holding one
    stops, Dask cancels the tasks that use it. This executor then sends the
    array again and resubmits those tasks, up to :data:`MAX_ATTEMPTS` times.

    Parameters
    ----------
    client : distributed.Client
        Client of the cluster.

    Attributes
    ----------
    n_tasks : int
        Tasks finished so far.
    task_seconds : float
        Sum of the tasks' wall times on the workers.
    run_seconds : float
        Wall time that :meth:`run` spent from the first submission to the last
        result.
    """

    def __init__(self, client):
        self.client = client
        self.n_tasks = 0
        self.task_seconds = 0.0
        self.run_seconds = 0.0
        # Key of a handle from share() -> the array, and the future holding it now.
        self._arrays = {}
        self._current = {}

    def share(self, array):
        """Send ``array`` to every worker and return its future, the handle."""
        array = np.ascontiguousarray(array)
        handle = self._scatter(array)
        self._arrays[handle.key] = array
        self._current[handle.key] = handle
        return handle

    def _scatter(self, array):
        # hash=False: a new key each time, so that sending a lost array again
        # never reuses the cancelled key.
        return self.client.scatter(array, broadcast=True, hash=False)

    def release(self, handle):
        """Let the cluster drop an array sent by :meth:`share`."""
        self._arrays.pop(handle.key, None)
        current = self._current.pop(handle.key, handle)
        current.release()
        handle.release()

    def _share_lost_again(self):
        for key, future in self._current.items():
            if future.status != "finished":
                logger.warning(
                    "the Dask workers holding a shared array of shape %s stopped; "
                    "sending it again",
                    self._arrays[key].shape,
                )
                self._current[key] = self._scatter(self._arrays[key])

    def _submit(self, function, kwargs):
        current = {
            name: self._current.get(value.key, value)
            if isinstance(value, Future)
            else value
            for name, value in kwargs.items()
        }
        return self.client.submit(timed_call, function, current, pure=False)

    def run(self, tasks):
        """Run tasks and yield ``(tag, result)`` in the order they finish.

        Parameters
        ----------
        tasks : iterable of (tag, function, kwargs)
            ``function`` must be a top-level function. Values of ``kwargs`` may
            be handles from :meth:`share`. The tags stay in this process.

        Raises
        ------
        InputError
            If a task stopped the workers that ran it too often, or its input
            was lost :data:`MAX_ATTEMPTS` times.
        """
        started = time.perf_counter()
        pending = {}
        for tag, function, kwargs in tasks:
            future = self._submit(function, kwargs)
            pending[future.key] = (future, tag, function, kwargs, 1)
        finished = as_completed(
            [entry[0] for entry in pending.values()], loop=self.client.loop
        )
        try:
            for future in finished:
                _, tag, function, kwargs, attempt = pending.pop(future.key)
                try:
                    seconds, result = future.result()
                except KilledWorker as exc:
                    raise _killed_worker_error(exc) from None
                except FutureCancelledError as exc:
                    if attempt >= MAX_ATTEMPTS:
                        raise _lost_data_error(exc) from None
                    self._share_lost_again()
                    retry = self._submit(function, kwargs)
                    pending[retry.key] = (retry, tag, function, kwargs, attempt + 1)
                    finished.add(retry)
                    continue
                future.release()
                self.n_tasks += 1
                self.task_seconds += seconds
                yield tag, result
        finally:
            # Cancel what is left when the caller stops early or a task failed.
            self.client.cancel([entry[0] for entry in pending.values()])
            self.run_seconds += time.perf_counter() - started

    def close(self):
        """Release the shared arrays and log the time the tasks took."""
        for future in self._current.values():
            future.release()
        self._arrays.clear()
        self._current.clear()
        if self.n_tasks:
            logger.info(
                "Dask: %d tasks, %.3f s of task time on the workers, %.3f s from "
                "submission to the last result",
                self.n_tasks,
                self.task_seconds,
                self.run_seconds,
            )

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def run_grid_on_cluster(config, writer, X_test, y_test, *, scheduler):
    """Compute every row of the grid that ``writer`` lacks, on a Dask cluster.

    Parameters
    ----------
    config : crowdpoison.runner.GridConfig
        Levels, models, seeds and engine. ``n_jobs`` sets the worker processes
        of a local cluster.
    writer : crowdpoison.resultsfile.ResultsWriter
        Open results file; rows are appended to it as cells finish.
    X_test : ndarray of shape (n_test, n_features), uint8
        Test pixels.
    y_test : ndarray of shape (n_test,), int64
        Test labels.
    scheduler : str
        ``local`` or the address of a running Dask scheduler.
    """
    from .runner import FastEngine, NaiveEngine

    engines = {"fast": FastEngine, "naive": NaiveEngine}
    with (
        cluster_client(scheduler, n_workers=config.n_jobs) as client,
        DaskExecutor(client) as executor,
    ):
        engine = engines[config.engine](config, writer, X_test, y_test, executor)
        if engine.pending:
            logger.info(
                "%s engine: %d rows to compute on the Dask cluster",
                config.engine,
                len(engine.pending),
            )
        engine.run()


# generate_datasets.py: one task per level


def simulate_level_files(X, y, params, level, identity):
    """Simulate one level into a temporary folder and return its files' bytes.

    The files are those that :func:`crowdpoison.generate.run_level` writes, so
    the bytes equal a local run's.

    Returns
    -------
    result : dict
        The level's counts, as ``run_level`` returns them.
    files : dict of str to bytes
        File name in the level folder to content.
    """
    from .generate import run_level

    scratch = Path(tempfile.mkdtemp(prefix="crowdpoison-level-"))
    try:
        result = run_level(X, y, params, level, scratch, identity)
        folder = scratch / str(level)
        files = {path.name: path.read_bytes() for path in sorted(folder.iterdir())}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result, files


def write_level_files(out_dir, level, files):
    """Write a level's files into ``OUT/.level-<k>.tmp``, then rename it ``OUT/<k>``.

    The rename replaces an unfinished ``OUT/<k>``, as in a local run, so a
    folder ``OUT/<k>`` is always whole.
    """
    out_dir = Path(out_dir)
    tmp = out_dir / f".level-{level}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    final = out_dir / str(level)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def run_levels_on_cluster(generation, levels, *, scheduler, n_workers, show):
    """Simulate levels on a Dask cluster and yield each one's counts as it finishes.

    Parameters
    ----------
    generation : crowdpoison.generate.Generation
        The generation run; its pixels and labels go to every worker once.
    levels : list of int
        Numbers of malicious bots to simulate.
    scheduler : str
        ``local`` or the address of a running Dask scheduler.
    n_workers : int
        Worker processes of a local cluster; -1 uses every core.
    show : bool
        Show a progress bar over the levels.

    Yields
    ------
    dict
        The counts of a level whose folder is written.
    """
    if not levels:
        return
    identity = generation.identity()
    with (
        cluster_client(scheduler, n_workers=n_workers) as client,
        DaskExecutor(client) as executor,
    ):
        X, y = executor.share(generation.X), executor.share(generation.y)
        tasks = [
            (
                level,
                simulate_level_files,
                {
                    "X": X,
                    "y": y,
                    "params": generation.params,
                    "level": level,
                    "identity": identity,
                },
            )
            for level in levels
        ]
        bar = tqdm(total=len(levels), desc="levels", unit="level", disable=not show)
        try:
            for level, (result, files) in executor.run(tasks):
                write_level_files(generation.out_dir, level, files)
                bar.update()
                yield result
        finally:
            bar.close()
