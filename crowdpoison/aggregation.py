"""Rules that turn a full set of votes on an image into an accepted label.

An online rule decides each image alone, as soon as its votes are complete. A
batch rule sees every vote collected so far, with the id of the user who cast
it, and decides many images at once.
"""

from collections import Counter


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


AGGREGATIONS = {
    MajorityVote.name: MajorityVote,
    PluralityVote.name: PluralityVote,
}


def make_aggregation(name, **params):
    """Return the aggregation rule registered as ``name``."""
    try:
        factory = AGGREGATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown aggregation {name!r}; expected one of {sorted(AGGREGATIONS)}"
        ) from None
    return factory(**params)
