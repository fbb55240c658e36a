"""Writing a results CSV row by row, resuming it, and its sidecar.

The CSV has the header ``seed,model,malicious,dataset_len,mcc`` and the MCC as
``repr(float(mcc))``. Rows are appended as whole lines and flushed as each cell
finishes, so an interrupted run leaves at most one torn last line. A rerun with
the same parameters keeps the valid rows, drops a torn last line and computes
the rest. At the end the file is rewritten atomically in the canonical order
(malicious, dataset_len, seed, model order), so its bytes do not depend on the
order in which cells finished.
"""

import json
import logging
import os
from pathlib import Path

from .cli import InputError
from .csvio import atomic_write
from .models import MODEL_INDEX

logger = logging.getLogger(__name__)

HEADER = "seed,model,malicious,dataset_len,mcc"
RESULTS_FORMAT = "crowdpoison-results/1"
SIDECAR_SUFFIX = ".meta.json"


def sidecar_path(results_path):
    """Return the sidecar ``<results>.meta.json`` of a results CSV."""
    results_path = Path(results_path)
    return results_path.with_name(results_path.name + SIDECAR_SUFFIX)


def format_mcc(mcc):
    """Return the text of an MCC in the results file: ``repr(float(mcc))``."""
    return repr(float(mcc))


def format_row(key, mcc_text):
    """Return one line of the results file for ``key = (seed, model, malicious,
    dataset_len)``, with its line end."""
    seed, model, malicious, dataset_len = key
    return f"{seed},{model},{malicious},{dataset_len},{mcc_text}\n"


def canonical_order(key):
    """Return the sort key of a row: malicious, dataset_len, seed, model order."""
    seed, model, malicious, dataset_len = key
    return (malicious, dataset_len, seed, MODEL_INDEX[model])


def read_existing_rows(path, allowed_keys):
    """Read the rows of an unfinished or finished results file.

    Parameters
    ----------
    path : path-like
        Results CSV written by an earlier run with the same parameters.
    allowed_keys : set of tuple
        Every ``(seed, model, malicious, dataset_len)`` of the grid.

    Returns
    -------
    dict
        ``{key: mcc_text}``. A last line without line end, or one that does not
        parse, is dropped with a warning.

    Raises
    ------
    InputError
        If the header is wrong, a line other than the last one is invalid, or a
        row is not part of the grid.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    lines = data.split(b"\n")
    # The element after the last line end is empty unless the last line is torn.
    torn = lines.pop()
    if torn:
        logger.warning(
            "%s: dropping the torn last line %r (no line end), left by an "
            "interrupted run",
            path,
            torn[:80].decode("utf-8", "replace"),
        )
    if not lines:
        return {}
    if lines[0].decode("utf-8", "replace").strip() != HEADER:
        raise InputError(
            f"{path} line 1: expected the header '{HEADER}'; pass --overwrite to "
            "replace the file, or choose another -o"
        )
    rows = {}
    for number, line in enumerate(lines[1:], start=2):
        parsed = _parse_line(line)
        if parsed is None and number == len(lines):
            logger.warning(
                "%s line %d: dropping the unparsable last line %r, left by an "
                "interrupted run",
                path,
                number,
                line[:80].decode("utf-8", "replace"),
            )
            continue
        if parsed is None:
            raise InputError(
                f"{path} line {number}: invalid row {line[:80]!r}; pass --overwrite "
                "to recompute the whole grid"
            )
        key, mcc_text = parsed
        if key not in allowed_keys:
            raise InputError(
                f"{path} line {number}: the row {key} is not part of this grid; pass "
                "--overwrite to recompute the whole grid, or choose another -o"
            )
        rows[key] = mcc_text
    return rows


def _parse_line(line):
    try:
        text = line.decode("utf-8")
        seed, model, malicious, dataset_len, mcc = text.split(",")
        key = (int(seed), model, int(malicious), int(dataset_len))
        value = float(mcc)
    except ValueError:
        return None
    if model not in MODEL_INDEX or not -1.0 <= value <= 1.0:
        return None
    return key, format_mcc(value)


class ResultsWriter:
    """Append rows to a results CSV and rewrite it in canonical order at the end.

    Parameters
    ----------
    path : path-like
        Results CSV. It is rewritten with ``existing`` rows when opened, which
        removes a torn last line.
    existing : dict
        ``{key: mcc_text}`` rows already computed.
    """

    def __init__(self, path, existing):
        self.path = Path(path)
        self.rows = dict(existing)
        self._write_all()
        # Kept open across add() calls and closed by close() or finish().
        self._handle = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115

    def __contains__(self, key):
        return key in self.rows

    def add(self, rows):
        """Append ``rows`` (``{key: mcc}``) as whole lines and flush them."""
        text = []
        for key, mcc in rows.items():
            mcc_text = format_mcc(mcc)
            self.rows[key] = mcc_text
            text.append(format_row(key, mcc_text))
        self._handle.write("".join(text))
        self._handle.flush()

    def close(self):
        """Close the file, leaving the appended rows in completion order."""
        if not self._handle.closed:
            self._handle.close()

    def finish(self):
        """Close the file and rewrite it atomically in the canonical order."""
        self.close()
        self._write_all()

    def _write_all(self):
        ordered = sorted(self.rows, key=canonical_order)
        text = (
            HEADER + "\n" + "".join(format_row(key, self.rows[key]) for key in ordered)
        )
        with atomic_write(self.path) as handle:
            handle.write(text.encode("utf-8"))


def prepare_output(path, parameters, *, overwrite):
    """Decide whether to start, resume or refuse, before anything is written.

    Parameters
    ----------
    path : path-like
        Results CSV.
    parameters : dict
        ``parameters`` section of the sidecar of this run.
    overwrite : bool
        Start over even when the file exists.

    Returns
    -------
    bool
        True when an existing file is to be resumed.

    Raises
    ------
    InputError
        If the file exists and was written with other parameters, has no
        sidecar, or is a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"-o {path} is a folder; pass the path of a CSV file")
    if overwrite or not path.exists():
        return False
    sidecar = sidecar_path(path)
    previous = _read_sidecar_parameters(sidecar)
    if previous is None:
        raise InputError(
            f"{path} exists but has no readable sidecar {sidecar.name}, so it cannot "
            "be resumed; pass --overwrite to replace it, or choose another -o"
        )
    different = [
        name
        for name in sorted(set(parameters) | set(previous))
        if name in COMPARED_PARAMETERS and parameters.get(name) != previous.get(name)
    ]
    if different:
        raise InputError(
            f"{path} was written with other parameters ({', '.join(different)} "
            "differ); pass --overwrite to replace it, or choose another -o"
        )
    return True


COMPARED_PARAMETERS = ("models", "seeds", "levels", "data_sha256", "test_sha256")


def _read_sidecar_parameters(sidecar):
    try:
        with open(sidecar, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict) or content.get("format") != RESULTS_FORMAT:
        return None
    parameters = content.get("parameters")
    return parameters if isinstance(parameters, dict) else None


def write_sidecar(path, parameters, generation):
    """Write ``<results>.meta.json`` atomically.

    Parameters
    ----------
    path : path-like
        Results CSV.
    parameters : dict
        Parameters of the run, compared on resume.
    generation : dict
        Description of the generated data, from its manifest.
    """
    content = {
        "format": RESULTS_FORMAT,
        "parameters": parameters,
        "generation": generation,
    }
    text = json.dumps(content, indent=2, sort_keys=True) + "\n"
    with atomic_write(sidecar_path(path)) as handle:
        handle.write(text.encode("utf-8"))


def remove_output(path):
    """Remove a results file and its sidecar, for ``--overwrite``."""
    for target in (Path(path), sidecar_path(path)):
        if target.is_file():
            logger.warning("--overwrite: removing %s", target)
            os.remove(target)
