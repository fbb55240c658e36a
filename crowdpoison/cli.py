"""Conventions shared by the command-line scripts.

Every script defines ``main(argv=None) -> int`` and ends with
``raise SystemExit(run(main))``. A user error (bad flag, unreadable or malformed
input) prints one line on stderr and exits with status 2, without a traceback.
"""

import argparse
import logging
import sys

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

logger = logging.getLogger("crowdpoison")


class InputError(ValueError):
    """A problem with a flag value or an input file that the user can fix.

    The message names the parameter or file, the bad value, what is allowed and,
    where it helps, what to do.
    """


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are a single line on stderr."""

    def error(self, message):
        self.exit(
            EXIT_USER_ERROR,
            f"{self.prog}: error: {message} (run '{self.prog} --help' for usage)\n",
        )


def add_logging_flags(parser):
    """Add ``--quiet`` and ``--verbose`` to ``parser``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only warnings and errors, and no progress bars",
    )
    group.add_argument(
        "--verbose", action="store_true", help="print debug messages as well"
    )


def configure_logging(args):
    """Send log records to stderr at the level that ``--quiet``/``--verbose`` set."""
    if getattr(args, "quiet", False):
        level = logging.WARNING
    elif getattr(args, "verbose", False):
        level = logging.DEBUG
    else:
        level = logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("crowdpoison").setLevel(level)
    logging.captureWarnings(True)


def progress_enabled(args):
    """Return whether tqdm progress bars should be shown for these arguments."""
    return not getattr(args, "quiet", False)


def bounded_float(low, high, *, include_low):
    """Return an argparse type for a number in (low, high], or [low, high]."""
    interval = f"{'[' if include_low else '('}{low:g}, {high:g}]"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = None
        above_low = value is not None and (value >= low if include_low else value > low)
        if not above_low or not value <= high:
            raise argparse.ArgumentTypeError(
                f"invalid value {text!r}: expected a number in {interval}"
            )
        return value

    parse.__name__ = f"number in {interval}"
    return parse


fraction = bounded_float(0, 1, include_low=False)
probability = bounded_float(0, 1, include_low=True)
mcc_threshold = bounded_float(-1, 1, include_low=False)


def positive_int(text):
    """Parse an integer of at least 1 for argparse."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected an integer of at least 1"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected an integer of at least 1"
        )
    return value


def non_negative_int(text):
    """Parse an integer of at least 0 for argparse."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected an integer of at least 0"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected an integer of at least 0"
        )
    return value


# Largest seed that numpy's legacy RandomState, and so scikit-learn's random_state,
# accepts.
MAX_RANDOM_STATE = 2**32 - 1


def random_state_seed(text):
    """Parse a seed for scikit-learn's ``random_state``, an integer in 0..2**32-1."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= MAX_RANDOM_STATE:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected an integer in 0..{MAX_RANDOM_STATE}"
        )
    return value


# Advice for each kind of file error that run() reports.
OS_ERROR_ADVICE = {
    FileNotFoundError: "not found; check the path",
    PermissionError: "permission denied; check the file's permissions",
    IsADirectoryError: "is a folder; pass a file",
    NotADirectoryError: "a part of the path is a file, not a folder; check the path",
}


def describe_os_error(exc):
    """Return a one-line message for a file error: the path and what to do."""
    advice = next(
        (text for kind, text in OS_ERROR_ADVICE.items() if isinstance(exc, kind)),
        None,
    )
    if exc.filename is None or advice is None:
        return str(exc)
    return f"{exc.filename}: {advice}"


def run(main, argv=None):
    """Call ``main(argv)`` and turn user errors into one line and exit status 2.

    ``InputError``, ``FileNotFoundError``, ``PermissionError``,
    ``IsADirectoryError`` and ``NotADirectoryError`` are user errors. Ctrl-C exits
    with status 130. Any other exception is a bug and keeps its traceback.
    """
    prog = argparse.ArgumentParser().prog
    try:
        return main(argv)
    except InputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
    ) as exc:
        print(f"{prog}: error: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
