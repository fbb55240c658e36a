"""Helpers that the plotting scripts share: output files, backend, labels."""

import logging
import os
import sys
from pathlib import Path

from crowdpoison.cli import InputError

logger = logging.getLogger(__name__)

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
DPI = 200
# Interactive backends that show figures in a browser or notebook, not a window.
BROWSER_BACKENDS = ("webagg", "nbagg", "notebook")


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


def missing_display():
    """Return why a figure window cannot open here, or None when it can.

    A window needs an interactive matplotlib backend. On Linux, a backend that
    draws in a desktop window also needs ``DISPLAY`` (X11) or ``WAYLAND_DISPLAY``.
    The browser, notebook and ``module://`` backends need neither.
    """
    import matplotlib
    from matplotlib.backends import BackendFilter, backend_registry

    backend = matplotlib.get_backend().lower()
    if backend in backend_registry.list_builtin(BackendFilter.NON_INTERACTIVE):
        return f"the matplotlib backend is {backend}, which cannot open a window"
    needs_display = backend not in BROWSER_BACKENDS and not backend.startswith(
        "module://"
    )
    has_display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if sys.platform.startswith("linux") and needs_display and not has_display:
        return "DISPLAY and WAYLAND_DISPLAY are unset"
    return None


def pyplot_for(output, flag="-o"):
    """Import and return pyplot, with the Agg backend when writing to a file.

    Agg draws without a display, so writing a figure works on a headless machine.

    Raises
    ------
    InputError
        If ``output`` is None and no window can open (see `missing_display`).
    """
    import matplotlib

    if output is not None:
        matplotlib.use("Agg", force=True)
    else:
        reason = missing_display()
        if reason is not None:
            raise InputError(
                f"no {flag} given and no display is available to show the figure "
                f"({reason}); pass {flag} FILE.png, FILE.pdf or FILE.svg to write "
                "it to a file"
            )
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
