from functools import partial
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdpoison.aggregation import (
    AGGREGATIONS,
    DawidSkeneAggregation,
    MACEAggregation,
    estimates_reliability,
    make_aggregation,
    vote_frame,
)
from crowdpoison.service import Dataset
from crowdpoison.simulate import SimulationParams, simulate_level

RELIABILITY_METHODS = ["dawid-skene", "mace"]

# A hand-written crowd over 3 classes. Bots 0-2 answer the true label; bots 3 and
# 4 collude and answer (label + 1) mod 3. Tasks 10-15 get all five votes; tasks
# 16 and 17 only bots 2, 3 and 4, so majority voting accepts the colluders'
# label there.
TINY_TRUTH = {10: 0, 11: 1, 12: 2, 13: 0, 14: 1, 15: 2, 16: 0, 17: 1}


def tiny_crowd_log():
    log = []
    for task, label in TINY_TRUTH.items():
        voters = [0, 1, 2, 3, 4] if task < 16 else [2, 3, 4]
        for bot in voters:
            log.append((task, bot, label if bot < 3 else (label + 1) % 3))
    return np.array(log, dtype=np.int64)


def test_registry_lists_reliability_methods():
    assert {"majority", "plurality", "dawid-skene", "mace"} <= set(AGGREGATIONS)
    assert estimates_reliability("dawid-skene")
    assert estimates_reliability("mace")
    assert not estimates_reliability("majority")


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("glad", {}, "unknown aggregation 'glad'"),
        (
            "dawid-skene",
            {"min_confidence": 1.5},
            r"min_confidence must lie in \[0, 1\]",
        ),
        ("mace", {"min_confidence": -0.1}, r"min_confidence must lie in \[0, 1\]"),
    ],
)
def test_make_aggregation_rejects_invalid_input(name, params, message):
    with pytest.raises(ValueError, match=message):
        make_aggregation(name, **params)


def test_estimates_reliability_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown aggregation 'wawa'"):
        estimates_reliability("wawa")


def test_vote_frame_long_format():
    frame = vote_frame([[7, 2, 4], [8, 0, 1]])
    assert list(frame.columns) == ["task", "worker", "label"]
    assert frame.to_numpy().tolist() == [[7, 2, 4], [8, 0, 1]]
    assert vote_frame(np.empty((0, 3), dtype=np.int64)).empty


@pytest.mark.parametrize("name", RELIABILITY_METHODS)
def test_reliability_methods_are_batch_methods(name):
    method = make_aggregation(name)
    assert method.name == name
    assert method.online is False


@pytest.mark.parametrize("name", RELIABILITY_METHODS)
def test_tiny_crowd_recovers_truth(name):
    decided = make_aggregation(name).aggregate(tiny_crowd_log(), [0])
    assert decided == TINY_TRUTH


def test_tiny_crowd_majority_accepts_colluders():
    majority = make_aggregation("majority")
    # Task 16: bot 2 answers 0, the colluders 1 and 1.
    assert majority.decide([0, 1, 1], 3) == 1


@pytest.mark.parametrize("name", RELIABILITY_METHODS)
def test_tiny_crowd_skills_separate_colluders(name):
    skills = make_aggregation(name).estimate_skills(tiny_crowd_log())
    assert sorted(skills) == [0, 1, 2, 3, 4]
    for bot in (0, 1, 2):
        assert skills[bot] > 0.9
    for bot in (3, 4):
        assert skills[bot] < 0.1


def test_dawid_skene_tiny_crowd_skills_exact():
    skills = DawidSkeneAggregation().estimate_skills(tiny_crowd_log())
    assert skills == pytest.approx({0: 1.0, 1: 1.0, 2: 1.0, 3: 0.0, 4: 0.0}, abs=1e-6)


@pytest.mark.parametrize("name", RELIABILITY_METHODS)
def test_aggregate_is_deterministic(name):
    rng = np.random.default_rng(3)
    log = np.column_stack(
        [rng.integers(100, 140, 300), rng.integers(0, 6, 300), rng.integers(0, 4, 300)]
    )
    first = make_aggregation(name, n_iter=5)
    second = make_aggregation(name, n_iter=5)
    assert first.aggregate(log, [0]) == second.aggregate(log, [0])
    assert first.estimate_skills(log) == second.estimate_skills(log)


def test_dawid_skene_requeues_tie():
    # Two bots disagree on one image and nothing tells them apart.
    log = np.array([[5, 0, 1], [5, 1, 2]], dtype=np.int64)
    assert DawidSkeneAggregation(min_confidence=0.0).aggregate(log, [0]) == {}


@pytest.mark.parametrize("name", RELIABILITY_METHODS)
def test_aggregate_requeues_low_confidence(name):
    # Three bots, three labels: no label reaches a posterior of 0.9.
    log = np.array([[5, 0, 1], [5, 1, 2], [5, 2, 3]], dtype=np.int64)
    assert make_aggregation(name, min_confidence=0.9).aggregate(log, [0]) == {}


@pytest.mark.parametrize("name", RELIABILITY_METHODS)
def test_aggregate_empty_input(name):
    method = make_aggregation(name)
    empty = np.empty((0, 3), dtype=np.int64)
    assert method.aggregate(empty, [0]) == {}
    assert method.aggregate(tiny_crowd_log(), []) == {}
    assert method.estimate_skills(empty) == {}


def test_mace_keeps_label_values():
    # Labels first seen in the order 7, 2: the decisions carry the label values,
    # not crowd-kit's codes.
    log = np.array(
        [[1, 0, 7], [1, 1, 7], [1, 2, 7], [2, 0, 2], [2, 1, 2], [2, 2, 2]],
        dtype=np.int64,
    )
    assert MACEAggregation().aggregate(log, [0, 1]) == {1: 7, 2: 2}


def test_service_batch_method_hand_checked_run():
    """Two captchas of three images each, decided together by Dawid-Skene."""
    labels = [0, 1, 2, 0, 1, 2]
    decided = []

    class Recording(DawidSkeneAggregation):
        def aggregate(self, vote_log, held):
            decided.append((vote_log.tolist(), list(held)))
            return super().aggregate(vote_log, held)

    service = Dataset(
        labels,
        base=0.5,
        step=1.0,
        n_left=1,
        n_right=3,
        n_votes=1,
        aggregation=Recording(),
    )
    assert (service.n_trusted, service.pool_size, service.batch_size) == (3, 3, 3)
    captcha = service.get_captcha()
    assert captcha.right == (3, 4, 5)
    answers = [labels[captcha.left[0]], 0, 1, 2]
    assert service.check_captcha(captcha.ticket, answers, bot=4)
    # One vote per image and one voter: every posterior is certain.
    assert decided == [([[3, 4, 0], [4, 4, 1], [5, 4, 2]], [0, 1, 2])]
    assert service.exhausted
    assert service.accepted_labels().tolist() == [0, 1, 2]
    assert service.counts.poisoned == 0


def test_service_batch_method_requeues_tie():
    labels = [0, 1, 2, 3]
    service = Dataset(
        labels,
        base=0.5,
        step=1.0,
        n_left=1,
        n_right=2,
        n_votes=2,
        aggregation=DawidSkeneAggregation(min_confidence=0.0),
    )
    for bot, label in ((0, 1), (1, 2)):
        captcha = service.get_captcha()
        assert captcha.right == (2, 3)
        answers = [labels[captcha.left[0]], label, 3]
        assert service.check_captcha(captcha.ticket, answers, bot=bot)
    # Both bots agree on image 3 and split on image 2, which nothing breaks: image
    # 3 is accepted and image 2 goes back to the pool with its votes discarded.
    assert service.accepted_labels().tolist() == [-1, 3]
    assert service.counts.discarded_rounds == 1
    assert service.n_pending == 1
    assert service.vote_log().tolist() == [[2, 0, 1], [3, 0, 3], [2, 1, 2], [3, 1, 3]]
    captcha = service.get_captcha()
    assert captcha.right == (2,)


def colluding_params(aggregation):
    return SimulationParams(
        n_bots=10,
        step=0.5,
        n_left=1,
        n_right=3,
        n_votes=3,
        behavior="colluding",
        aggregation=aggregation,
        seed=11,
    )


@pytest.fixture(scope="module")
def colluding_labels():
    return np.random.default_rng(0).permutation(np.arange(600) % 10)


@pytest.fixture(scope="module")
def colluding_majority(colluding_labels):
    return simulate_level(colluding_labels, 3, colluding_params("majority"), audit=None)


@pytest.mark.parametrize("name", RELIABILITY_METHODS)
def test_colluders_caught_where_majority_fails(
    name, colluding_labels, colluding_majority
):
    result = simulate_level(colluding_labels, 3, colluding_params(name))
    # Majority voting lets the colluders through wherever two of them meet.
    assert colluding_majority.poisoned > 0
    assert result.complete
    assert result.poisoned < colluding_majority.poisoned
    audit = result.reliability[name]
    assert audit["flagged"] == [0, 1, 2]
    assert audit["precision"] == 1.0
    assert audit["recall"] == 1.0


@settings(max_examples=6, deadline=None)
@given(
    n_rows=st.integers(30, 70),
    n_votes=st.integers(1, 3),
    behavior=st.sampled_from(["switch", "colluding", "random"]),
    assignment=st.sampled_from(["random", "round-robin"]),
    n_malicious=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_service_invariants_with_dawid_skene(
    n_rows, n_votes, behavior, assignment, n_malicious, seed
):
    labels = np.random.default_rng(seed).permutation(np.arange(n_rows) % 10)
    params = SimulationParams(
        n_bots=5,
        step=0.5,
        n_left=1,
        n_right=2,
        n_votes=n_votes,
        behavior=behavior,
        assignment=assignment,
        aggregation="dawid-skene",
        seed=seed,
        max_passes=6,
    )
    batches = []
    # Ten EM iterations keep the test quick; the invariants hold for any fit.
    quick = partial(DawidSkeneAggregation, n_iter=10)
    with mock.patch.dict(AGGREGATIONS, {"dawid-skene": quick}):
        result, service = simulate_level(
            labels,
            n_malicious,
            params,
            on_batch=lambda number, ids, batch: batches.append(
                (ids.tolist(), batch.tolist())
            ),
            return_service=True,
            audit=None,
        )
    accepted = service.accepted_labels()

    # Every pool image is accepted or still pending after re-queueing.
    assert result.accepted + result.unlabelled == service.pool_size
    assert np.count_nonzero(accepted >= 0) == result.accepted

    # The batches hold the trusted rows and every accepted label exactly once.
    written = [row for ids, _ in batches for row in ids]
    assert len(written) == len(set(written))
    expected = set(range(service.n_trusted)) | {
        int(i) + service.n_trusted for i in np.flatnonzero(accepted >= 0)
    }
    assert set(written) == expected
    written_labels = dict(
        zip(written, [label for _, batch in batches for label in batch])
    )
    for index in np.flatnonzero(accepted >= 0):
        assert written_labels[int(index) + service.n_trusted] == accepted[index]

    # Every accepted image has at least n_votes votes in the log.
    log = service.vote_log()
    votes_per_row = np.bincount(log[:, 0], minlength=labels.size)
    for index in np.flatnonzero(accepted >= 0):
        assert votes_per_row[index + service.n_trusted] >= n_votes

    # The count of wrong labels equals the mismatches against the truth.
    mismatches = sum(written_labels[row] != labels[row] for row in written)
    assert result.poisoned == mismatches
