"""Tests of crowdpoison.knn against scikit-learn's KNeighborsClassifier."""

import gzip
import logging

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from crowdpoison.knn import (
    SharedNeighbors,
    _default_n_threads,
    _heap_push,
    parallel_strategy,
    sklearn_argkmin,
)

KS = (1, 3, 5, 7, 9)


def _read_images(path, n_images):
    with gzip.open(path) as stream:
        header = stream.read(16)
        n_rows, n_columns = (int.from_bytes(header[i : i + 4], "big") for i in (8, 12))
        data = stream.read(n_images * n_rows * n_columns)
    return np.frombuffer(data, np.uint8).reshape(n_images, n_rows * n_columns)


def _read_labels(path, n_labels):
    with gzip.open(path) as stream:
        stream.read(8)
        return np.frombuffer(stream.read(n_labels), np.uint8).astype(np.int64)


def _tied_data(rng, n_pool, n_test, n_features=20, max_pixel=1):
    """Return small-integer images where most distances tie, a third duplicated."""
    unique = rng.integers(0, max_pixel + 1, size=(n_pool - n_pool // 3, n_features))
    pool = np.concatenate([unique, unique[: n_pool // 3]]).astype(np.uint8)
    test = rng.integers(0, max_pixel + 1, size=(n_test, n_features)).astype(np.uint8)
    return pool, test


def _sklearn_outputs(X, y, X_test, k):
    model = KNeighborsClassifier(n_neighbors=k).fit(X.astype(np.float64), y)
    queries = X_test.astype(np.float64)
    return (
        model.predict(queries),
        model.predict_proba(queries),
        model.classes_,
        model.kneighbors(queries, return_distance=False),
    )


def _assert_same_as_sklearn(shared, pool, test, rng, prefixes, ks=KS, n_levels=2):
    for _ in range(n_levels):
        permutation = rng.permutation(len(pool))
        X = pool[permutation]
        y = rng.integers(0, 4, size=len(pool))
        level = shared.bind(X)
        for n_rows in prefixes:
            outputs = level.predict_many(n_rows, y[:n_rows], ks=ks)
            for k in ks:
                expected = _sklearn_outputs(X[:n_rows], y[:n_rows], test, k)
                predictions, proba, classes = outputs[k]
                assert np.array_equal(predictions, expected[0]), (n_rows, k)
                assert np.array_equal(proba, expected[1]), (n_rows, k)
                assert np.array_equal(classes, expected[2]), (n_rows, k)
                neighbours = level.kneighbors(n_rows, k)
                assert np.array_equal(
                    np.sort(neighbours, axis=1), np.sort(expected[3], axis=1)
                ), (n_rows, k)


def test_heap_push_docstring_example():
    # The example of sklearn.utils._heap.heap_push.
    values = [1.2, 0.4, 0.1]
    indices = [42, 1, 5]
    _heap_push(values, indices, 0.2, 4)
    assert values == [0.4, 0.2, 0.1]
    assert indices == [1, 4, 5]


def test_sklearn_keeps_later_row_among_ties():
    # Squared distances 4, 4, 4, 1, 1: the heap evicts row 0, not row 2.
    X = np.zeros((5, 20))
    X[:, 0] = [2, 2, 2, 1, 1]
    query = np.zeros((1, 20))
    model = KNeighborsClassifier(n_neighbors=3).fit(X, np.arange(5))
    kept = model.kneighbors(query, return_distance=False)[0]
    assert sorted(kept) == [1, 3, 4]
    replayed = sklearn_argkmin(np.array([4, 4, 4, 1, 1]), 3, n_queries=1, n_threads=2)
    assert sorted(replayed) == [1, 3, 4]


@pytest.mark.parametrize(
    ("n_queries", "n_rows", "n_threads", "expected"),
    [
        (2048, 60000, 2, "parallel_on_Y"),
        (2049, 60000, 2, "parallel_on_X"),
        (10000, 60000, 9, "parallel_on_X"),
        (10000, 60000, 10, "parallel_on_Y"),
        (500, 400, 64, "parallel_on_X"),
    ],
)
def test_parallel_strategy_threshold(n_queries, n_rows, n_threads, expected):
    assert parallel_strategy(n_queries, n_rows, n_threads) == expected


@pytest.mark.parametrize("n_threads", [1, 2, 3, 5])
@pytest.mark.parametrize("n_queries", [40, 5000])
def test_sklearn_argkmin_matches_kneighbors(n_queries, n_threads, monkeypatch):
    # With OMP_NUM_THREADS set, scikit-learn may use more threads than cores.
    monkeypatch.setenv("OMP_NUM_THREADS", str(n_threads))
    rng = np.random.default_rng(n_queries + n_threads)
    pool, test = _tied_data(rng, 1500, n_queries)
    X = pool[rng.permutation(len(pool))].astype(np.float64)
    queries = test.astype(np.float64)
    with threadpool_limits(limits=n_threads, user_api="openmp"):
        assert _default_n_threads() == n_threads
        model = KNeighborsClassifier(n_neighbors=7).fit(X, np.zeros(len(X)))
        expected = model.kneighbors(queries, return_distance=False)
    distances = ((queries[:40, None, :] - X[None, :, :]) ** 2).sum(axis=2)
    for query in range(40):
        kept = sklearn_argkmin(
            distances[query].astype(np.int64),
            7,
            n_queries=n_queries,
            n_threads=n_threads,
        )
        assert sorted(kept) == sorted(expected[query]), query


@pytest.mark.parametrize("n_test", [60, 2100])
def test_shared_neighbors_many_ties(n_test):
    # 60 queries run scikit-learn's parallel_on_Y strategy, 2100 parallel_on_X.
    rng = np.random.default_rng(n_test)
    pool, test = _tied_data(rng, 450, n_test, max_pixel=2)
    shared = SharedNeighbors(test, n_candidates=12)
    _assert_same_as_sklearn(shared, pool, test, rng, prefixes=(150, 451 - 1))
    assert shared.n_replayed_queries > 0


def test_shared_neighbors_one_openmp_thread():
    rng = np.random.default_rng(7)
    pool, test = _tied_data(rng, 400, 100, max_pixel=2)
    with threadpool_limits(limits=1, user_api="openmp"):
        shared = SharedNeighbors(test, n_candidates=16)
        assert shared.n_threads == 1
        _assert_same_as_sklearn(shared, pool, test, rng, prefixes=(200,), n_levels=1)


def test_shared_neighbors_argpartition_tie_rule():
    rng = np.random.default_rng(3)
    pool, test = _tied_data(rng, 300, 80, max_pixel=2)
    shared = SharedNeighbors(test, n_candidates=16, tie_rule="argpartition")
    X = pool[rng.permutation(len(pool))]
    y = rng.integers(0, 3, size=len(pool))
    level = shared.bind(X)
    for k in (3, 7):
        model = KNeighborsClassifier(n_neighbors=k).fit(X.astype(np.float64), y)
        predictions, proba, _ = level.predict(len(X), y, k)
        # uint8 queries against float64 rows take scikit-learn's chunked path.
        assert np.array_equal(predictions, model.predict(test))
        assert np.array_equal(proba, model.predict_proba(test))


def test_shared_neighbors_complete_cache():
    # With n_candidates >= pool size the cache contains every row.
    rng = np.random.default_rng(11)
    pool, test = _tied_data(rng, 60, 30, max_pixel=2)
    shared = SharedNeighbors(test, n_candidates=100)
    _assert_same_as_sklearn(shared, pool, test, rng, prefixes=(9, 31, 60))


def test_shared_neighbors_mnist_subset(mnist_dir):
    train = _read_images(mnist_dir / "train-images-idx3-ubyte.gz", 2500)
    labels = _read_labels(mnist_dir / "train-labels-idx1-ubyte.gz", 2500)
    test = _read_images(mnist_dir / "t10k-images-idx3-ubyte.gz", 300)
    # Duplicated images make exact distance ties.
    pool = np.concatenate([train, train[:500]])
    pool_labels = np.concatenate([labels, (labels[:500] + 1) % 10])
    rng = np.random.default_rng(0)
    shared = SharedNeighbors(test, n_candidates=32)
    for _ in range(2):
        permutation = rng.permutation(len(pool))
        X, y = pool[permutation], pool_labels[permutation]
        level = shared.bind(X)
        for n_rows in (900, 3000):
            outputs = level.predict_many(n_rows, y[:n_rows])
            for k in (1, 4, 9):
                expected = _sklearn_outputs(X[:n_rows], y[:n_rows], test, k)
                outputs_k = outputs.get(k) or level.predict(n_rows, y[:n_rows], k)
                assert np.array_equal(outputs_k[0], expected[0]), (n_rows, k)
                assert np.array_equal(outputs_k[1], expected[1]), (n_rows, k)


def test_squared_distances_exact_at_extremes():
    white = np.full((1, 784), 255, dtype=np.uint8)
    black = np.zeros((1, 784), dtype=np.uint8)
    shared = SharedNeighbors(np.concatenate([white, black]), n_candidates=2)
    level = shared.bind(np.concatenate([black, white, black]))
    distances, positions = level.kneighbors(3, 3, return_distance=True)
    assert positions.tolist() == [[1, 0, 2], [0, 2, 1]]
    assert distances[0, 1] ** 2 == 784 * 255**2
    assert shared._pool_distances(np.array([0]))[0].tolist() == [784 * 255**2] * 2 + [0]


def test_bind_reuses_pool_for_same_multiset(caplog):
    rng = np.random.default_rng(5)
    pool, test = _tied_data(rng, 200, 20, max_pixel=3)
    shared = SharedNeighbors(test, n_candidates=8)
    shared.bind(pool)
    ids = shared._candidate_ids
    with caplog.at_level(logging.DEBUG, logger="crowdpoison.knn"):
        shared.bind(pool[::-1])
    assert shared._candidate_ids is ids
    assert "Reusing the pool" in caplog.text
    changed = pool.copy()
    changed[0, 0] ^= 1
    shared.bind(changed)
    assert shared._candidate_ids is not ids


def test_cache_dir_round_trip(tmp_path, caplog):
    rng = np.random.default_rng(2)
    pool, test = _tied_data(rng, 300, 40, max_pixel=2)
    y = rng.integers(0, 3, size=len(pool))
    first = SharedNeighbors(test, n_candidates=8, cache_dir=tmp_path)
    expected = first.bind(pool).predict_many(300, y)
    files = sorted(path.name for path in tmp_path.iterdir())
    assert len(files) == 1
    assert files[0].endswith(".npz")

    with caplog.at_level(logging.INFO, logger="crowdpoison.knn"):
        second = SharedNeighbors(test, n_candidates=8, cache_dir=tmp_path)
        outputs = second.bind(pool).predict_many(300, y)
    assert "cache hit" in caplog.text
    assert "Searching" not in caplog.text
    for k in KS:
        for got, want in zip(outputs[k], expected[k]):
            assert np.array_equal(got, want)
    assert sorted(path.name for path in tmp_path.iterdir()) == files


def test_cache_key_depends_on_candidates(tmp_path):
    rng = np.random.default_rng(4)
    pool, test = _tied_data(rng, 100, 10)
    SharedNeighbors(test, n_candidates=8, cache_dir=tmp_path).bind(pool)
    SharedNeighbors(test, n_candidates=9, cache_dir=tmp_path).bind(pool)
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize(
    ("X_test", "options", "message"),
    [
        (np.zeros((2, 3, 4), np.uint8), {}, "2-D array"),
        (np.full((2, 4), 0.5), {}, "integer pixels"),
        (np.full((2, 4), 256), {}, r"0\.\.255"),
        (np.zeros((0, 4), np.uint8), {}, "at least one image"),
        (np.zeros((2, 4), np.uint8), {"n_candidates": 0}, "n_candidates"),
        (np.zeros((2, 4), np.uint8), {"n_candidates": 200}, "n_candidates"),
        (np.zeros((2, 4), np.uint8), {"tie_rule": "first"}, "tie_rule"),
        (np.zeros((2, 4), np.uint8), {"n_jobs": 0}, "n_jobs"),
    ],
)
def test_shared_neighbors_rejects_invalid_input(X_test, options, message):
    with pytest.raises(ValueError, match=message):
        SharedNeighbors(X_test, **options)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda level: level.predict(0, np.zeros(0), 1), "n_rows must be in"),
        (lambda level: level.predict(11, np.zeros(11), 1), "n_rows must be in"),
        (lambda level: level.predict(3, np.zeros(3), 4), "k must be in"),
        (lambda level: level.predict(5, np.zeros(4), 1), "y must be 1-D"),
        (lambda level: level.kneighbors(5, 0), "k must be in"),
    ],
)
def test_level_neighbors_rejects_invalid_input(call, message):
    rng = np.random.default_rng(0)
    shared = SharedNeighbors(rng.integers(0, 9, size=(3, 4)), n_candidates=4)
    level = shared.bind(rng.integers(0, 9, size=(10, 4)))
    with pytest.raises(ValueError, match=message):
        call(level)


def test_bind_rejects_feature_mismatch():
    shared = SharedNeighbors(np.zeros((2, 4), np.uint8))
    with pytest.raises(ValueError, match="X_level has 5 features"):
        shared.bind(np.zeros((3, 5), np.uint8))
