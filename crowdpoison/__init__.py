"""Simulate data poisoning through a crowd-labelling captcha service.

The modules here hold the logic that the scripts at the repository root share:
reading and writing data sets, the captcha service, the simulation of honest and
malicious users, model training on the poisoned data, and result processing.
"""

__version__ = "0.1.0"
