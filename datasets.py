"""The captcha service of the study, as the class ``Dataset``.

``Dataset`` hands out captchas that mix known and unknown images, checks the
answers, turns votes into accepted labels and emits the labelled data in
cumulative batches. It lives in :mod:`crowdpoison.service`; this module keeps the
study's import path, ``from datasets import Dataset``.
"""

from crowdpoison.service import Captcha, Dataset, ServiceCounts

__all__ = ["Captcha", "Dataset", "ServiceCounts"]
