"""Convert image datasets into the labelled CSV format of the pipeline.

Each output line contains the integer label, then the pixel values as integers, comma
separated, with no header. The input is an IDX image file with its IDX label file,
the four MNIST files from a folder or downloaded from a mirror, or the 8x8 digits
bundled with scikit-learn.
"""

import argparse
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from crowdpoison.cli import (
    ArgumentParser,
    InputError,
    add_logging_flags,
    configure_logging,
    progress_enabled,
    random_state_seed,
    run,
)
from crowdpoison.csvio import write_labelled_csv
from crowdpoison.idx import read_idx_pair
from crowdpoison.mnist import (
    DEFAULT_MIRRORS,
    DEFAULT_TIMEOUT,
    download_mnist,
    load_mnist_dir,
)

logger = logging.getLogger("convert_dataset")

TRAIN_NAME = "train.csv"
TEST_NAME = "test.csv"
DEFAULT_TEST_SIZE = 0.25

EPILOG = f"""\
examples:
  # any IDX image file with its IDX label file (MNIST, Fashion-MNIST, ...)
  python convert_dataset.py --images train-images-idx3-ubyte.gz \\
      --labels train-labels-idx1-ubyte.gz -o data/fashion/train.csv

  # the four MNIST files from a folder, checked against their sha256
  python convert_dataset.py --mnist-dir ~/mnist -o data/mnist

  # download MNIST first (the files are kept in --cache-dir)
  python convert_dataset.py --download -o data/mnist

  # scikit-learn's 8x8 digits (pixels 0..16), split 75/25 by class
  python convert_dataset.py --digits -o data/digits

The folder modes write OUT/{TRAIN_NAME} and OUT/{TEST_NAME}. An output whose name
ends with .gz is gzip-compressed.
"""


def build_parser():
    parser = ArgumentParser(
        prog="convert_dataset.py",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--images", type=Path, metavar="FILE", help="IDX image file (plain or .gz)"
    )
    source.add_argument(
        "--mnist-dir",
        type=Path,
        metavar="DIR",
        help="folder with the four MNIST IDX files, each NAME.gz or NAME",
    )
    source.add_argument(
        "--download", action="store_true", help="download MNIST, then convert it"
    )
    source.add_argument(
        "--digits",
        action="store_true",
        help="scikit-learn's bundled 8x8 digits, split into training and test sets",
    )
    parser.add_argument(
        "--labels", type=Path, metavar="FILE", help="IDX label file for --images"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help=f"output CSV file for --images, else a folder for {TRAIN_NAME} and "
        f"{TEST_NAME}",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing output files"
    )

    download = parser.add_argument_group("--download options")
    download.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="folder for the downloaded files; valid files already there are not "
        "downloaded again (default $XDG_CACHE_HOME/crowdpoison/mnist, else "
        "~/.cache/crowdpoison/mnist)",
    )
    download.add_argument(
        "--mirror",
        action="append",
        metavar="URL",
        help="base URL that serves NAME.gz; repeat to try several in order "
        f"(default: {' '.join(DEFAULT_MIRRORS)})",
    )
    download.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="seconds to wait for a connection and for each read "
        f"(default {DEFAULT_TIMEOUT:g})",
    )

    digits = parser.add_argument_group("--digits options")
    digits.add_argument(
        "--test-size",
        type=float,
        metavar="FRACTION",
        help="fraction of the images in the test set, in (0, 1) "
        f"(default {DEFAULT_TEST_SIZE:g})",
    )
    digits.add_argument(
        "--seed",
        type=random_state_seed,
        help="random seed of the stratified split, an integer in 0..2**32-1 "
        "(default 0)",
    )
    add_logging_flags(parser)
    return parser


def check_arguments(args):
    """Raise InputError for flags that do not fit the chosen source; fill defaults.

    The options of --download and --digits default to None in the parser, so that
    giving one with another source is detected here.
    """
    if args.images is not None and args.labels is None:
        raise InputError("--images needs --labels, the IDX label file of the images")
    if args.images is None and args.labels is not None:
        raise InputError("--labels goes with --images; give the IDX image file too")
    options = (
        (
            "--download",
            args.download,
            {"--cache-dir": "cache_dir", "--mirror": "mirror", "--timeout": "timeout"},
        ),
        ("--digits", args.digits, {"--test-size": "test_size", "--seed": "seed"}),
    )
    for mode, active, flags in options:
        used = [flag for flag, name in flags.items() if getattr(args, name) is not None]
        if used and not active:
            verb = "is" if len(used) == 1 else "are"
            raise InputError(
                f"{', '.join(used)} {verb} only valid with {mode}: add {mode} or "
                f"remove {used[0]}"
            )

    if args.timeout is None:
        args.timeout = DEFAULT_TIMEOUT
    if args.test_size is None:
        args.test_size = DEFAULT_TEST_SIZE
    if args.seed is None:
        args.seed = 0
    if not args.timeout > 0:
        raise InputError(
            f"invalid --timeout {args.timeout:g}: expected a positive number of seconds"
        )
    if not 0 < args.test_size < 1:
        raise InputError(
            f"invalid --test-size {args.test_size:g}: expected a fraction in (0, 1)"
        )


def source_flag(args):
    """Return the flag of the chosen source, for messages."""
    if args.images is not None:
        return "--images"
    if args.mnist_dir is not None:
        return "--mnist-dir"
    return "--download" if args.download else "--digits"


def output_paths(args):
    """Return the files that the chosen source writes."""
    if args.images is not None:
        return [args.output]
    return [args.output / TRAIN_NAME, args.output / TEST_NAME]


def check_output_argument(args):
    """Raise InputError if -o cannot be what the chosen source writes to.

    With --images, -o is the CSV file to write. With the other sources it is a
    folder that receives TRAIN_NAME and TEST_NAME. Every existing part of the
    path above it must be a folder.
    """
    mode = source_flag(args)
    output = args.output
    if args.images is None:
        if output.exists() and not output.is_dir():
            raise InputError(
                f"-o {output} is a file, but with {mode} -o is the folder that "
                f"receives {TRAIN_NAME} and {TEST_NAME}: give the name of a "
                "folder, new or existing"
            )
        if output.suffix in (".csv", ".gz"):
            logger.warning(
                "-o %s is used as a folder: with %s it receives %s and %s",
                output,
                mode,
                TRAIN_NAME,
                TEST_NAME,
            )
    for parent in output.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(
                    f"-o {output} lies below {parent}, which is a file, not a "
                    "folder: choose another -o"
                )
            break


def check_outputs(paths, overwrite):
    """Raise InputError if an output exists and may not be replaced."""
    for path in paths:
        if path.is_dir():
            raise InputError(
                f"output {path} is a folder, expected a file name: with --images, "
                "-o is the CSV file to write"
            )
        if path.exists() and not overwrite:
            raise InputError(
                f"output {path} exists: pass --overwrite to replace it, or choose "
                "another -o"
            )


def default_cache_dir():
    """Return the folder for downloaded MNIST files when --cache-dir is not given."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "crowdpoison" / "mnist"


def load_digits_split(test_size, seed):
    """Return scikit-learn's 8x8 digits split by class into training and test sets.

    Returns
    -------
    X_train, y_train, X_test, y_test : ndarray
        Pixels as uint8 in 0..16, labels as int64.
    """
    # Imported here because importing scikit-learn takes about a second, and only
    # this source needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = digits.data.astype(np.uint8)
    y = digits.target.astype(np.int64)
    check_test_size(test_size, len(y), np.unique(y).size)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_size, random_state=seed, stratify=y
    )
    return X_train, y_train, X_test, y_test


def check_test_size(test_size, n_images, n_classes):
    """Raise InputError unless a stratified split keeps every class in both sets.

    The test set gets ``ceil(test_size * n_images)`` images, as in
    scikit-learn's ``train_test_split``, and the training set the rest. Each set
    needs at least ``n_classes`` images.
    """
    n_test = math.ceil(test_size * n_images)
    if n_classes <= n_test <= n_images - n_classes:
        return
    # The smallest and largest allowed fractions with 4 decimals.
    smallest = math.floor((n_classes - 1) / n_images * 10_000 + 1)
    while math.ceil(smallest / 10_000 * n_images) < n_classes:
        smallest += 1
    largest = math.floor((n_images - n_classes) / n_images * 10_000)
    while math.ceil(largest / 10_000 * n_images) > n_images - n_classes:
        largest -= 1
    smallest, largest = smallest / 10_000, largest / 10_000
    raise InputError(
        f"invalid --test-size {test_size:g}: it puts {n_test} of the {n_images} "
        "images in the test set, but the stratified split needs at least one image "
        f"of each of the {n_classes} classes in each set; give a --test-size from "
        f"{smallest:g} to {largest:g}"
    )


def load_source(args):
    """Read the chosen source and return {output path: (X, y)}."""
    if args.images is not None:
        logger.info("reading %s and %s", args.images, args.labels)
        X, y = read_idx_pair(args.images, args.labels)
        return {args.output: (X, y)}
    if args.digits:
        logger.info(
            "splitting scikit-learn's digits, test size %g, seed %d",
            args.test_size,
            args.seed,
        )
        X_train, y_train, X_test, y_test = load_digits_split(args.test_size, args.seed)
    else:
        folder = args.mnist_dir
        if args.download:
            folder = args.cache_dir or default_cache_dir()
            download_mnist(
                folder,
                mirrors=args.mirror or DEFAULT_MIRRORS,
                timeout=args.timeout,
                progress=progress_enabled(args),
            )
        logger.info("reading and verifying the MNIST files in %s", folder)
        X_train, y_train, X_test, y_test = load_mnist_dir(folder)
    train, test = output_paths(args)
    return {train: (X_train, y_train), test: (X_test, y_test)}


def write_outputs(datasets):
    """Write each (X, y) to its CSV file.

    If a write fails, the files that this call wrote before it are removed.
    """
    written = []
    try:
        for path, (X, y) in datasets.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_labelled_csv(path, X, y)
            written.append(path)
            logger.info(
                "wrote %s: %d rows of %d pixels, labels %s",
                path,
                len(y),
                X.shape[1],
                describe_labels(y),
            )
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def describe_labels(y):
    """Return the label values and their counts in a short text."""
    values, counts = np.unique(y, return_counts=True)
    if len(values) > 12:
        return f"{values.min()}..{values.max()} ({len(values)} distinct)"
    return ", ".join(f"{value}: {count}" for value, count in zip(values, counts))


def main(argv=None):
    args = build_parser().parse_args(argv)
    configure_logging(args)
    check_arguments(args)
    check_output_argument(args)
    check_outputs(output_paths(args), args.overwrite)

    started = time.perf_counter()
    datasets = load_source(args)
    write_outputs(datasets)
    logger.info("done in %.1f s", time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
