"""Generation of the poisoned data sets: one folder per number of malicious bots.

Layout of an output folder::

    OUT/manifest.json         parameters, library versions, per-level counts
    OUT/<k>/dataset_001.csv   batch 1: the trusted rows with their true labels
    OUT/<k>/dataset_002.csv   the next batch of accepted labels, and so on
    OUT/<k>/level.json        the counts of level k; present once k is finished

Each level is written into ``OUT/.level-<k>.tmp`` and renamed to ``OUT/<k>`` when
all its files are written, so a folder ``OUT/<k>`` is always whole. ``level.json``
records the size and sha256 of each batch file. A rerun with the same parameters
skips the finished levels whose batch files still have their recorded sizes, and
generates the others again.
"""

import hashlib
import json
import logging
import os
import platform
import shutil
from pathlib import Path

import numpy as np

from . import __version__
from .cli import InputError
from .csvio import format_pixel_rows, write_rows
from .simulate import batch_file_name, describe_split, simulate_level

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
LEVEL_INFO_NAME = "level.json"
MANIFEST_FORMAT = "crowdpoison-generation/1"


def file_sha256(path, chunk_size=1 << 20):
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions():
    """Return the versions of Python and the libraries that shape the output."""
    import numpy
    import sklearn

    versions = {
        "python": platform.python_version(),
        "crowdpoison": __version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
    }
    try:
        import crowdkit

        versions["crowd-kit"] = getattr(crowdkit, "__version__", "unknown")
    except ImportError:
        pass
    return versions


def write_json_atomic(path, data):
    """Write ``data`` as indented JSON to ``path`` through a temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path):
    """Return the JSON content of ``path``, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def read_manifest(path):
    """Return the content of a generation manifest, or None when it is missing.

    Raises
    ------
    InputError
        If the file is not valid JSON.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise InputError(
            f"{path} is not valid JSON ({exc}); fix or delete it, or pass "
            "--overwrite to replace the output folder"
        ) from None


def describe_files(folder, names):
    """Return {name: {"bytes": size, "sha256": digest}} for files of ``folder``."""
    folder = Path(folder)
    return {
        name: {
            "bytes": (folder / name).stat().st_size,
            "sha256": file_sha256(folder / name),
        }
        for name in names
    }


def level_files_problem(folder, info):
    """Return why a finished level folder no longer matches its level.json, or None.

    Every batch file must exist with the size that ``info["files"]`` records. A
    level.json written before sizes were recorded has only ``info["batches"]``,
    so each of those files must then contain the recorded number of rows.
    """
    folder = Path(folder)
    files = info.get("files")
    if isinstance(files, dict):
        for name, record in files.items():
            path = folder / name
            if not path.is_file():
                return f"{path} is missing"
            size = path.stat().st_size
            if size != record.get("bytes"):
                return f"{path} has {size} bytes, {record.get('bytes')} were written"
        return None
    for batch in info.get("batches", []):
        path = folder / batch["file"]
        if not path.is_file():
            return f"{path} is missing"
        with open(path, "rb") as handle:
            n_rows = sum(
                chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b"")
            )
        if n_rows != batch["rows"]:
            return f"{path} has {n_rows} lines, {batch['rows']} rows were written"
    return None


def remove_level_tmp(out_dir, levels):
    """Remove the temporary folders ``OUT/.level-<k>.tmp`` of ``levels``."""
    for level in levels:
        tmp = Path(out_dir) / f".level-{level}.tmp"
        if tmp.exists():
            logger.info("removing %s of an unfinished level", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


class Generation:
    """A generation run into one output folder.

    Parameters
    ----------
    X : ndarray of uint8, shape (n_rows, n_features)
        Training pixels, in the order of the input file.
    y : ndarray of int64, shape (n_rows,)
        True labels, ``0 .. n_classes - 1``.
    params : SimulationParams
        Crowd and service settings.
    out_dir : path-like
        Output folder.
    input_info : dict
        Description of the input, stored in the manifest (path, sha256).
    """

    def __init__(self, X, y, params, out_dir, *, input_info):
        self.X = X
        self.y = y
        self.params = params
        self.out_dir = Path(out_dir)
        self.input_info = input_info
        n_trusted, pool_size, batch_size = describe_split(
            y.size, params.base, params.step
        )
        self.n_trusted = n_trusted
        self.pool_size = pool_size
        self.batch_size = batch_size

    def identity(self):
        """Return what must match for a rerun to reuse finished levels."""
        return {
            "parameters": self.params.to_dict(),
            "input_sha256": self.input_info["sha256"],
        }

    def new_manifest(self, levels):
        """Return a manifest with no finished level yet."""
        return {
            "format": MANIFEST_FORMAT,
            "parameters": {**self.params.to_dict(), "levels": list(levels)},
            "input": self.input_info,
            "libraries": library_versions(),
            "n_rows": int(self.y.size),
            "n_trusted": self.n_trusted,
            "pool_size": self.pool_size,
            "batch_size": self.batch_size,
            "complete": False,
            "levels": {},
        }

    def prepare(self, levels, *, overwrite):
        """Check the output folder and return the manifest and the levels to run.

        A folder holding a manifest of the same parameters and input is resumed:
        its finished levels are kept. Any other non-empty folder is refused unless
        ``overwrite``, which removes what a previous generation wrote there.
        """
        manifest_path = self.out_dir / MANIFEST_NAME
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise InputError(f"output {self.out_dir} exists and is not a folder")
        try:
            existing = read_manifest(manifest_path)
        except InputError:
            if not overwrite:
                raise
            existing = None
        non_empty = self.out_dir.is_dir() and any(self.out_dir.iterdir())
        same = isinstance(existing, dict) and self._matches(existing)
        if non_empty and not same:
            if not overwrite:
                if isinstance(existing, dict) and (
                    existing.get("format") == MANIFEST_FORMAT
                ):
                    reason = "holds a generation with other parameters or input"
                elif existing is not None:
                    reason = (
                        f"contains a {MANIFEST_NAME} that is not a generation manifest"
                    )
                else:
                    reason = "is not empty and holds no generation manifest"
                raise InputError(
                    f"output folder {self.out_dir} {reason}; choose another -o or "
                    "pass --overwrite to replace it"
                )
            self._remove_previous_output()
            existing = None
        if overwrite and same:
            self._remove_previous_output()
            existing = None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.out_dir.glob(".level-*.tmp"):
            logger.info("removing %s, left by an interrupted run", stale)
            shutil.rmtree(stale)

        manifest = self.new_manifest(levels)
        finished = {}
        if existing is not None:
            for key, entry in existing.get("levels", {}).items():
                problem = self._level_problem(key)
                if problem is None:
                    finished[int(key)] = entry
                elif int(key) in levels:
                    logger.warning("%s; generating level %s again", problem, key)
                else:
                    logger.warning(
                        "%s; level %s is left out of the manifest, pass --levels "
                        "%s to generate it again",
                        problem,
                        key,
                        key,
                    )
        manifest["levels"] = {str(k): finished[k] for k in sorted(finished)}
        todo = [level for level in levels if level not in finished]
        skipped = [level for level in levels if level in finished]
        if skipped:
            logger.info("resuming %s: levels %s are finished", self.out_dir, skipped)
        write_json_atomic(manifest_path, manifest)
        return manifest, todo

    def _level_problem(self, key):
        """Return why the level folder ``key`` of a resumed run cannot be kept.

        A level folder is kept when its level.json is readable, has this run's
        identity, and every batch file has the size it records. Returns None
        for a level folder that is kept.
        """
        info_path = self.out_dir / key / LEVEL_INFO_NAME
        info = read_json(info_path)
        if not isinstance(info, dict):
            return f"{info_path} is missing or not valid JSON"
        if info.get("identity") != self.identity():
            return f"{info_path} was written with other parameters or input"
        return level_files_problem(self.out_dir / key, info)

    def _matches(self, manifest):
        parameters = dict(manifest.get("parameters", {}))
        parameters.pop("levels", None)
        return (
            manifest.get("format") == MANIFEST_FORMAT
            and parameters == self.params.to_dict()
            and manifest.get("input", {}).get("sha256") == self.input_info["sha256"]
        )

    def _remove_previous_output(self):
        """Remove the manifest, level folders and temporary folders of a generation."""
        logger.warning(
            "--overwrite: removing the manifest and level folders of the previous "
            "generation in %s",
            self.out_dir,
        )
        for entry in self.out_dir.iterdir():
            is_level = entry.is_dir() and entry.name.isdigit()
            is_tmp = entry.name.startswith(".level-") and entry.name.endswith(".tmp")
            if is_level or is_tmp:
                shutil.rmtree(entry)
            elif entry.name in (MANIFEST_NAME, f".{MANIFEST_NAME}.tmp"):
                entry.unlink()
        leftovers = sorted(entry.name for entry in self.out_dir.iterdir())
        if leftovers:
            logger.warning(
                "kept %d files in %s that a generation did not write: %s",
                len(leftovers),
                self.out_dir,
                ", ".join(leftovers[:5]),
            )


def run_level(X, y, params, level, out_dir, identity, row_texts=None, progress=None):
    """Simulate one level and write its folder; return its counts as a dict.

    The files go into ``OUT/.level-<k>.tmp`` first; the folder is renamed to
    ``OUT/<k>`` once ``level.json`` is written, replacing an unfinished one. If
    the simulation fails or is interrupted, the temporary folder is removed.
    """
    out_dir = Path(out_dir)
    if row_texts is None:
        row_texts = cached_row_texts(X)
    tmp = out_dir / f".level-{level}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    def write_batch(number, row_ids, labels):
        rows = [row_texts[i] for i in row_ids.tolist()]
        write_rows(tmp / batch_file_name(number), labels, rows)

    try:
        result = simulate_level(
            y,
            level,
            params,
            on_batch=write_batch,
            progress=progress,
            audit=list(params.audit) or None,
        )
        counts = result.to_dict()
        names = [batch["file"] for batch in counts["batches"]]
        info = {"identity": identity, **counts, "files": describe_files(tmp, names)}
        write_json_atomic(tmp / LEVEL_INFO_NAME, info)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = out_dir / str(level)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return counts


_ROW_TEXT_CACHE = {}


def cached_row_texts(X):
    """Return ``format_pixel_rows(X)``, reusing the result for the same pixels.

    Worker processes that run several levels format the training pixels once.
    """
    key = hashlib.sha1(np.ascontiguousarray(X).data).hexdigest()
    texts = _ROW_TEXT_CACHE.get(key)
    if texts is None:
        _ROW_TEXT_CACHE.clear()
        texts = format_pixel_rows(X)
        _ROW_TEXT_CACHE[key] = texts
    return texts


def summarize_levels(levels_info):
    """Return a one-line summary per level for the log."""
    lines = []
    for key in sorted(levels_info, key=int):
        entry = levels_info[key]
        share = entry["poisoned"] / entry["accepted"] if entry["accepted"] else 0.0
        lines.append(
            f"level {key}: {entry['accepted']} accepted, {share:.1%} poisoned, "
            f"{entry['captchas']} captchas, {entry['unlabelled']} unlabelled"
        )
    return lines
