"""Train every model on every cumulative batch of every level and score MCC.

Two engines give the same rows, to the last bit:

- ``naive``, the reference: every (level, batch) is loaded with ``np.loadtxt`` as
  float64 and every (seed, model) is fitted from scratch with scikit-learn's own
  estimators, KNN(k) and VotingClassifier included.
- ``fast`` loads each level once and does each piece of work once. KNN comes from
  one shared neighbour search (:mod:`crowdpoison.knn`) and serves every seed.
  VF(hard) and VF(soft) come from their members' outputs
  (:mod:`crowdpoison.voting`). Fits whose training rows, order and labels are
  the same (batch 1 contains the trusted rows at every level) run once, keyed by a
  sha256 of the training bytes. LR, SVM, DT, ANN and RF fits are independent
  tasks for :class:`~crowdpoison.executor.LokyExecutor`.

Every task runs with one BLAS/OpenMP thread, whatever ``n_jobs`` is, so the
results do not depend on it. KNN reproduces scikit-learn run with one OpenMP
thread, which agrees with any thread count T when ``1024 * T`` is below the
number of test images (see :mod:`crowdpoison.knn`).
"""

import hashlib
import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import matthews_corrcoef
from tqdm.auto import tqdm

from .cli import InputError
from .csvio import read_labelled_csvs
from .executor import LokyExecutor, effective_n_jobs, resolve
from .knn import SharedNeighbors
from .models import MODEL_INDEX, MODELS, VOTING_MEMBERS, is_knn, is_voting, make_model
from .voting import hard_vote, soft_vote

logger = logging.getLogger(__name__)

ENGINES = ("fast", "naive")
# Members fitted as tasks; KNN(3), the fourth member, comes from the search.
FITTED_MEMBERS = tuple(name for name in VOTING_MEMBERS if not is_knn(name))
# Levels whose fits the fast engine sends to the executor together. Each level in
# a round keeps its training set in the executor (a file per level for loky, a
# copy on every worker for Dask) until the round ends.
LEVELS_PER_ROUND = 4
# Rough relative cost of one fit per training row, used only to start the longest
# fits of a round first. The order of the tasks never changes a result.
FIT_COST = {"LR": 25, "SVM": 22, "DT": 4, "ANN": 8, "RF": 9}


@dataclass
class GridConfig:
    """Settings of one run over the grid.

    Attributes
    ----------
    levels : list of crowdpoison.grid.Level
        Scanned levels (``batch_rows`` set), in order.
    test_path : Path
        Test CSV.
    models : tuple of str
        Requested models, in the registry's order.
    seeds : tuple of int
        Training seeds.
    n_jobs : int
        Worker processes; -1 uses every core.
    engine : {"fast", "naive"}
        Engine to run.
    cache_dir : Path or None
        Folder of the neighbour search cache (fast engine).
    progress : bool
        Show progress bars.
    """

    levels: list
    test_path: Path
    models: tuple
    seeds: tuple
    n_jobs: int = -1
    engine: str = "fast"
    cache_dir: Path | None = None
    progress: bool = True


@dataclass
class FitOutcome:
    """Result of one fit: the MCC, or the error that stopped the fit."""

    mcc: float | None = None
    n_predicted_classes: int = 0
    predictions: np.ndarray | None = None
    proba: np.ndarray | None = None
    error: str | None = None
    warnings: tuple = ()


def grid_keys(config):
    """Return every ``(seed, model, malicious, dataset_len)`` of the grid.

    A batch that adds no row repeats the previous training set, so it has no
    key of its own.
    """
    keys = []
    for level in config.levels:
        for dataset_len in sorted(set(level.dataset_lengths())):
            for seed in config.seeds:
                for model in config.models:
                    keys.append((seed, model, level.malicious, dataset_len))
    return keys


def score(y_test, predictions):
    """Return the MCC of ``predictions`` and the number of classes they use."""
    mcc = float(matthews_corrcoef(y_test, predictions))
    return mcc, len(np.unique(predictions))


def _recorded_warnings(records):
    names = Counter(type(record.message).__name__ for record in records)
    return tuple(sorted(names.items()))


# Tasks: top-level functions with picklable arguments.

_FLOAT_TEST = {}


def _float_test(X_test):
    key = getattr(X_test, "path", None)
    cached = _FLOAT_TEST.get(key) if key is not None else None
    if cached is None:
        cached = np.asarray(resolve(X_test), dtype=np.float64)
        if key is not None:
            _FLOAT_TEST.clear()
            _FLOAT_TEST[key] = cached
    return cached


def fit_and_score(*, model, seed, X, y, n_rows, X_test, y_test, keep_outputs):
    """Fit ``model`` on the first ``n_rows`` rows and score it on the test set.

    Parameters
    ----------
    model : str
        Model name, a key of ``crowdpoison.models.MODELS``.
    seed : int
        ``random_state`` of the model.
    X, y : ndarray or SharedArray
        Pixels (uint8) and labels of a whole level.
    n_rows : int
        Length of the training prefix.
    X_test, y_test : ndarray or SharedArray
        Test pixels and labels.
    keep_outputs : bool
        Return the predictions and ``predict_proba`` for voting.

    Returns
    -------
    FitOutcome
    """
    X_train = np.asarray(resolve(X)[:n_rows], dtype=np.float64)
    y_train = np.array(resolve(y)[:n_rows])
    X_eval = _float_test(X_test)
    estimator = make_model(model, seed)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always", ConvergenceWarning)
        try:
            estimator.fit(X_train, y_train)
            predictions = estimator.predict(X_eval)
            proba = estimator.predict_proba(X_eval) if keep_outputs else None
        except ValueError as exc:
            return FitOutcome(error=str(exc))
    mcc, n_classes = score(np.asarray(resolve(y_test)), predictions)
    return FitOutcome(
        mcc=mcc,
        n_predicted_classes=n_classes,
        predictions=predictions if keep_outputs else None,
        proba=proba,
        warnings=_recorded_warnings(records),
    )


_LOADED_TEST = {}


def _loadtxt(path):
    return np.loadtxt(path, delimiter=",", ndmin=2)


def naive_batch(*, batch_files, test_path, cells):
    """Load one (level, batch) as the study's scripts do and fit every cell.

    Parameters
    ----------
    batch_files : list of str
        ``dataset_001.csv`` .. ``dataset_b.csv`` of the level.
    test_path : str
        Test CSV.
    cells : list of (int, str)
        ``(seed, model)`` pairs to fit.

    Returns
    -------
    classes : ndarray
        Labels present in the training set.
    outcomes : list of ((seed, model), FitOutcome)
    """
    data = np.concatenate([_loadtxt(path) for path in batch_files])
    X, y = data[:, 1:], data[:, 0]
    if test_path not in _LOADED_TEST:
        _LOADED_TEST.clear()
        _LOADED_TEST[test_path] = _loadtxt(test_path)
    test = _LOADED_TEST[test_path]
    X_test, y_test = test[:, 1:], test[:, 0]
    outcomes = []
    for seed, model in cells:
        estimator = make_model(model, seed)
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always", ConvergenceWarning)
            try:
                estimator.fit(X, y)
                predictions = estimator.predict(X_test)
            except ValueError as exc:
                outcomes.append(((seed, model), FitOutcome(error=str(exc))))
                continue
        mcc, n_classes = score(y_test, predictions)
        outcome = FitOutcome(
            mcc=mcc, n_predicted_classes=n_classes, warnings=_recorded_warnings(records)
        )
        outcomes.append(((seed, model), outcome))
    return np.unique(y).astype(np.int64), outcomes


# The engines


class _GridRun:
    """State shared by both engines: the writer, progress bar and warnings."""

    def __init__(self, config, writer, X_test, y_test):
        self.config = config
        self.writer = writer
        self.X_test = X_test
        self.y_test = y_test
        self.test_classes = np.unique(y_test)
        self.pending = {key for key in grid_keys(config) if key not in writer}
        self.bar = tqdm(
            total=len(self.pending), desc="result rows", disable=not config.progress
        )
        self.warning_counts = Counter()
        # Batches per tuple of test classes that their training set lacks.
        self.missing_classes = Counter()
        self.n_reused = 0

    def write(self, rows):
        rows = {key: mcc for key, mcc in rows.items() if key in self.pending}
        if not rows:
            return
        self.writer.add(rows)
        self.pending.difference_update(rows)
        self.bar.update(len(rows))

    def drop(self, keys, reason):
        """Give up on ``keys`` (no row) after a warning that gives ``reason``."""
        keys = [key for key in keys if key in self.pending]
        if keys:
            logger.warning("%s; no row for %s", reason, _describe_keys(keys))
            self.pending.difference_update(keys)
            self.bar.update(len(keys))

    def check_classes(self, level, batch, classes):
        missing = tuple(np.setdiff1d(self.test_classes, classes).tolist())
        if not missing:
            return
        self.missing_classes[missing] += 1
        if self.missing_classes[missing] == 1:
            logger.warning(
                "level %d, batch %d: the training set lacks classes %s of the test "
                "set; the models cannot predict them (later batches with the same "
                "gap are counted at the end)",
                level,
                batch,
                list(missing),
            )

    def check_outcome(self, where, model, outcome):
        self.warning_counts.update(dict(outcome.warnings))
        requested = model in self.config.models
        if requested and outcome.error is None and outcome.n_predicted_classes == 1:
            logger.warning(
                "%s: %s predicts a single class for every test image, so its MCC is 0",
                where,
                model,
            )

    def close(self):
        self.bar.close()
        for missing, count in sorted(self.missing_classes.items()):
            if count > 1:
                logger.warning(
                    "%d training sets in all lack classes %s of the test set",
                    count,
                    list(missing),
                )
        for name, count in sorted(self.warning_counts.items()):
            logger.info("scikit-learn raised %s in %d fits", name, count)


def _describe_keys(keys):
    seeds = sorted({key[0] for key in keys})
    models = sorted({key[1] for key in keys}, key=MODEL_INDEX.get)
    return f"{', '.join(models)} (seeds {', '.join(map(str, seeds))})"


@dataclass
class _Batch:
    number: int
    n_rows: int
    digest: str
    classes: np.ndarray


def _batches(level, X, y):
    """Return the batches of a level with the sha256 of their training set.

    The digest of batch b covers the pixels and labels of batches 1..b, with the
    pixel count, so equal digests mean equal training sets.
    """
    digest = hashlib.sha256(f"{X.shape[1]}\n".encode())
    batches, start = [], 0
    for number, stop in enumerate(level.dataset_lengths(), start=1):
        if stop == start:
            logger.warning(
                "level %d: batch %d adds no row, so its training set is that of "
                "batch %d; skipped",
                level.malicious,
                number,
                number - 1,
            )
            continue
        digest.update(np.ascontiguousarray(X[start:stop]).data)
        digest.update(np.ascontiguousarray(y[start:stop], dtype=np.int64).data)
        classes = np.unique(y[:stop])
        batches.append(_Batch(number, stop, digest.copy().hexdigest(), classes))
        start = stop
    return batches


class FastEngine(_GridRun):
    """Compute each piece of work once; see the module docstring.

    Levels run in rounds of :data:`LEVELS_PER_ROUND`. The fits of every level of a
    round go to the executor together, the longest first, so that workers rarely
    sit idle while the last fit of one level runs.
    """

    def __init__(self, config, writer, X_test, y_test, executor):
        super().__init__(config, writer, X_test, y_test)
        self.executor = executor
        # (training sha256, seed or None for KNN) -> {model: mcc}
        self.cache = {}
        # (training sha256, seed, model) -> result keys of other levels that wait
        # for a fit already submitted in this round
        self.followers = {}
        self.neighbors = SharedNeighbors(
            X_test,
            cache_dir=config.cache_dir,
            n_jobs=1,
            n_threads=1,
            progress=config.progress,
        )

    def run(self):
        X_test_ref = self.executor.share(self.X_test)
        y_test_ref = self.executor.share(self.y_test)
        levels = list(self.config.levels)
        try:
            for start in range(0, len(levels), LEVELS_PER_ROUND):
                round_levels = levels[start : start + LEVELS_PER_ROUND]
                self._run_round(round_levels, X_test_ref, y_test_ref)
        finally:
            self.executor.release(X_test_ref)
            self.executor.release(y_test_ref)
            self.close()
        if self.n_reused:
            logger.info(
                "reused %d rows from identical training sets at other levels",
                self.n_reused,
            )

    def _level_keys(self, level, batch):
        return {
            (seed, model): (seed, model, level.malicious, batch.n_rows)
            for seed in self.config.seeds
            for model in MODELS
        }

    def _run_round(self, levels, X_test_ref, y_test_ref):
        tasks, voting, shared = [], {}, []
        try:
            for level in levels:
                refs = self._prepare_level(level, X_test_ref, y_test_ref, tasks, voting)
                shared.extend(refs)
            # The longest fits first; tags are indices so that loky sends only
            # an integer back and forth with each task.
            tasks.sort(key=_task_cost, reverse=True)
            contexts = [tag for tag, _, _ in tasks]
            indexed = [
                (i, function, kwargs) for i, (_, function, kwargs) in enumerate(tasks)
            ]
            for i, outcome in self.executor.run(indexed):
                level, batch, seed, model = contexts[i]
                self._take_fit(level, batch, seed, model, outcome, voting)
        finally:
            for ref in shared:
                self.executor.release(ref)
        self.followers.clear()

    def _prepare_level(self, level, X_test_ref, y_test_ref, tasks, voting):
        """Write the KNN rows of a level and append its fits to ``tasks``.

        Returns the handles of the arrays shared for the fits.
        """
        lengths = set(level.dataset_lengths())
        todo = [key for key in self.pending if key[2] == level.malicious]
        if not todo:
            logger.info(
                "level %d: every row is already in the results", level.malicious
            )
            return []
        logger.info(
            "level %d: %d rows to compute over %d training sets",
            level.malicious,
            len(todo),
            len(lengths),
        )
        X, y, batch_rows = read_labelled_csvs(
            level.batch_files, n_features=self.X_test.shape[1]
        )
        if batch_rows != level.batch_rows:
            raise InputError(
                f"level folder {level.folder} changed while run_ml.py was reading "
                "it; rerun when the generation has finished"
            )
        batches = _batches(level, X, y)
        self._remember_existing(level, batches)

        X_ref, y_ref = None, None
        level_neighbors = None
        for batch in batches:
            needed = self._needed(level, batch)
            if not needed:
                continue
            self.check_classes(level.malicious, batch.number, batch.classes)
            vf_seeds = {seed for seed, model in needed if is_voting(model)}
            knn_models = {model for _, model in needed if is_knn(model)}
            if vf_seeds:
                knn_models.add("KNN(3)")
            knn = {}
            if knn_models:
                if level_neighbors is None:
                    level_neighbors = self.neighbors.bind(X)
                knn = self._knn(level, batch, level_neighbors, y, knn_models)
            for seed in self.config.seeds:
                fitted = {
                    model
                    for model_seed, model in needed
                    if model_seed == seed and not is_knn(model) and not is_voting(model)
                }
                if seed in vf_seeds:
                    fitted.update(FITTED_MEMBERS)
                    members = {"KNN(3)": knn.get("KNN(3)")}
                    voting[(level.malicious, batch.number, seed)] = members
                    for name in ("VF(hard)", "VF(soft)"):
                        self.followers.setdefault((batch.digest, seed, name), [])
                if fitted and X_ref is None:
                    X_ref, y_ref = self.executor.share(X), self.executor.share(y)
                for model in sorted(fitted, key=MODEL_INDEX.get):
                    kwargs = {
                        "model": model,
                        "seed": seed,
                        "X": X_ref,
                        "y": y_ref,
                        "n_rows": batch.n_rows,
                        "X_test": X_test_ref,
                        "y_test": y_test_ref,
                        "keep_outputs": seed in vf_seeds and model in FITTED_MEMBERS,
                    }
                    self.followers.setdefault((batch.digest, seed, model), [])
                    tasks.append(((level, batch, seed, model), fit_and_score, kwargs))
        return [ref for ref in (X_ref, y_ref) if ref is not None]

    def _remember_existing(self, level, batches):
        """Cache the rows already in the file under their training set's digest."""
        for batch in batches:
            for (seed, model), key in self._level_keys(level, batch).items():
                if key in self.writer:
                    mcc = float(self.writer.rows[key])
                    slot = (batch.digest, None if is_knn(model) else seed)
                    self.cache.setdefault(slot, {})[model] = mcc

    def _needed(self, level, batch):
        """Return the (seed, model) pairs of a batch that have no row yet.

        Pairs whose training set was fitted at another level get their row now,
        and pairs whose training set is being fitted in this round get it when
        that fit returns.
        """
        needed, reused = set(), {}
        for (seed, model), key in self._level_keys(level, batch).items():
            if key not in self.pending:
                continue
            slot = (batch.digest, None if is_knn(model) else seed)
            mcc = self.cache.get(slot, {}).get(model)
            waiting = self.followers.get((batch.digest, seed, model))
            if mcc is not None:
                reused[key] = mcc
            elif waiting is not None:
                waiting.append(key)
                self.n_reused += 1
            else:
                needed.add((seed, model))
        if reused:
            logger.debug(
                "level %d, batch %d: %d rows reused from an identical training set",
                level.malicious,
                batch.number,
                len(reused),
            )
            self.n_reused += len(reused)
            self.write(reused)
        return needed

    def _knn(self, level, batch, level_neighbors, y, knn_models):
        where = f"level {level.malicious}, batch {batch.number}"
        ks = sorted(MODELS[model].n_neighbors for model in knn_models)
        usable = [k for k in ks if k <= batch.n_rows]
        outputs = {}
        if usable:
            results = level_neighbors.predict_many(
                batch.n_rows, y[: batch.n_rows], usable
            )
            for k, (predictions, proba, _) in results.items():
                outputs[f"KNN({k})"] = (predictions, proba)
        rows = {}
        keys = self._level_keys(level, batch)
        for model in sorted(knn_models, key=MODEL_INDEX.get):
            model_keys = [keys[(seed, model)] for seed in self.config.seeds]
            if model not in outputs:
                self.drop(
                    model_keys,
                    f"{where}: {model} needs at least {MODELS[model].n_neighbors} "
                    f"training rows but the batch has {batch.n_rows}",
                )
                continue
            mcc, n_classes = score(self.y_test, outputs[model][0])
            outcome = FitOutcome(mcc=mcc, n_predicted_classes=n_classes)
            self.check_outcome(where, model, outcome)
            self.cache.setdefault((batch.digest, None), {})[model] = mcc
            rows.update(dict.fromkeys(model_keys, mcc))
        self.write(rows)
        return outputs

    def _record(self, batch, seed, model, key, mcc):
        """Write the row of ``key`` and of the keys that wait for the same fit."""
        self.cache.setdefault((batch.digest, seed), {})[model] = mcc
        waiting = self.followers.pop((batch.digest, seed, model), [])
        self.write(dict.fromkeys([key, *waiting], mcc))

    def _give_up(self, batch, seed, model, key, reason):
        waiting = self.followers.pop((batch.digest, seed, model), [])
        self.drop([key, *waiting], reason)

    def _take_fit(self, level, batch, seed, model, outcome, voting):
        where = f"level {level.malicious}, batch {batch.number}, seed {seed}"
        keys = self._level_keys(level, batch)
        self.check_outcome(where, model, outcome)
        members = voting.get((level.malicious, batch.number, seed))
        if outcome.error is not None:
            reason = f"{where}: {model} failed: {outcome.error}"
            self._give_up(batch, seed, model, keys[(seed, model)], reason)
            if members is not None and model in FITTED_MEMBERS:
                members[model] = None
        else:
            self._record(batch, seed, model, keys[(seed, model)], outcome.mcc)
            if members is not None and model in FITTED_MEMBERS:
                members[model] = (outcome.predictions, outcome.proba)
        if members is not None and len(members) == len(VOTING_MEMBERS):
            del voting[(level.malicious, batch.number, seed)]
            self._vote(where, batch, seed, keys, members)

    def _vote(self, where, batch, seed, keys, members):
        failed = [name for name in VOTING_MEMBERS if members.get(name) is None]
        if failed:
            reason = f"{where}: voting member {', '.join(failed)} failed"
            for name in ("VF(hard)", "VF(soft)"):
                self._give_up(batch, seed, name, keys[(seed, name)], reason)
            return
        classes = batch.classes
        predictions = [members[name][0] for name in VOTING_MEMBERS]
        probas = [members[name][1] for name in VOTING_MEMBERS]
        results = {
            "VF(hard)": hard_vote(predictions, classes),
            "VF(soft)": soft_vote(probas, classes)[0],
        }
        for name, vote in results.items():
            mcc, n_classes = score(self.y_test, vote)
            outcome = FitOutcome(mcc=mcc, n_predicted_classes=n_classes)
            self.check_outcome(where, name, outcome)
            self._record(batch, seed, name, keys[(seed, name)], mcc)


class NaiveEngine(_GridRun):
    """Fit every cell from scratch, one task per (level, batch)."""

    def __init__(self, config, writer, X_test, y_test, executor):
        super().__init__(config, writer, X_test, y_test)
        self.executor = executor

    def run(self):
        tasks = []
        for level in self.config.levels:
            previous = 0
            for number, n_rows in enumerate(level.dataset_lengths(), start=1):
                if n_rows == previous:
                    continue
                previous = n_rows
                cells = [
                    (seed, model)
                    for seed in self.config.seeds
                    for model in self.config.models
                    if (seed, model, level.malicious, n_rows) in self.pending
                ]
                if not cells:
                    continue
                kwargs = {
                    "batch_files": [str(path) for path in level.batch_files[:number]],
                    "test_path": str(self.config.test_path),
                    "cells": cells,
                }
                tasks.append(((level.malicious, number, n_rows), naive_batch, kwargs))
        logger.info("naive engine: %d (level, batch) tasks", len(tasks))
        try:
            for (malicious, number, n_rows), result in self.executor.run(tasks):
                self._take_batch(malicious, number, n_rows, *result)
        finally:
            self.close()

    def _take_batch(self, malicious, number, n_rows, classes, outcomes):
        self.check_classes(malicious, number, classes)
        for (seed, model), outcome in outcomes:
            where = f"level {malicious}, batch {number}, seed {seed}"
            key = (seed, model, malicious, n_rows)
            self.check_outcome(where, model, outcome)
            if outcome.error is not None:
                self.drop([key], f"{where}: {model} failed: {outcome.error}")
            else:
                self.write({key: outcome.mcc})


def _task_cost(task):
    (_, batch, _, model), _, _ = task
    return FIT_COST[model] * batch.n_rows


def run_grid(config, writer, X_test, y_test):
    """Compute every row of the grid that ``writer`` does not hold yet.

    Parameters
    ----------
    config : GridConfig
        Levels, models, seeds, engine and workers.
    writer : crowdpoison.resultsfile.ResultsWriter
        Open results file; rows are appended to it as cells finish.
    X_test : ndarray of shape (n_test, n_features), uint8
        Test pixels.
    y_test : ndarray of shape (n_test,), int64
        Test labels.
    """
    engines = {"fast": FastEngine, "naive": NaiveEngine}
    with LokyExecutor(config.n_jobs) as executor:
        engine = engines[config.engine](config, writer, X_test, y_test, executor)
        if engine.pending:
            logger.info(
                "%s engine: %d rows to compute with %d workers",
                config.engine,
                len(engine.pending),
                effective_n_jobs(config.n_jobs),
            )
        engine.run()
