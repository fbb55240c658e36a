"""Benchmark run_ml.py on a Dask cluster: speedup and per-task overhead.

The benchmark writes the first MNIST images as CSV into a work folder, generates
one reduced grid with generate_datasets.py (levels 0 10 20, ``-s 0.5``, so three
cumulative batches per level) and trains it with one seed three times:

1. ``run_ml.py --n-jobs 1``, the local reference;
2. ``run_ml.py --scheduler tcp://127.0.0.1:PORT`` on a cluster of separate
   processes that the benchmark starts with the ``dask scheduler`` and
   ``dask worker --nthreads 1`` commands beside this Python, bound to 127.0.0.1,
   first with 1 worker process and then with 2.

Only run_ml.py is timed. Each cluster starts before its run, and the run waits
until every worker has joined. The cluster stops after the run, also on Ctrl-C
or failure. For each cluster run the report gives the speedup against the local
reference and whether the results CSV is byte-identical to the reference's. The
exit status is 1 when it is not. The report also gives the per-task overhead
from the line that run_ml.py logs::

    Dask: N tasks, T s of task time on the workers, R s from submission to the last result

With one worker, the worker runs a task or waits for the next, so the overhead
per task is ``(R - T) / N``: submission, scheduling, moving the arguments and the
result, and the client's handling of each result. With two workers the report
gives ``(2 R - T) / N`` too: the worker time per task not spent in a task, which
adds the time a worker waits idle while the other finishes the last tasks.

The default models (LR SVM DT ANN RF) are the ones the fast engine fits as tasks.
Their 35 fits take from under a second to about 13 s each, some 2 minutes in
all on one core. NOTE: the length of the default run, about 5 minutes on 2
cores, is an estimate from timing single fits. Run it from the repository
root::

    python -m benchmarks.bench_dask --mnist-dir ~/mnist --json bench-dask.json
    python -m benchmarks.bench_dask --mnist-dir ~/mnist --quick    # smoke test
"""

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dask
import distributed

from benchmarks.bench_grid import (
    check_sizes,
    machine_lines,
    prepare_work_dir,
    print_section,
)
from benchmarks.timers import FIT, RunTiming, measure_command
from benchmarks.workspace import Settings, Workspace, log_load_average
from crowdpoison.cli import (
    ArgumentParser,
    InputError,
    add_logging_flags,
    configure_logging,
    positive_int,
    random_state_seed,
    run,
)
from crowdpoison.models import MODEL_NAMES
from run_ml import check_models

logger = logging.getLogger("bench_dask")

REPO_ROOT = Path(__file__).resolve().parent.parent
# The dask command of the Python that runs the benchmark.
DASK_COMMAND = Path(sys.executable).parent / "dask"

DEFAULT_SIZES = {"train_rows": 6_000, "test_rows": 10_000}
QUICK_SIZES = {"train_rows": 300, "test_rows": 200}
LEVELS = (0, 10, 20)
STEP = 0.5
DEFAULT_SEED = 3
# The models that the fast engine fits as tasks. KNN comes from the neighbour
# search on the client, and the voting models from their members' outputs.
DEFAULT_MODELS = ("LR", "SVM", "DT", "ANN", "RF")
QUICK_MODELS = ("LR", "DT")
# Worker processes of the cluster runs, in order.
WORKER_COUNTS = (1, 2)
# Seconds to wait for the scheduler and the workers to start, and to stop.
START_TIMEOUT = 60
STOP_TIMEOUT = 30
# Seconds between two checks while waiting for a start or a stop.
POLL_INTERVAL = 0.1
# run_ml.py logs T and R with three decimals.
LOGGED_RESOLUTION = 0.001
TASK_LINE = re.compile(
    r"Dask: (?P<n>\d+) tasks, (?P<task>[\d.]+) s of task time on the workers, "
    r"(?P<run>[\d.]+) s from submission to the last result"
)
MB = 1e6

EPILOG = """\
examples:
  # the default grid: 6,000 training images, models LR SVM DT ANN RF
  python -m benchmarks.bench_dask --mnist-dir ~/mnist --json bench-dask.json

  # a smoke test on tiny sizes, well under a minute
  python -m benchmarks.bench_dask --mnist-dir ~/mnist --quick

  # the slow SGD models only, on 12,000 images, keeping the logs
  python -m benchmarks.bench_dask --mnist-dir ~/mnist --models LR SVM \\
      --train-rows 12000 --work-dir /tmp/bench-dask
"""


class RunFailed(RuntimeError):
    """A failure of a command that the benchmark runs. The message names its log."""


def _join(values):
    return " ".join(map(str, values))


def _worker_processes(count):
    return f"{count} worker process{'es' if count != 1 else ''}"


def build_parser():
    parser = ArgumentParser(
        prog="python -m benchmarks.bench_dask",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--mnist-dir",
        type=Path,
        default=os.environ.get("MNIST_DIR"),
        help="folder with the four MNIST IDX files (default $MNIST_DIR)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="new or empty folder for the data, results and logs, outside the "
        "repository (default: a temporary folder, removed at the end)",
    )
    parser.add_argument(
        "--keep-work-dir",
        action="store_true",
        help="keep the default temporary work folder at the end",
    )

    parser.add_argument(
        "--train-rows",
        type=positive_int,
        help="first MNIST training images of the grid "
        f"(default {DEFAULT_SIZES['train_rows']}, --quick {QUICK_SIZES['train_rows']})",
    )
    parser.add_argument(
        "--test-rows",
        type=positive_int,
        help="first MNIST test images, which score every model "
        f"(default {DEFAULT_SIZES['test_rows']}, --quick {QUICK_SIZES['test_rows']})",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="MODEL",
        help=f"models to train (default {_join(DEFAULT_MODELS)}; --quick "
        f"{_join(QUICK_MODELS)}); any of {_join(MODEL_NAMES)}",
    )
    parser.add_argument(
        "--seed",
        type=random_state_seed,
        default=DEFAULT_SEED,
        help=f"the one seed of the models (default {DEFAULT_SEED})",
    )

    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and binary pixels for a smoke test, whose timings are "
        "not meaningful",
    )
    parser.add_argument(
        "--json", type=Path, help="also write every figure to this file"
    )
    add_logging_flags(parser)
    return parser


def resolve_settings(args, work_dir):
    """Return the settings of the parsed arguments, with --quick's defaults.

    Raises
    ------
    InputError
        If --mnist-dir is missing or a model is unknown.
    """
    if args.mnist_dir is None:
        raise InputError(
            "--mnist-dir is missing and $MNIST_DIR is not set; pass the folder "
            "with the four MNIST IDX files"
        )
    sizes = dict(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    for name in sizes:
        if getattr(args, name) is not None:
            sizes[name] = getattr(args, name)
    if args.models is not None:
        models = check_models(args.models)
    else:
        models = QUICK_MODELS if args.quick else DEFAULT_MODELS
    return Settings(
        mnist_dir=args.mnist_dir,
        work_dir=work_dir,
        train_rows=sizes["train_rows"],
        test_rows=sizes["test_rows"],
        levels=LEVELS,
        models=tuple(models),
        seeds=(args.seed,),
        step=STEP,
        # Binary pixels let the SGD models of --quick converge in a few epochs.
        binarize=args.quick,
        quick=args.quick,
        verbose=args.verbose,
        # Settings of the grid benchmark's other stages, unused here. full_rows
        # equals train_rows, so check_sizes checks the training rows once.
        full_rows=sizes["train_rows"],
        generation_levels=(),
        full_levels=None,
        memory_models=(),
        memory_n_jobs=(),
        stages=(),
    )


def check_dask_command():
    """Raise InputError unless the ``dask`` command is beside this Python."""
    if not DASK_COMMAND.is_file():
        raise InputError(
            f"the dask command {DASK_COMMAND} is missing; install requirements.txt "
            "(it pins distributed) into the environment that runs the benchmark"
        )


def _last_line(path):
    """Return the last non-empty line of a log file, or a note that it has none."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    return lines[-1] if lines else "(empty log)"


# The cluster


def _has_exited(pid):
    """Return whether child ``pid`` has exited, without reaping it.

    An unreaped child keeps its process id, so its process group id cannot be
    reused by another process while :func:`_stop_group` signals the group.
    """
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _stop_group(process, name, timeout=STOP_TIMEOUT):
    """Stop a command started in its own session, and everything it started.

    Sends SIGTERM to the command, which lets a Dask scheduler or worker close
    cleanly, and waits up to ``timeout`` seconds. Then SIGKILL goes to the
    processes left in its process group, also when the wait is interrupted.

    Returns
    -------
    bool
        Whether the command exited within ``timeout`` seconds of SIGTERM.
    """
    clean = False
    try:
        if not _has_exited(process.pid):
            os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not _has_exited(process.pid):
            if time.monotonic() > deadline:
                logger.warning(
                    "%s did not stop within %d s of SIGTERM; killing it", name, timeout
                )
                break
            time.sleep(POLL_INTERVAL)
        else:
            clean = True
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    return clean


class CommandCluster:
    """A Dask scheduler and workers started as ``dask`` commands on 127.0.0.1.

    Entering starts ``dask scheduler`` and ``dask worker --nworkers N --nthreads
    1``, each in its own session so that a Ctrl-C in the terminal reaches only
    the benchmark, and waits until every worker has joined. Leaving stops the
    workers and then the scheduler, also on an exception or Ctrl-C. Every
    socket, dashboard included, listens on 127.0.0.1 only.

    Parameters
    ----------
    folder : Path
        New folder for the scheduler file, the logs and the workers' scratch
        space.
    n_workers : int
        Worker processes, of one thread each.

    Attributes
    ----------
    address : str
        ``tcp://127.0.0.1:PORT`` of the scheduler, set once it has started.
    start_seconds : float
        Seconds from the scheduler's start until every worker had joined.
    killed : list of str
        The commands, ``scheduler`` or ``worker``, that did not exit within
        :data:`STOP_TIMEOUT` seconds of SIGTERM and were killed.
    pids : dict of str to int
        Process id of the ``scheduler`` and ``worker`` commands started, which
        is also the id of the process group of each and of what it started.
    """

    def __init__(self, folder, n_workers):
        self.folder = Path(folder)
        self.n_workers = n_workers
        self.address = None
        self.start_seconds = None
        self.killed = []
        self.pids = {}
        self._processes = {}

    @property
    def scheduler_file(self):
        return self.folder / "scheduler.json"

    def log(self, name):
        """Return the log file of the ``scheduler`` or ``worker`` command."""
        return self.folder / f"{name}.log"

    def __enter__(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - started
        logger.info(
            "Dask cluster of %s at %s started in %.1f s",
            _worker_processes(self.n_workers),
            self.address,
            self.start_seconds,
        )
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def _spawn(self, name, *args):
        env = dict(os.environ)
        # The scheduler and the workers import this project's modules.
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])
        )
        with open(self.log(name), "wb") as log:
            process = self._processes[name] = subprocess.Popen(
                [str(DASK_COMMAND), name, *args],
                cwd=self.folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pids[name] = process.pid

    def _check_running(self, name):
        process = self._processes[name]
        if _has_exited(process.pid):
            cluster = _worker_processes(self.n_workers)
            raise RunFailed(
                f"dask {name} stopped while the cluster of {cluster} was starting; "
                f"its log {self.log(name)} ends with: {_last_line(self.log(name))}"
            )

    def _timed_out(self, what):
        return RunFailed(
            f"starting the Dask cluster timed out after {START_TIMEOUT} s: {what}; "
            f"see the logs in {self.folder}"
        )

    def _start(self):
        self._spawn(
            "scheduler",
            "--host",
            "127.0.0.1",
            # Port 0: any free port, so that the benchmark never meets another
            # cluster's scheduler.
            "--port",
            "0",
            "--no-dashboard",
            # Without bokeh there is no dashboard, but the HTTP server still
            # starts, on every interface unless given an address.
            "--dashboard-address",
            "127.0.0.1:0",
            "--scheduler-file",
            str(self.scheduler_file),
        )
        deadline = time.monotonic() + START_TIMEOUT
        while self.address is None:
            self._check_running("scheduler")
            try:
                text = self.scheduler_file.read_text(encoding="utf-8")
                self.address = json.loads(text)["address"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                # The file is missing or only partly written.
                if time.monotonic() > deadline:
                    raise self._timed_out(
                        "the Dask scheduler wrote no scheduler file"
                    ) from None
                time.sleep(POLL_INTERVAL)
        self._spawn(
            "worker",
            "--scheduler-file",
            str(self.scheduler_file),
            "--nworkers",
            str(self.n_workers),
            "--nthreads",
            "1",
            "--host",
            "127.0.0.1",
            "--no-dashboard",
            "--dashboard-address",
            "127.0.0.1:0",
            "--local-directory",
            str(self.folder / "scratch"),
        )
        self._wait_for_workers(deadline)

    def _wait_for_workers(self, deadline):
        try:
            client = distributed.Client(
                self.address, timeout=f"{START_TIMEOUT}s", set_as_default=False
            )
        except OSError as exc:
            raise RunFailed(
                f"connecting to the Dask scheduler at {self.address} failed ({exc}); "
                f"see its log {self.log('scheduler')}"
            ) from None
        with client:
            while True:
                workers = client.scheduler_info(n_workers=-1)["workers"]
                if len(workers) >= self.n_workers:
                    break
                self._check_running("worker")
                if time.monotonic() > deadline:
                    raise self._timed_out(
                        f"{len(workers)} of {self.n_workers} Dask workers joined"
                    )
                time.sleep(POLL_INTERVAL)
        threads = sorted({worker["nthreads"] for worker in workers.values()})
        if len(workers) != self.n_workers or threads != [1]:
            raise RunFailed(
                f"the Dask cluster has {len(workers)} workers with {threads} threads "
                f"instead of {self.n_workers} workers of 1 thread"
            )

    def stop(self):
        """Stop the workers and then the scheduler. A second call does nothing."""
        try:
            self._stop_command("worker")
        finally:
            # Also when a second Ctrl-C interrupts the workers' stop.
            self._stop_command("scheduler")

    def _stop_command(self, name):
        process = self._processes.pop(name, None)
        if process is not None and not _stop_group(process, f"dask {name}"):
            self.killed.append(name)

    @property
    def stopped_cleanly(self):
        """Whether every command stopped so far exited on SIGTERM."""
        return not self.killed


# The runs


@dataclass
class Run:
    """One timed run_ml.py run and its figures.

    Attributes
    ----------
    name : str
        ``local`` or ``cluster-1``, ``cluster-2``.
    workers : int
        Dask worker processes; 0 for the local reference.
    wall : float
        Seconds of the run_ml.py process, from its start to its exit.
    load_average : list of float
        The 1, 5 and 15 minute load averages just before the run.
    max_rss : int
        Bytes: the peak resident memory of run_ml.py's process.
    results, log : str
        Results CSV and the log of run_ml.py's output.
    n_tasks : int or None
        Tasks: the fits of the local run (timed in the process), or N of the
        Dask line.
    task_seconds : float or None
        Their summed wall time: the local fits, or T of the Dask line.
    run_seconds : float or None
        R of the Dask line: seconds from the first submission to the last result.
    scheduler : str or None
        Address of the cluster's scheduler.
    cluster_start_seconds : float or None
        Seconds to start the cluster, not part of ``wall``.
    cluster_stopped_cleanly : bool or None
        Whether the cluster's commands exited on SIGTERM.
    speedup : float
        The local reference's wall time divided by this run's.
    identical : bool
        Whether the results CSV has the local reference's bytes.
    difference : str or None
        The first differing line when it has not.
    overhead_per_task : float or None
        ``(R - T) / N``: the per-task overhead with one worker.
    idle_per_task : float or None
        ``(workers R - T) / N``: worker time per task not spent in a task;
        equals ``overhead_per_task`` with one worker.
    notes : list of str
        Report lines about missing figures.
    """

    name: str
    workers: int
    wall: float
    load_average: list
    max_rss: int
    results: str
    log: str
    n_tasks: int | None = None
    task_seconds: float | None = None
    run_seconds: float | None = None
    scheduler: str | None = None
    cluster_start_seconds: float | None = None
    cluster_stopped_cleanly: bool | None = None
    speedup: float = 1.0
    identical: bool = True
    difference: str | None = None
    overhead_per_task: float | None = None
    idle_per_task: float | None = None
    notes: list = field(default_factory=list)


def parse_task_line(text):
    """Return ``(N, T, R)`` from run_ml.py's ``Dask: N tasks, ...`` log line.

    Returns
    -------
    tuple of (int, float, float) or None
        The last such line of ``text``, or None when it has none.
    """
    matches = list(TASK_LINE.finditer(text))
    if not matches:
        return None
    match = matches[-1]
    return int(match["n"]), float(match["task"]), float(match["run"])


def first_difference(reference, candidate):
    """Return a description of the first line where two files differ, or None."""
    expected = Path(reference).read_bytes().splitlines()
    found = Path(candidate).read_bytes().splitlines()
    for number, (left, right) in enumerate(zip(expected, found), start=1):
        if left != right:
            found_text = right.decode(errors="replace")
            expected_text = left.decode(errors="replace")
            return f"line {number}: {found_text!r} instead of {expected_text!r}"
    if len(expected) != len(found):
        return f"line count {len(found)} instead of {len(expected)}"
    if Path(reference).read_bytes() != Path(candidate).read_bytes():
        return "the line endings or the final newline differ"
    return None


def _run_ml_argv(workspace, name):
    """Return run_ml.py's arguments for the grid, writing the results of ``name``."""
    settings = workspace.settings
    return [
        "-i",
        str(workspace.reduced()),
        "-t",
        str(workspace.test_csv()),
        "-o",
        str(workspace.path("results", f"{name}.csv")),
        # An empty cache, so that the neighbour search of KNN models is part of
        # every run.
        "--cache-dir",
        str(workspace.fresh_dir("cache", name)),
        "--models",
        *settings.models,
        "--seeds",
        *map(str, settings.seeds),
    ]


def _measure(workspace, name, command, workers):
    """Run ``command`` from the repository root and return its :class:`Run`.

    The command's output goes to a log file in the work folder.

    Raises
    ------
    RunFailed
        If the command exits with a non-zero status.
    """
    log = workspace.path("logs", f"{name}.log")
    log_load_average()
    load_average = list(os.getloadavg())
    measurement = measure_command(command, cwd=REPO_ROOT, log_path=log)
    if measurement.returncode != 0:
        raise RunFailed(
            f"run_ml.py exited with status {measurement.returncode} in the {name} "
            f"run; its log {log} ends with: {_last_line(log)}"
        )
    logger.info("%s run: %.1f s", name, measurement.wall)
    return Run(
        name=name,
        workers=workers,
        wall=measurement.wall,
        load_average=load_average,
        max_rss=measurement.max_rss,
        results=str(workspace.path("results", f"{name}.csv")),
        log=str(log),
    )


def run_local(workspace):
    """Time ``run_ml.py --n-jobs 1`` on the grid, with its fits timed in-process."""
    argv = [*_run_ml_argv(workspace, "local"), "--n-jobs", "1"]
    timings = workspace.path("timings", "local.json")
    # benchmarks.timers runs run_ml.py's main with timers on its fits.
    command = [sys.executable, "-m", "benchmarks.timers", str(timings), "--", *argv]
    logger.info("running run_ml.py --n-jobs 1, the local reference")
    run_result = _measure(workspace, "local", command, workers=0)
    timing = RunTiming.from_dict(json.loads(timings.read_text(encoding="utf-8")))
    run_result.n_tasks = len(timing.calls(FIT))
    run_result.task_seconds = timing.total(FIT)
    return run_result


def run_cluster(workspace, n_workers, reference):
    """Start a cluster of ``n_workers``, time run_ml.py on it, stop the cluster.

    Parameters
    ----------
    workspace : Workspace
        The benchmark's files.
    n_workers : int
        Worker processes of the cluster.
    reference : Run
        The local reference, for the speedup and the comparison of the results.

    Returns
    -------
    Run
    """
    name = f"cluster-{n_workers}"
    folder = workspace.fresh_dir("clusters", name)
    argv = _run_ml_argv(workspace, name)
    logger.info("starting a Dask cluster of %s", _worker_processes(n_workers))
    with CommandCluster(folder, n_workers) as cluster:
        command = [
            sys.executable,
            str(REPO_ROOT / "run_ml.py"),
            *argv,
            "--scheduler",
            cluster.address,
        ]
        logger.info("running run_ml.py --scheduler %s", cluster.address)
        result = _measure(workspace, name, command, workers=n_workers)
    result.scheduler = cluster.address
    result.cluster_start_seconds = cluster.start_seconds
    result.cluster_stopped_cleanly = cluster.stopped_cleanly

    result.speedup = reference.wall / result.wall
    result.difference = first_difference(reference.results, result.results)
    result.identical = result.difference is None
    log_text = Path(result.log).read_text(encoding="utf-8", errors="replace")
    parsed = parse_task_line(log_text)
    if parsed is None:
        result.notes.append(f"no 'Dask: N tasks' line in {result.log}")
    else:
        n, task, elapsed = parsed
        result.n_tasks, result.task_seconds, result.run_seconds = n, task, elapsed
        if n:
            result.overhead_per_task = (elapsed - task) / n
            result.idle_per_task = (n_workers * elapsed - task) / n
    return result


# Report


def library_line():
    """Return the versions of dask and distributed."""
    return f"dask {dask.__version__}, distributed {distributed.__version__}"


def settings_lines(settings):
    """Return the report lines that describe the grid."""
    lines = [
        f"work folder: {settings.work_dir}",
        (
            f"grid: first {settings.train_rows} MNIST training images, -s "
            f"{settings.step}, levels {_join(settings.levels)}, seed "
            f"{_join(settings.seeds)}, models {_join(settings.models)}; first "
            f"{settings.test_rows} test images"
        ),
        (
            "cluster runs: dask scheduler and dask worker --nworkers N --nthreads 1 "
            f"on 127.0.0.1, N = {_join(WORKER_COUNTS)}; only run_ml.py is timed"
        ),
    ]
    if settings.quick:
        lines.append(
            "--quick: tiny sizes and binary pixels, so the timings are not meaningful"
        )
    return lines


def _load(run_result):
    return "/".join(f"{value:.2f}" for value in run_result.load_average)


def _resolution(run_result, factor):
    # Rounding puts each logged T and R at most LOGGED_RESOLUTION / 2 away.
    return (factor + 1) * LOGGED_RESOLUTION / 2 / run_result.n_tasks


def local_lines(local):
    """Return the report lines of the local reference."""
    return [
        "run_ml.py --n-jobs 1",
        f"load average before: {_load(local)} (1/5/15 min)",
        f"wall: {local.wall:.1f} s; peak memory {local.max_rss / MB:.0f} MB",
        f"fits: {local.n_tasks}, {local.task_seconds:.1f} s in all",
    ]


def cluster_lines(result, local):
    """Return the report lines of a cluster run."""
    lines = [
        (
            f"run_ml.py --scheduler {result.scheduler}, "
            f"{_worker_processes(result.workers)} of 1 thread"
        ),
        (
            f"cluster start (not timed): {result.cluster_start_seconds:.1f} s; "
            "stopped " + ("cleanly" if result.cluster_stopped_cleanly else "by SIGKILL")
        ),
        f"load average before: {_load(result)} (1/5/15 min)",
        (
            f"wall: {result.wall:.1f} s; speedup {result.speedup:.2f}x against the "
            f"local reference; client peak memory {result.max_rss / MB:.0f} MB"
        ),
        (
            "results: byte-identical to the local reference"
            if result.identical
            else f"results: DIFFER from the local reference, {result.difference}"
        ),
    ]
    lines += result.notes
    if result.run_seconds is None or not result.n_tasks:
        return lines
    n, task, elapsed = result.n_tasks, result.task_seconds, result.run_seconds
    lines.append(
        f"Dask: N = {n} tasks, T = {task:.1f} s of task time on the workers, R = "
        f"{elapsed:.1f} s from submission to the last result"
    )
    lines.append(
        f"wall - R = {result.wall - elapsed:.1f} s outside the tasks' span: "
        "starting Python, connecting to the cluster and checking its workers, "
        "reading and sending the data, writing the results"
    )
    if local.task_seconds:
        lines.append(
            f"T against the local fits ({local.n_tasks} fits, "
            f"{local.task_seconds:.1f} s): {task / local.task_seconds:.2f}x"
        )
    lines.append(
        f"(R - T) / N = {result.overhead_per_task:.3f} s "
        f"(+-{_resolution(result, 1):.3f} s from the logged rounding)"
        + (
            ": the per-task overhead"
            if result.workers == 1
            else ": the one-worker formula; below 0 when tasks run in parallel"
        )
    )
    if result.workers > 1:
        lines.append(
            f"({result.workers} R - T) / N = {result.idle_per_task:.3f} s "
            f"(+-{_resolution(result, result.workers):.3f} s): worker time per task "
            "not spent in a task, the overhead plus the time a worker waits idle"
        )
    return lines


def summary_lines(runs, workspace, total):
    """Return a table of the runs and the total time."""
    lines = [
        f"{'run':<12} {'wall s':>8} {'speedup':>8}  {'results':<10} overhead per task"
    ]
    for run_result in runs:
        if run_result.workers == 0:
            identity, overhead = "reference", "-"
        else:
            identity = "identical" if run_result.identical else "DIFFER"
            if run_result.idle_per_task is None:
                overhead = "unknown"
            elif run_result.workers == 1:
                overhead = f"{run_result.overhead_per_task:.3f} s (R - T) / N"
            else:
                overhead = (
                    f"{run_result.idle_per_task:.3f} s ({run_result.workers} R - T) / N"
                )
        lines.append(
            f"{run_result.name:<12} {run_result.wall:>8.1f} "
            f"{run_result.speedup:>7.2f}x  {identity:<10} {overhead}"
        )
    lines += [
        f"preparation: {name} {seconds:.1f} s"
        for name, seconds in workspace.preparation.items()
    ]
    lines.append(f"total: {total:.1f} s")
    return lines


def write_json(path, settings, workspace, runs, total):
    """Write every figure of the run to ``path`` as JSON."""
    report = {
        "machine": machine_lines() + [library_line()],
        "cpu_count": os.cpu_count(),
        "versions": {
            "python": sys.version.split()[0],
            "dask": dask.__version__,
            "distributed": distributed.__version__,
        },
        "settings": {
            "mnist_dir": str(settings.mnist_dir),
            "work_dir": str(settings.work_dir),
            "train_rows": settings.train_rows,
            "test_rows": settings.test_rows,
            "levels": list(settings.levels),
            "step": settings.step,
            "seeds": list(settings.seeds),
            "models": list(settings.models),
            "worker_counts": list(WORKER_COUNTS),
            "quick": settings.quick,
        },
        "preparation": workspace.preparation,
        "runs": [asdict(run_result) for run_result in runs],
        "identical": all(run_result.identical for run_result in runs),
        "total_seconds": total,
    }
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s", path)


def run_benchmark(settings, *, json_path=None):
    """Run the local reference and the cluster runs, print the report.

    Parameters
    ----------
    settings : benchmarks.workspace.Settings
        Sizes, models and folders.
    json_path : Path, optional
        File that receives every figure as JSON.

    Returns
    -------
    int
        0, or 1 when a cluster's results differ from the local reference's.
    """
    check_dask_command()
    workspace = Workspace(settings)
    check_sizes(settings, workspace.mnist_arrays())
    print_section(
        "benchmark of run_ml.py on a Dask cluster",
        machine_lines() + [library_line()] + settings_lines(settings),
    )
    started = time.perf_counter()
    workspace.reduced()
    workspace.test_csv()

    local = run_local(workspace)
    print_section(f"local reference ({local.wall:.1f} s)", local_lines(local))
    runs = [local]
    for n_workers in WORKER_COUNTS:
        result = run_cluster(workspace, n_workers, local)
        runs.append(result)
        print_section(
            f"cluster of {_worker_processes(n_workers)} ({result.wall:.1f} s)",
            cluster_lines(result, local),
        )

    total = time.perf_counter() - started
    print_section("summary", summary_lines(runs, workspace, total))
    if json_path is not None:
        write_json(json_path, settings, workspace, runs, total)
    differing = [run_result for run_result in runs if not run_result.identical]
    for run_result in differing:
        logger.error(
            "the results of %s differ from the local reference: %s (%s against %s)",
            run_result.name,
            run_result.difference,
            run_result.results,
            local.results,
        )
    return 1 if differing else 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    configure_logging(args)
    if not args.verbose:
        # In this process, generate_datasets.py's INFO lines and those of the
        # Dask client that waits for the workers would interleave with the report.
        for name in ("generate_datasets", "distributed"):
            logging.getLogger(name).setLevel(logging.WARNING)
    settings = resolve_settings(args, work_dir=None)
    temporary = args.work_dir is None
    if temporary:
        settings.work_dir = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    else:
        settings.work_dir = prepare_work_dir(args.work_dir)
    status = None
    try:
        status = run_benchmark(settings, json_path=args.json)
    except RunFailed as exc:
        logger.error("%s", exc)
        status = 1
    finally:
        # A failure keeps the logs and results files that its messages name.
        if temporary and not (args.keep_work_dir or status == 1):
            shutil.rmtree(settings.work_dir, ignore_errors=True)
        elif temporary:
            logger.warning("kept the work folder %s", settings.work_dir)
    return status


if __name__ == "__main__":
    sys.exit(run(main))
