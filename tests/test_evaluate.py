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
