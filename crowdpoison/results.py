"""Reading model results, aggregating them over seeds, and finding breaking points.

A results file is a CSV with the header ``seed,model,malicious,dataset_len,mcc``:
one Matthews correlation coefficient (MCC) per seed, model, number of malicious
bots and size of the cumulative training set. ``run_ml.py`` writes it, with an
optional sidecar ``<results>.meta.json`` that describes the generation run. The
grid of malicious counts and dataset sizes is always read from the data.
"""

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .cli import InputError

logger = logging.getLogger(__name__)

RESULT_COLUMNS = ("seed", "model", "malicious", "dataset_len", "mcc")
CELL_COLUMNS = ("model", "malicious", "dataset_len")
AGGREGATIONS = ("min", "max", "mean", "median")
SIDECAR_SUFFIX = ".meta.json"
MANIFEST_NAME = "manifest.json"
RESULTS_FORMAT_PREFIX = "crowdpoison-results/"
MANIFEST_FORMAT_PREFIX = "crowdpoison-generation/"
DEFAULT_THRESHOLD = 0.7

# The study's model order, used to sort tables and legends. Models with other
# names follow in the order in which the results file first lists them.
MODEL_ORDER = (
    "LR",
    "SVM",
    "KNN(1)",
    "KNN(3)",
    "KNN(5)",
    "KNN(7)",
    "KNN(9)",
    "DT",
    "ANN",
    "RF",
    "VF(hard)",
    "VF(soft)",
)

# Slack for floating-point rounding: an MCC this close outside [-1, 1] is clipped.
MCC_TOLERANCE = 1e-9


# Reading and validating the inputs


def read_results(path):
    """Read and validate a results CSV.

    Parameters
    ----------
    path : path-like
        CSV file with the header ``seed,model,malicious,dataset_len,mcc``.

    Returns
    -------
    pandas.DataFrame
        One row per line of the file, with the columns of ``RESULT_COLUMNS``:
        ``seed``, ``malicious`` and ``dataset_len`` as int64, ``model`` as str and
        ``mcc`` as float64.

    Raises
    ------
    InputError
        If the header is not the expected one, a field is not of its type or an
        MCC is not a finite number in [-1, 1]. Also if two lines have the same
        seed, model, malicious count and dataset size, or the file has no data
        line.
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        _check_header(path, header)
        rows = _parse_rows(path, reader)
    if not rows:
        raise InputError(
            f"{path} contains a header but no result rows; "
            "pass the CSV that run_ml.py wrote after it finished"
        )

    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    frame = frame.astype(
        {
            "seed": "int64",
            "malicious": "int64",
            "dataset_len": "int64",
            "mcc": "float64",
        }
    )
    frame["model"] = frame["model"].astype(object)
    logger.debug("read %d result rows from %s", len(frame), path)
    return frame


def _check_header(path, header):
    if header is None:
        raise InputError(
            f"{path} is empty; expected a CSV with the header "
            f"'{','.join(RESULT_COLUMNS)}'"
        )
    names = [name.strip() for name in header]
    if tuple(names) != RESULT_COLUMNS:
        raise InputError(
            f"{path} line 1: header is '{','.join(header)}' but expected "
            f"'{','.join(RESULT_COLUMNS)}'; pass a results CSV written by run_ml.py"
        )


def _parse_rows(path, reader):
    rows = []
    first_line = {}
    for fields in reader:
        line = reader.line_num
        if not fields or all(not field.strip() for field in fields):
            continue
        row = _parse_row(path, line, fields)
        key = (row[0], row[1], row[2], row[3])
        if key in first_line:
            raise InputError(
                f"{path} line {line}: duplicate result for seed {row[0]}, model "
                f"{row[1]}, malicious {row[2]}, dataset_len {row[3]} (first on line "
                f"{first_line[key]}); remove one of the two lines"
            )
        first_line[key] = line
        rows.append(row)
    return rows


def _parse_row(path, line, fields):
    if len(fields) != len(RESULT_COLUMNS):
        raise InputError(
            f"{path} line {line}: expected {len(RESULT_COLUMNS)} fields "
            f"({','.join(RESULT_COLUMNS)}) but found {len(fields)}"
        )
    seed_text, model, malicious_text, length_text, mcc_text = (
        field.strip() for field in fields
    )
    seed = _parse_int(path, line, "seed", seed_text, minimum=None)
    if not model:
        raise InputError(f"{path} line {line}: model is empty; expected a model name")
    malicious = _parse_int(path, line, "malicious", malicious_text, minimum=0)
    dataset_len = _parse_int(path, line, "dataset_len", length_text, minimum=1)
    mcc = _parse_mcc(path, line, mcc_text)
    return seed, model, malicious, dataset_len, mcc


def _parse_int(path, line, name, text, *, minimum):
    try:
        value = int(text)
    except ValueError:
        raise InputError(
            f"{path} line {line}: {name} {text!r} is not an integer"
        ) from None
    if minimum is not None and value < minimum:
        raise InputError(
            f"{path} line {line}: {name} {value} is invalid; expected an integer of "
            f"at least {minimum}"
        )
    return value


def _parse_mcc(path, line, text):
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{path} line {line}: mcc {text!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > 1 + MCC_TOLERANCE:
        raise InputError(
            f"{path} line {line}: mcc {text!r} is invalid; expected a finite number "
            "in [-1, 1]"
        )
    return min(1.0, max(-1.0, value))


def sidecar_path(results_path):
    """Return the path of the sidecar that describes ``results_path``."""
    results_path = Path(results_path)
    return results_path.with_name(results_path.name + SIDECAR_SUFFIX)


def read_sidecar(results_path):
    """Read the sidecar ``<results>.meta.json`` of a results file, if there is one.

    Parameters
    ----------
    results_path : path-like
        The results CSV, not the sidecar itself.

    Returns
    -------
    dict
        The sidecar's content, or an empty dict when there is no sidecar. Every key
        is optional.

    Raises
    ------
    InputError
        If the sidecar exists but is not a JSON object.
    """
    path = sidecar_path(results_path)
    if not path.is_file():
        return {}
    content = _read_json_object(path, what="results sidecar")
    file_format = content.get("format")
    if file_format is not None and not str(file_format).startswith(
        RESULTS_FORMAT_PREFIX
    ):
        logger.warning(
            "%s has format %r, not %s1; reading the keys it shares with that format",
            path,
            file_format,
            RESULTS_FORMAT_PREFIX,
        )
    logger.debug("read the results sidecar %s", path)
    return content


def read_manifest(path):
    """Read a generation manifest.

    Parameters
    ----------
    path : path-like
        ``manifest.json``, or the generation folder that contains it.

    Returns
    -------
    dict
        The manifest's content.

    Raises
    ------
    InputError
        If the file is not a JSON object or its ``levels`` entry is not an object.
    FileNotFoundError
        If the file does not exist.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"generation manifest {path} not found; pass the manifest.json that "
            "generate_datasets.py wrote, or its folder"
        )
    content = _read_json_object(path, what="generation manifest")
    file_format = content.get("format")
    if file_format is not None and not str(file_format).startswith(
        MANIFEST_FORMAT_PREFIX
    ):
        raise InputError(
            f"{path} has format {file_format!r}, but a generation manifest has "
            f"{MANIFEST_FORMAT_PREFIX}1; pass the manifest.json of a generation folder"
        )
    if not isinstance(content.get("levels", {}), dict):
        raise InputError(
            f"{path}: 'levels' is a {type(content['levels']).__name__}, expected an "
            "object keyed by the number of malicious bots"
        )
    logger.debug("read the generation manifest %s", path)
    return content


def _read_json_object(path, *, what):
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except ValueError as exc:
        raise InputError(
            f"{what} {path} is not valid JSON ({exc}); fix or delete it"
        ) from None
    if not isinstance(content, dict):
        raise InputError(
            f"{what} {path} contains a JSON {type(content).__name__}, expected an "
            "object; fix or delete it"
        )
    return content


def _section(content, key):
    """Return ``content[key]`` when it is a JSON object, else an empty dict."""
    value = content.get(key)
    return value if isinstance(value, dict) else {}


def manifest_path_from_sidecar(sidecar):
    """Return the generation manifest that a sidecar names, or None.

    A named manifest that no longer exists is logged and ignored.
    """
    name = _section(sidecar, "generation").get("manifest")
    if not name:
        return None
    path = Path(name)
    if not path.is_file():
        logger.warning(
            "the results sidecar names the manifest %s, which does not exist; "
            "pass --manifest to use another one",
            path,
        )
        return None
    return path


# Values that run_ml.py copies into the sidecar's ``generation`` section. The first
# group comes from the manifest's ``parameters``, the second from its top level.
RECORDED_PARAMETERS = ("n_bots", "behavior", "n_votes", "assignment")
RECORDED_COUNTS = ("n_trusted", "n_rows")
MAX_LISTED_DIFFERENCES = 3


def _manifest_file(path):
    """Return the manifest file of a manifest path or generation folder."""
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


def _same_file(first, second):
    try:
        return Path(first).resolve() == Path(second).resolve()
    except OSError:
        return False


def _describe_differences(differences):
    """Return ``NAME is NEW instead of OLD`` per difference, at most three."""
    texts = [
        f"{name} is {_short(new)} instead of {_short(old)}"
        for name, new, old in differences[:MAX_LISTED_DIFFERENCES]
    ]
    extra = len(differences) - MAX_LISTED_DIFFERENCES
    return ", ".join(texts) + (f" and {extra} more" if extra > 0 else "")


def _short(value):
    """Return ``repr(value)`` cut to 40 characters, for messages."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def recorded_generation_differences(sidecar, manifest):
    """Compare a manifest with the generation values that a results sidecar copied.

    Parameters
    ----------
    sidecar : dict
        Content of the results sidecar.
    manifest : dict
        Content of a generation manifest.

    Returns
    -------
    list of tuple
        ``(name, manifest_value, recorded_value)`` per value that differs. Values
        that the sidecar does not record are not compared.
    """
    generation = _section(sidecar, "generation")
    parameters = _section(manifest, "parameters")
    differences = []
    for key in (*RECORDED_PARAMETERS, *RECORDED_COUNTS):
        recorded = generation.get(key)
        if recorded is None:
            continue
        actual = (
            parameters.get(key) if key in RECORDED_PARAMETERS else manifest.get(key)
        )
        if actual != recorded:
            differences.append((key, actual, recorded))
    return differences


def generation_identity_differences(recorded, manifest):
    """Compare the parameters and input checksum of two generation manifests.

    The requested ``levels`` are left out, so that a generation extended with more
    levels keeps its identity.

    Returns
    -------
    list of tuple
        ``(name, manifest_value, recorded_value)`` per parameter that differs, and
        ``("input sha256", ...)`` when the input checksums differ.
    """
    old = dict(_section(recorded, "parameters"))
    new = dict(_section(manifest, "parameters"))
    old.pop("levels", None)
    new.pop("levels", None)
    differences = [
        (key, new.get(key), old.get(key))
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    old_sha = _section(recorded, "input").get("sha256")
    new_sha = _section(manifest, "input").get("sha256")
    if old_sha != new_sha:
        differences.append(("input sha256", new_sha, old_sha))
    return differences


def manifest_differences(sidecar, manifest_path, manifest):
    """Return how a manifest differs from the generation a results sidecar records.

    The manifest is compared with the values that the sidecar copied from the
    manifest of its run. When the sidecar names a manifest that still exists at
    another path, the parameters and input checksum of both manifests are compared
    as well.

    Parameters
    ----------
    sidecar : dict
        Content of the results sidecar; empty when there is none.
    manifest_path : path-like
        The manifest, or its generation folder.
    manifest : dict
        Content of the manifest.

    Returns
    -------
    list of tuple
        ``(name, manifest_value, recorded_value)`` per difference; empty when the
        manifest matches or the sidecar records nothing to compare.
    """
    differences = recorded_generation_differences(sidecar, manifest)
    named = _section(sidecar, "generation").get("manifest")
    if not named or not Path(named).is_file():
        return differences
    if _same_file(named, _manifest_file(manifest_path)):
        return differences
    try:
        recorded = read_manifest(named)
    except (InputError, OSError) as exc:
        logger.debug("not comparing with %s, which cannot be read: %s", named, exc)
        return differences
    listed = {name for name, _, _ in differences}
    for difference in generation_identity_differences(recorded, manifest):
        if difference[0] not in listed:
            differences.append(difference)
    return differences


def check_manifest_matches(results_path, sidecar, manifest_path, manifest):
    """Check that a ``--manifest`` describes the generation behind a results file.

    Raises
    ------
    InputError
        If the results sidecar records a generation that differs from the manifest.
        Without a sidecar, or one that records no generation, nothing is checked.
    """
    differences = manifest_differences(sidecar, manifest_path, manifest)
    if not differences:
        return
    named = _section(sidecar, "generation").get("manifest")
    recorded = f"manifest {named}" if named else "no manifest path"
    raise InputError(
        f"--manifest {manifest_path} describes another generation than the one "
        f"{results_path} was computed from, which {sidecar_path(results_path)} "
        f"records ({recorded}): {_describe_differences(differences)}; pass the "
        "manifest of that generation or leave out --manifest"
    )


def _positive_int_or_none(value, *, source, key):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(
            f"{source}: {key} is {value!r}, expected an integer of at least 1; "
            "fix the file or pass the value on the command line"
        )
    return value


def resolve_n_bots(results, *, bots=None, sidecar=None, manifest=None, source="input"):
    """Return the number of bots, malicious or not, of the runs behind ``results``.

    The value comes from ``bots`` when given, else from the sidecar's
    ``generation.n_bots``, else from the manifest's ``parameters.n_bots``.

    Parameters
    ----------
    results : pandas.DataFrame
        Results as returned by `read_results`.
    bots : int, optional
        Value of the ``--bots`` flag.
    sidecar, manifest : dict, optional
        Content of the results sidecar and of the generation manifest.
    source : str, default="input"
        Name of the results file, for messages.

    Returns
    -------
    int

    Raises
    ------
    InputError
        If no source gives the number, or it is smaller than the largest number of
        malicious bots in ``results``.
    """
    sidecar = sidecar or {}
    manifest = manifest or {}
    from_sidecar = _positive_int_or_none(
        _section(sidecar, "generation").get("n_bots"),
        source=f"sidecar of {source}",
        key="generation.n_bots",
    )
    from_manifest = _positive_int_or_none(
        _section(manifest, "parameters").get("n_bots"),
        source="generation manifest",
        key="parameters.n_bots",
    )
    known = [value for value in (from_sidecar, from_manifest) if value is not None]
    if bots is not None and known and known[0] != bots:
        logger.warning(
            "--bots %d differs from the %d bots that the run's metadata records; "
            "using --bots",
            bots,
            known[0],
        )
    n_bots = bots
    if n_bots is None and known:
        n_bots = known[0]
    if n_bots is None:
        raise InputError(
            f"the number of bots of {source} is unknown: it has no sidecar "
            f"{SIDECAR_SUFFIX} and no manifest was given; pass --bots N"
        )

    largest = int(results["malicious"].max())
    if n_bots < largest:
        raise InputError(
            f"--bots {n_bots} is smaller than the largest number of malicious bots in "
            f"{source} ({largest}); pass the run's total number of bots"
        )
    return n_bots


def resolve_trusted_rows(results, *, sidecar=None, manifest=None):
    """Return the number of trusted rows (batch 1) of the runs behind ``results``.

    The manifest's ``n_trusted`` comes first, then the sidecar's
    ``generation.n_trusted``, then the smallest ``dataset_len`` in ``results``.
    """
    for content, key in ((manifest or {}, None), (sidecar or {}, "generation")):
        entry = _section(content, key) if key else content
        value = entry.get("n_trusted")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return int(results["dataset_len"].min())


def select_models(results, models=None, *, source="input"):
    """Return the models to report, in the study's order.

    Parameters
    ----------
    results : pandas.DataFrame
        Results as returned by `read_results`.
    models : list of str, optional
        Requested model names; all models in ``results`` when None.
    source : str, default="input"
        Name of the results file, for messages.

    Raises
    ------
    InputError
        If a requested model has no result in ``results``.
    """
    present = sort_models(pd.unique(results["model"]))
    if not models:
        return present
    missing = [name for name in models if name not in present]
    if missing:
        raise InputError(
            f"--models {' '.join(missing)}: not found in {source}; "
            f"it contains {', '.join(present)}"
        )
    return list(dict.fromkeys(models))


def sort_models(names):
    """Return ``names`` in the study's model order, unknown names last."""
    names = list(dict.fromkeys(names))
    rank = {name: index for index, name in enumerate(MODEL_ORDER)}
    position = {name: index for index, name in enumerate(names)}
    return sorted(names, key=lambda name: (rank.get(name, len(rank)), position[name]))


def parse_labelled_path(text, *, name="input"):
    """Split ``LABEL=PATH`` into a label and a path.

    A bare path is labelled by its file name without the suffix. Text that names
    an existing file as a whole is read as a bare path.

    Parameters
    ----------
    text : str
        ``LABEL=PATH`` or ``PATH``.
    name : str, default="input"
        Name of the argument, for messages.

    Raises
    ------
    InputError
        If the text has an ``=`` and an empty or blank label, or an empty path,
        and is not an existing file.
    """
    label, sep, rest = text.partition("=")
    if not sep or Path(text).exists():
        path = Path(text)
        return path.stem, path
    if not label.strip():
        raise InputError(
            f"{name} {text!r} has an empty label before '='; write LABEL=RESULTS, "
            "or the RESULTS path alone to label it by its file name"
        )
    if not rest.strip():
        raise InputError(
            f"{name} {text!r} has no path after '='; write LABEL=RESULTS with the "
            "path of a results CSV"
        )
    return label, Path(rest)


def log_missing_results(results, *, source="input"):
    """Log, per model, the results that the grid of its other results implies.

    A model's grid is every seed of ``results`` by every malicious count and every
    dataset size that the model has a result for. A model with missing
    combinations gets one warning with their count and the first one.

    Parameters
    ----------
    results : pandas.DataFrame
        Results as returned by `read_results`.
    source : str, default="input"
        Name of the results file, for messages.

    Returns
    -------
    dict
        ``{model: number of missing combinations}`` for the models with any.
    """
    seeds = sorted(int(seed) for seed in results["seed"].unique())
    missing_counts = {}
    for model in sort_models(pd.unique(results["model"])):
        rows = results[results["model"] == model]
        present = set(
            zip(
                rows["seed"].astype(int),
                rows["malicious"].astype(int),
                rows["dataset_len"].astype(int),
            )
        )
        malicious = sorted({key[1] for key in present})
        lengths = sorted({key[2] for key in present})
        expected = len(seeds) * len(malicious) * len(lengths)
        if len(present) == expected:
            continue
        first = next(
            (seed, count, length)
            for seed in seeds
            for count in malicious
            for length in lengths
            if (seed, count, length) not in present
        )
        missing_counts[model] = expected - len(present)
        logger.warning(
            "%s: model %s lacks %d of its %d (seed, malicious, dataset_len) results, "
            "for example seed %d, malicious %d, dataset_len %d; only the results "
            "present are used",
            source,
            model,
            missing_counts[model],
            expected,
            *first,
        )
    return missing_counts


# Aggregation over seeds


def aggregate_seeds(results, how="min"):
    """Aggregate the MCC of each (model, malicious, dataset_len) cell over seeds.

    Parameters
    ----------
    results : pandas.DataFrame
        Results as returned by `read_results`.
    how : {"min", "max", "mean", "median"}, default="min"
        Aggregation. The study reports the minimum over seeds, the worst case.

    Returns
    -------
    pandas.DataFrame
        Columns ``model``, ``malicious``, ``dataset_len``, ``mcc`` (aggregated) and
        ``n_seeds`` (how many seeds the cell has), one row per cell, sorted by
        model, malicious and dataset_len.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"how={how!r} is invalid; expected one of {AGGREGATIONS}")
    grouped = results.groupby(list(CELL_COLUMNS), sort=True)["mcc"]
    aggregated = grouped.agg(["count", how]).reset_index()
    aggregated = aggregated.rename(columns={how: "mcc", "count": "n_seeds"})
    aggregated = aggregated[[*CELL_COLUMNS, "mcc", "n_seeds"]]

    counts = aggregated.groupby("model")["n_seeds"].agg(["min", "max"])
    uneven = counts[counts["min"] != counts["max"]]
    for model, row in uneven.iterrows():
        logger.warning(
            "model %s has between %d and %d seeds per cell; its %s over seeds mixes "
            "cells with different numbers of runs",
            model,
            row["min"],
            row["max"],
            how,
        )
    return aggregated


def mcc_grid(aggregated, model):
    """Return one model's aggregated MCC as a malicious x dataset_len table.

    Parameters
    ----------
    aggregated : pandas.DataFrame
        Output of `aggregate_seeds`.
    model : str
        Model name.

    Returns
    -------
    pandas.DataFrame
        Index: the malicious counts, increasing. Columns: the dataset sizes,
        increasing. Values: MCC, NaN where the results have no cell.
    """
    cells = aggregated[aggregated["model"] == model]
    grid = cells.pivot(index="malicious", columns="dataset_len", values="mcc")
    grid = grid.sort_index(axis=0).sort_index(axis=1)
    n_missing = int(grid.isna().to_numpy().sum())
    if n_missing:
        logger.warning(
            "model %s has no result for %d of the %d (malicious, dataset_len) cells; "
            "they are left out of its statistics and breaking point",
            model,
            n_missing,
            grid.size,
        )
    return grid


# Statistics and breaking points


@dataclass(frozen=True)
class Cell:
    """One cell of an MCC grid: a number of malicious bots and a dataset size."""

    malicious: int
    dataset_len: int
    mcc: float


@dataclass(frozen=True)
class ModelStats:
    """Best, first-below-threshold and worst cells of one model's MCC grid.

    ``first_drop`` is None when no cell is below the threshold.
    """

    best: Cell
    first_drop: Cell | None
    worst: Cell


def _grid_cells(grid):
    """Yield the cells of ``grid`` by increasing malicious, then dataset_len."""
    for malicious in grid.index:
        for dataset_len in grid.columns:
            value = grid.at[malicious, dataset_len]
            if not np.isnan(value):
                yield Cell(int(malicious), int(dataset_len), float(value))


def model_stats(grid, threshold=DEFAULT_THRESHOLD):
    """Find the best, the first-below-threshold and the worst cell of a grid.

    Cells are visited by increasing malicious count, then increasing dataset size.
    Ties for best or worst go to the first cell in that order.

    Parameters
    ----------
    grid : pandas.DataFrame
        Output of `mcc_grid`.
    threshold : float, default=0.7
        An MCC below this value is a drop.

    Returns
    -------
    ModelStats

    Raises
    ------
    ValueError
        If the grid has no value.
    """
    cells = list(_grid_cells(grid))
    if not cells:
        raise ValueError("the MCC grid has no value")
    best = max(cells, key=lambda cell: cell.mcc)
    worst = min(cells, key=lambda cell: cell.mcc)
    first_drop = next((cell for cell in cells if cell.mcc < threshold), None)
    return ModelStats(best=best, first_drop=first_drop, worst=worst)


def is_broken(grid, malicious, dataset_len, threshold=DEFAULT_THRESHOLD):
    """Return whether every cell at or beyond a corner has an MCC below ``threshold``.

    The region is every cell with at least ``malicious`` malicious bots and at
    least ``dataset_len`` training rows. Missing cells are left out, and a region
    with no cell is not broken.
    """
    region = grid.loc[grid.index >= malicious, grid.columns >= dataset_len]
    values = region.to_numpy(dtype=float)
    values = values[~np.isnan(values)]
    return values.size > 0 and bool(np.all(values < threshold))


def breaking_point(grid, threshold=DEFAULT_THRESHOLD):
    """Find a model's breaking point on its MCC grid.

    A corner (m, d) is broken when every cell with at least m malicious bots and
    at least d training rows has an MCC below ``threshold``. The search starts at
    the corner of the largest m and largest d. If that corner is not broken the
    model never breaks. Otherwise it steps to the next smaller m and next smaller d
    together while the corner stays broken, then down the malicious axis alone,
    then down the dataset axis alone, and returns the corner reached.

    Parameters
    ----------
    grid : pandas.DataFrame
        Output of `mcc_grid` (usually of the minimum over seeds).
    threshold : float, default=0.7

    Returns
    -------
    tuple of (int, int) or None
        ``(malicious, dataset_len)`` of the breaking point, or None when the model
        never breaks.
    """
    malicious_axis = [int(value) for value in grid.index]
    length_axis = [int(value) for value in grid.columns]
    if not malicious_axis or not length_axis:
        return None
    i = len(malicious_axis) - 1
    j = len(length_axis) - 1

    def broken(row, column):
        return is_broken(grid, malicious_axis[row], length_axis[column], threshold)

    if not broken(i, j):
        return None
    while i > 0 and j > 0 and broken(i - 1, j - 1):
        i -= 1
        j -= 1
    while i > 0 and broken(i - 1, j):
        i -= 1
    while j > 0 and broken(i, j - 1):
        j -= 1
    return malicious_axis[i], length_axis[j]


# Poisoned share


def estimated_poisoned_share(malicious, dataset_len, *, n_bots, n_trusted):
    """Estimate the share of poisoned rows in a cumulative training set.

    The estimate assumes that the rows after the trusted ones come evenly from all
    bots and that every row from a malicious bot is poisoned:
    ``(dataset_len - n_trusted) * malicious / n_bots / dataset_len``. With voting
    the real share differs, because the service rejects or outvotes some poisoned
    labels.
    """
    if dataset_len <= 0:
        return 0.0
    new_rows = max(dataset_len - n_trusted, 0)
    return new_rows * malicious / n_bots / dataset_len


def manifest_poisoned_share(manifest, malicious, dataset_len):
    """Return the measured share of poisoned rows from a generation manifest.

    The share is ``cumulative_poisoned / cumulative_rows`` of the batch of level
    ``malicious`` whose ``cumulative_rows`` equals ``dataset_len``. Returns None
    when the manifest has no such level or batch.
    """
    level = _section(manifest, "levels").get(str(malicious))
    if not isinstance(level, dict):
        return None
    for batch in level.get("batches", []):
        if not isinstance(batch, dict):
            continue
        rows = batch.get("cumulative_rows")
        poisoned = batch.get("cumulative_poisoned")
        if rows == dataset_len and isinstance(poisoned, int) and rows > 0:
            return poisoned / rows
    return None


@dataclass(frozen=True)
class PoisonedShare:
    """Share of poisoned rows in a training set, measured or estimated."""

    value: float
    is_estimate: bool


class PoisonedShareSource:
    """Give the poisoned share of any cell, from the manifest where it can.

    Parameters
    ----------
    n_bots : int
        Total number of bots.
    n_trusted : int
        Number of trusted rows (batch 1).
    manifest : dict, optional
        Generation manifest. Without one every share is an estimate.

    Attributes
    ----------
    n_missing : int
        Cells that the manifest has no batch for.
    n_estimates : int
        Shares returned as estimates so far.
    """

    def __init__(self, *, n_bots, n_trusted, manifest=None):
        self.n_bots = n_bots
        self.n_trusted = n_trusted
        self.manifest = manifest
        self.n_missing = 0
        self.n_estimates = 0

    def __call__(self, malicious, dataset_len):
        """Return the `PoisonedShare` of the cell (malicious, dataset_len)."""
        if self.manifest is not None:
            share = manifest_poisoned_share(self.manifest, malicious, dataset_len)
            if share is not None:
                return PoisonedShare(share, is_estimate=False)
            if self.n_missing == 0:
                logger.warning(
                    "the manifest has no batch of %d rows at level %d; the poisoned "
                    "share of such cells is estimated",
                    dataset_len,
                    malicious,
                )
            self.n_missing += 1
        share = estimated_poisoned_share(
            malicious, dataset_len, n_bots=self.n_bots, n_trusted=self.n_trusted
        )
        self.n_estimates += 1
        return PoisonedShare(share, is_estimate=True)


@dataclass(frozen=True)
class ModelSummary:
    """Statistics and breaking point of one model.

    ``breaking_point`` is a ``(malicious, dataset_len)`` pair, or None when the
    model never breaks.
    """

    model: str
    n_seeds: int
    stats: ModelStats
    breaking_point: tuple | None


def summarize_models(aggregated, models, threshold=DEFAULT_THRESHOLD):
    """Compute the statistics and breaking point of each model.

    Parameters
    ----------
    aggregated : pandas.DataFrame
        Output of `aggregate_seeds`.
    models : list of str
        Models to summarize, in the order to report them.
    threshold : float, default=0.7

    Returns
    -------
    list of ModelSummary
    """
    summaries = []
    for model in models:
        grid = mcc_grid(aggregated, model)
        n_seeds = int(aggregated.loc[aggregated["model"] == model, "n_seeds"].max())
        summaries.append(
            ModelSummary(
                model=model,
                n_seeds=n_seeds,
                stats=model_stats(grid, threshold),
                breaking_point=breaking_point(grid, threshold),
            )
        )
    return summaries


def load_results_context(path, *, bots=None, manifest=None):
    """Read a results file with its sidecar and manifest, and resolve ``n_bots``.

    Parameters
    ----------
    path : path-like
        Results CSV.
    bots : int, optional
        Value of ``--bots``.
    manifest : path-like, optional
        Value of ``--manifest``; else the manifest that the sidecar names, if any.
        A sidecar-named manifest whose values differ from those the sidecar copied
        from it is logged and left out.

    Returns
    -------
    ResultsContext

    Raises
    ------
    InputError
        If ``manifest`` is given and differs from the generation that the results
        sidecar records (see `check_manifest_matches`).
    """
    path = Path(path)
    results = read_results(path)
    log_missing_results(results, source=path)
    sidecar = read_sidecar(path)
    if manifest:
        manifest_path = Path(manifest)
        manifest_content = read_manifest(manifest_path)
        check_manifest_matches(path, sidecar, manifest_path, manifest_content)
    else:
        manifest_path = manifest_path_from_sidecar(sidecar)
        manifest_content = read_manifest(manifest_path) if manifest_path else None
        differences = (
            recorded_generation_differences(sidecar, manifest_content)
            if manifest_content is not None
            else []
        )
        if differences:
            logger.warning(
                "%s no longer matches the generation that %s records (%s); it is "
                "not used and poisoned shares are estimated; pass --manifest to "
                "use another one",
                manifest_path,
                sidecar_path(path),
                _describe_differences(differences),
            )
            manifest_path = manifest_content = None
    n_bots = resolve_n_bots(
        results, bots=bots, sidecar=sidecar, manifest=manifest_content, source=path
    )
    n_trusted = resolve_trusted_rows(
        results, sidecar=sidecar, manifest=manifest_content
    )
    return ResultsContext(
        path=path,
        results=results,
        sidecar=sidecar,
        manifest=manifest_content,
        manifest_path=manifest_path,
        n_bots=n_bots,
        n_trusted=n_trusted,
    )


@dataclass
class ResultsContext:
    """A results table with what its sidecar and manifest tell about the runs."""

    path: Path
    results: pd.DataFrame
    sidecar: dict
    manifest: dict | None
    manifest_path: Path | None
    n_bots: int
    n_trusted: int

    def poisoned_share_source(self):
        """Return a `PoisonedShareSource` for these runs."""
        return PoisonedShareSource(
            n_bots=self.n_bots, n_trusted=self.n_trusted, manifest=self.manifest
        )
