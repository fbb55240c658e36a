"""Buffered random draws, so that per-answer draws stay cheap in Python loops."""


class RandomBuffer:
    """Serve single draws from a numpy Generator in blocks of ``block`` values.

    The sequence of values depends only on the generator's seed and on the order
    of the calls, so a simulation stays reproducible.
    """

    def __init__(self, rng, block=4096):
        self._rng = rng
        self._block = block
        self._uniform = []
        self._integers = {}

    def random(self):
        """Return a float drawn uniformly from [0, 1)."""
        if not self._uniform:
            self._uniform = self._rng.random(self._block).tolist()[::-1]
        return self._uniform.pop()

    def integers(self, low, high):
        """Return an int drawn uniformly from [low, high)."""
        buffer = self._integers.get((low, high))
        if not buffer:
            buffer = self._rng.integers(low, high, size=self._block).tolist()[::-1]
            self._integers[(low, high)] = buffer
        return buffer.pop()
