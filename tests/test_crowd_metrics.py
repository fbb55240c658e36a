import numpy as np
import pytest

from crowdpoison.crowd_metrics import (
    audit_reliability,
    captchas_per_label,
    detection_scores,
    flag_malicious,
    poisoned_share,
)
from crowdpoison.simulate import SimulationParams, simulate_level


def test_poisoned_share_ratio():
    assert poisoned_share(30, 120) == 0.25
    assert poisoned_share(0, 120) == 0.0
    assert poisoned_share(0, 0) is None


def test_captchas_per_label_ratio():
    assert captchas_per_label(150, 100) == 1.5
    assert captchas_per_label(10, 0) is None


def test_flag_malicious_below_threshold():
    skills = {0: 0.1, 1: 0.5, 2: 0.49, 3: 0.9}
    assert flag_malicious(skills) == [0, 2]
    assert flag_malicious(skills, threshold=0.95) == [0, 1, 2, 3]
    assert flag_malicious({}) == []


@pytest.mark.parametrize(
    ("flagged", "n_malicious", "precision", "recall"),
    [
        ([0, 1, 2], 3, 1.0, 1.0),
        ([0, 1], 4, 1.0, 0.5),
        ([0, 5, 6, 7], 2, 0.25, 0.5),
        ([], 3, None, 0.0),
        ([4], 0, 0.0, None),
        ([], 0, None, None),
    ],
)
def test_detection_scores_table(flagged, n_malicious, precision, recall):
    scores = detection_scores(flagged, n_malicious)
    assert scores["precision"] == precision
    assert scores["recall"] == recall


def test_audit_reliability_switch_crowd():
    # Bots 0 and 1 answer (label + 1) mod 4, bots 2-5 the true label.
    rng = np.random.default_rng(0)
    log = []
    for task in range(200):
        label = task % 4
        for bot in rng.choice(6, size=3, replace=False).tolist():
            log.append((task, bot, (label + 1) % 4 if bot < 2 else label))
    audits = audit_reliability(np.array(log), 2, ["dawid-skene", "mace"])
    assert sorted(audits) == ["dawid-skene", "mace"]
    for audit in audits.values():
        assert sorted(audit["skills"]) == ["0", "1", "2", "3", "4", "5"]
        assert audit["threshold"] == 0.5
        assert audit["flagged"] == [0, 1]
        assert audit["precision"] == 1.0
        assert audit["recall"] == 1.0


def small_params(**changes):
    return SimulationParams(n_bots=6, n_left=1, n_right=3, behavior="switch", **changes)


def test_simulate_level_adds_crowd_metrics():
    labels = np.arange(600) % 10
    result = simulate_level(labels, 2, small_params())
    assert result.poisoned_share == result.poisoned / result.accepted
    assert result.captchas_per_label == result.captchas / result.accepted
    # A majority run is audited by Dawid-Skene, which changes no label.
    assert list(result.reliability) == ["dawid-skene"]
    assert result.reliability["dawid-skene"]["flagged"] == [0, 1]
    plain = simulate_level(labels, 2, small_params(), audit=None)
    assert plain.reliability == {}
    assert plain.poisoned == result.poisoned
    assert plain.batches == result.batches


def test_simulate_level_return_service_keeps_votes():
    labels = np.arange(300) % 10
    result, service = simulate_level(
        labels, 1, small_params(), audit=None, return_service=True
    )
    assert service.vote_log().shape == (result.votes, 3)
    assert result.reliability == {}


def test_simulate_level_audits_own_method():
    labels = np.arange(100) % 10
    result = simulate_level(labels, 1, small_params(aggregation="mace", step=1.0))
    assert list(result.reliability) == ["mace"]
    both = simulate_level(labels, 1, small_params(), audit=["mace", "dawid-skene"])
    assert list(both.reliability) == ["mace", "dawid-skene"]


@pytest.mark.parametrize(
    ("audit", "message"),
    [
        (["majority"], "audit method 'majority' does not estimate bot reliability"),
        ("glad", "unknown aggregation 'glad'"),
    ],
)
def test_simulate_level_rejects_invalid_audit(audit, message):
    with pytest.raises(ValueError, match=message):
        simulate_level(np.arange(100) % 10, 1, small_params(), audit=audit)
