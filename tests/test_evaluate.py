import numpy as np
import pytest

from routers.data import Outcome
from routers.evaluate import curve, metrics, oracle_metrics, random_metrics


def outcomes(pairs):
    return [Outcome(f"p{i}", s, w) for i, (s, w) in enumerate(pairs)]


def test_pgr_is_zero_with_no_strong_calls_and_one_with_all():
    rows = outcomes([(1, 0), (1, 1), (0, 0), (1, 0)])
    c = curve(np.array([0.1, 0.2, 0.3, 0.4]), np.array([r.strong for r in rows]), np.array([r.weak for r in rows]))
    assert c.pgr[0] == 0.0 and c.pgr[-1] == pytest.approx(1.0)


def test_a_router_that_ranks_the_strong_wins_first_reaches_full_pgr_early():
    rows = outcomes([(1, 0), (1, 0), (1, 1), (0, 0), (1, 1), (0, 0), (1, 1), (0, 0), (1, 1), (0, 0)])
    perfect = metrics(np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=float), rows)
    backwards = metrics(np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1], dtype=float), rows)
    assert perfect.cpt50 == pytest.approx(0.1) and perfect.cpt80 == pytest.approx(0.2)
    assert perfect.apgr > 0.85 > 0.15 > backwards.apgr
    assert perfect.pgr_at["0.2"] == pytest.approx(1.0)


def test_random_averages_near_half_and_oracle_beats_everything():
    rng = np.random.default_rng(1)
    strong = (rng.random(2000) < 0.8).astype(float)
    weak = (rng.random(2000) < 0.6).astype(float)
    rows = [Outcome(str(i), s, w) for i, (s, w) in enumerate(zip(strong, weak, strict=True))]
    assert random_metrics(rows, seeds=20).apgr == pytest.approx(0.5, abs=0.03)
    assert oracle_metrics(rows).apgr > 0.9


def test_folds_are_averaged_not_pooled_so_one_folds_offset_cannot_reorder_another():
    from routers.evaluate import mean_curve

    rng = np.random.default_rng(2)
    folds = []
    for offset in (0.0, 5.0):  # the second fold's router scores everything 5 higher: irrelevant within a fold
        strong = (rng.random(500) < 0.8).astype(float)
        weak = (rng.random(500) < 0.6).astype(float)
        folds.append((strong - weak + rng.normal(0, 0.8, 500) + offset, strong, weak))
    per_fold = [curve(s, st, w) for s, st, w in folds]
    mean = mean_curve(per_fold)
    apgrs = [float(np.trapezoid(c.pgr, c.fraction)) for c in per_fold]
    assert float(np.trapezoid(mean.pgr, mean.fraction)) == pytest.approx(np.mean(apgrs), abs=2e-3)
    assert mean.fraction[0] == 0.0 and mean.fraction[-1] == 1.0 and mean.pgr[-1] == pytest.approx(1.0)
