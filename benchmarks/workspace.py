"""The grid benchmark's work folder: MNIST CSV files, generated folders and runs.

Each piece is built on first use and reused by every stage that needs it, so a
run of run_ml.py that two stages compare is made once.
"""

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import generate_datasets
from benchmarks.timers import (
    MAIN_PROCESS_PROBES,
    RUN_ML_PROBES,
    Probe,
    RunTiming,
    run_ml_timed,
    timed_calls,
)
from crowdpoison.csvio import read_labelled_csv, write_labelled_csv
from crowdpoison.grid import discover_levels, scan_levels
from crowdpoison.mnist import load_mnist_dir

logger = logging.getLogger("bench_grid")

# Load average above which the timings are likely too long.
BUSY_LOAD_AVERAGE = 0.5


@dataclass
class Settings:
    """Sizes, levels and folders of one benchmark run.

    Attributes
    ----------
    mnist_dir : Path
        Folder with the four MNIST IDX files.
    work_dir : Path
        Folder that receives every file of the run.
    train_rows, test_rows, full_rows : int
        First MNIST training images of the reduced grid, first test images, and
        first training images of the full experiment.
    levels : tuple of int
        Levels of the reduced grid.
    models : tuple of str
        Models of the reduced grid.
    seeds : tuple of int
        Seeds of the reduced grid.
    step : float
        ``generate_datasets.py -s`` of the reduced grid.
    generation_levels : tuple of int
        Levels whose generation time is listed.
    full_levels : tuple of int or None
        Levels of the full experiment; None generates every level.
    memory_models : tuple of str
        Models of the memory stage.
    memory_n_jobs : tuple of int
        Worker counts at which the memory stage runs run_ml.py; 1 comes first.
    binarize : bool
        Set the pixels to 0 below 128 and to 1 from 128 on.
    stages : tuple of str
        Stages to run, in order.
    quick : bool
        Tiny sizes of a smoke test.
    verbose : bool
        Show the logs and progress bars of the scripts that the benchmark runs.
    """

    mnist_dir: Path
    work_dir: Path
    train_rows: int
    test_rows: int
    full_rows: int
    levels: tuple
    models: tuple
    seeds: tuple
    step: float
    generation_levels: tuple
    full_levels: tuple | None
    memory_models: tuple
    memory_n_jobs: tuple
    binarize: bool
    stages: tuple
    quick: bool
    verbose: bool


@dataclass
class GridRun:
    """One run_ml.py run on the reduced grid and its results file."""

    engine: str
    n_jobs: int
    results: Path
    timing: RunTiming


@dataclass
class GenerationRun:
    """Timing and output sizes of the generation of the full experiment.

    Attributes
    ----------
    folder : Path
        The generated folder.
    wall : float
        Seconds of the whole generate_datasets.py call.
    level_seconds, level_cpu : dict of int to float
        Wall-clock and CPU seconds of each level's simulation and writing.
    level_bytes : dict of int to int
        Bytes of each level's batch files.
    """

    folder: Path
    wall: float
    level_seconds: dict
    level_cpu: dict
    level_bytes: dict


def log_load_average():
    """Warn when other processes keep the cores busy before a timed run."""
    load = os.getloadavg()[0]
    if load > BUSY_LOAD_AVERAGE:
        logger.warning(
            "load average %.2f on %d cores before a timed run: other processes "
            "compete for the cores, so the times may be too long",
            load,
            os.cpu_count() or 1,
        )
    else:
        logger.debug("load average %.2f before a timed run", load)


def scanned_levels(levels, test_csv):
    """Return ``levels`` with their rows counted and checked against the test CSV."""
    X_test, _ = read_labelled_csv(test_csv)
    scan_levels(levels, n_features=X_test.shape[1])
    return levels


def _check_status(status, program, argv):
    if status != 0:
        raise RuntimeError(f"{program} {' '.join(argv)} exited with status {status}")


class Workspace:
    """The benchmark's files and the runs that several stages share.

    Parameters
    ----------
    settings : Settings
        Sizes, levels and folders.

    Attributes
    ----------
    preparation : dict of str to float
        Seconds of each preparation step (reading MNIST, writing CSV files,
        generating), which the stage that needed it also counts.
    """

    def __init__(self, settings):
        self.settings = settings
        self.root = settings.work_dir
        self.preparation = {}
        self._mnist = None
        self._files = {}
        self._reduced = None
        self._generation = None
        self._runs = {}

    def path(self, *parts):
        """Create the parent folder of a path under the work folder; return the path."""
        path = self.root.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def fresh_dir(self, *parts):
        """Create or empty a folder under the work folder and return it."""
        path = self.root.joinpath(*parts)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def mnist_arrays(self):
        """Read the MNIST files on first use, checking their sha256; return the arrays."""
        if self._mnist is None:
            started = time.perf_counter()
            self._mnist = load_mnist_dir(self.settings.mnist_dir)
            self.preparation["read MNIST"] = time.perf_counter() - started
        return self._mnist

    def _csv(self, kind, n_rows):
        """Write a CSV of the first ``n_rows`` training or test images on first use.

        Returns its path.
        """
        suffix = "-binary" if self.settings.binarize else ""
        name = f"{kind}-{n_rows}{suffix}.csv"
        if name not in self._files:
            X_train, y_train, X_test, y_test = self.mnist_arrays()
            X, y = (X_train, y_train) if kind == "train" else (X_test, y_test)
            X = X[:n_rows]
            if self.settings.binarize:
                X = (X >= 128).astype(np.uint8)
            started = time.perf_counter()
            path = self.path("data", name)
            write_labelled_csv(path, X, y[:n_rows])
            self.preparation[f"write {name}"] = time.perf_counter() - started
            self._files[name] = path
        return self._files[name]

    def test_csv(self):
        """Return the test CSV, written on first use."""
        return self._csv("test", self.settings.test_rows)

    def full_train_csv(self):
        """Return the training CSV of the full experiment, written on first use."""
        return self._csv("train", self.settings.full_rows)

    def reduced(self):
        """Generate the reduced grid on first use and return its folder."""
        if self._reduced is None:
            train = self._csv("train", self.settings.train_rows)
            folder = self.root / "reduced"
            argv = ["-i", str(train), "-o", str(folder), "-s", str(self.settings.step)]
            argv += ["--levels", *map(str, self.settings.levels), *self.quiet_flag()]
            logger.info("generating the reduced grid in %s", folder)
            started = time.perf_counter()
            _check_status(generate_datasets.main(argv), "generate_datasets.py", argv)
            elapsed = time.perf_counter() - started
            self.preparation["generate the reduced grid"] = elapsed
            self._reduced = folder
        return self._reduced

    def generation(self):
        """Generate the full experiment on first use, timing each level; return it."""
        if self._generation is None:
            self._generation = self._generate_full()
        return self._generation

    def _generate_full(self):
        train = self.full_train_csv()
        folder = self.root / "full"
        argv = ["-i", str(train), "-o", str(folder), *self.quiet_flag()]
        if self.settings.full_levels is not None:
            argv += ["--levels", *map(str, self.settings.full_levels)]
        logger.info(
            "generating the full experiment (%d rows) in %s",
            self.settings.full_rows,
            folder,
        )
        # run_level(X, y, params, level, ...) simulates and writes one level.
        probe = Probe(
            generate_datasets,
            "run_level",
            "level",
            lambda args, kwargs, result: {"level": args[3]},
        )
        log_load_average()
        started = time.perf_counter()
        with timed_calls([probe]) as records:
            status = generate_datasets.main(argv)
        wall = time.perf_counter() - started
        self.preparation["generate the full experiment"] = wall
        _check_status(status, "generate_datasets.py", argv)

        level_seconds = {record.details["level"]: record.wall for record in records}
        level_cpu = {record.details["level"]: record.cpu for record in records}
        level_bytes = {
            level.malicious: sum(path.stat().st_size for path in level.batch_files)
            for level in discover_levels(folder)
        }
        return GenerationRun(folder, wall, level_seconds, level_cpu, level_bytes)

    def largest_full_level(self):
        """Return the full experiment's level with the most malicious bots, scanned."""
        level = discover_levels(self.generation().folder)[-1]
        return scanned_levels([level], self.test_csv())[0]

    def grid_run(self, engine, n_jobs):
        """Run ``engine`` at ``n_jobs`` workers on the reduced grid on first use.

        Returns the :class:`GridRun`.
        """
        key = (engine, n_jobs)
        if key not in self._runs:
            self._runs[key] = self._run_grid(engine, n_jobs)
        return self._runs[key]

    def _run_grid(self, engine, n_jobs):
        reduced = self.reduced()
        name = f"{engine}-n{n_jobs}"
        results = self.path("results", f"{name}.csv")
        cache = self.fresh_dir("cache", name)
        argv = self.run_ml_argv(reduced, results, cache, "--engine", engine)
        argv += ["--n-jobs", str(n_jobs), "--seeds", *map(str, self.settings.seeds)]
        argv += ["--models", *self.settings.models]
        logger.info(
            "running the %s engine at --n-jobs %d on the reduced grid", engine, n_jobs
        )
        log_load_average()
        probes = RUN_ML_PROBES if n_jobs == 1 else MAIN_PROCESS_PROBES
        timing = run_ml_timed(argv, probes)
        logger.info("%s engine at --n-jobs %d: %.1f s", engine, n_jobs, timing.wall)
        return GridRun(engine, n_jobs, results, timing)

    def run_ml_argv(self, folder, results, cache, *extra):
        """Return run_ml.py arguments for a folder, scored on the test CSV.

        ``cache`` is the neighbour search cache, which should be an empty
        folder so that the search is part of the run.
        """
        argv = ["-i", str(folder), "-t", str(self.test_csv()), "-o", str(results)]
        return [*argv, "--cache-dir", str(cache), *extra, *self.quiet_flag()]

    def quiet_flag(self):
        """Return ``["-q"]`` unless the scripts' own logs were requested."""
        return [] if self.settings.verbose else ["-q"]
