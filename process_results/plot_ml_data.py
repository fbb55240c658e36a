"""Plot MCC against the share of malicious users and the size of the training set.

Usage::

    python process_results/plot_ml_data.py results.csv --models "KNN(1)" -o knn1.pdf
    python process_results/plot_ml_data.py results.csv --models LR RF -o two.png
    python process_results/plot_ml_data.py results.csv --heatmap -o heatmaps.svg

The 3D plot has x = malicious / n_bots, y = dataset_len / largest dataset_len and
z = the MCC aggregated over seeds with ``--agg``. One model is drawn as a coloured
surface with two vertical planes through its breaking point. Several models are
drawn as wireframes with a horizontal plane at ``--threshold``. ``--heatmap``
draws one 2D panel per model instead, with the broken region outlined. Without
``-o`` the figure opens in a window, which needs a display.
"""

import argparse
import logging
import math
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from crowdpoison.cli import (
    ArgumentParser,
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
    breaking_point,
    load_results_context,
    mcc_grid,
    select_models,
)
from process_results._figures import (
    check_output_path,
    finish_figure,
    percent_formatter,
    pyplot_for,
)

logger = logging.getLogger(__name__)

HEATMAP_COLUMNS = 4
SURFACE_CMAP = "viridis"
HEATMAP_CMAP = "RdYlBu"
BREAK_COLOR = "tab:red"


EPILOG = """\
examples:
  # one model's 3D surface with planes through its breaking point
  python process_results/plot_ml_data.py results/random-v3.csv --models "KNN(1)" \\
      -o figures/knn1.pdf

  # two models as wireframes, MCC as the mean over seeds
  python process_results/plot_ml_data.py results/random-v3.csv --models LR RF \\
      --agg mean -o figures/lr-rf.png

  # one heatmap per model, breaking point at MCC < 0.8
  python process_results/plot_ml_data.py results/random-v3.csv --heatmap \\
      --threshold 0.8 -o figures/heatmaps.svg
"""


def build_parser():
    """Return the argument parser of this script."""
    parser = ArgumentParser(
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Plot MCC against the share of malicious users and the share of training "
            "examples, as a 3D surface or as heatmaps."
        ),
    )
    parser.add_argument("results", type=Path, help="results CSV written by run_ml.py")
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="MODEL",
        help="models to plot (default: all models for --heatmap, else the first "
        "model in the study's order)",
    )

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
        help=f"MCC threshold of the breaking point (default: {DEFAULT_THRESHOLD})",
    )

    parser.add_argument(
        "--bots",
        type=positive_int,
        help="total number of bots (default: from the results sidecar or manifest)",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        help="generation manifest.json, to read n_bots from; it must match the "
        "generation that the results sidecar records",
    )

    parser.add_argument(
        "--heatmap", action="store_true", help="draw 2D heatmaps instead of a 3D plot"
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


def axis_shares(grid, n_bots, max_len):
    """Return the malicious shares (rows) and dataset shares (columns) of a grid."""
    malicious = np.asarray(grid.index, dtype=float) / n_bots
    lengths = np.asarray(grid.columns, dtype=float) / max_len
    return malicious, lengths


def describe_mcc(agg, n_seeds):
    """Return e.g. ``MCC (min over 3 seeds)``."""
    seeds = "seed" if n_seeds == 1 else "seeds"
    return f"MCC ({agg} over {n_seeds} {seeds})"


def label_3d_axes(ax, n_bots, max_len, mcc_label):
    """Set the axis labels and percent ticks of a 3D plot."""
    ax.set_xlabel(f"Malicious users (share of {n_bots})", labelpad=8)
    ax.set_ylabel(f"Training set (share of {max_len} rows)", labelpad=8)
    ax.set_zlabel(mcc_label, labelpad=6)
    ax.xaxis.set_major_formatter(percent_formatter())
    ax.yaxis.set_major_formatter(percent_formatter())


def z_limits(grids):
    """Return the MCC range to show: up to 1, down to below the lowest value."""
    lowest = min(float(np.nanmin(grid.to_numpy(dtype=float))) for grid in grids)
    return min(0.0, math.floor(lowest * 10) / 10), 1.0


def plot_single_surface(plt, grid, model, *, n_bots, max_len, threshold, mcc_label):
    """Draw one model's surface with vertical planes through its breaking point."""
    figure = plt.figure(figsize=(8, 6.5))
    ax = figure.add_subplot(projection="3d")
    malicious, lengths = axis_shares(grid, n_bots, max_len)
    x, y = np.meshgrid(malicious, lengths, indexing="ij")
    z = grid.to_numpy(dtype=float)
    z_low, z_high = z_limits([grid])

    surface = ax.plot_surface(
        x,
        y,
        z,
        cmap=SURFACE_CMAP,
        vmin=z_low,
        vmax=z_high,
        edgecolor="k",
        linewidth=0.2,
        alpha=0.9,
    )
    figure.colorbar(surface, ax=ax, shrink=0.6, pad=0.1, label=mcc_label)

    corner = breaking_point(grid, threshold)
    if corner is None:
        subtitle = f"never breaks at MCC < {threshold:g}"
    else:
        x_break = corner[0] / n_bots
        y_break = corner[1] / max_len
        draw_breaking_planes(ax, x_break, y_break, malicious, lengths, (z_low, z_high))
        subtitle = (
            f"breaking point: {x_break:.0%} malicious users, {corner[1]} rows "
            f"(MCC < {threshold:g})"
        )

    ax.set_zlim(z_low, z_high)
    label_3d_axes(ax, n_bots, max_len, mcc_label)
    ax.view_init(elev=25, azim=-130)
    ax.set_title(f"{model}\n{subtitle}")
    return figure


def draw_breaking_planes(ax, x_break, y_break, malicious, lengths, z_range):
    """Draw the vertical planes x = x_break and y = y_break over the whole grid."""
    z_plane = np.array(z_range)
    y_span, z_span = np.meshgrid([lengths.min(), lengths.max()], z_plane)
    ax.plot_surface(
        np.full_like(y_span, x_break), y_span, z_span, color=BREAK_COLOR, alpha=0.18
    )
    x_span, z_span = np.meshgrid([malicious.min(), malicious.max()], z_plane)
    ax.plot_surface(
        x_span, np.full_like(x_span, y_break), z_span, color=BREAK_COLOR, alpha=0.18
    )
    ax.plot(
        [x_break, x_break],
        [y_break, y_break],
        z_range,
        color=BREAK_COLOR,
        linewidth=1.5,
    )


def plot_several_wireframes(plt, grids, *, n_bots, max_len, threshold, mcc_label):
    """Draw several models as wireframes with a horizontal threshold plane."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    figure = plt.figure(figsize=(9, 7))
    ax = figure.add_subplot(projection="3d")
    colors = plt.get_cmap("tab10" if len(grids) <= 10 else "tab20").colors
    handles = []
    for index, (model, grid) in enumerate(grids.items()):
        malicious, lengths = axis_shares(grid, n_bots, max_len)
        x, y = np.meshgrid(malicious, lengths, indexing="ij")
        color = colors[index % len(colors)]
        ax.plot_wireframe(x, y, grid.to_numpy(dtype=float), color=color, linewidth=0.8)
        handles.append(Line2D([], [], color=color, label=model))

    shares = [axis_shares(grid, n_bots, max_len) for grid in grids.values()]
    all_malicious = np.concatenate([malicious for malicious, _ in shares])
    all_lengths = np.concatenate([lengths for _, lengths in shares])
    x_plane, y_plane = np.meshgrid(
        [all_malicious.min(), all_malicious.max()],
        [all_lengths.min(), all_lengths.max()],
    )
    ax.plot_surface(
        x_plane, y_plane, np.full_like(x_plane, threshold), color="0.4", alpha=0.25
    )
    handles.append(Patch(color="0.4", alpha=0.4, label=f"MCC = {threshold:g}"))

    ax.set_zlim(*z_limits(grids.values()))
    label_3d_axes(ax, n_bots, max_len, mcc_label)
    ax.view_init(elev=25, azim=-130)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, 1.0), fontsize=8)
    ax.set_title(f"{mcc_label} of {len(grids)} models")
    return figure


def cell_edges(centres):
    """Return the edges of cells centred on sorted ``centres`` (midpoints between)."""
    centres = np.asarray(centres, dtype=float)
    if centres.size == 1:
        half = 0.5 if centres[0] == 0 else abs(centres[0]) * 0.05
        return np.array([centres[0] - half, centres[0] + half])
    middles = (centres[1:] + centres[:-1]) / 2
    first = centres[0] - (middles[0] - centres[0])
    last = centres[-1] + (centres[-1] - middles[-1])
    return np.concatenate([[first], middles, [last]])


def colorbar_ticks(low, threshold):
    """Return colour bar ticks: round values below the threshold, the threshold, 1.

    Values closer than 0.25 to the threshold are left out so labels do not overlap.
    """
    step = 0.25 if threshold - low <= 1 else 0.5
    below = np.arange(math.ceil(low / step) * step, threshold - 0.25 + 1e-9, step)
    return [*below.round(2), threshold, 1.0]


def plot_heatmaps(plt, grids, *, n_bots, threshold, mcc_label):
    """Draw one heatmap per model, malicious share by dataset size.

    The broken region (every cell at or beyond the breaking point) is outlined and
    the breaking point is marked with a cross.
    """
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    n_models = len(grids)
    n_columns = min(HEATMAP_COLUMNS, n_models)
    n_rows = math.ceil(n_models / n_columns)
    figure, axes = plt.subplots(
        n_rows,
        n_columns,
        figsize=(3.3 * n_columns + 1.2, 2.9 * n_rows + 0.6),
        sharex=True,
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    z_low, _ = z_limits(grids.values())
    norm = TwoSlopeNorm(vcenter=threshold, vmin=min(z_low, threshold - 0.05), vmax=1.0)

    mesh = None
    for ax, (model, grid) in zip(axes.flat, grids.items()):
        malicious = np.asarray(grid.index, dtype=float) / n_bots
        lengths = np.asarray(grid.columns, dtype=float)
        x_edges = cell_edges(lengths)
        y_edges = cell_edges(malicious)
        values = np.ma.masked_invalid(grid.to_numpy(dtype=float))
        mesh = ax.pcolormesh(x_edges, y_edges, values, cmap=HEATMAP_CMAP, norm=norm)

        corner = breaking_point(grid, threshold)
        if corner is None:
            ax.set_title(f"{model}: never breaks", fontsize=10)
        else:
            column = list(grid.columns).index(corner[1])
            row = list(grid.index).index(corner[0])
            ax.add_patch(
                Rectangle(
                    (x_edges[column], y_edges[row]),
                    x_edges[-1] - x_edges[column],
                    y_edges[-1] - y_edges[row],
                    fill=False,
                    edgecolor="black",
                    linewidth=1.6,
                )
            )
            # Unclipped: a corner in a thin edge column would lose half the mark.
            ax.plot(
                lengths[column],
                malicious[row],
                marker="x",
                color="black",
                ms=7,
                clip_on=False,
            )
            ax.set_title(
                f"{model}: breaks at {malicious[row]:.0%}, {corner[1]} rows",
                fontsize=10,
            )
        ax.yaxis.set_major_formatter(percent_formatter())
        ax.ticklabel_format(axis="x", style="plain")

    for ax in axes.flat[n_models:]:
        ax.set_visible(False)
    for ax in axes[-1, :]:
        ax.set_xlabel("Training set size (rows)")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"Malicious users (of {n_bots})")
    colorbar = figure.colorbar(mesh, ax=axes, shrink=0.8, label=mcc_label)
    colorbar.set_ticks(colorbar_ticks(norm.vmin, threshold))
    colorbar.ax.axhline(threshold, color="black", linewidth=1)
    return figure


def main(argv=None):
    """Run the script; return the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args)
    output = check_output_path(args.output) if args.output is not None else None
    plt = pyplot_for(output)

    context = load_results_context(args.results, bots=args.bots, manifest=args.manifest)
    models = select_models(context.results, args.models, source=args.results)
    if not args.models and not args.heatmap:
        models = models[:1]
        logger.info("no --models given; plotting %s", models[0])
    selected = context.results[context.results["model"].isin(models)]
    aggregated = aggregate_seeds(selected, args.agg)
    grids = {model: mcc_grid(aggregated, model) for model in models}
    max_len = int(aggregated["dataset_len"].max())
    mcc_label = describe_mcc(args.agg, int(aggregated["n_seeds"].max()))

    if args.heatmap:
        figure = plot_heatmaps(
            plt,
            grids,
            n_bots=context.n_bots,
            threshold=args.threshold,
            mcc_label=mcc_label,
        )
    elif len(grids) == 1:
        ((model, grid),) = grids.items()
        figure = plot_single_surface(
            plt,
            grid,
            model,
            n_bots=context.n_bots,
            max_len=max_len,
            threshold=args.threshold,
            mcc_label=mcc_label,
        )
    else:
        figure = plot_several_wireframes(
            plt,
            grids,
            n_bots=context.n_bots,
            max_len=max_len,
            threshold=args.threshold,
            mcc_label=mcc_label,
        )
    if args.title:
        figure.suptitle(args.title)
    finish_figure(plt, figure, output)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
