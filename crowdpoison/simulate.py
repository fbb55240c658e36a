"""Simulation of honest and malicious bots labelling the pool of one level.

A level is the run of the captcha service with a given number of malicious bots
among ``n_bots``. Bots ``0 .. n_malicious - 1`` are malicious, the others honest.
Every random draw of a level comes from ``SeedSequence(seed, spawn_key=(level,))``,
so a level gives the same output whether it runs alone, with other levels, or in
another process.
"""

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from bots import EvilBot, GoodBot, make_behavior

from .aggregation import estimates_reliability, make_aggregation
from .crowd_metrics import audit_reliability, captchas_per_label, poisoned_share
from .service import Dataset, batch_row_count, trusted_row_count

logger = logging.getLogger(__name__)

ASSIGNMENTS = ("random", "round-robin")


@dataclass(frozen=True)
class SimulationParams:
    """Every parameter of a simulated crowd, except the number of malicious bots.

    Attributes
    ----------
    n_bots : int
        Users of the service, honest and malicious.
    base, step : float
        Trusted fraction of the rows and batch fraction of the pool, in (0, 1].
    n_left, n_right : int
        Known and unknown images per captcha.
    n_votes : int
        Votes per image before it is resolved.
    behavior : str
        Poisoning behaviour of the malicious bots, a key of ``bots.BEHAVIORS``.
    behavior_params : dict
        Options of the behaviour, such as ``{"source": 3, "target": 8}``.
    assignment : {"random", "round-robin"}
        Who answers each captcha: a bot drawn independently for every captcha,
        or the bots in turn in a fixed order.
    seed : int
        Base seed of the run.
    honest_error_rate : float
        Probability that an honest bot answers an image wrongly.
    poison_rate : float
        Probability that a malicious bot poisons an unknown image.
    aggregation : str
        How full sets of votes become labels, a key of
        ``crowdpoison.aggregation.AGGREGATIONS``.
    max_passes : int
        Upper bound on round-robin passes over the pool; the level stops there
        and keeps what was accepted.
    audit : tuple of str
        Reliability-estimating aggregations that score, on the level's whole vote
        log, which bots they flag as malicious. Empty skips the audit.
    """

    n_bots: int = 20
    base: float = 0.3
    step: float = 0.1
    n_left: int = 3
    n_right: int = 3
    n_votes: int = 3
    behavior: str = "random"
    behavior_params: dict = field(default_factory=dict)
    assignment: str = "random"
    seed: int = 7
    honest_error_rate: float = 0.0
    poison_rate: float = 1.0
    aggregation: str = "majority"
    max_passes: int = 200
    audit: tuple = ()

    def to_dict(self):
        """Return the parameters as a JSON-ready dict, tuples as lists."""
        values = asdict(self)
        values["audit"] = list(self.audit)
        return values


@dataclass
class LevelResult:
    """Counts of one simulated level, as stored in the manifest.

    ``poisoned_share`` is poisoned / accepted and ``captchas_per_label`` is
    captchas / accepted, both None when nothing was accepted. ``reliability``
    maps each audit method to its skill estimates, the bots it flags as
    malicious and their precision and recall (see
    :func:`crowdpoison.crowd_metrics.audit_reliability`).
    """

    malicious: int
    complete: bool
    captchas: int
    rejected: int
    votes: int
    accepted: int
    poisoned: int
    unlabelled: int
    passes: int
    discarded_rounds: int
    batches: list
    poisoned_share: float | None = None
    captchas_per_label: float | None = None
    reliability: dict = field(default_factory=dict)

    def to_dict(self):
        """Return the counts as a JSON-ready dict."""
        return asdict(self)


def level_seed_sequence(seed, level):
    """Return the SeedSequence that every random draw of ``level`` derives from."""
    return np.random.SeedSequence(seed, spawn_key=(level,))


def make_bots(params, n_malicious, *, n_classes, n_rows, rngs):
    """Build the bots of a level: the first ``n_malicious`` are malicious."""
    bots = []
    for bot_id in range(params.n_bots):
        rng = rngs[bot_id]
        if bot_id < n_malicious:
            behavior = make_behavior(
                params.behavior,
                n_classes=n_classes,
                rng=rng,
                seed=params.seed,
                n_rows=n_rows,
                **params.behavior_params,
            )
            bots.append(EvilBot(behavior, rng=rng, poison_rate=params.poison_rate))
        else:
            bots.append(
                GoodBot(n_classes=n_classes, rng=rng, error_rate=params.honest_error_rate)
            )
    return bots


def expected_captchas(pool_size, n_right, n_votes):
    """Return the captchas needed when every round of votes reaches a decision.

    Each pool image needs ``n_votes`` votes and a captcha carries ``n_right`` of
    them, so at least ``ceil(pool_size * n_votes / n_right)`` captchas are served.
    Rounds without a majority, and captchas rejected for a wrong known part, add
    to this.
    """
    return math.ceil(pool_size * n_votes / n_right)


def simulate_level(
    labels,
    n_malicious,
    params,
    *,
    on_batch=None,
    progress=None,
    return_service=False,
    audit="auto",
):
    """Run the captcha service until the pool is labelled or the bound is hit.

    Parameters
    ----------
    labels : ndarray of int, shape (n_rows,)
        True labels of the training rows, in order; labels are ``0 .. n - 1``.
    n_malicious : int
        Number of malicious bots, ``0 .. params.n_bots``.
    params : SimulationParams
        The crowd and service settings.
    on_batch : callable, default=None
        Receives every batch as ``on_batch(number, row_ids, labels)``.
    progress : callable, default=None
        Called with the number of newly accepted labels, for progress bars.
    return_service : bool, default=False
        Also return the service, which then keeps every vote with its bot id
        (``service.vote_log()``), for audits and tests.
    audit : "auto", sequence of str or None, default="auto"
        Reliability-estimating aggregations to run on the level's whole vote
        log once it ends, to score which bots they flag as malicious. "auto"
        runs the level's own aggregation when it estimates reliability, and
        Dawid-Skene otherwise, as an audit that changes no label. None or an
        empty sequence skips the audit, and the service then keeps no votes
        unless ``return_service`` is true.

    Returns
    -------
    result : LevelResult
    service : Dataset
        Only when ``return_service`` is true.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = int(labels.max()) + 1
    if not 0 <= n_malicious <= params.n_bots:
        raise ValueError(
            f"n_malicious must lie in 0..{params.n_bots}, got {n_malicious}"
        )
    if params.assignment not in ASSIGNMENTS:
        raise ValueError(
            f"unknown assignment {params.assignment!r}; expected one of {ASSIGNMENTS}"
        )

    children = level_seed_sequence(params.seed, n_malicious).spawn(2 + params.n_bots)
    service_rng = np.random.default_rng(children[0])
    assignment_rng = np.random.default_rng(children[1])
    bot_rngs = [np.random.default_rng(child) for child in children[2:]]
    bots = make_bots(
        params, n_malicious, n_classes=n_classes, n_rows=labels.size, rngs=bot_rngs
    )
    truth = labels.tolist()
    audit_methods = _audit_methods(audit, params.aggregation)

    batches = []
    cumulative = {"rows": 0, "poisoned": 0}

    def record_batch(number, row_ids, batch_labels):
        poisoned = int(np.count_nonzero(batch_labels != labels[row_ids]))
        cumulative["rows"] += row_ids.size
        cumulative["poisoned"] += poisoned
        batches.append(
            {
                "file": batch_file_name(number),
                "rows": int(row_ids.size),
                "poisoned": poisoned,
                "cumulative_rows": cumulative["rows"],
                "cumulative_poisoned": cumulative["poisoned"],
            }
        )
        if on_batch is not None:
            on_batch(number, row_ids, batch_labels)

    service = Dataset(
        labels,
        base=params.base,
        step=params.step,
        n_left=params.n_left,
        n_right=params.n_right,
        n_votes=params.n_votes,
        aggregation=make_aggregation(params.aggregation),
        random_state=service_rng,
        on_batch=record_batch,
        keep_votes=return_service or bool(audit_methods),
    )
    _answer_until_done(service, bots, truth, params, assignment_rng, progress)
    service.flush()

    counts = service.counts
    if service.n_pending:
        logger.warning(
            "level %d stopped after %d passes over the pool with %d of %d images "
            "unlabelled; the accepted labels were written. Raise --max-passes to "
            "label more, or use an odd --votes",
            n_malicious,
            params.max_passes,
            service.n_pending,
            service.pool_size,
        )
    result = LevelResult(
        malicious=n_malicious,
        complete=service.n_pending == 0,
        captchas=counts.captchas,
        rejected=counts.rejected,
        votes=counts.votes,
        accepted=counts.accepted,
        poisoned=counts.poisoned,
        unlabelled=service.n_pending,
        passes=min(counts.passes, params.max_passes),
        discarded_rounds=counts.discarded_rounds,
        batches=batches,
        poisoned_share=poisoned_share(counts.poisoned, counts.accepted),
        captchas_per_label=captchas_per_label(counts.captchas, counts.accepted),
        reliability=audit_reliability(service.vote_log(), n_malicious, audit_methods),
    )
    return (result, service) if return_service else result


def _audit_methods(audit, aggregation):
    """Return the names of the aggregations that audit a level's vote log."""
    if audit is None:
        return []
    if isinstance(audit, str) and audit == "auto":
        return [aggregation if estimates_reliability(aggregation) else "dawid-skene"]
    if isinstance(audit, str):
        audit = [audit]
    names = list(audit)
    for name in names:
        if not estimates_reliability(name):
            raise ValueError(
                f"audit method {name!r} does not estimate bot reliability; use one "
                "of the reliability-estimating aggregations, such as 'dawid-skene'"
            )
    return names


def _answer_until_done(service, bots, truth, params, assignment_rng, progress):
    """Serve captchas to bots until the pool is labelled or max_passes is exceeded."""
    n_bots = len(bots)
    round_robin = params.assignment == "round-robin"
    draws = []
    served = 0
    last_accepted = 0
    while not service.exhausted and service.counts.passes <= params.max_passes:
        captcha = service.get_captcha()
        if captcha is None:
            break
        if service.counts.passes > params.max_passes:
            # This captcha opened one pass too many; it is never answered.
            break
        if round_robin:
            bot_id = served % n_bots
        else:
            if not draws:
                draws = assignment_rng.integers(n_bots, size=4096).tolist()[::-1]
            bot_id = draws.pop()
        served += 1
        answers = bots[bot_id].answer(captcha, truth)
        service.check_captcha(captcha.ticket, answers, bot=bot_id)
        if progress is not None and served % 2048 == 0:
            accepted = service.counts.accepted
            progress(accepted - last_accepted)
            last_accepted = accepted
    if progress is not None:
        progress(service.counts.accepted - last_accepted)


def batch_file_name(number):
    """Return the file name of batch ``number`` (1-based): ``dataset_NNN.csv``."""
    return f"dataset_{number:03d}.csv"


def describe_split(n_rows, base, step):
    """Return (trusted rows, pool size, rows per batch) for ``n_rows`` rows."""
    n_trusted = trusted_row_count(n_rows, base)
    pool_size = n_rows - n_trusted
    return n_trusted, pool_size, batch_row_count(pool_size, step)
