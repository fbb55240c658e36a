"""Tests of the model registry."""

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier, VotingClassifier
from sklearn.linear_model import SGDClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.tree import DecisionTreeClassifier

from crowdpoison.models import (
    MODEL_NAMES,
    MODELS,
    VOTING_MEMBERS,
    is_knn,
    is_voting,
    make_model,
)
from crowdpoison.results import MODEL_ORDER


def test_models_names_and_order():
    assert MODEL_NAMES == MODEL_ORDER


@pytest.mark.parametrize(
    ("name", "kind", "params"),
    [
        ("LR", SGDClassifier, {"loss": "log_loss", "penalty": "l2", "random_state": 7}),
        ("SVM", SGDClassifier, {"loss": "hinge", "penalty": "l2", "random_state": 7}),
        ("KNN(1)", KNeighborsClassifier, {"n_neighbors": 1}),
        ("KNN(9)", KNeighborsClassifier, {"n_neighbors": 9}),
        ("DT", DecisionTreeClassifier, {"random_state": 7}),
        (
            "ANN",
            MLPClassifier,
            {"activation": "relu", "solver": "adam", "random_state": 7},
        ),
        ("RF", RandomForestClassifier, {"n_estimators": 100, "random_state": 7}),
        ("VF(hard)", VotingClassifier, {"voting": "hard"}),
        ("VF(soft)", VotingClassifier, {"voting": "soft"}),
    ],
)
def test_make_model_parameters(name, kind, params):
    estimator = make_model(name, 7)
    assert type(estimator) is kind
    for key, value in params.items():
        assert estimator.get_params()[key] == value


def test_make_model_voting_members_share_seed():
    estimator = make_model("VF(soft)", 11)
    members = [member for _, member in estimator.estimators]
    assert [type(member) for member in members] == [
        SGDClassifier,
        KNeighborsClassifier,
        DecisionTreeClassifier,
        MLPClassifier,
    ]
    assert members[0].random_state == 11
    assert members[1].n_neighbors == 3
    assert members[2].random_state == 11
    assert members[3].random_state == 11


def test_models_registry_flags():
    assert [name for name in MODEL_NAMES if MODELS[name].deterministic] == [
        "KNN(1)",
        "KNN(3)",
        "KNN(5)",
        "KNN(7)",
        "KNN(9)",
    ]
    assert [name for name in MODEL_NAMES if is_knn(name)] == [
        "KNN(1)",
        "KNN(3)",
        "KNN(5)",
        "KNN(7)",
        "KNN(9)",
    ]
    assert [name for name in MODEL_NAMES if is_voting(name)] == ["VF(hard)", "VF(soft)"]
    assert MODELS["VF(hard)"].members == VOTING_MEMBERS == ("LR", "KNN(3)", "DT", "ANN")


def test_make_model_returns_new_estimators():
    first = make_model("DT", 3)
    second = make_model("DT", 3)
    assert first is not second


def test_make_model_same_seed_same_fit():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 2, size=(60, 16)).astype(np.float64)
    y = rng.integers(0, 3, size=60)
    first = make_model("RF", 5).fit(X, y).predict_proba(X)
    second = make_model("RF", 5).fit(X, y).predict_proba(X)
    assert np.array_equal(first, second)


def test_make_model_rejects_unknown_name():
    with pytest.raises(KeyError, match="KNN\\(2\\)"):
        make_model("KNN(2)", 3)
