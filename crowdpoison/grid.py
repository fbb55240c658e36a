"""The grid of a generated folder: its levels, batch files and their content.

A generated folder contains one folder per level, named by its number of malicious
bots, with batch files ``dataset_001.csv``, ``dataset_002.csv``, ... that contain
only the new rows of each batch. The training set of batch b is the concatenation
of batches 1..b. Levels and batches are read from the folder, never assumed.
"""

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .cli import InputError
from .csvio import read_decompressed

logger = logging.getLogger(__name__)

BATCH_PATTERN = re.compile(r"dataset_(\d+)\.csv")
LEVEL_INFO_NAME = "level.json"
MANIFEST_NAME = "manifest.json"


@dataclass
class Level:
    """One level of a generated folder.

    Attributes
    ----------
    malicious : int
        Number of malicious bots, the level folder's name.
    folder : Path
        The level folder.
    batch_files : list of Path
        ``dataset_001.csv`` .. ``dataset_NNN.csv`` in batch order.
    complete : bool or None
        ``complete`` from ``level.json``, None without that file.
    batch_rows : list of int
        Rows of each batch file, filled by :func:`scan_levels`.
    fingerprint : str
        sha256 over the decompressed bytes of the batch files, filled by
        :func:`scan_levels`.
    info : dict or None
        Content of ``level.json``, None without that file.
    """

    malicious: int
    folder: Path
    batch_files: list
    complete: bool | None = None
    batch_rows: list = field(default_factory=list)
    fingerprint: str = ""
    info: dict | None = None

    def dataset_lengths(self):
        """Return the rows of the training set of every batch (cumulative sums)."""
        lengths, total = [], 0
        for n_rows in self.batch_rows:
            total += n_rows
            lengths.append(total)
        return lengths


def discover_levels(folder):
    """Find the level folders of a generated folder and their batch files.

    Parameters
    ----------
    folder : path-like
        Output folder of ``generate_datasets.py`` (or of the study's scripts).

    Returns
    -------
    list of Level
        Sorted by number of malicious bots. Levels without batch files are left
        out with a warning.

    Raises
    ------
    InputError
        If ``folder`` is missing or is not a folder, has no level with batch
        files, or a level misses a batch between its first and last one.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(
            f"generated folder {folder} (-i) not found; pass the output folder of "
            "generate_datasets.py"
        )
    if not folder.is_dir():
        raise InputError(f"-i {folder} is not a folder; pass a generated folder")
    levels = []
    for entry in sorted(folder.iterdir(), key=lambda path: path.name):
        if not (entry.is_dir() and entry.name.isdigit()):
            continue
        batch_files = _batch_files(entry)
        if not batch_files:
            logger.warning(
                "level folder %s has no dataset_NNN.csv file; skipped", entry
            )
            continue
        info = _level_info(entry)
        levels.append(
            Level(int(entry.name), entry, batch_files, _complete(info), info=info)
        )
    if not levels:
        raise InputError(
            f"no batch files found in {folder}: expected level folders <k>/ holding "
            "dataset_001.csv, dataset_002.csv, ...; run generate_datasets.py first"
        )
    levels.sort(key=lambda level: level.malicious)
    return levels


def _batch_files(level_folder):
    numbered = {}
    for path in level_folder.iterdir():
        match = BATCH_PATTERN.fullmatch(path.name)
        if match and path.is_file():
            numbered[int(match.group(1))] = path
    if not numbered:
        return []
    expected = range(1, max(numbered) + 1)
    missing = [number for number in expected if number not in numbered]
    if missing:
        raise InputError(
            f"level folder {level_folder} lacks batch files "
            f"{', '.join(f'dataset_{number:03d}.csv' for number in missing[:5])}: "
            "every batch 1..N is needed to build the cumulative training sets; "
            "generate the level again"
        )
    return [numbered[number] for number in expected]


def _level_info(level_folder):
    path = level_folder / LEVEL_INFO_NAME
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
    except ValueError as exc:
        logger.warning("ignoring %s, which is not valid JSON (%s)", path, exc)
        return None
    return info if isinstance(info, dict) else None


def _complete(info):
    complete = info.get("complete") if info is not None else None
    return complete if isinstance(complete, bool) else None


def _check_recorded(level, sizes):
    """Compare a level's batch files with what its ``level.json`` recorded.

    ``sizes`` maps each batch file's name to its (rows, bytes). Only a level
    written by ``generate_datasets.py`` has the record. In a folder with a
    ``manifest.json``, a level without ``level.json`` gets a warning, because
    that script writes the file before the level folder appears.

    Raises
    ------
    InputError
        If a file's rows or bytes, or the set of files, differ from the record.
    """
    rerun = (
        "rerun generate_datasets.py with the same command, which generates "
        "damaged or unfinished levels again"
    )
    info_path = level.folder / LEVEL_INFO_NAME
    if level.info is None:
        if (level.folder.parent / MANIFEST_NAME).is_file():
            logger.warning(
                "level folder %s has no %s although its folder has a %s, so its "
                "generation may not have finished; %s",
                level.folder,
                LEVEL_INFO_NAME,
                MANIFEST_NAME,
                rerun,
            )
        return
    batches = level.info.get("batches")
    if not isinstance(batches, list):
        return
    recorded_rows = {
        batch.get("file"): batch.get("rows")
        for batch in batches
        if isinstance(batch, dict)
    }
    files = level.info.get("files")
    recorded_bytes = {
        name: entry.get("bytes")
        for name, entry in (files.items() if isinstance(files, dict) else [])
        if isinstance(entry, dict)
    }
    if set(recorded_rows) != set(sizes):
        raise InputError(
            f"level folder {level.folder} holds the batch files "
            f"{', '.join(sorted(sizes))} but {info_path} records "
            f"{', '.join(sorted(map(str, recorded_rows)))}; {rerun}"
        )
    for name, (rows, size) in sizes.items():
        expected_bytes = recorded_bytes.get(name)
        if recorded_rows[name] != rows or expected_bytes not in (None, size):
            raise InputError(
                f"{level.folder / name} has {rows} rows ({size} bytes) but "
                f"{info_path} records {recorded_rows[name]} rows"
                + ("" if expected_bytes is None else f" ({expected_bytes} bytes)")
                + f": the file changed after the level was generated; {rerun}"
            )


def select_levels(levels, requested):
    """Return the levels named in ``requested``, or all of them when it is None.

    Raises
    ------
    InputError
        If a requested level has no folder with batch files.
    """
    if requested is None:
        return list(levels)
    by_count = {level.malicious: level for level in levels}
    missing = sorted(set(requested) - set(by_count))
    if missing:
        raise InputError(
            f"--levels {' '.join(map(str, missing))}: no such level in the generated "
            f"folder, which has levels {' '.join(map(str, sorted(by_count)))}; "
            "pass levels from that list or generate the missing ones"
        )
    return [by_count[count] for count in sorted(set(requested))]


def scan_levels(levels, *, n_features):
    """Count the rows, check the pixel count and fingerprint every batch file.

    Each file is read once. The fingerprint is a sha256 over the decompressed
    bytes, so it does not depend on how the rows are parsed later.

    Parameters
    ----------
    levels : list of Level
        Levels to scan; ``batch_rows`` and ``fingerprint`` are set in place.
    n_features : int
        Pixel values per row of the test set.

    Raises
    ------
    InputError
        If a batch file is empty or its first row has a number of pixel values
        other than ``n_features``.
    """
    for level in levels:
        digest = hashlib.sha256()
        level.batch_rows = []
        sizes = {}
        for path in level.batch_files:
            data = read_decompressed(path)
            _check_pixel_count(path, data, n_features)
            rows = data.count(b"\n") + (not data.endswith(b"\n"))
            level.batch_rows.append(rows)
            sizes[path.name] = (rows, len(data))
            digest.update(f"{path.name}:{len(data)}\n".encode())
            digest.update(data)
        level.fingerprint = digest.hexdigest()
        _check_recorded(level, sizes)


def _check_pixel_count(path, data, n_features):
    if not data.strip():
        raise InputError(
            f"batch file {path} is empty; generate the level again or remove the file"
        )
    first_end = data.find(b"\n")
    first_line = data if first_end == -1 else data[:first_end]
    n_pixels = first_line.count(b",")
    if n_pixels != n_features:
        raise InputError(
            f"the training data {path} has {n_pixels} pixel values per row but the "
            f"test data has {n_features}: use training and test files converted "
            "from the same dataset"
        )


def grid_fingerprint(levels):
    """Return one sha256 over the fingerprints of ``levels``, in order."""
    digest = hashlib.sha256()
    for level in levels:
        digest.update(f"{level.malicious}:{level.fingerprint}\n".encode())
    return digest.hexdigest()


def file_fingerprint(path):
    """Return the sha256 of a file's decompressed bytes."""
    return hashlib.sha256(read_decompressed(path)).hexdigest()


def generation_info(folder):
    """Return the generation section of the results sidecar from the manifest.

    Parameters
    ----------
    folder : path-like
        Generated folder; ``manifest.json`` in it is optional.

    Returns
    -------
    dict
        ``n_bots``, ``n_trusted``, ``n_rows``, ``behavior``, ``n_votes``,
        ``assignment`` and ``manifest`` (absolute path), each None when the
        manifest is absent or lacks it.
    """
    path = Path(folder) / MANIFEST_NAME
    keys = ("n_bots", "n_trusted", "n_rows", "behavior", "n_votes", "assignment")
    info = dict.fromkeys(keys)
    info["manifest"] = None
    if not path.is_file():
        logger.info(
            "%s has no %s; the sidecar omits the generation", folder, MANIFEST_NAME
        )
        return info
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except ValueError as exc:
        logger.warning("ignoring %s, which is not valid JSON (%s)", path, exc)
        return info
    if not isinstance(manifest, dict):
        logger.warning("ignoring %s, which is not a JSON object", path)
        return info
    parameters = manifest.get("parameters")
    parameters = parameters if isinstance(parameters, dict) else {}
    for key in ("n_bots", "behavior", "n_votes", "assignment"):
        info[key] = parameters.get(key)
    for key in ("n_trusted", "n_rows"):
        info[key] = manifest.get(key)
    info["manifest"] = str(path.resolve())
    return info
