"""Hard and soft voting from the outputs of already fitted classifiers.

``VotingClassifier`` refits clones of its members. When the members are already
fitted on the same rows, their predictions and probabilities give the ensemble's
output directly. The functions here reproduce scikit-learn 1.9.1's
``VotingClassifier(voting="hard")`` and ``VotingClassifier(voting="soft")``
without weights:

- ``VotingClassifier`` fits its clones on labels encoded by a ``LabelEncoder``
  (``0 .. n_classes - 1`` in the order of ``np.unique(y)``). SGDClassifier,
  KNeighborsClassifier, DecisionTreeClassifier and MLPClassifier sort the labels
  themselves, so a member fitted on the raw labels is the same model whose
  predictions are the ``classes`` at the encoded indices; the tests check this,
  also with a class missing from the labels.
- Hard voting counts the members' predicted class indices per sample and takes
  the first index with the largest count, so the smallest class wins a tie.
- Soft voting is ``np.average`` of the stacked ``predict_proba`` arrays over the
  members, then the first class with the largest mean probability.
"""

import numpy as np


def _check_classes(classes):
    classes = np.asarray(classes)
    if classes.ndim != 1 or len(classes) == 0:
        raise ValueError(
            f"classes must be a non-empty 1-D array, got shape {classes.shape}"
        )
    if np.any(classes[1:] <= classes[:-1]):
        raise ValueError(
            "classes must be sorted and unique like np.unique(y), "
            f"got {classes.tolist()}"
        )
    return classes


def hard_vote(member_predictions, classes):
    """Return the predictions of ``VotingClassifier(voting="hard")``.

    Parameters
    ----------
    member_predictions : sequence of array-like of shape (n_samples,)
        ``predict(X)`` of every member, in the order of the ensemble's
        estimators, each with labels from ``classes``.
    classes : array-like of shape (n_classes,)
        ``np.unique(y)`` of the training labels, the ensemble's ``classes_``.

    Returns
    -------
    ndarray of shape (n_samples,)
        The label that most members predict; among equal counts, the smallest.

    Raises
    ------
    ValueError
        If the members disagree on the number of samples, or a member predicts a
        label that is not in ``classes``.
    """
    classes = _check_classes(classes)
    lengths = [np.shape(prediction) for prediction in member_predictions]
    if not lengths or len(set(lengths)) != 1 or len(lengths[0]) != 1:
        raise ValueError(
            "member_predictions must be one 1-D array per member, all of the "
            f"same length, got shapes {lengths}"
        )
    predictions = np.asarray(member_predictions)
    indices = np.searchsorted(classes, predictions)
    indices = np.minimum(indices, len(classes) - 1)
    unknown = classes[indices] != predictions
    if unknown.any():
        member, sample = np.argwhere(unknown)[0]
        raise ValueError(
            f"member {member} predicts label {predictions[member, sample].item()!r} for "
            f"sample {sample}, which is not in classes {classes.tolist()}; pass "
            "np.unique of the training labels that every member was fitted on"
        )

    n_samples = predictions.shape[1]
    flat = np.arange(n_samples) * len(classes) + indices
    counts = np.bincount(flat.ravel(), minlength=n_samples * len(classes))
    counts = counts.reshape(n_samples, len(classes))
    return classes[counts.argmax(axis=1)]


def soft_vote(member_probas, classes):
    """Return predictions and probabilities of ``VotingClassifier(voting="soft")``.

    Parameters
    ----------
    member_probas : sequence of array-like of shape (n_samples, n_classes)
        ``predict_proba(X)`` of every member, in the order of the ensemble's
        estimators, columns in the order of ``classes``.
    classes : array-like of shape (n_classes,)
        ``np.unique(y)`` of the training labels, the ensemble's ``classes_``.

    Returns
    -------
    predictions : ndarray of shape (n_samples,)
        The class with the largest mean probability; among equal means, the
        smallest.
    proba : ndarray of shape (n_samples, n_classes)
        ``np.average`` of the members' probabilities over the members, as
        ``VotingClassifier.predict_proba`` computes it.

    Raises
    ------
    ValueError
        If the members' arrays differ in shape or have not one column per class.
    """
    classes = _check_classes(classes)
    shapes = {np.shape(proba) for proba in member_probas}
    if len(shapes) != 1:
        raise ValueError(
            "member_probas must all have the same shape (n_samples, n_classes), "
            f"got shapes {sorted(shapes)}"
        )
    (shape,) = shapes
    if len(shape) != 2 or shape[1] != len(classes):
        raise ValueError(
            f"member_probas must have shape (n_samples, {len(classes)}) with one "
            f"column per class, got {shape}"
        )
    proba = np.average(np.asarray(member_probas), axis=0)
    return classes[proba.argmax(axis=1)], proba
