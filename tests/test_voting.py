"""Tests of crowdpoison.voting against scikit-learn's VotingClassifier."""

import gzip
import warnings

import numpy as np
import pytest
from sklearn.ensemble import VotingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.tree import DecisionTreeClassifier

from crowdpoison.voting import hard_vote, soft_vote

SEED = 3


def _members(seed=SEED):
    return [
        ("lr", SGDClassifier(loss="log_loss", random_state=seed)),
        ("knn", KNeighborsClassifier(n_neighbors=3)),
        ("dt", DecisionTreeClassifier(random_state=seed)),
        (
            "ann",
            MLPClassifier(hidden_layer_sizes=(16,), max_iter=30, random_state=seed),
        ),
    ]


def _read_mnist(mnist_dir, n_train, n_test):
    def images(name, n_images):
        with gzip.open(mnist_dir / name) as stream:
            stream.read(16)
            data = stream.read(n_images * 784)
        return np.frombuffer(data, np.uint8).reshape(n_images, 784).astype(np.float64)

    def labels(name, n_labels):
        with gzip.open(mnist_dir / name) as stream:
            stream.read(8)
            return np.frombuffer(stream.read(n_labels), np.uint8).astype(np.int64)

    return (
        images("train-images-idx3-ubyte.gz", n_train),
        labels("train-labels-idx1-ubyte.gz", n_train),
        images("t10k-images-idx3-ubyte.gz", n_test),
    )


def _assert_matches_voting_classifier(X, y, X_test):
    classes = np.unique(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = [estimator.fit(X, y) for _, estimator in _members()]
        hard = VotingClassifier(_members(), voting="hard").fit(X, y)
        soft = VotingClassifier(_members(), voting="soft").fit(X, y)

    for member, clone in zip(fitted, hard.estimators_):
        # The clone saw encoded labels, the member the raw ones.
        assert np.array_equal(classes[clone.predict(X_test)], member.predict(X_test)), (
            type(member).__name__
        )
        assert np.array_equal(
            clone.predict_proba(X_test), member.predict_proba(X_test)
        ), type(member).__name__

    predictions = hard_vote([member.predict(X_test) for member in fitted], classes)
    assert np.array_equal(predictions, hard.predict(X_test))
    predictions, proba = soft_vote(
        [member.predict_proba(X_test) for member in fitted], classes
    )
    assert np.array_equal(predictions, soft.predict(X_test))
    assert np.array_equal(proba, soft.predict_proba(X_test))


def test_voting_matches_mnist_subset(mnist_dir):
    X, y, X_test = _read_mnist(mnist_dir, 400, 200)
    _assert_matches_voting_classifier(X / 255.0, y, X_test / 255.0)


def test_voting_matches_without_one_class(mnist_dir):
    X, y, X_test = _read_mnist(mnist_dir, 450, 200)
    keep = y != 3
    _assert_matches_voting_classifier(X[keep] / 255.0, y[keep], X_test / 255.0)


def test_voting_matches_synthetic_ties():
    # Few coarse features make members disagree and tie. Labels skip 2 and 5.
    rng = np.random.default_rng(0)
    X = rng.integers(0, 3, size=(300, 5)).astype(np.float64)
    y = rng.choice([0, 1, 3, 4, 6, 7], size=300)
    X_test = rng.integers(0, 3, size=(400, 5)).astype(np.float64)
    _assert_matches_voting_classifier(X, y, X_test)


def test_voting_matches_string_labels():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 4))
    y = np.array(["cat", "dog", "emu"])[rng.integers(0, 3, size=120)]
    _assert_matches_voting_classifier(X, y, rng.normal(size=(50, 4)))


def test_hard_vote_tie_takes_smallest_class():
    classes = np.array([2, 5, 7, 9])
    predictions = [[9, 5, 7], [7, 5, 9], [9, 2, 2], [7, 2, 9]]
    assert hard_vote(predictions, classes).tolist() == [7, 2, 9]


def test_soft_vote_tie_takes_smallest_class():
    classes = np.array([1, 4])
    probas = [
        np.array([[0.25, 0.75], [0.5, 0.5]]),
        np.array([[0.75, 0.25], [0.5, 0.5]]),
    ]
    predictions, proba = soft_vote(probas, classes)
    assert predictions.tolist() == [1, 1]
    assert proba.tolist() == [[0.5, 0.5], [0.5, 0.5]]


@pytest.mark.parametrize(
    ("predictions", "classes", "message"),
    [
        ([[0, 1], [0, 3]], [0, 1, 2], "predicts label 3 for sample 1"),
        ([[0, 1], [0]], [0, 1], "one 1-D array per member"),
        ([], [0, 1], "one 1-D array per member"),
        ([[0, 1]], [1, 0], "sorted and unique"),
        ([[0, 1]], [], "non-empty"),
    ],
)
def test_hard_vote_rejects_invalid_input(predictions, classes, message):
    with pytest.raises(ValueError, match=message):
        hard_vote(predictions, classes)


@pytest.mark.parametrize(
    ("probas", "classes", "message"),
    [
        ([np.ones((2, 2)), np.ones((3, 2))], [0, 1], "same shape"),
        ([np.ones((2, 3))], [0, 1], r"shape \(n_samples, 2\)"),
        ([np.ones(2)], [0, 1], r"shape \(n_samples, 2\)"),
    ],
)
def test_soft_vote_rejects_invalid_input(probas, classes, message):
    with pytest.raises(ValueError, match=message):
        soft_vote(probas, classes)
