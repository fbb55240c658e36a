"""Train the study's models on every cumulative batch of every level and score MCC.

Reads a generated folder (``OUT/<k>/dataset_NNN.csv``, k malicious bots) and
trains each model on batches 1..b of each level for every seed. The output CSV has
the header ``seed,model,malicious,dataset_len,mcc``, with one Matthews correlation
coefficient on the test set per (seed, model, level, batch). A sidecar
``<output>.meta.json`` records the parameters. Rerunning the same command resumes
an interrupted run.
"""

import argparse
import logging
import os
from pathlib import Path

from crowdpoison.cli import (
    ArgumentParser,
    InputError,
    add_logging_flags,
    configure_logging,
    non_negative_int,
    progress_enabled,
    random_state_seed,
    run,
)
from crowdpoison.csvio import read_labelled_csv
from crowdpoison.grid import (
    discover_levels,
    file_fingerprint,
    generation_info,
    grid_fingerprint,
    scan_levels,
    select_levels,
)
from crowdpoison.models import MODEL_INDEX, MODEL_NAMES
from crowdpoison.resultsfile import (
    ResultsWriter,
    prepare_output,
    read_existing_rows,
    remove_output,
    sidecar_path,
    write_sidecar,
)
from crowdpoison.runner import ENGINES, GridConfig, grid_keys, run_grid

logger = logging.getLogger("run_ml")

DEFAULT_SEEDS = (3, 7, 11)

EPILOG = f"""\
models: {" ".join(MODEL_NAMES)}

examples:
  # every model, level and batch, seeds 3 7 11, every core
  python run_ml.py -i runs/random-v3 -t data/mnist/test.csv -o results/random-v3.csv

  # two models on levels 0 and 10 only, two workers
  python run_ml.py -i runs/random-v3 -t data/mnist/test.csv -o results/small.csv \\
      --models "KNN(1)" LR --levels 0 10 --n-jobs 2

  # on a Dask cluster (see docs/cluster.md); 'local' starts one on this machine
  python run_ml.py -i runs/random-v3 -t data/mnist/test.csv -o results/random-v3.csv \\
      --scheduler tcp://10.0.0.5:8786

  # the reference engine (slow): every cell fitted from scratch
  python run_ml.py -i runs/random-v3 -t data/mnist/test.csv -o results/ref.csv \\
      --engine naive
"""


def default_cache_dir():
    """Return $XDG_CACHE_HOME/crowdpoison, or ~/.cache/crowdpoison."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "crowdpoison"


def build_parser():
    parser = ArgumentParser(
        prog="run_ml.py",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-i", "--input", required=True, type=Path, help="generated folder"
    )
    parser.add_argument(
        "-t", "--test", required=True, type=Path, help="test CSV (label, pixels)"
    )
    parser.add_argument(
        "-o", "--output", required=True, type=Path, help="results CSV to write"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        help="models to train, by name (default: all twelve, listed below)",
    )
    parser.add_argument(
        "--seeds",
        type=random_state_seed,
        nargs="+",
        default=list(DEFAULT_SEEDS),
        help="random_state of the models, integers in 0..2**32-1 (default 3 7 11)",
    )
    parser.add_argument(
        "--levels",
        type=non_negative_int,
        nargs="+",
        help="numbers of malicious bots to train on (default: every level folder)",
    )
    parser.add_argument(
        "--n-jobs",
        type=int,
        default=-1,
        help="worker processes; -1 uses every core, -2 all but one (default -1)",
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the fits on the Dask scheduler at ADDRESS (e.g. "
        "tcp://10.0.0.5:8786), or on a local Dask cluster of --n-jobs worker "
        "processes with 'local'; see docs/cluster.md",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="fast",
        help="fast (default) or naive, the slow reference that fits every cell "
        "from scratch; both write the same rows",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="folder for the neighbour search cache "
        "(default $XDG_CACHE_HOME/crowdpoison or ~/.cache/crowdpoison)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing results file instead of resuming it",
    )
    add_logging_flags(parser)
    return parser


def check_models(names):
    """Return the requested models in the registry's order, without duplicates."""
    if names is None:
        return MODEL_NAMES
    unknown = [name for name in names if name not in MODEL_INDEX]
    if unknown:
        raise InputError(
            f"--models: unknown model {', '.join(map(repr, unknown))}; choose from "
            f"{' '.join(MODEL_NAMES)} (quote names with parentheses in the shell)"
        )
    return tuple(sorted(set(names), key=MODEL_INDEX.get))


def check_n_jobs(n_jobs):
    """Reject ``--n-jobs`` values that leave no worker."""
    n_cpus = os.cpu_count() or 1
    if n_jobs == 0 or n_jobs < -n_cpus:
        raise InputError(
            f"--n-jobs {n_jobs}: expected a positive number of workers, or -1 for "
            f"every core down to -{n_cpus} for one"
        )


def main(argv=None):
    args = build_parser().parse_args(argv)
    configure_logging(args)
    models = check_models(args.models)
    seeds = tuple(sorted(set(args.seeds)))
    check_n_jobs(args.n_jobs)
    if args.scheduler:
        from crowdpoison.dask_backend import check_scheduler

        check_scheduler(args.scheduler)
    levels = select_levels(discover_levels(args.input), args.levels)
    if not args.test.is_file():
        raise InputError(f"test CSV {args.test} (-t) not found; pass an existing file")
    X_test, y_test = read_labelled_csv(args.test)
    scan_levels(levels, n_features=X_test.shape[1])
    for level in levels:
        if level.complete is False:
            logger.warning(
                "level %d is marked incomplete in %s: some pool images have no "
                "accepted label; its results use the rows it has",
                level.malicious,
                level.folder / "level.json",
            )

    parameters = {
        "models": list(models),
        "seeds": list(seeds),
        "levels": [level.malicious for level in levels],
        "data_sha256": grid_fingerprint(levels),
        "test_sha256": file_fingerprint(args.test),
        "input": str(args.input.resolve()),
        "test": str(args.test.resolve()),
    }
    resume = prepare_output(args.output, parameters, overwrite=args.overwrite)
    logger.info(
        "run_ml.py: %d models, seeds %s, levels %s, engine %s, output %s",
        len(models),
        " ".join(map(str, seeds)),
        " ".join(map(str, parameters["levels"])),
        args.engine,
        args.output,
    )
    config = GridConfig(
        levels=levels,
        test_path=args.test,
        models=models,
        seeds=seeds,
        n_jobs=args.n_jobs,
        engine=args.engine,
        cache_dir=args.cache_dir or default_cache_dir(),
        progress=progress_enabled(args),
    )
    keys = grid_keys(config)
    existing = {}
    if resume:
        existing = read_existing_rows(args.output, set(keys))
        logger.info(
            "resuming %s: %d of %d rows present", args.output, len(existing), len(keys)
        )
    elif args.overwrite:
        remove_output(args.output)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_sidecar(args.output, parameters, generation_info(args.input))
    writer = ResultsWriter(args.output, existing)
    try:
        if args.scheduler:
            from crowdpoison.dask_backend import run_grid_on_cluster

            run_grid_on_cluster(
                config, writer, X_test, y_test, scheduler=args.scheduler
            )
        else:
            run_grid(config, writer, X_test, y_test)
    except InputError:
        # Invalid data found part-way: a results file started by this run would
        # hold rows of data that is about to change, so it goes. An interruption
        # keeps it, for resuming.
        writer.close()
        if not resume:
            for path in (args.output, sidecar_path(args.output)):
                Path(path).unlink(missing_ok=True)
        raise
    finally:
        writer.close()
    writer.finish()
    logger.info("wrote %d rows to %s", len(writer.rows), args.output)
    missing = len(keys) - len(writer.rows)
    if missing:
        logger.warning(
            "%d of the %d rows of the grid have no result; the warnings above say why",
            missing,
            len(keys),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
