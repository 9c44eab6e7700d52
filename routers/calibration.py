"""Thresholds that make "x% strong calls" mean what it says."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from routeyard.errors import InvalidInput


@dataclass(frozen=True)
class BatchRouting:
    strong: np.ndarray  # bool per item
    threshold: float  # the lowest score sent strong (just above the highest score when none is)
    n_strong: int


def strong_count(n: int, fraction: float) -> int:
    if not 0.0 <= fraction <= 1.0:
        raise InvalidInput(f"strong fraction must be in [0, 1], got {fraction}")
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
        raise InvalidInput(f"strong fraction must be in [0, 1], got {fraction}")
    return float(np.quantile(calibration_scores, 1.0 - fraction, method="higher"))


def calibration_table(calibration_scores: np.ndarray, fractions: np.ndarray | None = None) -> dict[str, float]:
    """Threshold per target strong fraction (keys "0.05" .. "0.95"), from scores of a representative sample."""
    fractions = np.round(np.arange(0.05, 0.951, 0.05), 2) if fractions is None else fractions
    return {f"{f:.2f}": threshold_for_fraction(calibration_scores, float(f)) for f in fractions}


def route_within_budget(scores: np.ndarray, weak_cost: np.ndarray, strong_cost: np.ndarray,
                        budget: float) -> BatchRouting:
    """Spend a dollar budget on strong calls for the highest-scoring items.

    `weak_cost` and `strong_cost` are upper bounds of each item's cost on each model, so the batch cannot cost
    more than `budget` whatever the models answer. Everything starts weak; in descending score order an item is
    upgraded when its extra cost still fits (one that does not fit is skipped for cheaper ones after it)."""
    n = len(scores)
    strong = np.zeros(n, dtype=bool)
    left = budget - float(weak_cost.sum())
    if left < 0:
        raise InvalidInput(f"budget ${budget:.4f} is below the cost bound of sending every item weak "
                           f"(${float(weak_cost.sum()):.4f})")
    for i in np.lexsort((np.arange(n), -scores)):
        extra = float(strong_cost[i] - weak_cost[i])
        if extra <= left:
            strong[i] = True
            left -= extra
    threshold = float(scores[strong].min()) if strong.any() else math.nextafter(float(scores.max(initial=0.0)),
                                                                                 math.inf)
    return BatchRouting(strong, threshold, int(strong.sum()))


QUALITY_FILE = "quality.json"  # a router's PGR curve on held-out data, written beside its weights


def save_quality_curve(router_dir: Path, fractions: np.ndarray, pgr: np.ndarray, heldout: str) -> Path:
    """Keep the held-out PGR curve with the router, thinned to 101 points (0%, 1%, ..., 100% strong)."""
    grid = np.linspace(0.0, 1.0, 101)
    curve = np.interp(grid, fractions, pgr)
    path = router_dir / QUALITY_FILE
    path.write_text(json.dumps({"heldout": heldout, "fraction": grid.round(4).tolist(),
                                "pgr": curve.round(6).tolist()}, indent=1) + "\n")
    return path


def fraction_for_target_pgr(router_dir: Path, target: float) -> float:
    """The smallest strong fraction whose held-out PGR reaches `target`, from the router's saved curve."""
    path = router_dir / QUALITY_FILE
    if not path.exists():
        raise InvalidInput(f"router {router_dir} has no held-out quality curve ({QUALITY_FILE}); make one with "
                           "`routeyard router eval --router DIR --outcomes HELDOUT --save-curve`")
    data = json.loads(path.read_text())
    fractions, pgr = np.asarray(data["fraction"]), np.asarray(data["pgr"])
    hits = np.nonzero(pgr >= target)[0]
    return float(fractions[hits[0]]) if len(hits) else 1.0


def shadow_sample(keys: list[str], fraction: float, salt: str) -> set[str]:
    """Exactly round(fraction * n) of `keys`, chosen by a salted hash: the same on every run, unrelated to score."""
    k = strong_count(len(keys), fraction)
    ranked = sorted(keys, key=lambda key: hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest())
    return set(ranked[:k])
