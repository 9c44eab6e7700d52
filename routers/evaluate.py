"""RouteLLM's metrics, computed exactly over every possible number of strong calls.

PGR(x) = (q(router at x) - q(weak)) / (q(strong) - q(weak)), where the router sends the top x share of
prompts (by score) to the strong model. APGR is the area under PGR over x in [0, 1]; CPT(p) is the smallest
share of strong calls whose PGR reaches p.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from routers.rows import Outcome

PGR_POINTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Curve:
    fraction: np.ndarray  # k / n for k = 0..n strong calls
    quality: np.ndarray  # mean quality at each k
    pgr: np.ndarray


@dataclass(frozen=True)
class Metrics:
    n: int
    quality_strong: float
    quality_weak: float
    apgr: float
    cpt50: float
    cpt80: float
    pgr_at: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def curve(scores: np.ndarray, strong: np.ndarray, weak: np.ndarray) -> Curve:
    """Quality when the k highest-scoring prompts go strong, for every k (ties broken by position)."""
    n = len(scores)
    order = np.lexsort((np.arange(n), -np.asarray(scores, dtype=np.float64)))
    gain = (strong - weak)[order]
    quality = (weak.sum() + np.concatenate([[0.0], np.cumsum(gain)])) / n
    span = strong.mean() - weak.mean()
    pgr = (quality - weak.mean()) / span if span > 0 else np.zeros_like(quality)
    return Curve(np.arange(n + 1) / n, quality, pgr)


def cpt(c: Curve, target: float) -> float:
    hits = np.nonzero(c.pgr >= target - 1e-12)[0]
    return float(c.fraction[hits[0]]) if len(hits) else 1.0


def summarize(c: Curve, n: int, quality_strong: float, quality_weak: float) -> Metrics:
    pgr_at = {f"{x:.1f}": float(np.interp(x, c.fraction, c.pgr)) for x in PGR_POINTS}
    return Metrics(n, quality_strong, quality_weak, float(np.trapezoid(c.pgr, c.fraction)), cpt(c, 0.5),
                   cpt(c, 0.8), pgr_at)


def metrics(scores: np.ndarray, outcomes: Sequence[Outcome]) -> Metrics:
    strong = np.array([o.strong for o in outcomes], dtype=np.float64)
    weak = np.array([o.weak for o in outcomes], dtype=np.float64)
    return summarize(curve(np.asarray(scores), strong, weak), len(outcomes), float(strong.mean()),
                     float(weak.mean()))


def mean_curve(curves: Sequence[Curve], points: int = 1001) -> Curve:
    """The average of curves over a common grid of strong-call shares (e.g. one per cross-validation fold).

    Folds are averaged, not pooled: each fold's router ranks only its own held-out batch (as a job routes by
    its own batch quantile). Pooling the scores of different fold models into one ranking mixes in their
    offsets, and in leave-groups-out validation those offsets are anti-correlated with the held-out base
    rate (the training share is the complement of the test share), a known pessimistic bias of pooled
    cross-validated ranking metrics (Airola et al., 2011, "An experimental comparison of cross-validation
    techniques for estimating the area under the ROC curve").
    """
    grid = np.linspace(0.0, 1.0, points)
    return Curve(grid, np.mean([np.interp(grid, c.fraction, c.quality) for c in curves], axis=0),
                 np.mean([np.interp(grid, c.fraction, c.pgr) for c in curves], axis=0))


def random_metrics(outcomes: Sequence[Outcome], seeds: int = 10) -> Metrics:
    """The random router, averaged over seeds (its expected APGR is 0.5)."""
    runs = [metrics(np.random.default_rng(s).random(len(outcomes)), outcomes) for s in range(seeds)]
    return Metrics(runs[0].n, runs[0].quality_strong, runs[0].quality_weak,
                   float(np.mean([r.apgr for r in runs])), float(np.mean([r.cpt50 for r in runs])),
                   float(np.mean([r.cpt80 for r in runs])),
                   {k: float(np.mean([r.pgr_at[k] for r in runs])) for k in runs[0].pgr_at})


def oracle_metrics(outcomes: Sequence[Outcome]) -> Metrics:
    """Knows the answer: strong only where it beats weak."""
    return metrics(np.array([o.strong - o.weak for o in outcomes], dtype=np.float64), outcomes)


def evaluate(scores_by_router: dict[str, np.ndarray], outcomes: Sequence[Outcome], seeds: int = 10
             ) -> tuple[dict[str, Metrics], dict[str, Curve]]:
    """Metrics and curves for each router's scores on `outcomes`, plus random (over seeds) and the oracle."""
    strong = np.array([o.strong for o in outcomes], dtype=np.float64)
    weak = np.array([o.weak for o in outcomes], dtype=np.float64)
    found = {name: metrics(s, outcomes) for name, s in scores_by_router.items()}
    curves = {name: curve(np.asarray(s), strong, weak) for name, s in scores_by_router.items()}
    found["random"] = random_metrics(outcomes, seeds)
    runs = [curve(np.random.default_rng(s).random(len(outcomes)), strong, weak) for s in range(seeds)]
    curves["random"] = Curve(runs[0].fraction, np.mean([r.quality for r in runs], axis=0),
                             np.mean([r.pgr for r in runs], axis=0))
    found["oracle"] = oracle_metrics(outcomes)
    curves["oracle"] = curve(strong - weak, strong, weak)
    return found, curves


# --- Whether PGR means anything on a set of outcomes ----------------------------------------------------------
MIN_QUALITY_GAP = 0.05  # strong minus weak mean quality below this: PGR divides by (almost) nothing
MIN_PGR_PROMPTS = 100


def pgr_caveats(outcomes: Sequence[Outcome]) -> list[str]:
    """Plain warnings when PGR, APGR and CPT on `outcomes` would be mostly noise."""
    if not outcomes:
        return ["no prompts"]
    strong = float(np.mean([o.strong for o in outcomes]))
    weak = float(np.mean([o.weak for o in outcomes]))
    out = []
    if strong - weak < MIN_QUALITY_GAP:
        out.append(f"the strong model's mean quality ({strong:.3f}) is only {strong - weak:+.3f} above the weak "
                   f"model's ({weak:.3f}) on these {len(outcomes)} prompts. PGR divides by that gap, so PGR, APGR "
                   f"and CPT here are mostly noise (a gap of at least {MIN_QUALITY_GAP} is needed)")
    if len(outcomes) < MIN_PGR_PROMPTS:
        out.append(f"only {len(outcomes)} prompts: PGR, APGR and CPT on so few are noisy (at least "
                   f"{MIN_PGR_PROMPTS} are needed)")
    return out
