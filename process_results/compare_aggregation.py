"""Compare label aggregation methods and attacker behaviours across generation runs.

Usage::

    python process_results/compare_aggregation.py runs/majority runs/dawid-skene \\
        -o poisoned.pdf
    python process_results/compare_aggregation.py runs/majority runs/dawid-skene \\
        --results majority=res_majority.csv ds=res_ds.csv --model "KNN(1)" -o both.png

Each run is a generation folder with a ``manifest.json`` (or the manifest file
itself). The top panel shows the share of poisoned labels among the accepted
ones (``poisoned / accepted`` per level) against the share of malicious users,
one line per (aggregation method, behaviour). When the runs also differ in other
generation parameters, such as ``assignment`` or ``n_votes``, those parameters
split the lines too and appear in the legend. Runs that differ only in their seed
are drawn as their mean with a band from their minimum to their maximum. A
manifest without ``parameters.aggregation`` used majority voting.

With ``--results`` and ``--model``, a second panel shows that model's MCC on the
largest training set, aggregated over seeds with ``--agg``, one line per results
file.
"""

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd

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
    MANIFEST_NAME,
    aggregate_seeds,
    load_results_context,
    parse_labelled_path,
    read_manifest,
)
from process_results._figures import (
    check_output_path,
    finish_figure,
    percent_formatter,
    pyplot_for,
)

logger = logging.getLogger(__name__)

DEFAULT_AGGREGATION_METHOD = "majority"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


EPILOG = """\
examples:
  # share of poisoned accepted labels, majority voting against Dawid-Skene
  python process_results/compare_aggregation.py runs/majority runs/dawid-skene \\
      -o figures/poisoned.pdf

  # the same with KNN(1)'s MCC on the largest training set, one line per file
  python process_results/compare_aggregation.py runs/majority runs/dawid-skene \\
      --results majority=results/majority.csv ds=results/dawid-skene.csv \\
      --model "KNN(1)" -o figures/aggregation.png
"""


def build_parser():
    """Return the argument parser of this script."""
    parser = ArgumentParser(
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Plot the share of poisoned accepted labels against the share of "
            "malicious users for several generation runs, and optionally one "
            "model's MCC."
        ),
    )
    parser.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUN",
        help="generation folder containing manifest.json, or the manifest itself",
    )
    parser.add_argument(
        "--results",
        nargs="+",
        metavar="[LABEL=]RESULTS",
        help="results CSVs for the MCC panel (default label: the run whose manifest "
        "the results sidecar names, else the file name)",
    )
    parser.add_argument("--model", help="model of the MCC panel, e.g. 'KNN(1)'")

    parser.add_argument(
        "--agg",
        choices=AGGREGATIONS,
        default="min",
        help="aggregation of the MCC over seeds (default: min, as in the study)",
    )
    parser.add_argument(
        "--threshold",
        type=mcc_threshold,
        default=DEFAULT_THRESHOLD,
        help=f"MCC threshold drawn in the MCC panel (default: {DEFAULT_THRESHOLD})",
    )

    parser.add_argument(
        "--bots",
        type=positive_int,
        help="total number of bots, for results files without a sidecar",
    )
    parser.add_argument("--title", help="figure title (default: generated)")

    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="write the figure to this .png, .pdf or .svg file instead of showing it "
        "in a window, which needs a display",
    )

    add_logging_flags(parser)
    return parser


# Poisoned share per run


def manifest_file(run):
    """Return the manifest path of a run folder or manifest file."""
    run = Path(run)
    return run / MANIFEST_NAME if run.is_dir() else run


def poisoned_shares(manifest, source):
    """Return one row per level of a manifest: malicious share and poisoned share.

    Raises
    ------
    InputError
        If the manifest has no ``parameters.n_bots`` or no level with accepted labels.
    """
    parameters = manifest.get("parameters", {})
    n_bots = parameters.get("n_bots")
    if not isinstance(n_bots, int) or isinstance(n_bots, bool) or n_bots < 1:
        raise InputError(
            f"{source}: parameters.n_bots is {n_bots!r}, expected an integer of at "
            "least 1; pass a manifest written by generate_datasets.py"
        )

    rows = []
    for key, level in manifest.get("levels", {}).items():
        if not isinstance(level, dict):
            continue
        accepted = level.get("accepted") or 0
        if accepted <= 0:
            logger.warning("%s: level %s has no accepted label; skipped", source, key)
            continue
        if level.get("complete") is False:
            logger.warning("%s: level %s is incomplete; plotted anyway", source, key)
        try:
            malicious = int(level.get("malicious", key))
        except (TypeError, ValueError):
            raise InputError(
                f"{source}: level {key!r} has no integer number of malicious bots; "
                "pass a manifest written by generate_datasets.py"
            ) from None
        rows.append(
            {
                "malicious_share": malicious / n_bots,
                "poisoned_share": level.get("poisoned", 0) / accepted,
            }
        )
    if not rows:
        raise InputError(
            f"{source} has no level with accepted labels; pass a finished "
            "generation run"
        )
    return pd.DataFrame(rows).sort_values("malicious_share", ignore_index=True)


def load_runs(runs):
    """Read the manifests of the runs; return one dict per run.

    Each dict has the keys ``path`` (the manifest), ``aggregation``, ``behavior``,
    ``group`` (see `assign_groups`) and ``shares`` (a DataFrame of
    `poisoned_shares`).
    """
    loaded = []
    for run_path in runs:
        path = manifest_file(run_path)
        manifest = read_manifest(path)
        parameters = manifest.get("parameters", {})
        loaded.append(
            {
                "path": path.resolve(),
                "aggregation": parameters.get("aggregation")
                or DEFAULT_AGGREGATION_METHOD,
                "behavior": parameters.get("behavior") or "unknown behaviour",
                "parameters": parameters,
                "shares": poisoned_shares(manifest, path),
            }
        )
    assign_groups(loaded)
    return loaded


def assign_groups(loaded):
    """Set each run's ``group``: its aggregation, behaviour and distinct parameters.

    A generation parameter other than the seed and the simulated levels joins the
    group as ``name=value`` when its value differs between the runs, so that, for
    example, round-robin and random assignment get separate lines.
    """
    ignored = {"aggregation", "behavior", "seed", "levels", "audit"}
    names = sorted({name for entry in loaded for name in entry["parameters"]} - ignored)
    varying = [
        name
        for name in names
        if len({_text(entry["parameters"].get(name)) for entry in loaded}) > 1
    ]
    for entry in loaded:
        extra = [f"{name}={_text(entry['parameters'].get(name))}" for name in varying]
        entry["group"] = (entry["aggregation"], entry["behavior"], *extra)


def _text(value):
    if isinstance(value, dict):
        return ",".join(f"{key}:{value[key]}" for key in sorted(value))
    return str(value)


def group_runs(loaded):
    """Group runs by their ``group``; return mean, min and max per group."""
    groups = {}
    for entry in loaded:
        groups.setdefault(entry["group"], []).append(entry["shares"])
    summaries = {}
    for key, frames in groups.items():
        combined = pd.concat(frames).groupby("malicious_share")["poisoned_share"]
        summary = combined.agg(["mean", "min", "max"]).reset_index()
        summaries[key] = (summary, len(frames))
    return summaries


# MCC per results file


def results_label(text, path, context, runs):
    """Return the legend label of a results file and its run's group, or None.

    The group is the ``group`` of the run whose manifest the results sidecar
    names, so that its line gets the colour of that run.
    """
    group = None
    named = context.manifest_path
    if named is not None:
        for entry in runs:
            if Path(named).resolve() == entry["path"]:
                group = entry["group"]
    if "=" in text and not Path(text).exists():
        return parse_labelled_path(text, name="--results")[0], group
    if group is not None:
        return ", ".join(group), group
    return path.stem, group


def mcc_on_largest_set(text, *, model, agg, bots, runs):
    """Return one model's MCC on the largest training set of a results file.

    The returned dict has the keys ``label``, ``group`` (see `results_label`),
    ``curve`` (columns ``malicious_share`` and ``mcc``), ``dataset_len`` and
    ``n_seeds``.

    Raises
    ------
    InputError
        If ``model`` has no result in the file.
    """
    _, path = parse_labelled_path(text, name="--results")
    context = load_results_context(path, bots=bots)
    results = context.results[context.results["model"] == model]
    if results.empty:
        present = ", ".join(sorted(context.results["model"].unique()))
        raise InputError(f"--model {model}: not found in {path}; it contains {present}")
    largest = results[results["dataset_len"] == results["dataset_len"].max()]
    aggregated = aggregate_seeds(largest, agg)
    curve = pd.DataFrame(
        {
            "malicious_share": aggregated["malicious"] / context.n_bots,
            "mcc": aggregated["mcc"],
        }
    ).sort_values("malicious_share")
    label, group = results_label(text, path, context, runs)
    return {
        "label": label,
        "group": group,
        "curve": curve,
        "dataset_len": int(largest["dataset_len"].iloc[0]),
        "n_seeds": int(aggregated["n_seeds"].max()),
    }


# Figure


def group_colors(groups, n_results):
    """Return a colour per group and the colours left for unmatched results files."""
    import matplotlib.pyplot as plt

    palette = list(plt.get_cmap("tab10").colors)
    n_colors = len(groups) + n_results
    if n_colors > len(palette):
        palette = list(plt.get_cmap("tab20").colors)
    palette = [palette[i % len(palette)] for i in range(max(n_colors, 1))]
    colors = dict(zip(sorted(groups), palette))
    return colors, palette[len(groups) :]


def plot_poisoned_panel(ax, summaries, colors):
    """Draw the poisoned share of each group of runs."""
    for index, (group, (summary, n_runs)) in enumerate(sorted(summaries.items())):
        label = ", ".join(group)
        if n_runs > 1:
            label += f" ({n_runs} runs)"
        line = ax.plot(
            summary["malicious_share"],
            summary["mean"],
            marker=MARKERS[index % len(MARKERS)],
            markersize=4,
            color=colors[group],
            label=label,
        )[0]
        if n_runs > 1:
            ax.fill_between(
                summary["malicious_share"],
                summary["min"],
                summary["max"],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    ax.set_ylabel("Poisoned accepted labels")
    ax.yaxis.set_major_formatter(percent_formatter())
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    title = "Aggregation, behaviour"
    if any(len(group) > 2 for group in summaries):
        title += ", parameters that differ"
    ax.legend(title=title, fontsize=8, title_fontsize=8)


def plot_mcc_panel(ax, curves, colors, spare_colors, *, model, agg, threshold):
    """Draw one model's MCC on the largest training set, one line per results file.

    A results file of a plotted run gets that run's colour.
    """
    sizes = sorted({entry["dataset_len"] for entry in curves})
    n_seeds = max(entry["n_seeds"] for entry in curves)
    spare = iter(spare_colors)
    for index, entry in enumerate(curves):
        color = colors.get(entry["group"]) or next(spare)
        ax.plot(
            entry["curve"]["malicious_share"],
            entry["curve"]["mcc"],
            marker=MARKERS[index % len(MARKERS)],
            markersize=4,
            color=color,
            label=entry["label"],
        )
    ax.axhline(threshold, color="0.3", linestyle="--", linewidth=1)
    ax.annotate(
        f"MCC = {threshold:g}",
        xy=(1.0, threshold),
        xycoords=("axes fraction", "data"),
        xytext=(-4, 3),
        textcoords="offset points",
        ha="right",
        fontsize=8,
        color="0.3",
    )
    rows = " / ".join(str(size) for size in sizes)
    seed_word = "seed" if n_seeds == 1 else "seeds"
    ax.set_ylabel(f"{model} MCC\n({agg} over {n_seeds} {seed_word}, {rows} rows)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def main(argv=None):
    """Run the script; return the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args)
    output = check_output_path(args.output) if args.output is not None else None
    if args.results and not args.model:
        raise InputError("--results needs --model to choose the model of the MCC panel")
    if args.model and not args.results:
        raise InputError("--model needs --results, the results CSVs of the MCC panel")
    plt = pyplot_for(output)

    runs = load_runs(args.runs)
    summaries = group_runs(runs)
    curves = [
        mcc_on_largest_set(
            text, model=args.model, agg=args.agg, bots=args.bots, runs=runs
        )
        for text in args.results or []
    ]

    n_panels = 2 if curves else 1
    figure, axes = plt.subplots(
        n_panels,
        1,
        figsize=(7, 3.6 * n_panels + 0.4),
        sharex=True,
        squeeze=False,
        layout="constrained",
    )
    colors, spare_colors = group_colors(summaries, len(curves))
    plot_poisoned_panel(axes[0, 0], summaries, colors)
    if curves:
        plot_mcc_panel(
            axes[1, 0],
            curves,
            colors,
            spare_colors,
            model=args.model,
            agg=args.agg,
            threshold=args.threshold,
        )
    bottom = axes[-1, 0]
    bottom.set_xlabel("Malicious users (share of all bots)")
    bottom.xaxis.set_major_formatter(percent_formatter())
    figure.suptitle(
        args.title or "Poisoned labels accepted by the captcha service, by aggregation"
    )
    finish_figure(plt, figure, output)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
