import numpy as np
import pytest

from routers.calibration import route_batch, strong_count, threshold_for_fraction
from routeyard.errors import InvalidInput


@pytest.mark.parametrize("n,fraction,expected", [(10, 0.3, 3), (7, 0.3, 2), (5, 0.5, 3), (1, 0.3, 0), (4, 1.0, 4)])
def test_strong_count_is_the_nearest_whole_number(n, fraction, expected):
    assert strong_count(n, fraction) == expected


def test_exactly_the_top_fraction_goes_strong_even_with_tied_scores():
    scores = np.array([0.5, 0.9, 0.5, 0.5, 0.1, 0.5, 0.7, 0.5, 0.2, 0.5])
    routing = route_batch(scores, 0.3)
    assert routing.n_strong == 3 and routing.strong.sum() == 3
    assert routing.strong.tolist() == [True, True, False, False, False, False, True, False, False, False]
    assert routing.threshold == 0.5
    assert (scores[routing.strong] >= routing.threshold).all()


def test_no_strong_calls_sets_a_threshold_above_every_score():
    scores = np.array([0.2, 0.8])
    routing = route_batch(scores, 0.0)
    assert not routing.strong.any() and routing.threshold > 0.8


def test_fraction_outside_zero_one_is_refused():
    with pytest.raises(InvalidInput, match="strong fraction"):
        route_batch(np.array([0.1]), 1.2)


def test_threshold_from_a_calibration_sample_sends_about_that_share_strong():
    rng = np.random.default_rng(0)
    calibration, fresh = rng.beta(2, 5, 5000), rng.beta(2, 5, 5000)
    t = threshold_for_fraction(calibration, 0.25)
    assert abs((fresh >= t).mean() - 0.25) < 0.02
