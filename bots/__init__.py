"""Simulated users of the captcha service.

``GoodBot`` answers truthfully, except for an optional error rate. ``EvilBot``
answers the known part truthfully, to pass the check, and poisons the unknown
part with a behaviour from :data:`bots.behaviors.BEHAVIORS`.
"""

from .behaviors import BEHAVIORS, make_behavior, register_behavior
from .evil import EvilBot
from .good import GoodBot

__all__ = ["BEHAVIORS", "EvilBot", "GoodBot", "make_behavior", "register_behavior"]
