"""Poisoning behaviours of malicious bots, in a registry.

A behaviour maps the true label of an unknown image to the label a malicious bot
answers. To add one, write a class with a ``poison(label, row)`` method and
decorate it with ``@register_behavior("name")``; its constructor receives the
keyword arguments listed in :func:`make_behavior`.
"""

import numpy as np

from ._random import RandomBuffer

BEHAVIORS = {}

# Visually similar digits, from the study's table: 1<->7, 0<->8, 2<->5, 6<->9,
# plus 3->8 and 4->9. 8 and 9 are each taken by their first pair (8->0, 9->6).
FLIP_TABLE = {0: 8, 1: 7, 2: 5, 3: 8, 4: 9, 5: 2, 6: 9, 7: 1, 8: 0, 9: 6}


def register_behavior(name):
    """Register a behaviour class under ``name``."""

    def decorator(cls):
        cls.name = name
        BEHAVIORS[name] = cls
        return cls

    return decorator


def make_behavior(name, *, n_classes, rng, seed, n_rows, **params):
    """Build the behaviour registered as ``name``.

    Parameters
    ----------
    name : str
        A key of :data:`BEHAVIORS`.
    n_classes : int
        Labels are the integers ``0 .. n_classes - 1``.
    rng : numpy.random.Generator
        The bot's own random stream, for behaviours that draw.
    seed : int
        The run's seed, for behaviours that are a fixed function of the image.
    n_rows : int
        Number of training rows, the range of the row ids passed to ``poison``.
    **params
        Behaviour-specific options, such as ``source`` and ``target``.
    """
    try:
        cls = BEHAVIORS[name]
    except KeyError:
        raise ValueError(
            f"unknown behaviour {name!r}; expected one of {sorted(BEHAVIORS)}"
        ) from None
    return cls(n_classes=n_classes, rng=rng, seed=seed, n_rows=n_rows, **params)


@register_behavior("random")
class RandomWrong:
    """Answer a wrong label drawn uniformly from the other classes."""

    def __init__(self, *, n_classes, rng, **unused):
        self.n_classes = n_classes
        self._draws = RandomBuffer(rng)

    def poison(self, label, row):
        return (label + self._draws.integers(1, self.n_classes)) % self.n_classes


@register_behavior("switch")
class Switch:
    """Answer the next class, ``(label + 1) mod n_classes``."""

    def __init__(self, *, n_classes, **unused):
        self.n_classes = n_classes

    def poison(self, label, row):
        return (label + 1) % self.n_classes


@register_behavior("flip")
class Flip:
    """Answer a visually similar digit (see ``FLIP_TABLE``); needs 10 classes."""

    def __init__(self, *, n_classes, **unused):
        if n_classes != 10:
            raise ValueError(
                f"behaviour 'flip' maps the digits 0-9 and needs 10 classes, "
                f"got {n_classes}; use 'switch' or 'random' for other data"
            )

    def poison(self, label, row):
        return FLIP_TABLE[label]


@register_behavior("targeted")
class Targeted:
    """Relabel images of class ``source`` as ``target``; answer others truthfully."""

    def __init__(self, *, n_classes, source, target, **unused):
        for option, value in (("source", source), ("target", target)):
            if value is None or not 0 <= value < n_classes:
                raise ValueError(
                    f"behaviour 'targeted' needs {option} in 0..{n_classes - 1}, "
                    f"got {value}"
                )
        if source == target:
            raise ValueError(f"behaviour 'targeted' needs source != target, got {source}")
        self.source = source
        self.target = target

    def poison(self, label, row):
        return self.target if label == self.source else label


@register_behavior("colluding")
class ColludingRandom:
    """Answer a wrong label that is a fixed function of the image and the seed.

    Every malicious bot gives the same wrong label for a given image, so their
    random wrong labels reinforce each other instead of cancelling out.
    """

    def __init__(self, *, n_classes, seed, n_rows, **unused):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xC0,)))
        self.n_classes = n_classes
        self._offsets = rng.integers(1, n_classes, size=n_rows).tolist()

    def poison(self, label, row):
        return (label + self._offsets[row]) % self.n_classes
