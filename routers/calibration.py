"""Thresholds that make "x% strong calls" mean what it says."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchRouting:
    strong: np.ndarray  # bool per item
    threshold: float  # the lowest score sent strong (just above the highest score when none is)
    n_strong: int


def strong_count(n: int, fraction: float) -> int:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"strong fraction must be in [0, 1], got {fraction}")
    return math.floor(fraction * n + 0.5)


def route_batch(scores: np.ndarray, fraction: float) -> BatchRouting:
    """Send exactly round(fraction * n) items to the strong model: the highest-scoring ones.

    Ties at the threshold are broken by position (earlier first), so the count is exact and the result is
    the same on every run."""
    n = len(scores)
    k = strong_count(n, fraction)
    strong = np.zeros(n, dtype=bool)
    if n == 0:
        return BatchRouting(strong, 1.0, 0)
    order = np.lexsort((np.arange(n), -scores))  # descending score, then ascending index
    strong[order[:k]] = True
    threshold = float(scores[order[k - 1]]) if k else math.nextafter(float(scores.max()), math.inf)
    return BatchRouting(strong, threshold, k)


def threshold_for_fraction(calibration_scores: np.ndarray, fraction: float) -> float:
    """A threshold that sends ~`fraction` of prompts like the calibration sample to the strong model
    (for streams, where the whole batch is not known up front)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"strong fraction must be in [0, 1], got {fraction}")
    return float(np.quantile(calibration_scores, 1.0 - fraction, method="higher"))
