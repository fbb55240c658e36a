"""Simulate the captcha service at every number of malicious bots.

For each level k = 0..l (k malicious bots among l), the honest and malicious bots
answer captchas until every pool image has an accepted label, and the labelled
rows are written as cumulative batches ``OUT/k/dataset_NNN.csv``. A manifest
``OUT/manifest.json`` records every parameter, the seed, the library versions and
the per-level counts.
"""

import argparse
import logging
import os
import sys
import time

import numpy as np
from tqdm import tqdm

from bots import BEHAVIORS
from crowdpoison.aggregation import AGGREGATIONS, estimates_reliability
from crowdpoison.cli import (
    ArgumentParser,
    InputError,
    add_logging_flags,
    configure_logging,
    fraction,
    non_negative_int,
    positive_int,
    probability,
    progress_enabled,
    run,
)
from crowdpoison.csvio import read_labelled_csv
from crowdpoison.generate import (
    MANIFEST_NAME,
    Generation,
    cached_row_texts,
    file_sha256,
    remove_level_tmp,
    run_level,
    summarize_levels,
    write_json_atomic,
)
from crowdpoison.simulate import (
    ASSIGNMENTS,
    SimulationParams,
    describe_split,
    expected_captchas,
)

logger = logging.getLogger("generate_datasets")

EPILOG = """\
examples:
  # the study's defaults on MNIST converted by convert_dataset.py
  python generate_datasets.py -i data/mnist/train.csv -o runs/random-v3

  # switch attack, no voting, only 0, 5 and 10 malicious bots out of 20
  python generate_datasets.py -i data/mnist/train.csv -o runs/switch-v1 \\
      --behavior switch -v 1 --levels 0 5 10

  # levels in parallel on a Dask cluster (see docs/cluster.md)
  python generate_datasets.py -i data/mnist/train.csv -o runs/random-v3 \\
      --scheduler tcp://10.0.0.5:8786

  # the study's own setting: bots answer in turn
  python generate_datasets.py -i data/mnist/train.csv -o runs/rr \\
      --assignment round-robin
"""


def build_parser():
    parser = ArgumentParser(
        prog="generate_datasets.py",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-i", "--input", required=True, help="training CSV (label, pixels)"
    )
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument(
        "-l",
        "--bots",
        type=positive_int,
        default=20,
        help="number of bots (default 20)",
    )
    parser.add_argument(
        "-b",
        "--base",
        type=fraction,
        default=0.3,
        help="fraction of the rows, in (0, 1], that is trusted (default 0.3)",
    )
    parser.add_argument(
        "-s",
        "--step",
        type=fraction,
        default=0.1,
        help="fraction of the pool, in (0, 1], per batch (default 0.1)",
    )
    parser.add_argument(
        "--left",
        type=positive_int,
        default=3,
        help="known images per captcha (default 3)",
    )
    parser.add_argument(
        "--right",
        type=positive_int,
        default=3,
        help="unknown images per captcha (default 3)",
    )
    parser.add_argument(
        "--behavior",
        choices=sorted(BEHAVIORS),
        default="random",
        help="poisoning behaviour of malicious bots (default random)",
    )
    parser.add_argument(
        "--source", type=int, help="with --behavior targeted: the class to relabel"
    )
    parser.add_argument(
        "--target", type=int, help="with --behavior targeted: the label to give it"
    )
    parser.add_argument(
        "-v",
        "--votes",
        type=positive_int,
        default=3,
        help="votes per image; 1 accepts every answer (default 3)",
    )
    parser.add_argument(
        "--aggregation",
        choices=sorted(AGGREGATIONS),
        default="majority",
        help="how votes become a label: majority (default, more than half the votes), "
        "plurality, or the crowd-kit methods dawid-skene and mace, which estimate "
        "each bot's reliability from its id carried with every vote",
    )
    parser.add_argument(
        "--assignment",
        choices=ASSIGNMENTS,
        default="random",
        help="who answers each captcha: an independently drawn bot (random, default) "
        "or the bots in turn (round-robin, the study's order)",
    )
    parser.add_argument(
        "--honest-error-rate",
        type=probability,
        default=0.0,
        help="probability that an honest bot answers an image wrongly (default 0)",
    )
    parser.add_argument(
        "--poison-rate",
        type=probability,
        default=1.0,
        help="probability that a malicious bot poisons an unknown image (default 1)",
    )
    parser.add_argument(
        "--audit",
        nargs="+",
        choices=sorted(name for name in AGGREGATIONS if estimates_reliability(name)),
        default=[],
        help="reliability-estimating methods run on each level's votes to score "
        "which bots they flag as malicious, stored in the manifest (default none)",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=7,
        help="base seed of the simulation, an integer of at least 0 (default 7)",
    )
    parser.add_argument(
        "--levels",
        type=non_negative_int,
        nargs="+",
        help="numbers of malicious bots to simulate (default 0..bots)",
    )
    parser.add_argument(
        "--max-passes",
        type=positive_int,
        default=200,
        help="stop a level after this many passes over the pool and keep what was "
        "accepted (default 200)",
    )
    parser.add_argument(
        "--n-jobs",
        type=int,
        default=1,
        help="levels simulated in parallel processes; -1 uses every core (default 1)",
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="simulate the levels on the Dask scheduler at ADDRESS (e.g. "
        "tcp://10.0.0.5:8786), or on a local Dask cluster of --n-jobs worker "
        "processes with 'local'; the output equals a local run's",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an output folder written with other parameters",
    )
    add_logging_flags(parser)
    return parser


def params_from_args(args):
    """Build SimulationParams from parsed arguments, checking their combinations."""
    behavior_params = {}
    if args.behavior == "targeted":
        if args.source is None or args.target is None:
            raise InputError(
                "--behavior targeted needs --source S and --target T (class labels)"
            )
        behavior_params = {"source": args.source, "target": args.target}
    elif args.source is not None or args.target is not None:
        raise InputError(
            f"--source and --target apply only to --behavior targeted, "
            f"not to {args.behavior!r}"
        )
    if args.n_jobs == 0 or args.n_jobs < -1:
        raise InputError(
            f"invalid --n-jobs {args.n_jobs}: expected a positive number of "
            "processes or -1 for every core"
        )
    return SimulationParams(
        n_bots=args.bots,
        base=args.base,
        step=args.step,
        n_left=args.left,
        n_right=args.right,
        n_votes=args.votes,
        behavior=args.behavior,
        behavior_params=behavior_params,
        assignment=args.assignment,
        seed=args.seed,
        honest_error_rate=args.honest_error_rate,
        poison_rate=args.poison_rate,
        aggregation=args.aggregation,
        max_passes=args.max_passes,
        audit=tuple(args.audit),
    )


def check_data(params, y, path):
    """Check that the training labels and sizes fit the parameters."""
    n_trusted, pool_size, _ = describe_split(y.size, params.base, params.step)
    if params.n_left > n_trusted:
        raise InputError(
            f"--left {params.n_left} exceeds the {n_trusted} trusted rows "
            f"(--base {params.base} of {y.size} rows); lower --left or raise --base"
        )
    classes = np.unique(y)
    n_classes = int(classes[-1]) + 1
    if classes.size != n_classes:
        raise InputError(missing_classes_message(path, y, classes))
    if n_classes < 2:
        raise InputError(f"{path}: the training data holds a single class")
    behavior_params = params.behavior_params
    for option in ("source", "target"):
        value = behavior_params.get(option)
        if value is not None and not 0 <= value < n_classes:
            raise InputError(
                f"invalid --{option} {value}: expected a class in 0..{n_classes - 1}"
            )
    if (
        params.behavior == "targeted"
        and behavior_params["source"] == behavior_params["target"]
    ):
        raise InputError("--source and --target must differ")
    if params.behavior == "flip" and n_classes != 10:
        raise InputError(
            f"--behavior flip maps the digits 0-9 and needs 10 classes, "
            f"{path} has {n_classes}; use switch or random"
        )
    return pool_size


def missing_classes_message(path, y, classes, max_listed=5):
    """Return a one-line error message for labels that skip classes of ``0..max``.

    Row ``i`` of the CSV file is on line ``i + 1``: the format has no header and
    no blank lines.
    """
    largest = int(classes[-1])
    line = int(np.argmax(y == largest)) + 1
    missing = np.setdiff1d(np.arange(largest + 1), classes)
    listed = ", ".join(str(label) for label in missing[:max_listed].tolist())
    if missing.size > max_listed:
        listed += ", ..."
    return (
        f"{path}: labels must be the classes 0..n-1 with none missing, but the "
        f"largest label is {largest} (first on line {line}) and {missing.size} "
        f"classes of 0..{largest} are missing ({listed}); fix that label, or "
        f"renumber the {classes.size} classes as 0..{classes.size - 1}"
    )


def main(argv=None):
    args = build_parser().parse_args(argv)
    configure_logging(args)
    params = params_from_args(args)
    levels = args.levels if args.levels is not None else list(range(params.n_bots + 1))
    bad = [level for level in levels if level > params.n_bots]
    if bad:
        raise InputError(
            f"invalid --levels {bad}: a level is a number of malicious bots in "
            f"0..{params.n_bots} (-l {params.n_bots})"
        )
    levels = sorted(set(levels))
    if args.scheduler:
        from crowdpoison.dask_backend import check_scheduler

        check_scheduler(args.scheduler)

    X, y = read_labelled_csv(args.input)
    pool_size = check_data(params, y, args.input)
    input_info = {"path": str(args.input), "sha256": file_sha256(args.input)}
    generation = Generation(X, y, params, args.output, input_info=input_info)
    manifest, todo = generation.prepare(levels, overwrite=args.overwrite)
    logger.info(
        "generating %d levels into %s: %d rows, %d trusted, pool %d, batches of %d; "
        "at least %d captchas per level",
        len(todo),
        args.output,
        y.size,
        generation.n_trusted,
        pool_size,
        generation.batch_size,
        expected_captchas(pool_size, params.n_right, params.n_votes),
    )

    started = time.perf_counter()
    if args.scheduler:
        from crowdpoison.dask_backend import run_levels_on_cluster

        results = run_levels_on_cluster(
            generation,
            todo,
            scheduler=args.scheduler,
            n_workers=args.n_jobs,
            show=progress_enabled(args),
        )
    else:
        results = run_levels(
            generation, todo, n_jobs=args.n_jobs, show=progress_enabled(args)
        )
    try:
        for result in results:
            manifest["levels"][str(result["malicious"])] = result
            manifest["levels"] = dict(
                sorted(manifest["levels"].items(), key=lambda kv: int(kv[0]))
            )
            write_json_atomic(generation.out_dir / MANIFEST_NAME, manifest)
    except BaseException:
        # Closing the generator stops the worker processes first, so that none
        # writes into a temporary folder after it is removed.
        try:
            close = getattr(results, "close", None)
            if close is not None:
                close()
        finally:
            remove_level_tmp(generation.out_dir, todo)
        raise
    manifest["complete"] = all(
        str(level) in manifest["levels"] and manifest["levels"][str(level)]["complete"]
        for level in levels
    )
    write_json_atomic(generation.out_dir / MANIFEST_NAME, manifest)

    for line in summarize_levels(manifest["levels"]):
        logger.info(line)
    incomplete = [k for k, entry in manifest["levels"].items() if not entry["complete"]]
    if incomplete:
        logger.warning(
            "levels %s left images unlabelled after --max-passes %d; see 'unlabelled' "
            "in %s",
            ", ".join(incomplete),
            params.max_passes,
            generation.out_dir / MANIFEST_NAME,
        )
    logger.info("done in %.1f s", time.perf_counter() - started)
    return 0


def run_levels(generation, levels, *, n_jobs, show):
    """Yield each level's counts as it finishes, running levels in parallel if asked."""
    if not levels:
        return
    identity = generation.identity()
    bar = tqdm(total=len(levels), desc="levels", unit="level", disable=not show)
    if n_jobs == 1 or len(levels) == 1:
        row_texts = cached_row_texts(generation.X)
        for level in levels:
            yield run_level(
                generation.X,
                generation.y,
                generation.params,
                level,
                generation.out_dir,
                identity,
                row_texts=row_texts,
            )
            bar.update()
    else:
        from joblib import Parallel, delayed

        from crowdpoison.executor import call_with_one_thread

        # Each worker process exits soon after this process stops, even on
        # SIGKILL (see crowdpoison.executor.watch_parent).
        parent_pid = os.getpid()
        tasks = (
            delayed(call_with_one_thread)(
                level,
                run_level,
                {
                    "X": generation.X,
                    "y": generation.y,
                    "params": generation.params,
                    "level": level,
                    "out_dir": str(generation.out_dir),
                    "identity": identity,
                },
                parent_pid,
            )
            for level in levels
        )
        parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
        outputs = parallel(tasks)
        try:
            for _, result in outputs:
                yield result
                bar.update()
        finally:
            # Stops the workers when the caller stops early (Ctrl-C, an error).
            outputs.close()
    bar.close()


if __name__ == "__main__":
    sys.exit(run(main))
