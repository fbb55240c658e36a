"""Project the cost of the study's full grid from measured per-task costs.

The full grid is every combination of 3 poisoning behaviours, 4 vote settings
(1, 3, 5 and 7 votes per image), the levels and cumulative batches of one
generated experiment, 3 seeds and 12 models. The projection multiplies measured
costs by these dimensions. Fit costs are measured at a few training sizes and
extrapolated with a power law ``seconds = scale * n_rows ** exponent`` per model.
"""

import hashlib
import math
import statistics
from dataclasses import dataclass, field

import numpy as np

from benchmarks.timers import FIT, KNN_LABELS, LOADING_LABELS, NAIVE_BATCH, RunTiming
from benchmarks.workspace import scanned_levels
from crowdpoison.grid import discover_levels
from crowdpoison.models import MODEL_NAMES, is_knn, is_voting
from run_ml import DEFAULT_SEEDS

# Models that the fast engine fits as tasks. KNN and voting come from shared work.
FITTED_MODELS = tuple(
    name for name in MODEL_NAMES if not is_knn(name) and not is_voting(name)
)

# Fits and KNN predictions of the naive engine per (training set, seed): every
# model once, and VF(hard) and VF(soft) each refit LR, DT, ANN and KNN(3).
NAIVE_FIT_COUNTS = {"LR": 3, "SVM": 1, "DT": 3, "ANN": 3, "RF": 1}
NAIVE_KNN_PREDICTIONS = 5 + 2

# Dimensions of the study's grid beyond one experiment.
STUDY_N_BEHAVIOURS = 3
STUDY_VOTE_SETTINGS = (1, 3, 5, 7)
# Votes per image of the generated experiment that the benchmark times.
MEASURED_VOTES = 3

# Figures measured with the study's scripts on a 2-core machine: fit + predict
# seconds of one cell (one seed, one level, batch 1 of 18,000 MNIST training
# images, scored on the 10,000 test images).
STUDY_CELL_ROWS = 18_000
STUDY_CELL_SECONDS = {
    "LR": 24.8,
    "SVM": 21.7,
    "KNN(1)": 3.9,
    "KNN(3)": 3.9,
    "KNN(5)": 4.0,
    "KNN(7)": 4.2,
    "KNN(9)": 4.9,
    "DT": 4.3,
    "ANN": 8.2,
    "RF": 9.2,
    "VF(hard)": 41.5,
    "VF(soft)": 41.2,
}
# np.loadtxt seconds per 18,000 rows in the study's scripts.
STUDY_LOADTXT_SECONDS = 3.0
# Seconds per level of the study's generation script at 3 votes per image (its
# mean over a run of all 21 levels), and the bytes of CSV it wrote per level.
STUDY_GENERATION_SECONDS = 14.0
STUDY_LEVEL_CSV_BYTES = 195e6

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class PowerLaw:
    """Cost model ``seconds = scale * n_rows ** exponent``."""

    scale: float
    exponent: float

    def __call__(self, n_rows):
        return self.scale * float(n_rows) ** self.exponent

    def describe(self):
        """Return the law as text, with the cost at 18,000 and 60,000 rows."""
        return (
            f"{self.scale:.3g} * n^{self.exponent:.2f} s "
            f"({self(18_000):.1f} s at 18,000 rows, {self(60_000):.1f} s at 60,000)"
        )


def fit_power_law(n_rows, seconds):
    """Fit ``seconds = scale * n_rows ** exponent`` by least squares on logarithms.

    Parameters
    ----------
    n_rows : sequence of int
        Training rows of each measurement.
    seconds : sequence of float
        Measured seconds, all positive.

    Returns
    -------
    PowerLaw
        With a single distinct size, the law is linear (exponent 1) through the
        mean cost per row.
    """
    n_rows = np.asarray(n_rows, dtype=np.float64)
    seconds = np.asarray(seconds, dtype=np.float64)
    if len(n_rows) == 0 or len(n_rows) != len(seconds):
        raise ValueError(
            f"need as many sizes as costs, at least one, got {len(n_rows)} sizes "
            f"and {len(seconds)} costs"
        )
    if np.any(n_rows <= 0) or np.any(seconds <= 0):
        raise ValueError("sizes and costs must be positive to fit a power law")
    if len(np.unique(n_rows)) < 2:
        return PowerLaw(float(seconds.sum() / n_rows.sum()), 1.0)
    exponent, intercept = np.polyfit(np.log(n_rows), np.log(seconds), 1)
    return PowerLaw(float(math.exp(intercept)), float(exponent))


@dataclass(frozen=True)
class TrainingSet:
    """The training set of one batch of one level.

    Attributes
    ----------
    level : int
        Number of malicious bots.
    batch : int
        Batch number, from 1.
    n_rows : int
        Rows of batches 1..batch.
    digest : str
        sha256 over the bytes of the batch files 1..batch, in order.
    """

    level: int
    batch: int
    n_rows: int
    digest: str


def list_training_sets(folder):
    """Return the training set of every batch of every level of a generated folder.

    A batch that adds no row has no training set of its own, as in run_ml.py.
    """
    training_sets = []
    for level in discover_levels(folder):
        digest = hashlib.sha256()
        n_rows = 0
        for number, path in enumerate(level.batch_files, start=1):
            data = path.read_bytes()
            added = data.count(b"\n")
            if added == 0:
                continue
            digest.update(data)
            n_rows += added
            training_sets.append(
                TrainingSet(level.malicious, number, n_rows, digest.copy().hexdigest())
            )
    return training_sets


def distinct_training_sets(training_sets):
    """Return the first training set of each digest: the sets the fast engine fits."""
    seen = {}
    for training_set in training_sets:
        seen.setdefault(training_set.digest, training_set)
    return list(seen.values())


@dataclass
class MeasuredCosts:
    """Costs measured by the benchmark, inputs of :func:`project_study_grid`.

    Attributes
    ----------
    fit_laws : dict of str to PowerLaw
        CPU seconds of one fit task (fit, predict, MCC) of each fitted model.
    knn_seconds : float
        CPU seconds of the five KNN models over one whole experiment, search
        included, loading excluded.
    loading_seconds : float
        CPU seconds of reading one whole experiment (test file, scan, levels).
    other_share : float
        Work of the fast engine besides fits, KNN and loading (voting, digests,
        scoring, writing), as a fraction of the fit time.
    fit_speedup : float or None
        Speedup of the fits with the measured number of workers, or None if
        not measured.
    n_workers : int
        Workers of ``fit_speedup``.
    naive_law : PowerLaw or None
        CPU seconds of the naive engine for one (level, batch, seed): loading
        and all twelve models. Used only without ``knn_seconds_per_row``.
    knn_seconds_per_row : float or None
        CPU seconds of one ``KNeighborsClassifier`` fit and predict on the test
        set, per training row.
    loadtxt_seconds_per_row : float or None
        Seconds of ``np.loadtxt`` per CSV row.
    generation_seconds : float or None
        Mean seconds to generate one level at ``MEASURED_VOTES`` votes per image.
    """

    fit_laws: dict
    knn_seconds: float
    loading_seconds: float
    other_share: float
    fit_speedup: float | None = None
    n_workers: int = 1
    naive_law: PowerLaw | None = None
    knn_seconds_per_row: float | None = None
    loadtxt_seconds_per_row: float | None = None
    generation_seconds: float | None = None


@dataclass
class Projection:
    """Projected cost of the full grid, in hours, with the assumptions behind it."""

    n_experiments: int
    n_cells: int
    fast_cpu_hours: float
    fast_wall_hours: float | None
    naive_cpu_hours: float | None
    naive_wall_hours: float | None
    study_hours: float
    generation_hours: float | None
    parts: dict = field(default_factory=dict)
    assumptions: list = field(default_factory=list)


def project_study_grid(training_sets, *, n_seeds, n_models, costs, n_cpus):
    """Project the cost of the study's full grid on this machine.

    Parameters
    ----------
    training_sets : list of TrainingSet
        Every (level, batch) of one generated experiment, from
        :func:`list_training_sets`.
    n_seeds : int
        Seeds of the study.
    n_models : int
        Models of the study.
    costs : MeasuredCosts
        Measured costs.
    n_cpus : int
        Cores of this machine, for the wall-clock projection.

    Returns
    -------
    Projection
    """
    n_experiments = STUDY_N_BEHAVIOURS * len(STUDY_VOTE_SETTINGS)
    n_cells = n_experiments * len(training_sets) * n_seeds * n_models
    distinct = distinct_training_sets(training_sets)
    assumptions = [
        (
            f"{n_experiments} experiments ({STUDY_N_BEHAVIOURS} behaviours x "
            f"{len(STUDY_VOTE_SETTINGS)} vote settings), each with the "
            f"{len(training_sets)} training sets of the measured experiment "
            f"({len(distinct)} distinct), {n_seeds} seeds and {n_models} models: "
            f"{n_cells} cells"
        ),
        (
            "every experiment costs what the measured one (behaviour random, "
            f"{MEASURED_VOTES} votes per image) costs, neighbour search included; "
            "run_ml.py's search cache could reuse the search of experiments on the "
            "same images, which this leaves out"
        ),
        (
            "fit costs: CPU seconds per task, power laws in the training rows "
            "fitted to the measured fits and extrapolated to the grid's sizes "
            "(an estimate)"
        ),
    ]

    unmeasured = [model for model in FITTED_MODELS if model not in costs.fit_laws]
    if unmeasured:
        assumptions.append(
            f"no fit of {', '.join(unmeasured)} was measured, so their fits are "
            "left out"
        )
    fits = sum(
        law(training_set.n_rows)
        for training_set in distinct
        for law in costs.fit_laws.values()
    )
    fits *= n_seeds
    other = fits * costs.other_share
    serial = costs.knn_seconds + costs.loading_seconds + other
    fast_cpu = n_experiments * (fits + serial)
    parts = {
        "fits": n_experiments * fits,
        "knn": n_experiments * costs.knn_seconds,
        "loading": n_experiments * costs.loading_seconds,
        "other": n_experiments * other,
    }

    fast_wall = None
    if costs.fit_speedup is not None:
        fast_wall = n_experiments * (serial + fits / costs.fit_speedup)
        assumptions.append(
            f"wall-clock: the fits run {costs.fit_speedup:.2f}x faster on "
            f"{costs.n_workers} workers, as measured on the reduced grid; KNN, "
            "loading and the other work run in the main process, one after the other"
        )

    naive_cpu = naive_wall = None
    per_row = (costs.knn_seconds_per_row, costs.loadtxt_seconds_per_row)
    if not unmeasured and None not in per_row:
        knn_per_row, loadtxt_per_row = per_row
        fits = sum(
            count * costs.fit_laws[model](training_set.n_rows)
            for training_set in training_sets
            for model, count in NAIVE_FIT_COUNTS.items()
        )
        rows = sum(training_set.n_rows for training_set in training_sets)
        per_seed = fits + (NAIVE_KNN_PREDICTIONS * knn_per_row + loadtxt_per_row) * rows
        naive_cpu = n_experiments * n_seeds * per_seed
        naive_wall = naive_cpu / n_cpus
        assumptions.append(
            "naive engine: per training set and seed, the fit laws above for LR, "
            "DT and ANN three times (the model and its refit in both VF models), "
            f"SVM and RF once, {NAIVE_KNN_PREDICTIONS} KNeighborsClassifier "
            "predictions and np.loadtxt, both linear in the training rows (an "
            f"estimate); its wall-clock assumes a perfect speedup on {n_cpus} cores"
        )
    elif costs.naive_law is not None:
        naive_cpu = (
            n_experiments
            * n_seeds
            * sum(
                costs.naive_law(training_set.n_rows) for training_set in training_sets
            )
        )
        naive_wall = naive_cpu / n_cpus
        assumptions.append(
            "naive engine: CPU seconds per (level, batch, seed) as a power law of "
            "the reduced grid's measurements, extrapolated (an estimate); its "
            f"wall-clock assumes a perfect speedup on {n_cpus} cores"
        )

    study_per_row = (
        sum(STUDY_CELL_SECONDS.values()) + STUDY_LOADTXT_SECONDS
    ) / STUDY_CELL_ROWS
    study = (
        n_experiments
        * n_seeds
        * sum(study_per_row * training_set.n_rows for training_set in training_sets)
    )
    assumptions.append(
        "study's scripts: the reference seconds of one cell at 18,000 rows "
        f"({sum(STUDY_CELL_SECONDS.values()):.1f} s for 12 models, plus "
        f"{STUDY_LOADTXT_SECONDS:.0f} s of np.loadtxt), linear in the training rows"
    )

    generation = None
    if costs.generation_seconds is not None:
        n_levels = len({training_set.level for training_set in training_sets})
        vote_factor = statistics.mean(STUDY_VOTE_SETTINGS) / MEASURED_VOTES
        generation = (
            STUDY_N_BEHAVIOURS
            * len(STUDY_VOTE_SETTINGS)
            * n_levels
            * costs.generation_seconds
            * vote_factor
        )
        assumptions.append(
            "generation: the measured mean seconds per level, scaled by the votes "
            f"per image ({vote_factor:.2f} = mean of {STUDY_VOTE_SETTINGS} / "
            f"{MEASURED_VOTES}), one level after the other (an estimate)"
        )

    return Projection(
        n_experiments=n_experiments,
        n_cells=n_cells,
        fast_cpu_hours=fast_cpu / SECONDS_PER_HOUR,
        fast_wall_hours=None if fast_wall is None else fast_wall / SECONDS_PER_HOUR,
        naive_cpu_hours=None if naive_cpu is None else naive_cpu / SECONDS_PER_HOUR,
        naive_wall_hours=None if naive_wall is None else naive_wall / SECONDS_PER_HOUR,
        study_hours=study / SECONDS_PER_HOUR,
        generation_hours=None if generation is None else generation / SECONDS_PER_HOUR,
        parts={name: seconds / SECONDS_PER_HOUR for name, seconds in parts.items()},
        assumptions=assumptions,
    )


# Costs from the benchmark's stages


def project_from_stages(workspace, stages, *, n_cpus):
    """Project the full grid from the benchmark's measurements.

    Parameters
    ----------
    workspace : benchmarks.workspace.Workspace
        The benchmark's runs.
    stages : dict of str to benchmarks.stages.StageResult
        Finished stages. The projection needs "one-core" and "knn". With
        "two-cores" it adds the wall-clock time, with "generation" the
        generation, and "memory" adds fits at the full experiment's size.
    n_cpus : int
        Cores of this machine.

    Returns
    -------
    lines : list of str
        Report lines, or the reason why the projection was skipped.
    projection : Projection or None
    """
    missing = [name for name in ("one-core", "knn") if name not in stages]
    if missing:
        return [f"skipped: needs the stages {', '.join(missing)}"], None

    fast = workspace.grid_run("fast", 1).timing
    timings = [fast]
    if "memory" in stages:
        timings.append(RunTiming.from_dict(stages["memory"].figures["timing_n_jobs_1"]))
    laws = _fit_laws(timings)

    fits_cpu = fast.total(FIT, clock="cpu")
    counted = fits_cpu + fast.total(*LOADING_LABELS, *KNN_LABELS, clock="cpu")
    other_share = max(fast.cpu - counted, 0.0) / fits_cpu if fits_cpu else 0.0
    knn = stages["knn"].figures
    fit_speedup, n_workers = None, 1
    if "two-cores" in stages:
        fit_speedup = _fit_speedup(fast, workspace.grid_run("fast", 2).timing, n_cpus)
        n_workers = 2
    generation = stages.get("generation")

    costs = MeasuredCosts(
        fit_laws=laws,
        knn_seconds=knn["knn_cpu"],
        loading_seconds=knn["loading_cpu"],
        other_share=other_share,
        fit_speedup=fit_speedup,
        n_workers=n_workers,
        naive_law=_naive_law(workspace),
        knn_seconds_per_row=knn["reference_one_thread"] / workspace.settings.full_rows,
        loadtxt_seconds_per_row=_loadtxt_per_row(stages),
        generation_seconds=generation.figures["mean_seconds"] if generation else None,
    )
    projection = project_study_grid(
        list_training_sets(workspace.generation().folder),
        n_seeds=len(DEFAULT_SEEDS),
        n_models=len(MODEL_NAMES),
        costs=costs,
        n_cpus=n_cpus,
    )
    return projection_lines(projection, laws), projection


def _fit_laws(timings):
    """Fit a power law of CPU seconds to the training rows of each fitted model."""
    points = {model: ([], []) for model in FITTED_MODELS}
    for timing in timings:
        for record in timing.calls(FIT):
            sizes, seconds = points[record.details["model"]]
            sizes.append(record.details["n_rows"])
            seconds.append(record.cpu)
    return {
        model: fit_power_law(sizes, seconds)
        for model, (sizes, seconds) in points.items()
        if sizes
    }


def _fit_speedup(one_worker, two_workers, n_cpus):
    """Return the speedup of the fits alone between --n-jobs 1 and 2.

    Everything but the fits runs in the main process at both settings, so the
    run at --n-jobs 2 spends ``wall(1) - fits(1)`` seconds outside the fits.
    """
    fits = one_worker.total(FIT)
    serial = one_worker.wall - fits
    parallel = two_workers.wall - serial
    limit = float(min(2, n_cpus))
    if parallel <= 0:
        return limit
    return min(max(fits / parallel, 1.0), limit)


def _loadtxt_per_row(stages):
    if "loading" not in stages:
        return None
    figures = stages["loading"].figures
    return figures["loadtxt_seconds"] / figures["loadtxt_rows"]


def _naive_law(workspace):
    """Fit the naive engine's CPU seconds per (level, batch, seed) to the rows."""
    naive = workspace.grid_run("naive", 1).timing
    levels = discover_levels(workspace.reduced())
    lengths = {
        level.malicious: level.dataset_lengths()
        for level in scanned_levels(levels, workspace.test_csv())
    }
    n_seeds = len(workspace.settings.seeds)
    sizes, seconds = [], []
    for record in naive.calls(NAIVE_BATCH):
        sizes.append(lengths[record.details["level"]][record.details["n_batches"] - 1])
        seconds.append(record.cpu / n_seeds)
    return fit_power_law(sizes, seconds) if sizes else None


def projection_lines(projection, laws):
    """Return the report lines of a projection."""
    lines = [
        f"fit cost per task (CPU): {model}: {law.describe()}"
        for model, law in laws.items()
    ]
    parts = ", ".join(f"{name} {hours:.2f}" for name, hours in projection.parts.items())
    lines += [
        (
            f"full study grid: {projection.n_cells} cells in "
            f"{projection.n_experiments} experiments"
        ),
        f"fast engine: {projection.fast_cpu_hours:.1f} CPU-hours ({parts})",
    ]
    if projection.fast_wall_hours is not None:
        lines.append(
            "fast engine on this machine at --n-jobs 2: "
            f"{projection.fast_wall_hours:.1f} wall-clock hours"
        )
    if projection.naive_cpu_hours is not None:
        lines.append(
            f"naive engine: {projection.naive_cpu_hours:.1f} CPU-hours, "
            f"{projection.naive_wall_hours:.1f} wall-clock hours on this machine"
        )
    lines.append(
        f"study's scripts, from the reference figures: {projection.study_hours:.1f} "
        "hours"
    )
    if projection.generation_hours is not None:
        lines.append(
            f"generation of the {projection.n_experiments} experiments: "
            f"{projection.generation_hours:.2f} hours"
        )
    lines.append("assumptions:")
    lines += [f"  - {assumption}" for assumption in projection.assumptions]
    return lines
