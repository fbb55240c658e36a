"""Exact k-nearest-neighbour predictions shared across levels, prefixes and k.

Every level of an experiment contains the same images in another order, and the
models train on prefixes of a level's rows. :class:`SharedNeighbors` runs one exact
neighbour search of the test images against the pool of images and serves, from
that one search, the output of
``KNeighborsClassifier(n_neighbors=k).fit(X[:n].astype(np.float64), y[:n])``
(default settings: uniform weights, euclidean distance, brute force) for any
level, prefix length ``n`` and ``k``.

Exactness rests on these facts about scikit-learn 1.9.1, which the tests check:

- Pixels are integers in 0..255, so every squared euclidean distance is an integer
  below 2**53. scikit-learn computes it in float64 as ``|x|^2 - 2 x.y + |y|^2``
  without rounding error, so ties are exact and this module can use integers.
- ``predict`` and ``predict_proba`` call ``kneighbors``, which keeps the k nearest
  training rows of each query in a fixed-size max-heap
  (``sklearn.utils._heap.heap_push``) fed with the training rows in their order.
  A row enters only if it is strictly nearer than the heap's root, and a nearer
  row evicts whichever row sits at the root. Among rows tied at the k-th distance
  the heap therefore keeps a subset that depends on the whole push history, which
  is not always the earliest rows.
- With ``4 * chunk_size * n_threads < n_queries`` (``chunk_size`` = 256 and
  ``n_threads`` = OpenMP threads by default) the rows reach the heap in training
  order ("parallel_on_X"). Otherwise each thread fills its own heap from a
  contiguous block of 256-row chunks and the thread heaps are then merged
  ("parallel_on_Y"), which keeps another subset among ties.
- ``predict_proba`` is ``counts / k`` over ``classes_ = np.unique(y)``, and
  ``predict`` takes the first class with the largest count.

The kept subset matters only when the rows tied at the k-th distance carry
different labels and do not all fit. For those queries, and for those whose k-th
neighbour lies beyond the cached candidates, this module replays scikit-learn's
heap on the query's exact distances to all rows of the prefix.

The reference is ``predict(X_test.astype(np.float64))``. With uint8 (or any other
non-float64) test images scikit-learn skips ``ArgKmin``, computes the distances
with ``pairwise_distances_chunked`` and selects neighbours with
``np.argpartition``, which keeps other rows among ties. Pass
``tie_rule="argpartition"`` to reproduce that path.
"""

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import sklearn
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
# Bytes of float64 distances that one block of the search may allocate.
SEARCH_BLOCK_BYTES = 128 * 2**20
TIE_RULES = ("heap", "argpartition")
# Vote counts over the candidates are stored as int8.
MAX_CANDIDATES = 127
# Full distance rows kept in memory for queries that need the exact replay.
MAX_CACHED_ROWS = 1024


def _as_pixels(X, name):
    """Return ``X`` as a C-contiguous uint8 matrix, or raise ValueError."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array (n_samples, n_features), got shape {X.shape}"
        )
    if X.dtype != np.uint8:
        if not np.issubdtype(X.dtype, np.integer):
            raise ValueError(
                f"{name} must hold integer pixels in 0..255, got dtype {X.dtype}"
            )
        if X.size and (X.min() < 0 or X.max() > 255):
            raise ValueError(
                f"{name} must hold pixels in 0..255, got values in {X.min()}..{X.max()}"
            )
        X = X.astype(np.uint8)
    return np.ascontiguousarray(X)


def _canonical_order(X):
    """Return the stable order that sorts the rows of ``X`` by their bytes."""
    rows = X.view(np.dtype((np.void, X.shape[1]))).ravel()
    return np.argsort(rows, kind="stable")


def _squared_norms(X):
    X = X.astype(np.int64)
    return np.einsum("ij,ij->i", X, X)


def _blas_limit(n_jobs):
    """Return the BLAS thread limit for ``n_jobs`` (None means no limit)."""
    if n_jobs is None or n_jobs == -1:
        return None
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be -1, None or at least 1, got {n_jobs}")
    return n_jobs


def _heap_push(values, indices, value, index):
    """Push onto a fixed-size max-heap exactly as ``sklearn.utils._heap.heap_push``.

    The heap keeps a row only if it is strictly nearer than the root, and the
    sift-down follows scikit-learn 1.9.1 comparison by comparison, so that ties
    end in the same slots.
    """
    size = len(values)
    if value >= values[0]:
        return
    current = 0
    while True:
        left = 2 * current + 1
        right = left + 1
        if left >= size:
            break
        if right >= size:
            if values[left] > value:
                swap = left
            else:
                break
        elif values[left] >= values[right]:
            if value < values[left]:
                swap = left
            else:
                break
        elif value < values[right]:
            swap = right
        else:
            break
        values[current] = values[swap]
        indices[current] = indices[swap]
        current = swap
    values[current] = value
    indices[current] = index


def _heap_scan(values, indices, distances, start, stop):
    """Push rows ``start .. stop - 1`` in order onto the heap.

    Only rows strictly nearer than the current root can change the heap, so each
    block of rows is first filtered against the root with numpy.
    """
    block = 64
    position = start
    while position < stop:
        end = min(position + block, stop)
        nearer = np.flatnonzero(distances[position:end] < values[0])
        for offset in nearer.tolist():
            row = position + offset
            _heap_push(values, indices, int(distances[row]), row)
        position = end
        block = min(2 * block, 8192)


def _static_blocks(n_items, n_threads):
    """Return the ``(start, stop)`` item ranges of OpenMP's static schedule.

    This is the split that libgomp uses for ``schedule(static)`` without a chunk
    size: the first ``n_items % n_threads`` threads get one item more.
    """
    quotient, remainder = divmod(n_items, n_threads)
    blocks = []
    for thread in range(n_threads):
        size = quotient + (thread < remainder)
        start = thread * quotient + min(thread, remainder)
        blocks.append((start, start + size))
    return blocks


def sklearn_argkmin(distances, k, *, n_queries, n_threads, chunk_size=256):
    """Return the rows that scikit-learn's ``ArgKmin`` keeps for one query.

    Parameters
    ----------
    distances : ndarray of shape (n_rows,)
        Exact squared distances (integers) from the query to the training rows,
        in training order.
    k : int
        Number of neighbours.
    n_queries : int
        Number of queries in the ``kneighbors``/``predict`` call. It selects the
        parallel strategy.
    n_threads : int
        Number of OpenMP threads that scikit-learn uses.
    chunk_size : int, default=256
        ``sklearn.get_config()["pairwise_dist_chunk_size"]``.

    Returns
    -------
    ndarray of shape (k,)
        Training-row indices in heap order (not sorted).
    """
    n_rows = len(distances)
    values = [float("inf")] * k
    indices = [-1] * k
    if parallel_strategy(n_queries, n_rows, n_threads, chunk_size) == "parallel_on_X":
        _heap_scan(values, indices, distances, 0, n_rows)
        return np.array(indices, dtype=np.intp)

    rows_per_chunk = min(n_rows, chunk_size)
    n_chunks = -(-n_rows // rows_per_chunk)
    merged_values = [float("inf")] * k
    merged_indices = [0] * k
    for first, last in _static_blocks(n_chunks, min(n_chunks, n_threads)):
        thread_values = [float("inf")] * k
        thread_indices = [-1] * k
        start = first * rows_per_chunk
        stop = min(last * rows_per_chunk, n_rows)
        _heap_scan(thread_values, thread_indices, distances, start, stop)
        for value, index in zip(thread_values, thread_indices):
            _heap_push(merged_values, merged_indices, value, index)
    return np.array(merged_indices, dtype=np.intp)


def parallel_strategy(n_queries, n_rows, n_threads, chunk_size=256):
    """Return the strategy that scikit-learn 1.9.1's ``ArgKmin`` picks ("auto")."""
    if n_rows < n_queries or 4 * chunk_size * n_threads < n_queries:
        return "parallel_on_X"
    return "parallel_on_Y"


def _default_n_threads():
    # NOTE: a private scikit-learn helper, which may change between versions. It
    # returns the OpenMP thread count of the pairwise-distance reductions.
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    return _openmp_effective_n_threads()


class SharedNeighbors:
    """One exact neighbour search of the test images, shared by every level.

    Parameters
    ----------
    X_test : array-like of shape (n_test, n_features)
        Test images, integer pixels in 0..255.
    n_candidates : int, default=64
        Number ``M`` of nearest pool entries cached per test image. Queries whose
        result needs more fall back to an exact computation.
    cache_dir : str or Path, default=None
        Folder for the search result, keyed by a hash of the pool, the test images
        and ``n_candidates``. None keeps nothing on disk.
    n_jobs : int, default=1
        BLAS threads for the distance computations; -1 or None uses them all.
    n_threads : int, default=None
        OpenMP threads of the scikit-learn run to reproduce. None takes the
        count scikit-learn would use in this process. It only matters when
        ``4 * chunk_size * n_threads >= n_test``, where scikit-learn switches
        its parallel strategy and with it the choice among tied neighbours.
    chunk_size : int, default=None
        scikit-learn's ``pairwise_dist_chunk_size``; None reads the current
        configuration (256 by default).
    tie_rule : {"heap", "argpartition"}, default="heap"
        Code path of scikit-learn to reproduce among tied neighbours. "heap" is
        ``predict(X_test)`` with float64 test images and float64 training rows
        (``ArgKmin``). "argpartition" is the path taken when the test images are
        not float64 (uint8, for instance): scikit-learn then computes the
        distances with ``pairwise_distances_chunked`` and selects neighbours with
        ``np.argpartition``, which keeps other rows among ties.
    progress : bool, default=False
        Show a progress bar during the search.
    """

    def __init__(
        self,
        X_test,
        *,
        n_candidates=64,
        cache_dir=None,
        n_jobs=1,
        n_threads=None,
        chunk_size=None,
        tie_rule="heap",
        progress=False,
    ):
        self.X_test = _as_pixels(X_test, "X_test")
        if len(self.X_test) == 0:
            raise ValueError("X_test must contain at least one image, got 0 rows")
        if not 1 <= int(n_candidates) <= MAX_CANDIDATES:
            raise ValueError(
                f"n_candidates must be in 1..{MAX_CANDIDATES}, got {n_candidates}"
            )
        self.n_candidates = int(n_candidates)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.n_jobs = _blas_limit(n_jobs)
        self.n_threads = _default_n_threads() if n_threads is None else int(n_threads)
        if chunk_size is None:
            chunk_size = sklearn.get_config().get("pairwise_dist_chunk_size", 256)
        self.chunk_size = int(chunk_size)
        if tie_rule not in TIE_RULES:
            raise ValueError(f"tie_rule must be one of {TIE_RULES}, got {tie_rule!r}")
        self.tie_rule = tie_rule
        self.progress = progress
        self._test_norms = _squared_norms(self.X_test)
        self._pool = None
        self._pool_norms = None
        self._candidate_ids = None
        self._candidate_distances = None
        self._pool_scaled_cache = None
        self._features = None
        self._full_rows = {}
        self.n_replayed_queries = 0

    @property
    def n_test(self):
        """Number of test images."""
        return len(self.X_test)

    def bind(self, X_level):
        """Return the neighbours of one level's rows.

        Parameters
        ----------
        X_level : array-like of shape (n_rows, n_features)
            All rows of the level, integer pixels in 0..255, in the level's order.
            The pool index and search are reused when the rows are the same
            multiset as the current pool, and rebuilt otherwise.

        Returns
        -------
        LevelNeighbors
        """
        X_level = _as_pixels(X_level, "X_level")
        if X_level.shape[1] != self.X_test.shape[1]:
            raise ValueError(
                f"X_level has {X_level.shape[1]} features but X_test has "
                f"{self.X_test.shape[1]}; pass images of the same size"
            )
        if len(X_level) == 0:
            raise ValueError("X_level must contain at least one row, got 0 rows")
        order = _canonical_order(X_level)
        pool = X_level[order]
        if self._pool is None or not np.array_equal(pool, self._pool):
            self._set_pool(pool)
        else:
            logger.debug("Reusing the pool of %d rows for a new level", len(pool))
        return LevelNeighbors(self, order)

    def _set_pool(self, pool):
        self._pool = pool
        self._pool_norms = _squared_norms(pool)
        self._pool_scaled_cache = None
        self._features = np.flatnonzero(pool.any(axis=0) & self.X_test.any(axis=0))
        self._full_rows = {}
        n_candidates = min(self.n_candidates, len(pool))
        path = self._cache_path(pool, n_candidates)
        if path is not None and path.is_file():
            with np.load(path) as data:
                ids, distances = data["ids"], data["distances"]
            logger.info("Loaded the neighbour search from %s (cache hit)", path)
        else:
            if path is not None:
                logger.info("No neighbour search cached at %s (cache miss)", path)
            ids, distances = self._search(pool, n_candidates)
            if path is not None:
                _save_atomically(path, ids=ids, distances=distances)
                logger.info("Wrote the neighbour search to %s", path)
        self._index_candidates(ids, distances)

    def _index_candidates(self, ids, distances):
        """Store the candidates transposed, with the bounds of their tie groups.

        ``_candidate_ids`` and ``_candidate_distances`` have shape
        (n_candidates, n_test). ``_group_start[c, q]:_group_stop[c, q]`` are the
        candidate columns of query ``q`` at the same distance as column ``c``.
        """
        self._candidate_ids = np.ascontiguousarray(ids.T)
        distances = np.ascontiguousarray(distances.T)
        self._candidate_distances = distances
        n_candidates = len(distances)
        columns = np.arange(n_candidates)[:, None]
        starts = np.ones(distances.shape, dtype=bool)
        starts[1:] = distances[1:] != distances[:-1]
        self._group_start = np.maximum.accumulate(np.where(starts, columns, 0), axis=0)
        stops = np.ones(distances.shape, dtype=bool)
        stops[:-1] = starts[1:]
        stop_columns = np.where(stops, columns + 1, n_candidates)
        self._group_stop = np.minimum.accumulate(stop_columns[::-1], axis=0)[::-1]

    def _cache_path(self, pool, n_candidates):
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256()
        digest.update(f"knn-search-{CACHE_FORMAT}-{n_candidates}".encode())
        digest.update(repr((pool.shape, self.X_test.shape)).encode())
        digest.update(pool.tobytes())
        digest.update(self.X_test.tobytes())
        return self.cache_dir / f"knn-{digest.hexdigest()[:32]}.npz"

    def _pool_scaled(self):
        """Return ``-2 * pool`` as float64, restricted to the informative features.

        A feature that is zero in every test image or in every pool row adds
        nothing to any dot product, so dropping it keeps the GEMM exact.
        """
        if self._pool_scaled_cache is None:
            pool = self._pool[:, self._features].astype(np.float64)
            pool *= -2.0
            self._pool_scaled_cache = pool
        return self._pool_scaled_cache

    def _partial_distances(self, queries):
        """Return ``|p|^2 - 2 q.p`` for test images ``queries`` and every pool row.

        Adding ``|q|^2`` gives the squared distance. Every term is an integer
        below 2**53, so the float64 result is exact.
        """
        with threadpool_limits(limits=self.n_jobs, user_api="blas"):
            products = self.X_test[queries][:, self._features].astype(np.float64)
            distances = products @ self._pool_scaled().T
        distances += self._pool_norms[None, :]
        return distances

    def _pool_distances(self, queries):
        """Return exact squared distances (int64) of ``queries`` to the pool."""
        distances = self._partial_distances(queries).astype(np.int64)
        distances += self._test_norms[queries, None]
        return distances

    def _search(self, pool, n_candidates):
        """Return the ``n_candidates`` nearest pool ids of every test image.

        Both outputs have shape (n_test, n_candidates) and are sorted by
        (distance, id). Among pool rows tied at the last kept distance, the kept
        ones are arbitrary, which is why a query's result is trusted only when its
        k-th neighbour is strictly nearer than the last candidate.
        """
        n_pool = len(pool)
        started = time.perf_counter()
        logger.info(
            "Searching the %d nearest of %d pool rows for %d test images",
            n_candidates,
            n_pool,
            self.n_test,
        )
        block = max(1, SEARCH_BLOCK_BYTES // (8 * n_pool))
        ids = np.empty((self.n_test, n_candidates), dtype=np.int32)
        distances = np.empty((self.n_test, n_candidates), dtype=np.int64)
        bar = tqdm(
            total=self.n_test,
            desc="neighbour search (test images)",
            disable=not self.progress,
        )
        with bar:
            for start in range(0, self.n_test, block):
                stop = min(start + block, self.n_test)
                queries = np.arange(start, stop)
                block_ids, block_distances = _nearest(
                    self._partial_distances(queries), n_candidates
                )
                ids[start:stop] = block_ids
                distances[start:stop] = (
                    block_distances + self._test_norms[queries, None]
                )
                bar.update(stop - start)
        logger.info("Neighbour search took %.1f s", time.perf_counter() - started)
        return ids, distances

    def _distance_rows(self, queries):
        """Return exact squared distances of ``queries`` to every pool row.

        Rows are kept in memory (up to ``MAX_CACHED_ROWS``) because the same
        queries tend to need the replay in many levels and prefixes.
        """
        found = {query: self._full_rows.get(query) for query in queries}
        missing = [query for query, row in found.items() if row is None]
        if missing:
            rows = self._pool_distances(np.array(missing))
            for query, row in zip(missing, rows):
                found[query] = row
                if len(self._full_rows) >= MAX_CACHED_ROWS:
                    self._full_rows.pop(next(iter(self._full_rows)))
                self._full_rows[query] = row
        return [found[query] for query in queries]


def _nearest(distances, n_candidates):
    """Return ids and values of the ``n_candidates`` smallest entries per row.

    ``distances`` contains float64 integers. The output is sorted by (value, id),
    with int32 ids and int64 values.
    """
    n_columns = distances.shape[1]
    if n_candidates < n_columns:
        ids = np.argpartition(distances, n_candidates - 1, axis=1)[:, :n_candidates]
    else:
        ids = np.broadcast_to(np.arange(n_columns), distances.shape)
    values = np.take_along_axis(distances, ids, axis=1).astype(np.int64)
    # Shifted to be non-negative, because partial distances may be negative.
    keys = (values - values.min(axis=1, keepdims=True)) * n_columns + ids
    order = np.argsort(keys, axis=1)
    ids = np.take_along_axis(ids, order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    return ids.astype(np.int32), values


def _accumulate_rows(array):
    """Replace ``array`` by its cumulative sum along axis 0, in place.

    With numpy 2.4, a loop over the rows ran about 25 times faster than
    ``np.cumsum(axis=0)`` on an array of shape (65, 10, 10000).
    """
    for row in range(1, len(array)):
        np.add(array[row - 1], array[row], out=array[row])


def _save_atomically(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=path.name, suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


class LevelNeighbors:
    """Neighbours of the test images among the prefixes of one level's rows.

    Created by :meth:`SharedNeighbors.bind`. Row positions refer to the level's
    order: a prefix of ``n_rows`` rows contains positions ``0 .. n_rows - 1``.
    Candidate arrays are stored transposed, shape (n_candidates, n_test), so that
    the reductions over candidates run on contiguous rows.
    """

    def __init__(self, shared, order):
        self.shared = shared
        self.n_rows_level = len(order)
        self._position_to_pool = np.empty_like(order)
        self._position_to_pool[order] = np.arange(len(order))
        # order[pool_id] is the level position of that pool entry.
        self._candidate_positions = order[shared._candidate_ids]
        self._complete = len(shared._candidate_ids) == len(order)

    def _check_n_rows(self, n_rows, k):
        n_rows = int(n_rows)
        if not 1 <= n_rows <= self.n_rows_level:
            raise ValueError(
                f"n_rows must be in 1..{self.n_rows_level} (the level's rows), "
                f"got {n_rows}"
            )
        if not 1 <= k <= n_rows:
            raise ValueError(
                f"k must be in 1..n_rows={n_rows} (scikit-learn requires "
                f"n_neighbors <= n_samples_fit), got {k}"
            )
        return n_rows

    def _members(self, n_rows):
        """Return the prefix membership of the candidates and its running count.

        ``cumulative[c, q]`` counts the members among the first ``c`` candidates
        of query ``q``, so it has one row more than the candidates.
        """
        members = self._candidate_positions < n_rows
        cumulative = np.zeros((members.shape[0] + 1, members.shape[1]), np.int32)
        cumulative[1:] = members
        _accumulate_rows(cumulative)
        return members, cumulative

    def _boundaries(self, k, cumulative):
        """Locate the k-th nearest prefix member among the cached candidates.

        Returns, per query, the number of members nearer than the k-th one, the
        number of members at its distance, the candidate columns ``low:high`` at
        its distance, and whether the candidates settle the query.
        """
        shared = self.shared
        n_candidates, n_test = shared._candidate_distances.shape
        queries = np.arange(n_test)
        kth_column = (cumulative[1:] < k).sum(axis=0)
        found = kth_column < n_candidates
        kth_column = np.minimum(kth_column, n_candidates - 1)
        low = shared._group_start[kth_column, queries]
        high = shared._group_stop[kth_column, queries]
        n_nearer = cumulative[low, queries]
        n_tied = cumulative[high, queries] - n_nearer
        settled = found
        if not self._complete:
            # A tie at the last cached distance may continue beyond the cache.
            settled &= high < n_candidates
        return n_nearer, n_tied, low, high, settled

    def kneighbors(self, n_rows, k, *, return_distance=False):
        """Return the k nearest rows of the first ``n_rows`` rows per test image.

        The set of rows is the one that ``KNeighborsClassifier(k).kneighbors``
        returns after fitting on those rows. It is sorted here by (distance,
        position), but scikit-learn orders equal distances by an unstable sort.

        Parameters
        ----------
        n_rows : int
            Length of the prefix.
        k : int
            Number of neighbours.
        return_distance : bool, default=False
            Also return the euclidean distances.

        Returns
        -------
        distances : ndarray of shape (n_test, k), float64
            Only with ``return_distance=True``.
        positions : ndarray of shape (n_test, k), int64
            Row positions in the level, nearest first.
        """
        n_rows = self._check_n_rows(n_rows, k)
        members, cumulative = self._members(n_rows)
        n_nearer, n_tied, _, high, settled = self._boundaries(k, cumulative)
        settled &= n_nearer + n_tied == k

        distances = self.shared._candidate_distances
        columns = np.arange(distances.shape[0])
        keep = members & (columns[:, None] < high[None, :])
        scale = self.n_rows_level + 1
        keys = np.where(
            keep,
            distances * scale + self._candidate_positions,
            np.iinfo(np.int64).max,
        ).T
        if keys.shape[1] < k:
            # Fewer candidates than neighbours: those queries are all replayed.
            padding = np.full((len(keys), k - keys.shape[1]), np.iinfo(np.int64).max)
            keys = np.concatenate([keys, padding], axis=1)
        keys = np.sort(keys, axis=1)[:, :k]
        positions = keys % scale
        squared = keys // scale

        replay = np.flatnonzero(~settled)
        for query, chosen, chosen_distances in self._replay(n_rows, k, replay):
            order = np.lexsort((chosen, chosen_distances))
            positions[query] = chosen[order]
            squared[query] = chosen_distances[order]
        if return_distance:
            return np.sqrt(squared.astype(np.float64)), positions
        return positions

    def _replay(self, n_rows, k, queries):
        """Yield ``(query, positions, squared distances)`` from the heap replay."""
        if len(queries) == 0:
            return
        shared = self.shared
        shared.n_replayed_queries += len(queries)
        logger.debug(
            "Replaying the heap for %d of %d queries (n_rows=%d, k=%d)",
            len(queries),
            shared.n_test,
            n_rows,
            k,
        )
        prefix_pool_ids = self._position_to_pool[:n_rows]
        rows = shared._distance_rows(queries.tolist())
        for query, row in zip(queries.tolist(), rows):
            distances = row[prefix_pool_ids]
            if shared.tie_rule == "argpartition":
                chosen = np.argpartition(distances.astype(np.float64), k - 1)[:k]
            else:
                chosen = sklearn_argkmin(
                    distances,
                    k,
                    n_queries=shared.n_test,
                    n_threads=shared.n_threads,
                    chunk_size=shared.chunk_size,
                )
            yield query, chosen, distances[chosen]

    def predict(self, n_rows, y, k):
        """Return the output of ``KNeighborsClassifier(k)`` fitted on a prefix.

        Parameters
        ----------
        n_rows : int
            Length of the prefix.
        y : array-like of shape (n_rows,)
            Labels of the first ``n_rows`` rows of the level.
        k : int
            Number of neighbours.

        Returns
        -------
        predictions : ndarray of shape (n_test,)
            Equal to ``predict(X_test)``.
        proba : ndarray of shape (n_test, n_classes), float64
            Equal to ``predict_proba(X_test)``.
        classes : ndarray of shape (n_classes,)
            ``np.unique(y)``, the ``classes_`` of the fitted classifier.
        """
        return self.predict_many(n_rows, y, ks=(k,))[k]

    def predict_many(self, n_rows, y, ks=(1, 3, 5, 7, 9)):
        """Return :meth:`predict` for several k from one pass over the candidates.

        Parameters
        ----------
        n_rows : int
            Length of the prefix.
        y : array-like of shape (n_rows,)
            Labels of the first ``n_rows`` rows of the level.
        ks : sequence of int, default=(1, 3, 5, 7, 9)
            Numbers of neighbours.

        Returns
        -------
        dict
            ``{k: (predictions, proba, classes)}`` as :meth:`predict` returns them.
        """
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != int(n_rows):
            raise ValueError(
                f"y must be 1-D with n_rows={n_rows} labels, got shape {y.shape}"
            )
        for k in ks:
            n_rows = self._check_n_rows(n_rows, int(k))
        classes, encoded = np.unique(y, return_inverse=True)
        n_classes = len(classes)
        n_test = self.shared.n_test
        queries = np.arange(n_test)

        members, cumulative = self._members(n_rows)
        labels = encoded[np.minimum(self._candidate_positions, n_rows - 1)]
        # counts[c, j, q]: members of class j among the first c candidates of q.
        # They fit in int8 because there are at most 127 candidates.
        counts = np.zeros((members.shape[0] + 1, n_classes, n_test), np.int8)
        class_ids = np.arange(n_classes, dtype=labels.dtype)
        counts[1:] = (labels[:, None, :] == class_ids[None, :, None]) & members[
            :, None, :
        ]
        _accumulate_rows(counts)

        votes_by_k = {}
        replays = {}
        for k in ks:
            k = int(k)
            n_nearer, n_tied, low, high, settled = self._boundaries(k, cumulative)
            nearer_counts = counts[low, :, queries]
            tied_counts = counts[high, :, queries] - nearer_counts
            slots = k - n_nearer
            fits = n_tied == slots
            one_label = tied_counts.max(axis=1) == n_tied
            settled &= fits | one_label
            votes = nearer_counts.astype(np.int64)
            votes[fits] += tied_counts[fits]
            # Tied members of one label: any choice among them gives the same votes.
            partial = ~fits & one_label
            votes[partial, tied_counts[partial].argmax(axis=1)] += slots[partial]
            votes_by_k[k] = votes
            replays[k] = np.flatnonzero(~settled)

        # One distance computation for the queries that any k replays.
        self.shared._distance_rows(np.unique(np.concatenate(list(replays.values()))))
        results = {}
        for k, votes in votes_by_k.items():
            for query, chosen, _ in self._replay(n_rows, k, replays[k]):
                votes[query] = np.bincount(encoded[chosen], minlength=n_classes)
            proba = votes / float(k)
            results[k] = (classes[votes.argmax(axis=1)], proba, classes)
        return results
