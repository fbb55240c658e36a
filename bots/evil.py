"""A malicious user who passes the check and poisons the unknown images."""

from ._random import RandomBuffer


class EvilBot:
    """Answer the known images truthfully and poison the unknown ones.

    Parameters
    ----------
    behavior : object
        A behaviour from :data:`bots.behaviors.BEHAVIORS`, with a
        ``poison(label, row)`` method.
    rng : numpy.random.Generator
        The bot's random stream; drawn from only when ``poison_rate < 1``.
    poison_rate : float, default=1.0
        Probability that an unknown image is poisoned; otherwise the bot answers
        it truthfully, which hides it among honest users.
    """

    malicious = True

    def __init__(self, behavior, *, rng, poison_rate=1.0):
        self.behavior = behavior
        self.poison_rate = poison_rate
        self._draws = RandomBuffer(rng)

    def answer(self, captcha, truth):
        """Return the labels for ``captcha.left`` then ``captcha.right``."""
        answers = [truth[row] for row in captcha.left]
        poison = self.behavior.poison
        if self.poison_rate >= 1:
            answers.extend(poison(truth[row], row) for row in captcha.right)
            return answers
        for row in captcha.right:
            label = truth[row]
            if self._draws.random() < self.poison_rate:
                label = poison(label, row)
            answers.append(label)
        return answers
