"""Tabulate each model's best, first-drop and worst MCC and its breaking point.

Usage::

    python process_results/get_results.py results.csv
    python process_results/get_results.py results.csv --agg mean --format markdown \\
        --models "KNN(1)" RF -o table.md

The MCC of every (model, malicious, dataset_len) cell is first aggregated over
seeds with ``--agg``. The statistics and the breaking point both use that
aggregated grid. The default, the minimum over seeds, is what the study reports.

Per model the tables give:

- the best cell (highest MCC) and the worst cell (lowest MCC);
- the first drop: visiting the cells by increasing number of malicious bots,
  then increasing dataset size, the first cell whose MCC is below ``--threshold``;
- the breaking point: a corner (m, d) is broken when every cell with at least m
  malicious bots and at least d training rows is below the threshold. From the
  corner of the largest m and d, the search steps down both axes together while
  the corner stays broken, then down the malicious axis, then down the dataset
  axis. A model whose largest corner is not broken never breaks ("--").

Each cell comes with the share of poisoned rows in its training set. The share is
measured when a generation manifest is known (``--manifest`` or the one that the
results sidecar names). Otherwise it is estimated as (d - trusted rows) x m /
n_bots / d and marked "~".
"""

import argparse
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
    mcc_threshold,
    positive_int,
    run,
)
from crowdpoison.results import (
    AGGREGATIONS,
    DEFAULT_THRESHOLD,
    aggregate_seeds,
    load_results_context,
    select_models,
    summarize_models,
)

logger = logging.getLogger(__name__)

FORMATS = ("text", "markdown", "both")
NEVER_BREAKS = "--"


EPILOG = """\
examples:
  # the study's tables: minimum over seeds, every model, text and Markdown
  python process_results/get_results.py results/random-v3.csv

  # mean over seeds of two models, Markdown only, also written to a file
  python process_results/get_results.py results/random-v3.csv --agg mean \\
      --format markdown --models "KNN(1)" DT -o tables/random-v3.md

  # measured poisoned shares for a results file copied without its sidecar
  python process_results/get_results.py results/random-v3.csv \\
      --manifest runs/random-v3 --threshold 0.8
"""


def build_parser():
    """Return the argument parser of this script."""
    parser = ArgumentParser(
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Print each model's best, first-below-threshold and worst MCC, and its "
            "breaking point, as a plain-text and/or Markdown table."
        ),
    )
    parser.add_argument("results", type=Path, help="results CSV written by run_ml.py")

    parser.add_argument(
        "--agg",
        choices=AGGREGATIONS,
        default="min",
        help="aggregation of the MCC over seeds, for the statistics and the "
        "breaking point (default: min, as in the study)",
    )
    parser.add_argument(
        "--threshold",
        type=mcc_threshold,
        default=DEFAULT_THRESHOLD,
        help=f"an MCC below this value is a drop (default: {DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        "--models", nargs="+", metavar="MODEL", help="models to report (default: all)"
    )

    parser.add_argument(
        "--bots",
        type=positive_int,
        help="total number of bots, malicious or not (default: from the results "
        "sidecar or the manifest)",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        help="generation manifest.json (or its folder) giving the measured share of "
        "poisoned rows (default: the one the results sidecar names); it must match "
        "the generation that the sidecar records",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="both",
        help="table format to print (default: both)",
    )

    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="also write the tables to this file; with --format both the Markdown "
        "goes to the same name with the suffix .md and the text to .txt",
    )

    add_logging_flags(parser)
    return parser


# Formatting of the cells


def format_malicious(malicious, n_bots):
    """Return e.g. ``45% (9/20)`` for 9 malicious bots out of 20."""
    return f"{malicious / n_bots:.0%} ({malicious}/{n_bots})"


def format_share(share):
    """Return a poisoned share as a percentage, ``~`` marking an estimate."""
    prefix = "~" if share.is_estimate else ""
    return f"{prefix}{share.value:.1%}"


def cell_columns(cell, n_bots, poisoned_share):
    """Return the MCC, malicious, rows and poisoned columns of a cell."""
    if cell is None:
        return [NEVER_BREAKS, "", "", ""]
    share = poisoned_share(cell.malicious, cell.dataset_len)
    return [
        f"{cell.mcc:.3f}",
        format_malicious(cell.malicious, n_bots),
        str(cell.dataset_len),
        format_share(share),
    ]


def stats_table(summaries, *, n_bots, poisoned_share, threshold):
    """Return the header and rows of the best / first drop / worst table."""
    header = [
        "Model",
        "Best MCC",
        "Malicious",
        "Rows",
        "Poisoned",
        f"First < {threshold:g}",
        "Malicious",
        "Rows",
        "Poisoned",
        "Worst MCC",
        "Malicious",
        "Rows",
        "Poisoned",
    ]
    rows = []
    for summary in summaries:
        row = [summary.model]
        for cell in (summary.stats.best, summary.stats.first_drop, summary.stats.worst):
            row.extend(cell_columns(cell, n_bots, poisoned_share))
        rows.append(row)
    return header, rows


def breaking_table(summaries, *, n_bots, poisoned_share):
    """Return the header and rows of the breaking-point table."""
    header = ["Model", "Malicious users", "Dataset size", "Poisoned"]
    rows = []
    for summary in summaries:
        if summary.breaking_point is None:
            rows.append([summary.model, NEVER_BREAKS, NEVER_BREAKS, NEVER_BREAKS])
            continue
        malicious, dataset_len = summary.breaking_point
        share = poisoned_share(malicious, dataset_len)
        rows.append(
            [
                summary.model,
                format_malicious(malicious, n_bots),
                str(dataset_len),
                format_share(share),
            ]
        )
    return header, rows


# Rendering


def render_text_table(header, rows):
    """Render a table as aligned plain text: first column left, others right."""
    widths = [
        max(len(str(line[index])) for line in [header, *rows])
        for index in range(len(header))
    ]

    def render_line(line):
        cells = [
            str(value).ljust(width) if index == 0 else str(value).rjust(width)
            for index, (value, width) in enumerate(zip(line, widths))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render_line(header), rule, *map(render_line, rows)])


def render_markdown_table(header, rows):
    """Render a table as GitHub-flavoured Markdown, numbers right-aligned."""

    def escape(value):
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(escape(name) for name in header) + " |"]
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
    for row in rows:
        lines.append("| " + " | ".join(escape(value) for value in row) + " |")
    return "\n".join(lines)


def plural(count, word):
    """Return e.g. ``1 seed`` or ``3 seeds``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def describe_run(context, aggregated, args, models):
    """Return the sentence that heads the tables: data, aggregation, threshold."""
    seeds = sorted(int(seed) for seed in context.results["seed"].unique())
    sentence = (
        f"{context.path}: {plural(len(models), 'model')}, MCC is the {args.agg} over "
        f"{plural(len(seeds), 'seed')} ({' '.join(map(str, seeds))}), threshold "
        f"{args.threshold:g}, {context.n_bots} bots, "
        f"{plural(aggregated['malicious'].nunique(), 'malicious count')} x "
        f"{plural(aggregated['dataset_len'].nunique(), 'dataset size')}."
    )
    if context.manifest is not None:
        sentence += f" Poisoned shares from {context.manifest_path}."
    return sentence


def estimate_note(context):
    """Return the footnote that explains the ``~`` estimate."""
    return (
        "~ Estimated share of poisoned rows: (rows - "
        f"{context.n_trusted} trusted) x malicious / {context.n_bots} bots / rows. "
        "It assumes that every label from a malicious bot is accepted and "
        "poisoned. With voting the real share differs, so pass --manifest for "
        "the measured share."
    )


def render_report(context, summaries, aggregated, args, models, style):
    """Render the heading, both tables and the footnote in ``style``."""
    poisoned_share = context.poisoned_share_source()
    stats = stats_table(
        summaries,
        n_bots=context.n_bots,
        poisoned_share=poisoned_share,
        threshold=args.threshold,
    )
    breaking = breaking_table(
        summaries, n_bots=context.n_bots, poisoned_share=poisoned_share
    )
    render = render_markdown_table if style == "markdown" else render_text_table
    heading = "### " if style == "markdown" else ""
    lines = [
        describe_run(context, aggregated, args, models),
        "",
        f"{heading}Best, first drop below {args.threshold:g} and worst MCC",
        "",
        render(*stats),
        "",
        f"{heading}Breaking points ({args.agg} over seeds)",
        "",
        render(*breaking),
    ]
    if poisoned_share.n_estimates:
        lines.extend(["", estimate_note(context)])
    return "\n".join(lines) + "\n"


def output_paths(output, fmt):
    """Return the file to write for each rendered style."""
    if fmt == "both":
        return {
            "text": output.with_suffix(".txt"),
            "markdown": output.with_suffix(".md"),
        }
    return {fmt: output}


def main(argv=None):
    """Run the script; return the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args)

    context = load_results_context(args.results, bots=args.bots, manifest=args.manifest)
    models = select_models(context.results, args.models, source=args.results)
    selected = context.results[context.results["model"].isin(models)]
    aggregated = aggregate_seeds(selected, args.agg)
    summaries = summarize_models(aggregated, models, args.threshold)

    styles = ["text", "markdown"] if args.format == "both" else [args.format]
    reports = {
        style: render_report(context, summaries, aggregated, args, models, style)
        for style in styles
    }
    print("\n".join(reports.values()), end="")

    if args.output is not None:
        for style, path in output_paths(args.output, args.format).items():
            if path.parent and not path.parent.is_dir():
                raise InputError(
                    f"-o {args.output}: folder {path.parent} not found; create it first"
                )
            path.write_text(reports[style], encoding="utf-8")
            logger.info("wrote the %s tables to %s", style, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
