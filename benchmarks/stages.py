"""The stages of the grid benchmark: each measures, reports and checks its targets.

A stage is a function ``stage(workspace, result)`` that fills a
:class:`StageResult` with report lines, figures and :class:`Target` checks.
"""

import csv
import json
import logging
import math
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from benchmarks.projection import (
    STUDY_CELL_ROWS,
    STUDY_GENERATION_SECONDS,
    STUDY_LEVEL_CSV_BYTES,
    STUDY_LOADTXT_SECONDS,
)
from benchmarks.timers import (
    FIT,
    KNN_BIND,
    KNN_LABELS,
    KNN_PREDICT,
    LEVEL_LOAD,
    LOADING_LABELS,
    NAIVE_BATCH,
    SCAN,
    SCORE,
    TEST_LOAD,
    RunTiming,
    measure_command,
    run_ml_timed,
)
from benchmarks.workspace import log_load_average
from crowdpoison.csvio import read_labelled_csv, read_labelled_csvs
from crowdpoison.models import MODEL_INDEX, MODEL_NAMES, is_knn
from run_ml import DEFAULT_SEEDS

logger = logging.getLogger("bench_grid")

REPO_ROOT = Path(__file__).resolve().parent.parent
KNN_MODELS = tuple(name for name in MODEL_NAMES if is_knn(name))

# Targets.
MIN_ONE_CORE_SPEEDUP = 2.5
MAX_KNN_COST_RATIO = 2.0
MIN_TWO_CORE_SPEEDUP = 1.8
MAX_LEVEL_LOAD_SECONDS = 1.0
MIN_GENERATION_SPEEDUP = 10.0
MAX_LEVEL_CSV_SHARE = 0.6
MAX_RSS_BYTES = 3e9

LOAD_REPEATS = 3
# Megabytes are 10**6 bytes in every report line.
MB = 1e6


@dataclass
class Target:
    """One checked target: what was measured against what is required.

    Attributes
    ----------
    number : str
        Number of the target in the report.
    name : str
        Short name.
    passed : bool
        Whether the measurement meets the goal.
    measured, goal : str
        The measured figure and the goal, as text.
    correctness : bool
        True for a check of the results, False for a speed or memory target.
    """

    number: str
    name: str
    passed: bool
    measured: str
    goal: str
    correctness: bool = False

    def line(self):
        """Return the target as one report line."""
        status = "PASS" if self.passed else "FAIL"
        return (
            f"[{status}] {self.number} {self.name}: {self.measured} (goal: {self.goal})"
        )


@dataclass
class StageResult:
    """Report lines, figures and targets of one stage."""

    name: str
    seconds: float = 0.0
    lines: list = field(default_factory=list)
    targets: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)


# Results files


def read_results(path):
    """Return ``{(seed, model, malicious, dataset_len): mcc}`` of a results file."""
    rows = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            key = (int(row["seed"]), row["model"], int(row["malicious"]))
            rows[(*key, int(row["dataset_len"]))] = float(row["mcc"])
    return rows


def compare_results(reference, candidate):
    """Return one line per cell whose MCC differs or that only one run has.

    Parameters
    ----------
    reference, candidate : dict
        ``{(seed, model, malicious, dataset_len): mcc}`` of the naive and the
        fast engine, as :func:`read_results` returns them. MCCs are compared
        with exact float equality, and NaN equals NaN.

    Returns
    -------
    list of str
        Empty when both runs have the same cells with the same MCC.
    """
    differences = []
    for key in sorted(set(reference) | set(candidate), key=_cell_order):
        cell = "seed {}, {}, malicious {}, dataset_len {}".format(*key)
        if key not in candidate:
            differences.append(f"{cell}: missing from the fast engine's results")
        elif key not in reference:
            differences.append(f"{cell}: missing from the naive engine's results")
        elif not _same_float(reference[key], candidate[key]):
            differences.append(
                f"{cell}: naive {reference[key]!r}, fast {candidate[key]!r}"
            )
    return differences


def _cell_order(key):
    seed, model, malicious, dataset_len = key
    return malicious, dataset_len, seed, MODEL_INDEX.get(model, -1), model


def _same_float(a, b):
    return a == b or (math.isnan(a) and math.isnan(b))


# Reduced grid: exactness, one core, two cores


def stage_exact(workspace, result):
    """Compare every MCC of the fast and naive engines at --n-jobs 1."""
    naive = workspace.grid_run("naive", 1)
    fast = workspace.grid_run("fast", 1)
    reference = read_results(naive.results)
    candidate = read_results(fast.results)
    differences = compare_results(reference, candidate)
    n_equal = sum(
        1
        for key, mcc in reference.items()
        if key in candidate and _same_float(mcc, candidate[key])
    )
    result.lines.append(
        f"cells: {len(reference)} from the naive engine, {len(candidate)} from the "
        f"fast engine, {n_equal} equal"
    )
    if differences:
        result.lines.append(f"{len(differences)} cells differ:")
        result.lines.extend(f"  {line}" for line in differences)
    result.figures.update(
        n_cells=len(reference), n_equal=n_equal, differences=differences
    )
    result.targets.append(
        Target(
            "1",
            "identical results",
            passed=not differences and len(reference) > 0,
            measured=f"{n_equal} of {len(reference)} cells equal",
            goal="every MCC of the fast engine equals the naive engine's",
            correctness=True,
        )
    )


def stage_one_core(workspace, result):
    """Time the naive and fast engines at --n-jobs 1 and the floor of the fits."""
    naive = workspace.grid_run("naive", 1).timing
    fast = workspace.grid_run("fast", 1).timing
    speedup = naive.wall / fast.wall
    floor = fast.total(FIT)
    loading = fast.total(*LOADING_LABELS)
    knn = fast.total(*KNN_LABELS)
    other = fast.wall - floor - loading - knn
    fast_over_floor = fast.wall / floor if floor else math.inf
    n_tasks = len(naive.calls(NAIVE_BATCH))
    fitted = ", ".join(sorted(fit_summary(fast), key=MODEL_INDEX.get))

    result.lines += [
        (
            f"naive engine: {naive.wall:.1f} s wall, {naive.cpu:.1f} s CPU "
            f"({n_tasks} (level, batch) tasks)"
        ),
        f"fast engine:  {fast.wall:.1f} s wall, {fast.cpu:.1f} s CPU",
        f"speedup: {speedup:.2f}x",
        (
            f"floor, the {len(fast.calls(FIT))} fits of {fitted} on the distinct "
            f"training sets: {floor:.1f} s; the fast engine takes "
            f"{fast_over_floor:.2f}x the floor"
        ),
        (
            f"fast engine besides the fits: loading {loading:.1f} s, KNN (search "
            f"and predictions) {knn:.1f} s, other (voting, digests, scoring, "
            f"writing) {other:.1f} s"
        ),
        *fit_table(fast),
    ]
    result.figures.update(
        naive_wall=naive.wall,
        naive_cpu=naive.cpu,
        fast_wall=fast.wall,
        fast_cpu=fast.cpu,
        speedup=speedup,
        floor=floor,
        fast_over_floor=fast_over_floor,
        loading=loading,
        knn=knn,
        other=other,
        fits=fit_summary(fast),
    )
    result.targets.append(
        Target(
            "2",
            "one core",
            passed=speedup >= MIN_ONE_CORE_SPEEDUP,
            measured=(
                f"fast {speedup:.2f}x faster than naive ({fast.wall:.1f} s vs "
                f"{naive.wall:.1f} s)"
            ),
            goal=f"at least {MIN_ONE_CORE_SPEEDUP}x",
        )
    )


def fit_summary(timing):
    """Return ``{model: {"n", "wall", "cpu"}}``: the fits of a run, summed by model."""
    summary = {}
    for record in timing.calls(FIT):
        model = record.details["model"]
        entry = summary.setdefault(model, {"n": 0, "wall": 0.0, "cpu": 0.0})
        entry["n"] += 1
        entry["wall"] += record.wall
        entry["cpu"] += record.cpu
    return summary


def fit_table(timing):
    """Return report lines with the fits of a run, summed by model."""
    summary = fit_summary(timing)
    if not summary:
        return []
    lines = ["fits by model:      fits   wall s    CPU s"]
    for model in sorted(summary, key=MODEL_INDEX.get):
        entry = summary[model]
        lines.append(
            f"  {model:<16} {entry['n']:>6} {entry['wall']:>8.1f} {entry['cpu']:>8.1f}"
        )
    return lines


def stage_two_cores(workspace, result):
    """Compare the fast engine at --n-jobs 2 with --n-jobs 1."""
    one_worker = workspace.grid_run("fast", 1)
    two_workers = workspace.grid_run("fast", 2)
    speedup = one_worker.timing.wall / two_workers.timing.wall
    identical = one_worker.results.read_bytes() == two_workers.results.read_bytes()
    result.lines += [
        (
            f"fast engine: {one_worker.timing.wall:.1f} s at --n-jobs 1, "
            f"{two_workers.timing.wall:.1f} s at --n-jobs 2: speedup {speedup:.2f}x"
        ),
        (
            f"results files {one_worker.results.name} and {two_workers.results.name}: "
            f"{'byte-identical' if identical else 'different'}"
        ),
    ]
    result.figures.update(
        wall_one=one_worker.timing.wall,
        wall_two=two_workers.timing.wall,
        speedup=speedup,
        identical=identical,
    )
    result.targets += [
        Target(
            "4",
            "two cores",
            passed=speedup >= MIN_TWO_CORE_SPEEDUP,
            measured=f"--n-jobs 2 {speedup:.2f}x faster than --n-jobs 1",
            goal=f"at least {MIN_TWO_CORE_SPEEDUP}x",
        ),
        Target(
            "4",
            "two cores, same results",
            passed=identical,
            measured="byte-identical" if identical else "the results files differ",
            goal="byte-identical results CSV",
            correctness=True,
        ),
    ]


# Full experiment: generation, KNN, loading, memory


def stage_generation(workspace, result):
    """Report the per-level time and CSV size of the full experiment's generation."""
    generation = workspace.generation()
    seconds, sizes = generation.level_seconds, generation.level_bytes
    listed = [
        level for level in workspace.settings.generation_levels if level in seconds
    ]
    setup = generation.wall - sum(seconds.values())
    slowest = max(seconds, key=seconds.get)
    largest = max(sizes, key=sizes.get)
    mean = statistics.mean(seconds.values())

    result.lines += [
        (
            f"generate_datasets.py on {workspace.settings.full_rows} rows (defaults: "
            f"behaviour random, -v 3; {len(seconds)} levels, one process): "
            f"{generation.wall:.1f} s"
        ),
        (
            "  timed per level around generate_datasets.run_level (simulation and "
            "writing); reading the input, its sha256 and formatting the rows, "
            f"once: {setup:.1f} s"
        ),
        "  level   wall s    CPU s   CSV MB",
    ]
    for level in listed:
        result.lines.append(
            f"  {level:>5} {seconds[level]:>8.2f} {generation.level_cpu[level]:>8.2f} "
            f"{sizes[level] / MB:>8.1f}"
        )
    result.lines.append(
        f"  all {len(seconds)} levels: mean {mean:.2f} s, slowest "
        f"{seconds[slowest]:.2f} s (level {slowest}); CSV mean "
        f"{statistics.mean(sizes.values()) / MB:.1f} MB, largest "
        f"{sizes[largest] / MB:.1f} MB (level {largest})"
    )

    # The study's figure is its mean over the 21 levels of one run, so the target
    # compares the mean. The slowest level is reported beside it.
    speedup = STUDY_GENERATION_SECONDS / mean
    slowest_speedup = STUDY_GENERATION_SECONDS / seconds[slowest]
    size_limit = MAX_LEVEL_CSV_SHARE * STUDY_LEVEL_CSV_BYTES
    result.figures.update(
        wall=generation.wall,
        setup=setup,
        level_seconds=seconds,
        level_cpu=generation.level_cpu,
        level_bytes=sizes,
        mean_seconds=mean,
        slowest_level=slowest,
        largest_level=largest,
    )
    result.targets += [
        Target(
            "6",
            "generation speed",
            passed=speedup >= MIN_GENERATION_SPEEDUP,
            measured=(
                f"mean level {mean:.2f} s = {speedup:.1f}x faster than "
                f"{STUDY_GENERATION_SECONDS:.0f} s (slowest, level {slowest}: "
                f"{seconds[slowest]:.2f} s = {slowest_speedup:.1f}x)"
            ),
            goal=f"at least {MIN_GENERATION_SPEEDUP:.0f}x",
        ),
        Target(
            "6",
            "generation size",
            passed=sizes[largest] <= size_limit,
            measured=f"largest level {sizes[largest] / MB:.1f} MB",
            goal=f"at most {size_limit / MB:.0f} MB",
        ),
    ]


def stage_knn(workspace, result):
    """Time the five KNN models over the full experiment against one KNN(1)."""
    folder = workspace.generation().folder
    results = workspace.path("results", "knn-full.csv")
    cache = workspace.fresh_dir("cache", "knn-full")
    argv = workspace.run_ml_argv(
        folder, results, cache, "--models", *KNN_MODELS, "--n-jobs", "1"
    )
    logger.info("running the five KNN models over the full experiment")
    log_load_average()
    timing = run_ml_timed(argv)
    loading = timing.total(*LOADING_LABELS)
    loading_cpu = timing.total(*LOADING_LABELS, clock="cpu")
    search = timing.total(KNN_BIND)
    predictions = timing.total(KNN_PREDICT)
    scoring = timing.total(SCORE)
    knn_cost = timing.wall - loading
    rest = knn_cost - search - predictions - scoring
    n_rows_written = len(read_results(results))
    n_levels = len(timing.calls(LEVEL_LOAD))
    seeds = " ".join(map(str, DEFAULT_SEEDS))

    reference_one, reference_default = time_reference_knn(workspace)
    ratio = knn_cost / reference_one
    settings = workspace.settings
    result.lines += [
        (
            f"run_ml.py --models {' '.join(KNN_MODELS)} --n-jobs 1, empty neighbour "
            f"cache: {timing.wall:.1f} s wall, {timing.cpu:.1f} s CPU, {n_levels} "
            f"levels, {n_rows_written} result rows (seeds {seeds})"
        ),
        (
            f"  loading, not counted: {loading:.1f} s (test file "
            f"{timing.total(TEST_LOAD):.1f} s, scan {timing.total(SCAN):.1f} s, "
            f"levels {timing.total(LEVEL_LOAD):.1f} s)"
        ),
        (
            f"  KNN cost: {knn_cost:.1f} s = neighbour search and binding "
            f"{search:.1f} s + predictions of the five k {predictions:.1f} s + MCC "
            f"scoring ({len(timing.calls(SCORE))} calls) {scoring:.1f} s + digests, "
            f"writing and the rest {rest:.1f} s"
        ),
        (
            f"KNeighborsClassifier(1).fit({settings.full_rows} rows).predict("
            f"{settings.test_rows} rows) on float64: {reference_one:.1f} s with one "
            f"thread, {reference_default:.1f} s with the default threads"
        ),
        (
            f"ratio: {ratio:.2f} against one thread, "
            f"{knn_cost / reference_default:.2f} against the default threads"
        ),
    ]
    result.figures.update(
        wall=timing.wall,
        cpu=timing.cpu,
        loading=loading,
        loading_cpu=loading_cpu,
        knn_cost=knn_cost,
        knn_cpu=timing.cpu - loading_cpu,
        search=search,
        predictions=predictions,
        scoring=scoring,
        reference_one_thread=reference_one,
        reference_default_threads=reference_default,
        ratio=ratio,
        n_rows_written=n_rows_written,
    )
    result.targets.append(
        Target(
            "3",
            "KNN",
            passed=ratio < MAX_KNN_COST_RATIO,
            measured=(
                f"{knn_cost:.1f} s = {ratio:.2f}x one KNN(1) ({reference_one:.1f} s, "
                "one thread)"
            ),
            goal=f"less than {MAX_KNN_COST_RATIO:.0f}x",
        )
    )


def time_reference_knn(workspace):
    """Return the seconds of one KNN(1) fit + predict, one thread and default threads.

    The model is fitted on the full experiment's training CSV and predicts the
    test CSV, both converted to float64 beforehand.
    """
    X, y = read_labelled_csv(workspace.full_train_csv())
    X_test, _ = read_labelled_csv(workspace.test_csv())
    X, X_test = X.astype(np.float64), X_test.astype(np.float64)
    logger.info("timing KNeighborsClassifier(1) on %d training rows", len(X))

    def fit_predict():
        started = time.perf_counter()
        KNeighborsClassifier(n_neighbors=1).fit(X, y).predict(X_test)
        return time.perf_counter() - started

    with threadpool_limits(limits=1):
        one_thread = fit_predict()
    return one_thread, fit_predict()


def stage_loading(workspace, result):
    """Time reading every batch file of one level of the full experiment."""
    level = workspace.largest_full_level()
    seconds, cpu = [], []
    for _ in range(LOAD_REPEATS):
        started, started_cpu = time.perf_counter(), time.process_time()
        X, _, _ = read_labelled_csvs(level.batch_files)
        seconds.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    median = statistics.median(seconds)

    first = level.batch_files[0]
    started = time.perf_counter()
    loaded = np.loadtxt(first, delimiter=",", ndmin=2)
    loadtxt = time.perf_counter() - started
    per_study_rows = loadtxt * STUDY_CELL_ROWS / len(loaded)
    walls = ", ".join(f"{value:.3f}" for value in seconds)
    cpus = ", ".join(f"{value:.3f}" for value in cpu)
    result.lines += [
        (
            f"level {level.malicious}: {len(X)} rows in {len(level.batch_files)} "
            f"batch files; read_labelled_csvs, {LOAD_REPEATS} times: {walls} s wall "
            f"(median {median:.3f} s), {cpus} s CPU"
        ),
        (
            f"np.loadtxt of {first.name} ({len(loaded)} rows), as the study's "
            f"scripts: {loadtxt:.2f} s = {per_study_rows:.2f} s per "
            f"{STUDY_CELL_ROWS} rows (study: {STUDY_LOADTXT_SECONDS:.0f} s)"
        ),
    ]
    result.figures.update(
        level=level.malicious,
        n_rows=len(X),
        seconds=seconds,
        cpu=cpu,
        median=median,
        loadtxt_rows=len(loaded),
        loadtxt_seconds=loadtxt,
    )
    result.targets.append(
        Target(
            "5",
            "loading",
            passed=median < MAX_LEVEL_LOAD_SECONDS,
            measured=f"{median:.3f} s for a level of {len(X)} rows",
            goal=f"under {MAX_LEVEL_LOAD_SECONDS:.0f} s",
        )
    )


def stage_memory(workspace, result):
    """Measure the peak memory of run_ml.py on the largest training set."""
    level = workspace.largest_full_level()
    folder = workspace.fresh_dir("memory")
    merged = folder / str(level.malicious) / "dataset_001.csv"
    merged.parent.mkdir()
    with open(merged, "wb") as output:
        for path in level.batch_files:
            with open(path, "rb") as source:
                shutil.copyfileobj(source, output)

    n_rows = sum(level.batch_rows)
    models = workspace.settings.memory_models
    described = (
        f"all {len(models)} models" if models == MODEL_NAMES else " ".join(models)
    )
    result.lines.append(
        f"one training set: the {n_rows} rows of level {level.malicious} (all its "
        f"batches), {described}, seed {workspace.settings.seeds[0]}"
    )
    for n_jobs in workspace.settings.memory_n_jobs:
        measurement, timing = _measure_run_ml(workspace, folder, n_jobs)
        result.lines.append(
            f"--n-jobs {n_jobs}: {measurement.wall:.1f} s; largest process peak "
            f"{measurement.max_rss / MB:.0f} MB; process tree peak (sampled sum of "
            f"RSS over {measurement.max_processes} processes) "
            f"{measurement.tree_rss / MB:.0f} MB"
        )
        result.figures[f"n_jobs_{n_jobs}"] = asdict(measurement)
        if n_jobs == 1:
            result.figures["timing_n_jobs_1"] = timing.to_dict()
            result.lines += fit_table(timing)

    peak = result.figures["n_jobs_1"]["max_rss"]
    result.targets.append(
        Target(
            "7",
            "memory",
            passed=peak < MAX_RSS_BYTES,
            measured=f"{peak / MB:.0f} MB peak at --n-jobs 1 ({n_rows} training rows)",
            goal=f"under {MAX_RSS_BYTES / MB:.0f} MB",
        )
    )


def _measure_run_ml(workspace, folder, n_jobs):
    """Run run_ml.py in a child process and return its memory and timings."""
    name = f"memory-n{n_jobs}"
    results = workspace.path("results", f"{name}.csv")
    cache = workspace.fresh_dir("cache", name)
    timings = workspace.path("timings", f"{name}.json")
    log = workspace.path("logs", f"{name}.log")
    argv = workspace.run_ml_argv(folder, results, cache, "--n-jobs", str(n_jobs))
    argv += ["--seeds", str(workspace.settings.seeds[0])]
    argv += ["--models", *workspace.settings.memory_models]
    command = [sys.executable, "-m", "benchmarks.timers", str(timings)]
    if n_jobs != 1:
        command.append("--main-process-only")
    command += ["--", *argv]
    logger.info("measuring the memory of run_ml.py at --n-jobs %d", n_jobs)
    log_load_average()
    measurement = measure_command(command, cwd=REPO_ROOT, log_path=log)
    if measurement.returncode != 0:
        raise RuntimeError(
            f"run_ml.py exited with status {measurement.returncode} in the memory "
            f"stage; its output is in {log}"
        )
    timing = RunTiming.from_dict(json.loads(timings.read_text(encoding="utf-8")))
    return measurement, timing


STAGE_FUNCTIONS = {
    "exact": stage_exact,
    "one-core": stage_one_core,
    "two-cores": stage_two_cores,
    "generation": stage_generation,
    "knn": stage_knn,
    "loading": stage_loading,
    "memory": stage_memory,
}
STAGES = tuple(STAGE_FUNCTIONS)
