import numpy as np
import pytest

from bots import BEHAVIORS, EvilBot, GoodBot, make_behavior
from bots.behaviors import FLIP_TABLE
from crowdpoison.service import Captcha

TRUTH = [row % 10 for row in range(100)]


def behavior(name, seed=0, **params):
    rng = np.random.default_rng(seed)
    return make_behavior(name, n_classes=10, rng=rng, seed=seed, n_rows=100, **params)


def test_registry_lists_behaviors():
    assert {"random", "switch", "flip", "targeted", "colluding"} <= set(BEHAVIORS)


def test_switch_maps_to_next_class():
    switch = behavior("switch")
    assert [switch.poison(label, 0) for label in range(10)] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]


def test_flip_follows_study_table():
    flip = behavior("flip")
    expected = {1: 7, 7: 1, 0: 8, 8: 0, 2: 5, 5: 2, 6: 9, 9: 6, 3: 8, 4: 9}
    assert {label: flip.poison(label, 0) for label in range(10)} == expected
    assert FLIP_TABLE == expected


def test_flip_rejects_other_class_counts():
    with pytest.raises(ValueError, match="needs 10 classes"):
        make_behavior("flip", n_classes=5, rng=None, seed=0, n_rows=10)


def test_random_is_always_wrong_and_uniform():
    random_wrong = behavior("random")
    answers = np.array([random_wrong.poison(3, 0) for _ in range(9000)])
    assert not np.any(answers == 3)
    counts = np.bincount(answers, minlength=10)
    assert counts[3] == 0
    others = np.delete(counts, 3)
    # 1000 expected per class; a fair draw stays well inside +-150.
    assert np.all(np.abs(others - 1000) < 150)


def test_targeted_relabels_only_source():
    targeted = behavior("targeted", source=3, target=8)
    assert [targeted.poison(label, 0) for label in range(10)] == [
        0, 1, 2, 8, 4, 5, 6, 7, 8, 9
    ]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"source": 3, "target": 3}, "source != target"),
        ({"source": 10, "target": 3}, "source in 0..9"),
        ({"source": None, "target": 3}, "source in 0..9"),
    ],
)
def test_targeted_rejects_bad_classes(params, message):
    with pytest.raises(ValueError, match=message):
        behavior("targeted", **params)


def test_colluding_is_fixed_function_of_image_and_seed():
    first = behavior("colluding", seed=5)
    second = make_behavior(
        "colluding", n_classes=10, rng=np.random.default_rng(99), seed=5, n_rows=100
    )
    answers = [first.poison(TRUTH[row], row) for row in range(100)]
    assert answers == [second.poison(TRUTH[row], row) for row in range(100)]
    assert all(answer != TRUTH[row] for row, answer in enumerate(answers))
    other_seed = behavior("colluding", seed=6)
    assert answers != [other_seed.poison(TRUTH[row], row) for row in range(100)]
    # Different images get different wrong offsets, unlike switch.
    assert len({(answer - TRUTH[row]) % 10 for row, answer in enumerate(answers)}) > 1


def test_unknown_behavior_is_rejected():
    with pytest.raises(ValueError, match="unknown behaviour 'nope'"):
        behavior("nope")


def test_good_bot_answers_truthfully():
    bot = GoodBot(n_classes=10, rng=np.random.default_rng(0))
    captcha = Captcha(0, (1, 2, 3), (40, 51, 62))
    assert bot.answer(captcha, TRUTH) == [1, 2, 3, 0, 1, 2]


def test_good_bot_error_rate():
    bot = GoodBot(n_classes=10, rng=np.random.default_rng(0), error_rate=0.2)
    captcha = Captcha(0, (1,), (2,))
    answers = np.array([bot.answer(captcha, TRUTH) for _ in range(5000)])
    wrong = answers != np.array([1, 2])
    assert 0.17 < wrong.mean() < 0.23
    # Known and unknown images both get errors.
    assert wrong[:, 0].any()
    assert wrong[:, 1].any()


def test_evil_bot_passes_check_and_poisons_unknown():
    bot = EvilBot(behavior("switch"), rng=np.random.default_rng(0))
    captcha = Captcha(0, (1, 2, 3), (40, 51, 62))
    assert bot.answer(captcha, TRUTH) == [1, 2, 3, 1, 2, 3]


def test_evil_bot_poison_rate():
    bot = EvilBot(behavior("switch"), rng=np.random.default_rng(0), poison_rate=0.3)
    captcha = Captcha(0, (1,), (40,))
    answers = np.array([bot.answer(captcha, TRUTH) for _ in range(5000)])
    assert np.all(answers[:, 0] == 1)
    poisoned = answers[:, 1] == 1
    assert np.all(poisoned | (answers[:, 1] == 0))
    assert 0.27 < poisoned.mean() < 0.33
