"""The study's twelve scikit-learn models, by name, in the study's order.

Every model with a ``random_state`` gets the training seed. KNN(k) has none: its
output depends only on the training rows, so one result serves every seed.
VF(hard) and VF(soft) vote over LR, KNN(3), DT and ANN fitted with the same seed.
"""

from dataclasses import dataclass

from sklearn.ensemble import RandomForestClassifier, VotingClassifier
from sklearn.linear_model import SGDClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.tree import DecisionTreeClassifier

VOTING_MEMBERS = ("LR", "KNN(3)", "DT", "ANN")


def make_lr(seed):
    """Return the logistic regression of the study, fitted by SGD."""
    return SGDClassifier(loss="log_loss", penalty="l2", random_state=seed)


def make_svm(seed):
    """Return the linear SVM of the study, fitted by SGD."""
    return SGDClassifier(loss="hinge", penalty="l2", random_state=seed)


def make_knn(n_neighbors):
    """Return a factory of ``KNeighborsClassifier(n_neighbors)``; it ignores the seed."""

    def factory(seed=None):
        return KNeighborsClassifier(n_neighbors=n_neighbors)

    factory.__name__ = f"make_knn{n_neighbors}"
    return factory


def make_dt(seed):
    """Return a decision tree with default settings."""
    return DecisionTreeClassifier(random_state=seed)


def make_ann(seed):
    """Return a multi-layer perceptron (one hidden layer of 100 ReLU units, Adam)."""
    return MLPClassifier(activation="relu", solver="adam", random_state=seed)


def make_rf(seed):
    """Return a random forest with default settings (100 trees)."""
    return RandomForestClassifier(random_state=seed)


def _make_voting(voting):
    def factory(seed):
        estimators = [
            (name.lower().replace("(", "").replace(")", ""), MODELS[name].make(seed))
            for name in VOTING_MEMBERS
        ]
        return VotingClassifier(estimators=estimators, voting=voting)

    factory.__name__ = f"make_vf_{voting}"
    return factory


@dataclass(frozen=True)
class ModelSpec:
    """One model of the grid.

    Attributes
    ----------
    name : str
        Name written in the results' ``model`` column.
    factory : callable
        ``factory(seed)`` returns a new unfitted estimator.
    deterministic : bool
        True when the fitted model does not depend on the seed (KNN).
    members : tuple of str
        Names of the voting members, empty for a single model.
    n_neighbors : int or None
        k of a KNN model, None for the others.
    """

    name: str
    factory: object
    deterministic: bool = False
    members: tuple = ()
    n_neighbors: int | None = None

    def make(self, seed):
        """Return a new unfitted estimator for ``seed``."""
        return self.factory(seed)


def _build_registry():
    specs = [
        ModelSpec("LR", make_lr),
        ModelSpec("SVM", make_svm),
        *(
            ModelSpec(f"KNN({k})", make_knn(k), deterministic=True, n_neighbors=k)
            for k in (1, 3, 5, 7, 9)
        ),
        ModelSpec("DT", make_dt),
        ModelSpec("ANN", make_ann),
        ModelSpec("RF", make_rf),
        ModelSpec("VF(hard)", _make_voting("hard"), members=VOTING_MEMBERS),
        ModelSpec("VF(soft)", _make_voting("soft"), members=VOTING_MEMBERS),
    ]
    return {spec.name: spec for spec in specs}


MODELS = _build_registry()
MODEL_NAMES = tuple(MODELS)
MODEL_INDEX = {name: index for index, name in enumerate(MODEL_NAMES)}


def make_model(name, seed):
    """Return a new unfitted estimator of the model ``name`` for ``seed``.

    Parameters
    ----------
    name : str
        One of ``MODEL_NAMES``.
    seed : int
        ``random_state`` of the estimator and of every voting member; KNN ignores it.

    Returns
    -------
    estimator
        An unfitted scikit-learn classifier.

    Raises
    ------
    KeyError
        If ``name`` is not a model of the grid.
    """
    return MODELS[name].make(seed)


def is_knn(name):
    """Return whether the model ``name`` is a KNN model."""
    return MODELS[name].n_neighbors is not None


def is_voting(name):
    """Return whether the model ``name`` votes over members."""
    return bool(MODELS[name].members)
