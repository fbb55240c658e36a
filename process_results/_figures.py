"""Helpers that the plotting scripts share: output files, backend, labels."""

import logging
from pathlib import Path

from crowdpoison.cli import InputError

logger = logging.getLogger(__name__)

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
DPI = 200


def check_output_path(path, flag="-o"):
    """Check that a figure can be written to ``path``; return it as a Path.

    Raises
    ------
    InputError
        If the suffix is not .png, .pdf or .svg, or the folder does not exist.
    """
    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise InputError(
            f"{flag} {path}: unsupported figure format {path.suffix or '(none)'!r}; "
            f"use a file name ending in {', '.join(FIGURE_SUFFIXES)}"
        )
    if not path.parent.is_dir():
        raise InputError(
            f"{flag} {path}: folder {path.parent} not found; create it first"
        )
    return path


def pyplot_for(output):
    """Import and return pyplot, with the Agg backend when writing to a file.

    Agg draws without a display, so writing a figure works on a headless machine.
    """
    import matplotlib

    if output is not None:
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def finish_figure(plt, figure, output):
    """Write ``figure`` to ``output``, or show it in a window if ``output`` is None."""
    if output is None:
        plt.show()
        return
    figure.savefig(output, dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    logger.info("wrote %s", output)


def percent_formatter():
    """Return a tick formatter that prints a share in [0, 1] as a percentage."""
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=0)
