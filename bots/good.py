"""An honest user of the captcha service."""

from ._random import RandomBuffer


class GoodBot:
    """Answer every image with its true label, or wrongly with ``error_rate``.

    Parameters
    ----------
    n_classes : int
        Labels are the integers ``0 .. n_classes - 1``.
    rng : numpy.random.Generator
        The bot's random stream; drawn from only when ``error_rate > 0``.
    error_rate : float, default=0.0
        Probability that an answer, known or unknown image alike, is a wrong
        label drawn uniformly from the other classes. A wrong known answer makes
        the service reject the whole captcha.
    """

    malicious = False

    def __init__(self, *, n_classes, rng, error_rate=0.0):
        self.n_classes = n_classes
        self.error_rate = error_rate
        self._draws = RandomBuffer(rng)

    def answer(self, captcha, truth):
        """Return the labels for ``captcha.left`` then ``captcha.right``.

        ``truth`` holds the true label of every row; it stands for a human who
        reads the digit correctly.
        """
        rows = captcha.left + captcha.right
        if self.error_rate == 0:
            return [truth[row] for row in rows]
        return [self._maybe_err(truth[row]) for row in rows]

    def _maybe_err(self, label):
        if self._draws.random() >= self.error_rate:
            return label
        return (label + self._draws.integers(1, self.n_classes)) % self.n_classes
