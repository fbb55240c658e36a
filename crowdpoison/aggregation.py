"""Rules that turn a full set of votes on an image into an accepted label.

An online rule decides each image alone, as soon as its votes are complete. A
batch rule sees every vote collected so far, with the id of the user who cast
it, and decides many images at once.
"""

import warnings
from collections import Counter

import numpy as np
import pandas as pd
from crowdkit.aggregation import MACE, DawidSkene


class MajorityVote:
    """Accept the label that holds a strict majority, more than half the votes.

    Without such a label the votes are discarded and the image is served again.
    With one vote per image every answer is accepted.
    """

    name = "majority"
    online = True

    def decide(self, labels, n_votes):
        """Return the majority label of ``labels``, or None when there is none."""
        if n_votes == 1:
            return labels[0]
        counts = {}
        for label in labels:
            count = counts.get(label, 0) + 1
            if 2 * count > n_votes:
                return label
            counts[label] = count
        return None


class PluralityVote:
    """Accept the most frequent label; a tie for the top count re-queues the image."""

    name = "plurality"
    online = True

    def decide(self, labels, n_votes):
        """Return the single most frequent label, or None on a tie."""
        top = Counter(labels).most_common(2)
        if len(top) == 2 and top[0][1] == top[1][1]:
            return None
        return top[0][0]


# Columns of the long-format vote table that every crowd-kit method reads.
VOTE_COLUMNS = ("task", "worker", "label")


def vote_frame(vote_log):
    """Convert a vote log into crowd-kit's long format.

    Parameters
    ----------
    vote_log : array-like of int, shape (n_votes, 3)
        One (row id, bot id, label) row per vote, as returned by
        :meth:`crowdpoison.service.Dataset.vote_log`.

    Returns
    -------
    pandas.DataFrame
        Columns ``task`` (the row id), ``worker`` (the bot id) and ``label``, in
        the order of the log.
    """
    votes = np.asarray(vote_log, dtype=np.int64).reshape(-1, 3)
    return pd.DataFrame(votes, columns=list(VOTE_COLUMNS))


class ReliabilityAggregation:
    """Base of the batch methods that estimate each bot's reliability with crowd-kit.

    Every vote must carry the id of the bot that cast it, as a real service
    carries a session id. Votes without one (bot id -1) are pooled as a single
    user. The method fits on the whole vote log, every round of every image
    included, and returns a label for each held image: the label of highest
    posterior probability. A held image is re-queued when two labels tie for that
    probability or when it is below ``min_confidence``. The default of 0.5
    re-queues an image unless its top label is more probable than all others
    together, such as an image whose every vote comes from colluding bots that
    the fit has already judged unreliable.

    NOTE: the fit trusts whichever group of bots agrees most. When malicious
    bots cast most of the votes, they are estimated reliable and the honest
    bots unreliable, so nearly every accepted label is poisoned, more than
    under majority voting.

    Subclasses implement ``_fit(votes)`` returning the posterior probabilities
    (a DataFrame indexed by task with one column per label) and the skills (a
    Series indexed by worker).

    Parameters
    ----------
    min_confidence : float, default=0.5
        Lowest posterior probability, in [0, 1], at which the top label of a held
        image is accepted.
    """

    online = False

    # Relative gap under which two posterior probabilities count as a tie.
    tie_tolerance = 1e-9

    def __init__(self, *, min_confidence=0.5):
        if not 0 <= min_confidence <= 1:
            raise ValueError(f"min_confidence must lie in [0, 1], got {min_confidence}")
        self.min_confidence = float(min_confidence)

    def aggregate(self, vote_log, held):
        """Decide the held images from every vote cast so far.

        Parameters
        ----------
        vote_log : ndarray of int64, shape (n_votes, 3)
            Every vote so far as (row id, bot id, label) rows.
        held : sequence of int
            Pool indices (row id minus the number of trusted rows) of the images
            waiting for a decision.

        Returns
        -------
        dict of int to int
            The label per row id, for every image in the log that has a single
            top label of at least ``min_confidence``. The log does not carry the
            number of trusted rows, so held pool indices cannot be turned into
            row ids here. The service looks up the held images in this superset
            and re-queues those missing from it.
        """
        votes = vote_frame(vote_log)
        if votes.empty or len(held) == 0:
            return {}
        probas, _ = self._quiet_fit(votes)
        return self._decide(probas)

    def estimate_skills(self, vote_log):
        """Estimate the reliability of every bot that voted.

        Parameters
        ----------
        vote_log : array-like of int, shape (n_votes, 3)
            Votes as (row id, bot id, label) rows.

        Returns
        -------
        dict of int to float
            Skill in [0, 1] per bot id, higher meaning more reliable. What the
            skill measures depends on the method (see the class docstring).
        """
        votes = vote_frame(vote_log)
        if votes.empty:
            return {}
        _, skills = self._quiet_fit(votes)
        return {int(bot): float(skill) for bot, skill in skills.sort_index().items()}

    def _quiet_fit(self, votes):
        # crowd-kit 1.4.2 calls pandas APIs that pandas 3 deprecates, once per EM
        # iteration. The warnings carry no information about the votes.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", category=DeprecationWarning, module=r"crowdkit\."
            )
            warnings.filterwarnings(
                "ignore", category=FutureWarning, module=r"crowdkit\."
            )
            return self._fit(votes)

    def _decide(self, probas):
        probas = probas.reindex(columns=sorted(probas.columns), fill_value=0.0)
        values = probas.to_numpy(dtype=float)
        labels = probas.columns.to_numpy()
        order = np.argsort(-values, axis=1, kind="stable")
        top = values[np.arange(len(values)), order[:, 0]]
        if values.shape[1] > 1:
            second = values[np.arange(len(values)), order[:, 1]]
        else:
            second = np.zeros_like(top)
        tied = second >= top * (1 - self.tie_tolerance)
        accepted = ~tied & (top >= self.min_confidence)
        return {
            int(row): int(labels[index])
            for row, index, keep in zip(probas.index, order[:, 0], accepted)
            if keep
        }


class DawidSkeneAggregation(ReliabilityAggregation):
    """Dawid-Skene aggregation from crowd-kit: one confusion matrix per bot.

    EM (crowd-kit's ``DawidSkene``) estimates, for every bot, the probability of
    each answer given each true label, and the posterior of every image's label.
    A bot that always answers the next class is thus decoded as well as flagged.
    The fit is deterministic: it starts from the majority vote and has no random
    draws. Every vote must carry its bot's id (a session id in a real service).

    The skill of a bot is its estimated accuracy, the diagonal of its confusion
    matrix weighted by the estimated class priors.

    Parameters
    ----------
    n_iter : int, default=100
        Maximum number of EM iterations.
    tol : float, default=1e-5
        EM stops when the evidence lower bound per vote gains less than this.
    min_confidence : float, default=0.5
        Lowest posterior probability at which a held image's top label is
        accepted.
    """

    name = "dawid-skene"

    def __init__(self, *, n_iter=100, tol=1e-5, min_confidence=0.5):
        super().__init__(min_confidence=min_confidence)
        self.n_iter = int(n_iter)
        self.tol = float(tol)

    def _fit(self, votes):
        model = DawidSkene(n_iter=self.n_iter, tol=self.tol)
        probas = model.fit_predict_proba(votes)
        # errors_ rows are (worker, observed label), columns the true label.
        errors = model.errors_.stack()
        errors.index = errors.index.set_names(["worker", "observed", "true"])
        diagonal = errors[
            errors.index.get_level_values("observed")
            == errors.index.get_level_values("true")
        ]
        priors = model.priors_.reindex(
            diagonal.index.get_level_values("true"), fill_value=0.0
        )
        weighted = diagonal.to_numpy() * priors.to_numpy()
        skills = pd.Series(weighted, index=diagonal.index).groupby("worker").sum()
        return probas, skills


class MACEAggregation(ReliabilityAggregation):
    """MACE aggregation from crowd-kit: each bot either knows the label or spams.

    MACE (Hovy et al., 2013; crowd-kit's ``MACE``) models each bot as answering
    the true label with probability ``competence`` and otherwise drawing from its
    own label distribution; the skill of a bot is that competence. A bot that
    answers a fixed wrong function of the true label is a spammer to MACE, so
    MACE flags it but cannot decode it as Dawid-Skene can. Every vote must carry
    its bot's id (a session id in a real service).

    The fit is deterministic. crowd-kit draws the initial parameters of every
    restart from the same integer ``random_state``, so its restarts are
    identical and a single one is run. Fewer iterations than crowd-kit's default
    of 50 keep a fit on a whole MNIST level's votes to a few seconds.

    Parameters
    ----------
    n_iter : int, default=20
        Variational EM iterations.
    random_state : int, default=0
        Seed of the initial parameters.
    min_confidence : float, default=0.5
        Lowest posterior probability at which a held image's top label is
        accepted.
    """

    name = "mace"

    def __init__(self, *, n_iter=20, random_state=0, min_confidence=0.5):
        super().__init__(min_confidence=min_confidence)
        self.n_iter = int(n_iter)
        self.random_state = int(random_state)

    def _fit(self, votes):
        # NOTE: crowd-kit 1.4.2 MACE indexes its parameters by order of first
        # appearance but fills some of them from pandas groupbys in sorted order.
        # Coding workers and labels by order of first appearance makes the two
        # orders agree.
        worker_codes, workers = pd.factorize(votes["worker"])
        label_codes, labels = pd.factorize(votes["label"])
        coded = pd.DataFrame(
            {"task": votes["task"], "worker": worker_codes, "label": label_codes}
        )
        model = MACE(n_restarts=1, n_iter=self.n_iter, random_state=self.random_state)
        probas = model.fit_predict_proba(coded)
        probas = probas.rename(columns=dict(enumerate(labels)))
        probas.index.name = "task"
        skills = pd.Series(
            model.spamming_[:, 1], index=pd.Index(workers, name="worker")
        )
        return probas, skills


AGGREGATIONS = {
    MajorityVote.name: MajorityVote,
    PluralityVote.name: PluralityVote,
    DawidSkeneAggregation.name: DawidSkeneAggregation,
    MACEAggregation.name: MACEAggregation,
}


def make_aggregation(name, **params):
    """Return the aggregation rule registered as ``name``."""
    return _registered(name)(**params)


def estimates_reliability(name):
    """Return whether the aggregation registered as ``name`` estimates bot skills."""
    return issubclass(_registered(name), ReliabilityAggregation)


def _registered(name):
    try:
        return AGGREGATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown aggregation {name!r}; expected one of {sorted(AGGREGATIONS)}"
        ) from None
