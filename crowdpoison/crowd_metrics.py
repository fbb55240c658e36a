"""Per-level measures of a crowd: label cost, poisoning and detection of attackers.

The detection measures compare the bots that a reliability-estimating method
flags as malicious (estimated skill below a threshold) with the truth of a
simulated level, where bots ``0 .. n_malicious - 1`` are the malicious ones.
Undefined ratios (nothing accepted, nothing flagged, no malicious bot) are
``None``, which JSON writes as ``null``.
"""

import numpy as np

from .aggregation import make_aggregation

# Bots whose estimated skill is below this are flagged as malicious. A skill is
# an estimated probability of answering correctly (Dawid-Skene) or of knowing
# the label (MACE), so 0.5 separates bots right more often than not.
DEFAULT_SKILL_THRESHOLD = 0.5


def poisoned_share(poisoned, accepted):
    """Return the fraction of accepted labels that are wrong, or None if none."""
    return poisoned / accepted if accepted else None


def captchas_per_label(captchas, accepted):
    """Return the captchas served per accepted label, or None if none."""
    return captchas / accepted if accepted else None


def flag_malicious(skills, threshold=DEFAULT_SKILL_THRESHOLD):
    """Return the sorted ids of the bots whose skill is below ``threshold``.

    Parameters
    ----------
    skills : dict of int to float
        Estimated skill per bot id; bots that cast no vote are absent and never
        flagged.
    threshold : float, default=0.5
        Skills strictly below it are flagged.

    Returns
    -------
    list of int
    """
    return sorted(bot for bot, skill in skills.items() if skill < threshold)


def detection_scores(flagged, n_malicious):
    """Score a set of flagged bots against the malicious bots ``0 .. n_malicious - 1``.

    Parameters
    ----------
    flagged : iterable of int
        Ids of the bots estimated to be malicious.
    n_malicious : int
        Number of malicious bots; they carry the lowest ids.

    Returns
    -------
    dict
        ``precision``: share of the flagged bots that are malicious, None when
        no bot is flagged. ``recall``: share of the malicious bots that are
        flagged, None when there is no malicious bot.
    """
    flagged = set(flagged)
    hits = sum(1 for bot in flagged if bot < n_malicious)
    return {
        "precision": hits / len(flagged) if flagged else None,
        "recall": hits / n_malicious if n_malicious else None,
    }


def audit_reliability(
    vote_log, n_malicious, methods, *, threshold=DEFAULT_SKILL_THRESHOLD
):
    """Estimate every bot's skill with each method and score the flagged bots.

    Parameters
    ----------
    vote_log : array-like of int, shape (n_votes, 3)
        Every vote of the level as (row id, bot id, label) rows.
    n_malicious : int
        Number of malicious bots, which carry the ids ``0 .. n_malicious - 1``.
    methods : iterable of str
        Names of reliability-estimating aggregations, such as ``"dawid-skene"``.
    threshold : float, default=0.5
        Bots whose skill is below it are flagged as malicious.

    Returns
    -------
    dict of str to dict
        Per method: ``skills`` (bot id as a string to skill, for JSON),
        ``threshold``, ``flagged`` (sorted bot ids), ``precision`` and ``recall``
        (see :func:`detection_scores`).
    """
    vote_log = np.asarray(vote_log, dtype=np.int64).reshape(-1, 3)
    audits = {}
    for name in methods:
        skills = make_aggregation(name).estimate_skills(vote_log)
        flagged = flag_malicious(skills, threshold)
        audits[name] = {
            "skills": {str(bot): skill for bot, skill in skills.items()},
            "threshold": threshold,
            "flagged": flagged,
            **detection_scores(flagged, n_malicious),
        }
    return audits
