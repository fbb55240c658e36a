"""Run the whole pipeline: convert, generate, train, results and plots.

Each stage runs one of the study's scripts as a subprocess and prints its command
line, so any stage can be rerun or changed by hand. Without MNIST the pipeline
uses scikit-learn's bundled 8x8 digits and finishes in about 7 minutes on two
cores.
Every stage resumes: rerunning the same command skips the work already done.
"""

import argparse
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bots.behaviors import BEHAVIORS
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
from run_ml import check_models, check_n_jobs

logger = logging.getLogger("pipeline")
ROOT = Path(__file__).resolve().parent
# Behaviours that need no option of their own ("targeted" needs a source and
# target class, so it runs through generate_datasets.py directly).
PIPELINE_BEHAVIORS = tuple(name for name in sorted(BEHAVIORS) if name != "targeted")
# Batch steps by data set: the digits get fewer, larger batches so that the
# default run stays short.
MNIST_STEP = 0.1
DIGITS_STEP = 0.2

EPILOG = """\
examples:
  # scikit-learn's bundled digits, a small grid (about 7 minutes on two cores)
  ./quickstart.sh

  # real MNIST from a folder holding the four IDX files
  ./quickstart.sh --mnist-dir ../shared/mnist --out runs/mnist

  # real MNIST downloaded from the public mirrors, checksums verified
  ./quickstart.sh --download --out runs/mnist
"""


def build_parser():
    parser = ArgumentParser(
        prog="pipeline.py",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        "--mnist-dir",
        type=Path,
        help="folder with the four MNIST IDX files (.gz or raw)",
    )
    data.add_argument(
        "--download", action="store_true", help="download MNIST and verify checksums"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for every output (default runs/digits or runs/mnist)",
    )
    parser.add_argument(
        "--behaviors",
        nargs="+",
        choices=PIPELINE_BEHAVIORS,
        default=["random", "switch", "flip"],
        metavar="BEHAVIOR",
        help="poisoning behaviours to simulate, among "
        f"{' '.join(PIPELINE_BEHAVIORS)} (default random switch flip)",
    )
    parser.add_argument(
        "--votes",
        type=positive_int,
        nargs="+",
        default=[1, 3],
        help="votes per image to simulate (default 1 3)",
    )
    parser.add_argument(
        "--bots", type=positive_int, default=20, help="number of bots (default 20)"
    )
    parser.add_argument(
        "--step",
        type=fraction,
        help="fraction of the pool per batch, in (0, 1] (default 0.1 on MNIST, 11 "
        f"batches; {DIGITS_STEP} on the digits, 7 batches with the 3 rows left over)",
    )
    parser.add_argument(
        "--levels",
        type=non_negative_int,
        nargs="+",
        help="numbers of malicious bots (default 0 4 8 ... up to --bots)",
    )
    parser.add_argument(
        "--seeds",
        type=random_state_seed,
        nargs="+",
        default=[3, 7, 11],
        help="training seeds, integers in 0..2**32-1 (default 3 7 11)",
    )
    parser.add_argument(
        "--models", nargs="+", help="models to train (default: all twelve)"
    )
    parser.add_argument(
        "--plot-model",
        default="KNN(1)",
        help="model of the per-model figures (default KNN(1))",
    )
    parser.add_argument(
        "--n-jobs",
        type=int,
        default=-1,
        help="parallel processes for training; -1 uses every core (default -1)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="let generate_datasets.py and run_ml.py replace outputs written with "
        "other parameters instead of stopping",
    )
    add_logging_flags(parser)
    return parser


class Pipeline:
    """Run the scripts in order and time each stage."""

    def __init__(self, quiet):
        self.quiet = quiet
        self.timings = []

    def script(self, name, *args):
        """Run ``name`` (a script path relative to the repository) with ``args``."""
        command = [sys.executable, str(ROOT / name), *[str(arg) for arg in args]]
        if self.quiet:
            command.append("--quiet")
        printable = shlex.join(["python", name, *command[2:]])
        logger.info("running: %s", printable)
        started = time.perf_counter()
        completed = subprocess.run(command, check=False)
        seconds = time.perf_counter() - started
        self.timings.append((printable, seconds))
        if completed.returncode != 0:
            raise InputError(
                f"stage failed with exit status {completed.returncode}: {printable}"
            )


def check_arguments(args):
    """Check the options that only a later stage would check, before any stage."""
    too_high = [level for level in args.levels or [] if level > args.bots]
    if too_high:
        raise InputError(
            f"invalid --levels {' '.join(map(str, too_high))}: a level is a number "
            f"of malicious bots in 0..{args.bots} (--bots {args.bots})"
        )
    models = check_models(args.models)
    if args.plot_model not in models:
        raise InputError(
            f"--plot-model {args.plot_model}: not among the trained models "
            f"({' '.join(models)}); pick one of them or add it to --models"
        )
    check_n_jobs(args.n_jobs)


def main(argv=None):
    args = build_parser().parse_args(argv)
    configure_logging(args)
    check_arguments(args)
    on_mnist = args.mnist_dir is not None or args.download
    out = args.out or ROOT / "runs" / ("mnist" if on_mnist else "digits")
    levels = args.levels
    if levels is None:
        levels = list(range(0, args.bots + 1, 4))
    step = args.step
    if step is None:
        step = MNIST_STEP if on_mnist else DIGITS_STEP
    overwrite = ["--overwrite"] if args.overwrite else []
    pipeline = Pipeline(args.quiet)
    data = out / "data"
    train_csv, test_csv = data / "train.csv", data / "test.csv"

    if not (train_csv.is_file() and test_csv.is_file()):
        if args.mnist_dir is not None:
            pipeline.script(
                "convert_dataset.py", "--mnist-dir", args.mnist_dir, "-o", data
            )
        elif args.download:
            pipeline.script(
                "convert_dataset.py",
                "--download",
                "--cache-dir",
                out / "mnist",
                "-o",
                data,
            )
        else:
            pipeline.script("convert_dataset.py", "--digits", "-o", data)

    level_args = ["--levels", *levels]
    results = []
    for behavior in args.behaviors:
        for votes in args.votes:
            name = f"{behavior}-v{votes}"
            generated = out / "generated" / name
            results_csv = out / "results" / f"{name}.csv"
            results_csv.parent.mkdir(parents=True, exist_ok=True)
            pipeline.script(
                "generate_datasets.py",
                "-i",
                train_csv,
                "-o",
                generated,
                "-l",
                args.bots,
                "-s",
                step,
                "--behavior",
                behavior,
                "-v",
                votes,
                *level_args,
                *overwrite,
            )
            model_args = ["--models", *args.models] if args.models else []
            pipeline.script(
                "run_ml.py",
                "-i",
                generated,
                "-t",
                test_csv,
                "-o",
                results_csv,
                "--seeds",
                *args.seeds,
                "--n-jobs",
                args.n_jobs,
                *model_args,
                *overwrite,
            )
            results.append((name, generated, results_csv))

    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    for name, generated, results_csv in results:
        pipeline.script(
            "process_results/get_results.py",
            results_csv,
            "--manifest",
            generated / "manifest.json",
            "--format",
            "markdown",
            "-o",
            report / f"{name}-breaking-points.md",
        )
        pipeline.script(
            "process_results/plot_ml_data.py",
            results_csv,
            "--models",
            args.plot_model,
            "-o",
            report / f"{name}-3d.png",
        )
        pipeline.script(
            "process_results/plot_ml_data.py",
            results_csv,
            "--heatmap",
            "-o",
            report / f"{name}-heatmap.png",
        )

    logger.info("stage timings:")
    for command, seconds in pipeline.timings:
        logger.info("%8.1f s  %s", seconds, command)
    logger.info("reports and figures are in %s", report)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
