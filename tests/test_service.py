import threading
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdpoison.aggregation import MajorityVote, PluralityVote
from crowdpoison.service import Dataset, batch_row_count, trusted_row_count
from crowdpoison.simulate import SimulationParams, simulate_level

# Ten rows: rows 0-2 are trusted (base 0.3), rows 3-9 form the pool of 7 images.
LABELS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]


class BatchRecorder:
    def __init__(self):
        self.batches = []

    def __call__(self, number, row_ids, labels):
        self.batches.append((number, row_ids.tolist(), labels.tolist()))


def answer(service, captcha, right_labels, left_labels=None):
    if left_labels is None:
        left_labels = [LABELS[row] for row in captcha.left]
    return service.check_captcha(captcha.ticket, left_labels + list(right_labels))


def test_dataset_writes_trusted_rows_as_batch_one():
    recorder = BatchRecorder()
    Dataset(LABELS, base=0.3, step=0.3, n_left=1, n_right=2, on_batch=recorder)
    assert recorder.batches == [(1, [0, 1, 2], [0, 1, 2])]


def test_dataset_split_sizes():
    service = Dataset(LABELS, base=0.3, step=0.3, n_left=1, n_right=2)
    assert service.n_trusted == 3
    assert service.pool_size == 7
    assert service.batch_size == 2


def test_row_counts_round_down_without_float_error():
    assert trusted_row_count(60000, 0.3) == 18000
    assert batch_row_count(42000, 0.1) == 4200
    assert batch_row_count(3, 0.1) == 1
    assert trusted_row_count(10, 1.0) == 10


def test_get_captcha_serves_pool_round_robin():
    service = Dataset(LABELS, base=0.3, n_left=2, n_right=3, n_votes=3)
    served = []
    for _ in range(5):
        captcha = service.get_captcha()
        assert len(set(captcha.left)) == 2
        assert all(0 <= row < 3 for row in captcha.left)
        served.append(captcha.right)
        answer(service, captcha, [LABELS[row] for row in captcha.right])
    # Seven pool images, three per captcha: the order wraps around the pool.
    assert served == [(3, 4, 5), (6, 7, 8), (9, 3, 4), (5, 6, 7), (8, 9, 3)]


def test_get_captcha_skips_images_with_full_votes_outstanding():
    service = Dataset(LABELS, base=0.3, n_left=1, n_right=7, n_votes=1)
    first = service.get_captcha()
    assert first.right == (3, 4, 5, 6, 7, 8, 9)
    # Every image already has its one vote outstanding.
    assert service.get_captcha() is None
    answer(service, first, [LABELS[row] for row in first.right])
    assert service.exhausted


def test_check_captcha_rejects_unknown_ticket():
    service = Dataset(LABELS, base=0.3, n_left=1, n_right=2)
    assert not service.check_captcha(12345, [0, 3, 4])
    assert service.counts.rejected == 1
    assert service.counts.votes == 0


def test_check_captcha_rejects_reused_ticket():
    service = Dataset(LABELS, base=0.3, n_left=1, n_right=2)
    captcha = service.get_captcha()
    assert answer(service, captcha, [3, 4])
    assert not answer(service, captcha, [3, 4])
    assert service.counts.rejected == 1
    assert service.counts.votes == 2


def test_check_captcha_rejects_wrong_known_part():
    service = Dataset(LABELS, base=0.3, n_left=1, n_right=2)
    captcha = service.get_captcha()
    wrong = [(LABELS[captcha.left[0]] + 1) % 10]
    assert not answer(service, captcha, [3, 4], left_labels=wrong)
    assert service.counts.rejected == 1
    assert service.counts.votes == 0
    # The images stay in the pool and come back in the next pass.
    served = [service.get_captcha().right for _ in range(3)]
    assert served == [(5, 6), (7, 8), (9, 3)]


def test_check_captcha_rejects_wrong_answer_count():
    service = Dataset(LABELS, base=0.3, n_left=1, n_right=2)
    captcha = service.get_captcha()
    assert not service.check_captcha(captcha.ticket, [LABELS[captcha.left[0]], 3])
    assert service.counts.rejected == 1


def test_three_votes_hand_checked_run():
    """Votes on image 3 and 4 over three passes, written out by hand."""
    recorder = BatchRecorder()
    labels = [0, 1, 2, 3, 4]
    service = Dataset(
        labels, base=0.4, step=0.5, n_left=1, n_right=3, n_votes=3, on_batch=recorder
    )
    assert (service.n_trusted, service.pool_size, service.batch_size) == (2, 3, 1)

    def vote(right_labels):
        captcha = service.get_captcha()
        assert captcha.right == (2, 3, 4)
        left = [labels[row] for row in captcha.left]
        assert service.check_captcha(captcha.ticket, left + right_labels)

    vote([2, 3, 9])
    vote([2, 8, 9])
    assert recorder.batches == [(1, [0, 1], [0, 1])]
    # Image 2: 2, 2, 5 -> 2. Image 3: 3, 8, 7 -> no majority, re-queued.
    # Image 4: 9, 9, 4 -> 9, a poisoned label.
    vote([5, 7, 4])
    assert recorder.batches[1:] == [(2, [2], [2]), (3, [4], [9])]
    assert service.counts.accepted == 2
    assert service.counts.poisoned == 1
    assert service.counts.discarded_rounds == 1
    assert service.n_pending == 1

    for right in ([3], [3], [1]):
        captcha = service.get_captcha()
        assert captcha.right == (3,)
        left = [labels[row] for row in captcha.left]
        assert service.check_captcha(captcha.ticket, left + right)
    assert service.exhausted
    assert recorder.batches[-1] == (4, [3], [3])
    assert service.counts.votes == 12
    assert service.counts.captchas == 6


def test_no_voting_accepts_every_answer():
    recorder = BatchRecorder()
    service = Dataset(
        LABELS, base=0.3, step=0.3, n_left=1, n_right=2, n_votes=1, on_batch=recorder
    )
    while not service.exhausted:
        captcha = service.get_captcha()
        answer(service, captcha, [(LABELS[row] + 1) % 10 for row in captcha.right])
    assert service.counts.captchas == 4
    assert service.counts.accepted == 7
    assert service.counts.poisoned == 7
    # Batches of 2 accepted labels, then the remainder of 1.
    assert [len(ids) for _, ids, _ in recorder.batches] == [3, 2, 2, 2, 1]


def test_remainder_batch_keeps_every_label():
    recorder = BatchRecorder()
    labels = list(range(10)) * 10
    service = Dataset(labels, base=0.3, step=0.3, n_votes=1, on_batch=recorder)
    while not service.exhausted:
        captcha = service.get_captcha()
        answer_labels = [labels[row] for row in captcha.left + captcha.right]
        service.check_captcha(captcha.ticket, answer_labels)
    sizes = [len(ids) for _, ids, _ in recorder.batches]
    assert sizes == [30, 21, 21, 21, 7]
    written = [row for _, ids, _ in recorder.batches for row in ids]
    assert sorted(written) == list(range(100))


@pytest.mark.parametrize(
    ("votes", "expected"),
    [
        ([1, 1, 2], 1),
        ([1, 2, 3], None),
        ([4], 4),
        ([1, 2], None),
        ([1, 1], 1),
        ([1, 1, 2, 2], None),
        ([3, 3, 3, 2], 3),
    ],
)
def test_majority_vote_needs_strict_majority(votes, expected):
    assert MajorityVote().decide(votes, len(votes)) == expected


@pytest.mark.parametrize(
    ("votes", "expected"),
    [([1, 1, 2], 1), ([1, 2, 3], None), ([1, 1, 2, 2], None), ([1, 1, 2, 3, 4], 1)],
)
def test_plurality_vote_requeues_ties(votes, expected):
    assert PluralityVote().decide(votes, len(votes)) == expected


def test_dataset_rejects_invalid_parameters():
    with pytest.raises(ValueError, match="n_left=4 exceeds the 3 trusted rows"):
        Dataset(LABELS, base=0.3, n_left=4)
    with pytest.raises(ValueError, match="base must lie in"):
        Dataset(LABELS, base=0)
    with pytest.raises(ValueError, match="n_votes must be an integer"):
        Dataset(LABELS, n_votes=0)


def test_dataset_is_safe_from_several_threads():
    labels = np.arange(3000) % 10
    recorder = BatchRecorder()
    lock = threading.Lock()
    service = Dataset(labels, base=0.3, n_votes=3, on_batch=recorder, keep_votes=True)

    def worker(bot):
        while True:
            captcha = service.get_captcha()
            if captcha is None:
                with lock:
                    if service.exhausted:
                        return
                continue
            rows = captcha.left + captcha.right
            service.check_captcha(captcha.ticket, [labels[r] for r in rows], bot=bot)

    threads = [threading.Thread(target=worker, args=(bot,)) for bot in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert service.exhausted
    assert service.counts.accepted == service.pool_size
    assert service.counts.votes == 3 * service.pool_size
    assert service.counts.poisoned == 0
    written = sorted(row for _, ids, _ in recorder.batches for row in ids)
    assert written == list(range(3000))


def rounds_of(log, row, n_votes):
    votes = [label for image, _, label in log if image == row]
    return [votes[i : i + n_votes] for i in range(0, len(votes), n_votes)]


@settings(max_examples=40, deadline=None)
@given(
    n_rows=st.integers(12, 120),
    base=st.sampled_from([0.2, 0.3, 0.5]),
    step=st.sampled_from([0.1, 0.25, 0.5, 1.0]),
    n_right=st.integers(1, 4),
    n_votes=st.integers(1, 5),
    behavior=st.sampled_from(["random", "switch", "flip", "colluding"]),
    assignment=st.sampled_from(["random", "round-robin"]),
    n_bots=st.integers(1, 6),
    malicious_share=st.floats(0, 1),
    honest_error_rate=st.sampled_from([0.0, 0.2]),
    seed=st.integers(0, 2**16),
)
def test_service_invariants(
    n_rows,
    base,
    step,
    n_right,
    n_votes,
    behavior,
    assignment,
    n_bots,
    malicious_share,
    honest_error_rate,
    seed,
):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_rows) % 10)
    n_malicious = round(malicious_share * n_bots)
    params = SimulationParams(
        n_bots=n_bots,
        base=base,
        step=step,
        n_left=1,
        n_right=n_right,
        n_votes=n_votes,
        behavior=behavior,
        assignment=assignment,
        seed=seed,
        honest_error_rate=honest_error_rate,
        max_passes=30,
    )
    batches = BatchRecorder()
    result, service = simulate_level(
        labels, n_malicious, params, on_batch=batches, return_service=True
    )
    log = service.vote_log()
    accepted = service.accepted_labels()

    # Accepted plus pending images equal the pool.
    assert result.accepted + result.unlabelled == service.pool_size
    assert np.count_nonzero(accepted >= 0) == result.accepted

    # Every accepted label had a strict majority among exactly n_votes votes,
    # and every earlier round of that image had none.
    for index in np.flatnonzero(accepted >= 0):
        row = index + service.n_trusted
        rounds = rounds_of(log.tolist(), row, n_votes)
        assert len(rounds[-1]) == n_votes
        label, count = Counter(rounds[-1]).most_common(1)[0]
        assert 2 * count > n_votes
        assert label == accepted[index]
        for earlier in rounds[:-1]:
            assert 2 * Counter(earlier).most_common(1)[0][1] <= n_votes

    # The batches hold the trusted rows plus every accepted label exactly once.
    written = [row for _, ids, _ in batches.batches for row in ids]
    assert len(written) == len(set(written))
    expected = set(range(service.n_trusted)) | {
        int(i) + service.n_trusted for i in np.flatnonzero(accepted >= 0)
    }
    assert set(written) == expected
    written_labels = dict(
        zip(written, [label for _, _, labels_ in batches.batches for label in labels_])
    )
    for row in range(service.n_trusted):
        assert written_labels[row] == labels[row]

    # The count of wrong labels equals the mismatches against the truth.
    mismatches = sum(written_labels[row] != labels[row] for row in written)
    assert result.poisoned == mismatches
    assert service.counts.poisoned == mismatches

    # Tickets are single use.
    captcha = service.get_captcha()
    if captcha is not None:
        rows = captcha.left + captcha.right
        assert service.check_captcha(captcha.ticket, [labels[r] for r in rows])
        assert not service.check_captcha(captcha.ticket, [labels[r] for r in rows])
