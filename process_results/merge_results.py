"""Combine one model's results from several attacks into one CSV.

Usage::

    python process_results/merge_results.py --model "KNN(1)" \\
        random=res_random.csv switch=res_switch.csv -o merged.csv

Each input is ``LABEL=RESULTS`` or a bare ``RESULTS``, which is labelled by its
file name without the suffix. The output has the study's columns
``seed,model,malicious,dataset_len,mcc`` followed by ``attack``, the label of the
input that the row comes from. Rows keep the order of the inputs and, within an
input, the order of its file. Without ``-o`` the CSV goes to standard output.
"""

import argparse
import csv
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crowdpoison.cli import (
    ArgumentParser,
    InputError,
    add_logging_flags,
    configure_logging,
    run,
)
from crowdpoison.results import (
    RESULT_COLUMNS,
    parse_labelled_path,
    read_results,
    sort_models,
)

logger = logging.getLogger(__name__)

ATTACK_COLUMN = "attack"
MERGED_COLUMNS = (*RESULT_COLUMNS, ATTACK_COLUMN)


EPILOG = """\
examples:
  # KNN(1) under three attacks, one label each, into one CSV
  python process_results/merge_results.py --model "KNN(1)" \\
      random=results/random-v3.csv switch=results/switch-v3.csv \\
      flip=results/flip-v3.csv -o results/knn1-attacks.csv

  # DT, labelled by the file names random-v1 and random-v3, to standard output
  python process_results/merge_results.py --model DT \\
      results/random-v1.csv results/random-v3.csv
"""


def build_parser():
    """Return the argument parser of this script."""
    parser = ArgumentParser(
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Write one model's results from several results CSVs into one CSV with "
            "an added 'attack' column."
        ),
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="[LABEL=]RESULTS",
        help="results CSV, optionally prefixed by its attack label (default label: "
        "the file name without its suffix)",
    )

    parser.add_argument("--model", required=True, help="model to keep, e.g. 'KNN(1)'")

    parser.add_argument(
        "-o", "--output", type=Path, help="merged CSV (default: standard output)"
    )

    add_logging_flags(parser)
    return parser


def parse_inputs(texts):
    """Return ``(label, path)`` pairs, rejecting empty and repeated labels."""
    inputs = []
    seen = {}
    for text in texts:
        label, path = parse_labelled_path(text)
        if label in seen:
            raise InputError(
                f"inputs {seen[label]!r} and {text!r} have the same label {label!r}; "
                "give each a distinct LABEL=RESULTS"
            )
        seen[label] = text
        inputs.append((label, path))
    return inputs


def load_model_rows(label, path, model):
    """Return the rows of ``model`` in ``path`` with the ``attack`` column added."""
    results = read_results(path)
    rows = results[results["model"] == model]
    if rows.empty:
        present = ", ".join(sort_models(results["model"].unique()))
        raise InputError(f"--model {model}: not found in {path}; it contains {present}")
    rows = rows.assign(**{ATTACK_COLUMN: label})
    logger.info("%s: %d rows of %s from %s", label, len(rows), model, path)
    return rows


def write_merged(frames, handle):
    """Write the merged rows as CSV; MCC values keep every digit (``repr``)."""
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(MERGED_COLUMNS)
    for frame in frames:
        for row in frame.itertuples(index=False):
            writer.writerow(
                [
                    row.seed,
                    row.model,
                    row.malicious,
                    row.dataset_len,
                    repr(float(row.mcc)),
                    row.attack,
                ]
            )


def log_grid_differences(frames):
    """Log when the inputs cover different malicious counts or dataset sizes."""
    for column in ("malicious", "dataset_len"):
        values = [frozenset(frame[column]) for frame in frames]
        if len(set(values)) > 1:
            labels = [frame[ATTACK_COLUMN].iloc[0] for frame in frames]
            sizes = ", ".join(f"{lab}: {len(v)}" for lab, v in zip(labels, values))
            logger.warning(
                "the inputs cover different %s values (%s); plots and tables of the "
                "merged file compare them only where they overlap",
                column,
                sizes,
            )


def main(argv=None):
    """Run the script; return the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args)

    inputs = parse_inputs(args.inputs)
    frames = [load_model_rows(label, path, args.model) for label, path in inputs]
    log_grid_differences(frames)

    if args.output is None:
        write_merged(frames, sys.stdout)
        return 0
    if not args.output.parent.is_dir():
        raise InputError(
            f"-o {args.output}: folder {args.output.parent} not found; create it first"
        )
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        write_merged(frames, handle)
    tmp.replace(args.output)
    logger.info(
        "wrote %d rows of %s to %s", sum(map(len, frames)), args.model, args.output
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
