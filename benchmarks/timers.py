"""Time the tasks of a run_ml.py run and measure the peak memory of a command.

:func:`timed_calls` replaces functions of the pipeline by wrappers that record the
wall-clock and CPU time of every call. :func:`run_ml_timed` runs ``run_ml.main`` in
this process with wrappers on its loading, neighbour search and fit tasks. The
fits are seen only when they run in this process, that is with ``--n-jobs 1``.
:func:`measure_command` runs a command in a child process and records the peak
resident memory of its whole process tree.

Run as a module, this file runs run_ml.py with the timers and writes them to a
JSON file, so that a timed run can also be measured for memory in a clean process::

    python -m benchmarks.timers TIMINGS.json -- RUN_ML_ARGUMENTS
"""

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from unittest import mock

import run_ml
from crowdpoison import runner
from crowdpoison.cli import ArgumentParser, InputError, run
from crowdpoison.knn import LevelNeighbors, SharedNeighbors

logger = logging.getLogger(__name__)

# Labels of the timed functions, shared with the reports.
TEST_LOAD, SCAN, LEVEL_LOAD = "test load", "scan", "level load"
FIT, NAIVE_BATCH, SCORE = "fit", "naive batch", "score"
KNN_BIND, KNN_PREDICT = "knn bind", "knn predict"
LOADING_LABELS = (TEST_LOAD, SCAN, LEVEL_LOAD)
KNN_LABELS = (KNN_BIND, KNN_PREDICT)

# /proc/PID/status and ru_maxrss give sizes in KiB.
KIB = 1024


@dataclass
class CallRecord:
    """Duration of one call of a timed function.

    Attributes
    ----------
    label : str
        Name of the timed function in the reports.
    wall : float
        Wall-clock seconds.
    cpu : float
        CPU seconds of this process (all its threads) during the call.
    details : dict
        Arguments that identify the call, such as the model and training rows.
    """

    label: str
    wall: float
    cpu: float
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Probe:
    """A function to time: ``owner.attribute``, reported under ``label``.

    ``describe(args, kwargs, result)`` returns the details of a call, or is None.
    """

    owner: object
    attribute: str
    label: str
    describe: object = None


def _timed(function, probe, records):
    def wrapper(*args, **kwargs):
        started_wall, started_cpu = time.perf_counter(), time.process_time()
        result = function(*args, **kwargs)
        wall = time.perf_counter() - started_wall
        cpu = time.process_time() - started_cpu
        details = probe.describe(args, kwargs, result) if probe.describe else {}
        records.append(CallRecord(probe.label, wall, cpu, details))
        return result

    return wrapper


@contextlib.contextmanager
def timed_calls(probes):
    """Record every call of the ``probes`` functions made inside the block.

    Parameters
    ----------
    probes : sequence of Probe
        Functions or methods to wrap. The originals are restored on exit.

    Yields
    ------
    list of CallRecord
        Filled as calls finish. A call that raises is not recorded.
    """
    records = []
    with contextlib.ExitStack() as stack:
        for probe in probes:
            original = getattr(probe.owner, probe.attribute)
            wrapper = _timed(original, probe, records)
            stack.enter_context(
                mock.patch.object(probe.owner, probe.attribute, wrapper)
            )
        yield records


def _describe_fit(args, kwargs, result):
    return {
        "model": kwargs["model"],
        "seed": kwargs["seed"],
        "n_rows": kwargs["n_rows"],
    }


def _describe_naive_batch(args, kwargs, result):
    files = kwargs["batch_files"]
    return {"level": int(Path(files[0]).parent.name), "n_batches": len(files)}


def _describe_level_load(args, kwargs, result):
    return {"n_rows": len(result[1])}


# Work that run_ml.py does in its own process at any --n-jobs.
MAIN_PROCESS_PROBES = (
    Probe(run_ml, "read_labelled_csv", TEST_LOAD),
    Probe(run_ml, "scan_levels", SCAN),
    Probe(runner, "read_labelled_csvs", LEVEL_LOAD, _describe_level_load),
    Probe(runner, "score", SCORE),
    Probe(SharedNeighbors, "bind", KNN_BIND),
    Probe(LevelNeighbors, "predict_many", KNN_PREDICT),
)
# Tasks, which run in this process only at --n-jobs 1. With workers, a wrapped
# task would travel to them by value and record nothing here.
TASK_PROBES = (
    Probe(runner, "fit_and_score", FIT, _describe_fit),
    Probe(runner, "naive_batch", NAIVE_BATCH, _describe_naive_batch),
)
RUN_ML_PROBES = MAIN_PROCESS_PROBES + TASK_PROBES


@dataclass
class RunTiming:
    """Wall-clock and CPU time of one run_ml.py run and of its timed calls.

    Attributes
    ----------
    wall : float
        Seconds from the call of ``run_ml.main`` to its return.
    cpu : float
        CPU seconds of this process during the run, without worker processes.
    records : list of CallRecord
        Timed calls made in this process.
    """

    wall: float
    cpu: float
    records: list

    def calls(self, *labels):
        """Return the records whose label is one of ``labels``."""
        return [record for record in self.records if record.label in labels]

    def total(self, *labels, clock="wall"):
        """Return the summed ``clock`` seconds ("wall" or "cpu") of ``labels``."""
        return sum(getattr(record, clock) for record in self.calls(*labels))

    def to_dict(self):
        """Return the timing as JSON-ready data."""
        return {
            "wall": self.wall,
            "cpu": self.cpu,
            "records": [asdict(record) for record in self.records],
        }

    @classmethod
    def from_dict(cls, data):
        """Rebuild a timing written by :meth:`to_dict`."""
        records = [CallRecord(**record) for record in data["records"]]
        return cls(data["wall"], data["cpu"], records)


def run_ml_timed(argv, probes=RUN_ML_PROBES):
    """Run ``run_ml.main(argv)`` in this process with timers on its tasks.

    Parameters
    ----------
    argv : list of str
        Arguments of run_ml.py.
    probes : sequence of Probe, default=RUN_ML_PROBES
        Functions to time. Pass ``MAIN_PROCESS_PROBES`` when the tasks run in
        worker processes.

    Returns
    -------
    RunTiming

    Raises
    ------
    RuntimeError
        If run_ml.py returns a non-zero exit status. Its user errors
        (:class:`~crowdpoison.cli.InputError`) propagate unchanged.
    """
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    with timed_calls(probes) as records:
        status = run_ml.main(argv)
    wall = time.perf_counter() - started_wall
    cpu = time.process_time() - started_cpu
    if status != 0:
        raise RuntimeError(f"run_ml.py {' '.join(argv)} exited with status {status}")
    return RunTiming(wall, cpu, list(records))


# Memory of a process tree


@dataclass
class CommandMeasurement:
    """Time and peak memory of a command run in a child process.

    Attributes
    ----------
    wall : float
        Seconds from the start of the child to its exit.
    returncode : int
        Exit status of the child.
    max_rss : int
        Bytes: the largest peak resident set size of the child and of the
        descendants it waited for (``ru_maxrss`` from ``wait4``), a peak that the
        kernel tracks exactly.
    tree_rss : int
        Bytes: the largest sum of the resident set sizes of the child and all its
        descendants, sampled every ``interval`` seconds. Pages shared between
        processes count once per process, so this is an upper bound of the
        memory in use at the sampled moments. A spike between two samples is
        missed.
    max_processes : int
        Largest number of processes seen in the tree at one sample.
    """

    wall: float
    returncode: int
    max_rss: int
    tree_rss: int
    max_processes: int


def _children(pid):
    children = []
    try:
        task_ids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for task_id in task_ids:
        try:
            with open(f"/proc/{pid}/task/{task_id}/children") as handle:
                children.extend(int(child) for child in handle.read().split())
        except OSError:
            continue
    return children


def _rss_bytes(pid):
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * KIB
    except OSError:
        pass
    # Zombies and processes that just exited have no VmRSS line.
    return 0


def tree_rss(pid):
    """Return the summed RSS in bytes of ``pid`` and its descendants, and their count.

    Reads ``/proc`` (Linux). Processes that exit during the walk count as 0 bytes.
    """
    total, count, pending = 0, 0, [pid]
    while pending:
        current = pending.pop()
        total += _rss_bytes(current)
        count += 1
        pending.extend(_children(current))
    return total, count


def measure_command(command, *, cwd=None, log_path=None, interval=0.05):
    """Run ``command`` and record its wall-clock time and peak memory.

    Parameters
    ----------
    command : list of str
        Program and arguments.
    cwd : path-like, optional
        Working folder of the child.
    log_path : path-like, optional
        File that receives the child's stdout and stderr; by default they go
        to this process's.
    interval : float, default=0.05
        Seconds between two samples of the process tree's memory.

    Returns
    -------
    CommandMeasurement
    """
    peak = {"rss": 0, "processes": 0}
    done = threading.Event()

    def sample(pid):
        while not done.is_set():
            rss, count = tree_rss(pid)
            peak["rss"] = max(peak["rss"], rss)
            peak["processes"] = max(peak["processes"], count)
            done.wait(interval)

    with contextlib.ExitStack() as stack:
        output = None
        if log_path is not None:
            output = stack.enter_context(open(log_path, "wb"))
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
        )
        sampler = threading.Thread(target=sample, args=(process.pid,), daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            done.set()
            sampler.join()
        wall = time.perf_counter() - started
    # wait4 reaped the child, so Popen must not wait for it again.
    process.returncode = os.waitstatus_to_exitcode(status)
    return CommandMeasurement(
        wall=wall,
        returncode=process.returncode,
        max_rss=usage.ru_maxrss * KIB,
        tree_rss=peak["rss"],
        max_processes=peak["processes"],
    )


def build_parser():
    parser = ArgumentParser(
        prog="python -m benchmarks.timers",
        usage="%(prog)s [-h] [--main-process-only] TIMINGS -- RUN_ML_ARGUMENTS",
        description="Run run_ml.py with timers on its tasks and write them as JSON.",
    )
    parser.add_argument("timings", type=Path, help="JSON file to write the timings to")
    parser.add_argument(
        "--main-process-only",
        action="store_true",
        help="time only the work of the main process, for runs whose tasks go to "
        "worker processes (--n-jobs other than 1)",
    )
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" not in argv:
        raise InputError(
            "missing '--' before the run_ml.py arguments; run "
            "python -m benchmarks.timers TIMINGS -- RUN_ML_ARGUMENTS"
        )
    split = argv.index("--")
    args = build_parser().parse_args(argv[:split])
    probes = MAIN_PROCESS_PROBES if args.main_process_only else RUN_ML_PROBES
    timing = run_ml_timed(argv[split + 1 :], probes)
    args.timings.write_text(json.dumps(timing.to_dict()) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
