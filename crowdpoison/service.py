"""The captcha service that turns users' answers into training labels.

Each captcha shows ``n_left`` images whose labels the service knows (the trusted
rows) and ``n_right`` images from the unlabelled pool. A user who gets the known
part right passes; their answers on the unknown part become votes. An image
whose votes reach ``n_votes`` is resolved by the aggregation rule: by default a
label with a strict majority (more than ``n_votes / 2`` votes) is accepted,
otherwise the votes are discarded and the image goes back into the pool.
"""

import math
import threading
from dataclasses import dataclass

import numpy as np

from .aggregation import MajorityVote


@dataclass(frozen=True, slots=True)
class Captcha:
    """One captcha as the service hands it out.

    Attributes
    ----------
    ticket : int
        Single-use id that ``check_captcha`` takes back with the answers.
    left : tuple of int
        Row ids of the images with known labels, drawn from the trusted rows.
    right : tuple of int
        Row ids of the images from the unlabelled pool.
    """

    ticket: int
    left: tuple
    right: tuple


@dataclass(slots=True)
class ServiceCounts:
    """Counters that the service keeps while it runs."""

    captchas: int = 0
    rejected: int = 0
    votes: int = 0
    accepted: int = 0
    poisoned: int = 0
    discarded_rounds: int = 0
    passes: int = 0


class Dataset:
    """Captcha service over a labelled training set.

    The first ``base`` fraction of the rows is trusted: their labels are known and
    they form batch 1 at once. The remaining rows form the pool whose labels come
    from the users' votes. Every ``step`` times the pool size accepted labels, the
    service emits the next batch; when the pool is exhausted it emits the rest, so
    no accepted label is lost.

    All public methods take a lock, so several threads may serve and check
    captchas at once.

    Parameters
    ----------
    labels : array-like of int, shape (n_rows,)
        True label of every training row. The service uses it to check the known
        part of a captcha and to count the accepted labels that are wrong.
    base : float, default=0.3
        Fraction of the rows, in (0, 1], that is trusted.
    step : float, default=0.1
        Fraction of the pool, in (0, 1], that makes a batch.
    n_left, n_right : int, default=3
        Number of known and unknown images per captcha.
    n_votes : int, default=3
        Votes an image collects before it is resolved. ``1`` accepts every
        answer at once (no voting).
    aggregation : Aggregation, default=None
        How full sets of votes become labels; ``None`` means
        :class:`~crowdpoison.aggregation.MajorityVote`.
    random_state : int or numpy.random.Generator, default=None
        Source of the random draws of the known images.
    on_batch : callable, default=None
        Called as ``on_batch(number, row_ids, labels)`` for every batch, starting
        with batch 1 (the trusted rows) during construction. ``row_ids`` and
        ``labels`` are int64 arrays in acceptance order.
    keep_votes : bool, default=False
        Keep every vote with its bot id for :meth:`vote_log`. Batch aggregation
        methods always keep them.
    """

    def __init__(
        self,
        labels,
        *,
        base=0.3,
        step=0.1,
        n_left=3,
        n_right=3,
        n_votes=3,
        aggregation=None,
        random_state=None,
        on_batch=None,
        keep_votes=False,
    ):
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError("labels must be a non-empty 1-D array")
        if not 0 < base <= 1:
            raise ValueError(f"base must lie in (0, 1], got {base}")
        if not 0 < step <= 1:
            raise ValueError(f"step must lie in (0, 1], got {step}")
        for name, value in (
            ("n_left", n_left),
            ("n_right", n_right),
            ("n_votes", n_votes),
        ):
            if int(value) != value or value < 1:
                raise ValueError(
                    f"{name} must be an integer of at least 1, got {value}"
                )

        self.n_rows = labels.size
        self.n_trusted = trusted_row_count(self.n_rows, base)
        if n_left > self.n_trusted:
            raise ValueError(
                f"n_left={n_left} exceeds the {self.n_trusted} trusted rows; "
                "lower n_left or raise base"
            )
        self.pool_size = self.n_rows - self.n_trusted
        self.batch_size = batch_row_count(self.pool_size, step)
        self.n_left = int(n_left)
        self.n_right = int(n_right)
        self.n_votes = int(n_votes)
        self.aggregation = MajorityVote() if aggregation is None else aggregation
        self.keep_votes = bool(keep_votes) or not self.aggregation.online
        self.counts = ServiceCounts()

        self._truth = labels.tolist()
        self._rng = np.random.default_rng(random_state)
        self._on_batch = on_batch
        self._lock = threading.RLock()

        # Per pool image (index = row id - n_trusted): the votes of the current
        # round as (bot, label) pairs, the captchas served but not yet answered,
        # and the accepted label (-1 while unlabelled).
        self._votes = [[] for _ in range(self.pool_size)]
        self._outstanding = [0] * self.pool_size
        self._accepted = [-1] * self.pool_size
        self._held = []
        self._held_set = set()
        self._vote_log = []
        self._tickets = {}
        self._next_ticket = 0
        self._left_buffer = []

        # Round-robin order: the images still pending in this pass, and a cursor.
        self._pass_order = list(range(self.pool_size))
        self._cursor = 0
        self._n_pending = self.pool_size
        self.counts.passes = 1 if self.pool_size else 0

        self._batch_number = 0
        self._unbatched_ids = []
        self._unbatched_labels = []
        trusted = np.arange(self.n_trusted, dtype=np.int64)
        self._emit_batch(trusted, labels[: self.n_trusted].copy())

    # -- public API ---------------------------------------------------------

    @property
    def exhausted(self):
        """Whether every pool image holds an accepted label."""
        return self._n_pending == 0

    @property
    def n_pending(self):
        """Number of pool images without an accepted label."""
        return self._n_pending

    @property
    def batches_written(self):
        """Number of batches emitted so far, batch 1 included."""
        return self._batch_number

    def get_captcha(self):
        """Serve a captcha, or return None when no pool image can take a vote.

        The known images are drawn at random, without repetition, from the
        trusted rows. The unknown images are the next ones of the pool in
        round-robin order, skipping images that are labelled or already hold a
        full set of votes (answered or outstanding). Near the end of the pool a
        captcha may show fewer than ``n_right`` unknown images, but never the same
        image twice.
        """
        with self._lock:
            right = self._next_pool_images()
            if not right:
                return None
            for row in right:
                self._outstanding[row - self.n_trusted] += 1
            ticket = self._next_ticket
            self._next_ticket += 1
            captcha = Captcha(ticket, self._draw_left(), tuple(right))
            self._tickets[ticket] = captcha
            self.counts.captchas += 1
            return captcha

    def check_captcha(self, ticket, answers, *, bot=None):
        """Check a captcha's answers and record the votes on its unknown part.

        Parameters
        ----------
        ticket : int
            The ticket of a captcha from ``get_captcha``; each is valid once.
        answers : sequence of int
            Labels for ``captcha.left`` followed by labels for ``captcha.right``.
        bot : int, default=None
            Id of the user who answered, kept with each vote for aggregation
            methods that estimate each user's reliability.

        Returns
        -------
        bool
            True when the captcha passed. An unknown or reused ticket, answers of
            the wrong length and a wrong known part are rejected.
        """
        with self._lock:
            captcha = self._tickets.pop(ticket, None)
            if captcha is None:
                self.counts.rejected += 1
                return False
            answers = list(answers)
            left, right = captcha.left, captcha.right
            n_left = len(left)
            known_ok = len(answers) == n_left + len(right)
            truth = self._truth
            for i in range(n_left if known_ok else 0):
                if answers[i] != truth[left[i]]:
                    known_ok = False
                    break
            outstanding = self._outstanding
            offset = self.n_trusted
            for row in right:
                outstanding[row - offset] -= 1
            if not known_ok:
                self.counts.rejected += 1
                return False
            record_vote = self._record_vote
            for row, label in zip(right, answers[n_left:]):
                record_vote(row - offset, bot, int(label))
            if self._held or self._n_pending == 0:
                self._maybe_finish()
            return True

    def flush(self):
        """Emit the accepted labels not yet in a batch as a final batch.

        Used when a simulation stops before the pool is exhausted, so that what
        was accepted is not lost. Held images of a batch aggregation method are
        resolved first.
        """
        with self._lock:
            self._resolve_held(force=True)
            self._emit_pending_batch()

    def accepted_labels(self):
        """Return the accepted label of every pool image, -1 where unlabelled."""
        with self._lock:
            return np.array(self._accepted, dtype=np.int64)

    def vote_log(self):
        """Return every vote cast as an int64 array of (row id, bot, label) rows.

        Votes without a bot id carry -1 in the bot column. Empty unless the
        service keeps votes (``keep_votes`` or a batch aggregation method).
        """
        with self._lock:
            if not self._vote_log:
                return np.empty((0, 3), dtype=np.int64)
            return np.array(self._vote_log, dtype=np.int64)

    # -- internals ----------------------------------------------------------

    def _draw_left(self):
        if not self._left_buffer:
            self._left_buffer = draw_distinct_rows(
                self._rng, self.n_trusted, self.n_left, 1024
            )
        return self._left_buffer.pop()

    def _next_pool_images(self):
        """Advance the round-robin cursor and collect up to n_right images."""
        chosen = []
        if self._n_pending == 0:
            return chosen
        # Local names: this loop runs once per served image.
        offset, n_votes, n_right = self.n_trusted, self.n_votes, self.n_right
        accepted, votes, outstanding = self._accepted, self._votes, self._outstanding
        held = self._held_set
        order, cursor = self._pass_order, self._cursor
        seen_wrap = False
        while len(chosen) < n_right:
            if cursor >= len(order):
                if seen_wrap:
                    break
                seen_wrap = True
                self._cursor = cursor
                self._start_new_pass()
                order, cursor = self._pass_order, self._cursor
                if not order:
                    break
            index = order[cursor]
            if index + offset in chosen:
                break
            cursor += 1
            if accepted[index] >= 0 or index in held:
                continue
            if len(votes[index]) + outstanding[index] >= n_votes:
                continue
            chosen.append(index + offset)
        self._cursor = cursor
        return chosen

    def _start_new_pass(self):
        self._pass_order = [i for i in self._pass_order if self._accepted[i] < 0]
        self._cursor = 0
        self.counts.passes += 1

    def _record_vote(self, index, bot, label):
        votes = self._votes[index]
        votes.append((bot, label))
        counts = self.counts
        counts.votes += 1
        if self.keep_votes:
            self._vote_log.append(
                (index + self.n_trusted, -1 if bot is None else bot, label)
            )
        n_votes = self.n_votes
        if len(votes) < n_votes:
            return
        aggregation = self.aggregation
        if aggregation.online:
            decided = aggregation.decide([vote[1] for vote in votes], n_votes)
            if decided is None:
                votes.clear()
                counts.discarded_rounds += 1
            else:
                self._accept(index, decided)
        else:
            self._held.append(index)
            self._held_set.add(index)
            if len(self._held) >= self.batch_size:
                self._resolve_held()

    def _resolve_held(self, force=False):
        """Run a batch aggregation method over all votes so far."""
        if self.aggregation.online or not self._held:
            return
        log = np.array(self._vote_log, dtype=np.int64)
        decided = self.aggregation.aggregate(log, self._held)
        held = self._held
        self._held = []
        self._held_set.clear()
        for index in held:
            label = decided.get(index + self.n_trusted)
            if label is None:
                self._votes[index].clear()
                self.counts.discarded_rounds += 1
            else:
                self._accept(index, int(label))

    def _accept(self, index, label):
        self._accepted[index] = label
        self._votes[index].clear()
        self._n_pending -= 1
        self.counts.accepted += 1
        if label != self._truth[index + self.n_trusted]:
            self.counts.poisoned += 1
        self._unbatched_ids.append(index + self.n_trusted)
        self._unbatched_labels.append(label)
        if len(self._unbatched_ids) >= self.batch_size:
            self._emit_pending_batch()

    def _maybe_finish(self):
        if not self.aggregation.online and self._held:
            # Everything still unlabelled is either held or has a partial set of
            # votes; when nothing else can be served, resolve the held images.
            waiting = self._n_pending - len(self._held)
            if waiting == 0:
                self._resolve_held()
        if self._n_pending == 0:
            self._emit_pending_batch()

    def _emit_pending_batch(self):
        if not self._unbatched_ids:
            return
        ids = np.array(self._unbatched_ids, dtype=np.int64)
        labels = np.array(self._unbatched_labels, dtype=np.int64)
        self._unbatched_ids = []
        self._unbatched_labels = []
        self._emit_batch(ids, labels)

    def _emit_batch(self, ids, labels):
        self._batch_number += 1
        if self._on_batch is not None:
            self._on_batch(self._batch_number, ids, labels)


def trusted_row_count(n_rows, base):
    """Return the number of trusted rows: ``base * n_rows`` rounded down, at least 1."""
    return max(1, min(n_rows, math.floor(base * n_rows + 1e-9)))


def batch_row_count(pool_size, step):
    """Return the accepted labels per batch: ``step * pool_size`` rounded down, at least 1."""
    return max(1, math.floor(step * pool_size + 1e-9))


def draw_distinct_rows(rng, n_rows, size, count):
    """Draw ``count`` tuples of ``size`` distinct ids in ``range(n_rows)``.

    Rows with a repeated id are drawn again, so each tuple is a uniform sample
    without replacement. The result is a list meant to be consumed with ``pop``.
    """
    draws = rng.integers(n_rows, size=(count, size))
    if size > 1:
        while True:
            ordered = np.sort(draws, axis=1)
            repeated = np.any(ordered[:, 1:] == ordered[:, :-1], axis=1)
            if not repeated.any():
                break
            draws[repeated] = rng.integers(n_rows, size=(int(repeated.sum()), size))
    return [tuple(row) for row in draws[::-1].tolist()]
