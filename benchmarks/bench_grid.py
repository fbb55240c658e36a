"""Benchmark run_ml.py's engines on the study's grid: exactness, speed and memory.

The benchmark writes MNIST as CSV into a work folder, generates a reduced grid
and one full experiment with generate_datasets.py, and runs these stages, each
printing its figures and PASS or FAIL against a target:

- ``exact``: on the reduced grid, every MCC of the fast engine equals the naive
  engine's (exact float equality).
- ``one-core``: the fast engine at ``--n-jobs 1`` is at least 2.5 times faster
  than the naive engine at ``--n-jobs 1``. The report also compares it with the
  floor, which is the summed time of the fits that cannot be shared.
- ``two-cores``: the fast engine at ``--n-jobs 2`` is at least 1.8 times faster
  than at ``--n-jobs 1`` and writes a byte-identical results file.
- ``generation``: generate_datasets.py generates the levels of the full
  experiment at least 10 times faster than the study's mean of 14 s per level,
  into at most 60% of the study's 195 MB of CSV per level. The mean over the
  levels is compared, and the slowest level is reported beside it.
- ``knn``: the five KNN models over every seed, level and batch of the full
  experiment cost less than twice one ``KNeighborsClassifier(1)`` fitted on all
  its training rows and predicting the test set (float64, one thread).
- ``loading``: reading a whole level of the full experiment takes under 1 s.
- ``memory``: run_ml.py with every model on the largest training set of the
  full experiment stays under 3 GB of memory at ``--n-jobs 1``.

A projection of the study's full grid in CPU-hours and wall-clock hours
follows. Run it from the repository root::

    python -m benchmarks.bench_grid            # every stage
    python -m benchmarks.bench_grid --quick    # tiny sizes, a smoke test

The exit status is 1 when a correctness target fails (an MCC that differs, or
results files that differ between ``--n-jobs 1`` and ``2``). With ``--strict``, a
missed speed or memory target also gives 1.
"""

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import joblib
import numpy as np
import scipy
import sklearn
from threadpoolctl import threadpool_info

from benchmarks.projection import project_from_stages
from benchmarks.stages import STAGE_FUNCTIONS, STAGES, StageResult
from benchmarks.workspace import Settings, Workspace
from crowdpoison.cli import (
    ArgumentParser,
    InputError,
    add_logging_flags,
    configure_logging,
    fraction,
    non_negative_int,
    positive_int,
    random_state_seed,
    run,
)
from crowdpoison.models import MODEL_NAMES
from run_ml import check_models

logger = logging.getLogger("bench_grid")

REPO_ROOT = Path(__file__).resolve().parent.parent

# Sizes of the default run and of --quick. Explicit flags override them.
DEFAULT_SIZES = {"train_rows": 2_000, "test_rows": 10_000, "full_rows": 60_000}
QUICK_SIZES = {"train_rows": 150, "test_rows": 100, "full_rows": 300}
DEFAULT_LEVELS = (0, 10, 20)
QUICK_LEVELS = (0, 20)
DEFAULT_STEP = 0.5
QUICK_STEP = 1.0
QUICK_FULL_LEVELS = (0, 10, 20)
# Models of --quick. They cover both kinds of work of the fast engine: the shared
# neighbour search and fit tasks. The voting models are left out because they
# need the multi-layer perceptron, the slowest fit.
QUICK_MODELS = ("LR", "KNN(1)", "KNN(3)", "DT")
QUICK_MEMORY_MODELS = ("KNN(1)", "DT")
# Worker counts of the memory stage. --quick measures one: each run at --n-jobs 2
# starts three Python processes, which spend seconds importing scikit-learn.
DEFAULT_MEMORY_N_JOBS = (1, 2)
QUICK_MEMORY_N_JOBS = (1,)
DEFAULT_GENERATION_LEVELS = (0, 5, 10, 15, 20)
# Bots of generate_datasets.py's default, so levels run from 0 to this.
N_BOTS = 20

EPILOG = """\
examples:
  # every stage at the default sizes
  python -m benchmarks.bench_grid --mnist-dir ~/mnist --json bench.json

  # a smoke test on tiny sizes
  python -m benchmarks.bench_grid --mnist-dir ~/mnist --quick

  # only the exactness check, on 6,000 images and two levels
  python -m benchmarks.bench_grid --stages exact --train-rows 6000 --levels 0 20
"""


def _join(values):
    return " ".join(map(str, values))


def build_parser():
    parser = ArgumentParser(
        prog="python -m benchmarks.bench_grid",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_folder_flags(parser)
    _add_size_flags(parser)
    _add_run_flags(parser)
    add_logging_flags(parser)
    return parser


def _add_folder_flags(parser):
    parser.add_argument(
        "--mnist-dir",
        type=Path,
        default=os.environ.get("MNIST_DIR"),
        help="folder with the four MNIST IDX files (default $MNIST_DIR)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="new or empty folder for the data and results, outside the repository "
        "(default: a temporary folder, removed at the end)",
    )
    parser.add_argument(
        "--keep-work-dir",
        action="store_true",
        help="keep the default temporary work folder at the end",
    )


def _add_size_flags(parser):
    parser.add_argument(
        "--train-rows",
        type=positive_int,
        help="first MNIST training images of the reduced grid "
        f"(default {DEFAULT_SIZES['train_rows']}, --quick {QUICK_SIZES['train_rows']})",
    )
    parser.add_argument(
        "--test-rows",
        type=positive_int,
        help="first MNIST test images, which score every model "
        f"(default {DEFAULT_SIZES['test_rows']}, --quick {QUICK_SIZES['test_rows']})",
    )
    parser.add_argument(
        "--full-rows",
        type=positive_int,
        help="first MNIST training images of the full experiment "
        f"(default {DEFAULT_SIZES['full_rows']}, --quick {QUICK_SIZES['full_rows']})",
    )
    parser.add_argument(
        "--levels",
        type=non_negative_int,
        nargs="+",
        help=f"levels (malicious bots out of {N_BOTS}) of the reduced grid "
        f"(default {_join(DEFAULT_LEVELS)}, --quick {_join(QUICK_LEVELS)})",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="MODEL",
        help=f"models of the reduced grid (default all: {_join(MODEL_NAMES)}; "
        f"--quick {_join(QUICK_MODELS)})",
    )
    parser.add_argument(
        "--seeds",
        type=random_state_seed,
        nargs="+",
        default=[3],
        help="seeds of the reduced grid (default 3)",
    )
    parser.add_argument(
        "--step",
        type=fraction,
        help="generate_datasets.py -s of the reduced grid: the fraction of the pool "
        f"per batch (default {DEFAULT_STEP}, 3 batches; --quick {QUICK_STEP}, 2)",
    )
    parser.add_argument(
        "--full-levels",
        type=non_negative_int,
        nargs="+",
        help=f"levels of the full experiment (default all, 0 to {N_BOTS}; --quick "
        f"{_join(QUICK_FULL_LEVELS)})",
    )
    parser.add_argument(
        "--generation-levels",
        type=non_negative_int,
        nargs="+",
        default=list(DEFAULT_GENERATION_LEVELS),
        help="levels whose generation time is listed "
        f"(default {_join(DEFAULT_GENERATION_LEVELS)})",
    )
    parser.add_argument(
        "--binarize",
        action="store_true",
        help="set the pixels to 0 below 128 and to 1 from 128 on, so that the SGD "
        "models converge in a few epochs (on with --quick)",
    )


def _add_run_flags(parser):
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        metavar="STAGE",
        help=f"stages to run: {_join(STAGES)} (default all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes for a smoke test; the speed targets are set for the "
        "default sizes and may fail at these",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 when a speed or memory target fails too",
    )
    parser.add_argument(
        "--json", type=Path, help="also write every figure to this file"
    )


# Settings


def _check_levels(flag, levels):
    if levels is None:
        return None
    invalid = [level for level in levels if level > N_BOTS]
    if invalid:
        raise InputError(
            f"{flag} {_join(invalid)}: a level is a number of malicious bots out "
            f"of {N_BOTS}; pass levels in 0..{N_BOTS}"
        )
    return tuple(sorted(set(levels)))


def resolve_settings(args, work_dir):
    """Return the settings of the parsed arguments, with --quick's defaults.

    Raises
    ------
    InputError
        If --mnist-dir is missing or a level is above the number of bots.
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
    levels = _check_levels("--levels", args.levels)
    if levels is None:
        levels = QUICK_LEVELS if args.quick else DEFAULT_LEVELS
    full_levels = _check_levels("--full-levels", args.full_levels)
    if full_levels is None and args.quick:
        full_levels = QUICK_FULL_LEVELS
    step = args.step or (QUICK_STEP if args.quick else DEFAULT_STEP)
    if args.models is not None:
        models = check_models(args.models)
    else:
        models = QUICK_MODELS if args.quick else MODEL_NAMES
    return Settings(
        mnist_dir=args.mnist_dir,
        work_dir=work_dir,
        levels=levels,
        models=models,
        seeds=tuple(sorted(set(args.seeds))),
        step=step,
        generation_levels=tuple(args.generation_levels),
        full_levels=full_levels,
        memory_models=QUICK_MEMORY_MODELS if args.quick else MODEL_NAMES,
        memory_n_jobs=QUICK_MEMORY_N_JOBS if args.quick else DEFAULT_MEMORY_N_JOBS,
        binarize=args.binarize or args.quick,
        stages=tuple(name for name in STAGES if name in args.stages),
        quick=args.quick,
        verbose=args.verbose,
        **sizes,
    )


def check_sizes(settings, mnist):
    """Raise InputError if a size exceeds the number of MNIST images."""
    X_train, _, X_test, _ = mnist
    limits = {
        "train_rows": len(X_train),
        "full_rows": len(X_train),
        "test_rows": len(X_test),
    }
    for name, limit in limits.items():
        value = getattr(settings, name)
        if value > limit:
            flag = "--" + name.replace("_", "-")
            raise InputError(
                f"{flag} {value}: MNIST has {limit} images there; pass at most {limit}"
            )


def prepare_work_dir(path):
    """Create the work folder and return it, unless it is unusable.

    Raises
    ------
    InputError
        If ``path`` is inside the repository or is not a new or empty folder.
    """
    path = path.resolve()
    if path == REPO_ROOT or REPO_ROOT in path.parents:
        raise InputError(
            f"--work-dir {path} is inside the repository {REPO_ROOT}; pass a folder "
            "outside it, such as one under /tmp"
        )
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise InputError(
            f"--work-dir {path} is not an empty folder; pass a new or empty folder"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


# Report


def machine_lines():
    """Return the date, machine, library versions and thread pools of the run."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    pools = ", ".join(
        " ".join(filter(None, [info["internal_api"], info.get("version")]))
        + f" ({info['num_threads']} threads)"
        for info in threadpool_info()
    )
    return [
        f"date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        (
            f"machine: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} "
            f"usable), {model}, load average {os.getloadavg()[0]:.2f}"
        ),
        (
            f"python {platform.python_version()}, numpy {np.__version__}, scipy "
            f"{scipy.__version__}, scikit-learn {sklearn.__version__}, joblib "
            f"{joblib.__version__}"
        ),
        f"thread pools: {pools}",
    ]


def settings_lines(settings):
    """Return the report lines that describe the sizes of the run."""
    full_levels = _join(settings.full_levels) if settings.full_levels else "all"
    lines = [
        f"work folder: {settings.work_dir}",
        (
            f"reduced grid: first {settings.train_rows} MNIST training images, -s "
            f"{settings.step}, levels {_join(settings.levels)}, seeds "
            f"{_join(settings.seeds)}, models {_join(settings.models)}; first "
            f"{settings.test_rows} test images"
        ),
        (
            f"full experiment: first {settings.full_rows} MNIST training images, "
            f"generate_datasets.py defaults, levels {full_levels}"
        ),
    ]
    if settings.binarize:
        lines.append("pixels binarized to 0 and 1")
    if settings.quick:
        lines.append("--quick: tiny sizes; the speed targets are set for the defaults")
    return lines


def print_section(title, lines):
    """Print a titled block of report lines on stdout."""
    print(f"\n== {title} ==", flush=True)
    for line in lines:
        print(line, flush=True)


def summary_lines(workspace, stages, total):
    """Return the times of the preparation steps and stages, and every target."""
    lines = ["preparation, counted in the stage that needed it:"]
    lines += [
        f"  {name}: {seconds:.1f} s" for name, seconds in workspace.preparation.items()
    ]
    lines += [
        f"stage {name}: {result.seconds:.1f} s" for name, result in stages.items()
    ]
    lines.append(f"total: {total:.1f} s")
    lines += [target.line() for result in stages.values() for target in result.targets]
    return lines


def write_json(path, settings, workspace, stages, projection, total):
    """Write every figure of the run to ``path`` as JSON."""
    report = {
        "machine": machine_lines(),
        "settings": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in asdict(settings).items()
        },
        "preparation": workspace.preparation,
        "stages": {
            name: {"seconds": result.seconds, "figures": result.figures}
            for name, result in stages.items()
        },
        "targets": [
            asdict(target) for result in stages.values() for target in result.targets
        ],
        "projection": None if projection is None else asdict(projection),
        "total_seconds": total,
    }
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    logger.info("wrote %s", path)


def run_benchmark(settings, *, strict=False, json_path=None):
    """Run the selected stages, print the report and return the exit status.

    Parameters
    ----------
    settings : Settings
        Sizes, stages and folders.
    strict : bool, default=False
        Count a missed speed or memory target as a failure.
    json_path : Path, optional
        File that receives every figure as JSON.

    Returns
    -------
    int
        0, or 1 when a correctness target fails (any target with ``strict``).
    """
    workspace = Workspace(settings)
    check_sizes(settings, workspace.mnist_arrays())
    print_section("benchmark of the grid", machine_lines() + settings_lines(settings))

    stages = {}
    started = time.perf_counter()
    for name in settings.stages:
        logger.info("stage %s", name)
        result = StageResult(name)
        stage_started = time.perf_counter()
        STAGE_FUNCTIONS[name](workspace, result)
        result.seconds = time.perf_counter() - stage_started
        stages[name] = result
        lines = result.lines + [target.line() for target in result.targets]
        print_section(f"{name} ({result.seconds:.1f} s)", lines)

    lines, projection = project_from_stages(
        workspace, stages, n_cpus=os.cpu_count() or 1
    )
    print_section("projection of the full study grid", lines)
    total = time.perf_counter() - started
    print_section("summary", summary_lines(workspace, stages, total))
    if json_path is not None:
        write_json(json_path, settings, workspace, stages, projection, total)

    failed = [
        target
        for result in stages.values()
        for target in result.targets
        if not target.passed and (strict or target.correctness)
    ]
    for target in failed:
        logger.error(
            "target %s %s failed: %s", target.number, target.name, target.measured
        )
    return 1 if failed else 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    configure_logging(args)
    if not args.verbose:
        # In this process, the scripts' INFO lines would interleave with the report.
        for name in ("run_ml", "generate_datasets"):
            logging.getLogger(name).setLevel(logging.WARNING)
    temporary = args.work_dir is None
    settings = resolve_settings(args, work_dir=None)
    if temporary:
        settings.work_dir = Path(tempfile.mkdtemp(prefix="bench-grid-"))
    else:
        settings.work_dir = prepare_work_dir(args.work_dir)
    try:
        return run_benchmark(settings, strict=args.strict, json_path=args.json)
    finally:
        if temporary and not args.keep_work_dir:
            shutil.rmtree(settings.work_dir, ignore_errors=True)
        elif temporary:
            logger.info("kept the work folder %s", settings.work_dir)


if __name__ == "__main__":
    sys.exit(run(main))
