"""Generation of the poisoned data sets: one folder per number of malicious bots.

Layout of an output folder::

    OUT/manifest.json         parameters, library versions, per-level counts
    OUT/<k>/dataset_001.csv   batch 1: the trusted rows with their true labels
    OUT/<k>/dataset_002.csv   the next batch of accepted labels, and so on
    OUT/<k>/level.json        the counts of level k; present once k is finished

Each level is written into ``OUT/.level-<k>.tmp`` and renamed to ``OUT/<k>`` when
all its files are written, so a folder ``OUT/<k>`` is always whole. A rerun with
the same parameters skips the finished levels.
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
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def read_json(path):
    """Return the JSON content of ``path``, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


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
        existing = read_json(manifest_path)
        non_empty = self.out_dir.is_dir() and any(self.out_dir.iterdir())
        same = existing is not None and self._matches(existing)
        if non_empty and not same:
            if not overwrite:
                reason = (
                    "holds a generation with other parameters or input"
                    if existing is not None
                    else "is not empty and holds no generation manifest"
                )
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
                info = read_json(self.out_dir / key / LEVEL_INFO_NAME)
                if info is not None and info.get("identity") == self.identity():
                    finished[int(key)] = entry
        manifest["levels"] = {str(k): finished[k] for k in sorted(finished)}
        todo = [level for level in levels if level not in finished]
        skipped = [level for level in levels if level in finished]
        if skipped:
            logger.info("resuming %s: levels %s are finished", self.out_dir, skipped)
        write_json_atomic(manifest_path, manifest)
        return manifest, todo

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
        logger.warning("--overwrite: removing the previous output in %s", self.out_dir)
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
    ``OUT/<k>`` once ``level.json`` is written, replacing an unfinished one.
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

    result = simulate_level(
        y,
        level,
        params,
        on_batch=write_batch,
        progress=progress,
        audit=list(params.audit) or None,
    )
    info = {"identity": identity, **result.to_dict()}
    write_json_atomic(tmp / LEVEL_INFO_NAME, info)
    final = out_dir / str(level)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return result.to_dict()


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
