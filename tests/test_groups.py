"""Group-robust training: one bias per group while fitting, a length prior learned from those biases."""

import numpy as np
import pytest

from routers.base import RouterRuntime
from routers.data import Preference
from routers.groups import MIN_GROUP_ROWS, GroupPrior, group_ids, log_length
from routers.registry import train_router


def test_small_groups_share_a_bias_and_too_few_groups_get_one_bias():
    groups = ["a"] * 30 + ["b"] * 30 + ["c"] * 30 + ["d"] * 30 + ["tiny"] * 3 + ["other"] * 2
    names, ids = group_ids(groups)
    assert names == ["a", "b", "c", "d", "*"]
    assert ids[-5:].tolist() == [4] * 5 and ids[:30].tolist() == [0] * 30
    names, ids = group_ids(["a"] * 50 + ["b"] * 50)
    assert names == ["*"] and set(ids.tolist()) == {0}


def test_the_prior_is_the_line_through_the_group_biases_against_their_mean_length():
    rng = np.random.default_rng(0)
    prompts, ids, biases = [], [], []
    for g in range(8):
        size = 10 + 30 * g  # longer prompts in later groups
        prompts += ["x" * int(size * rng.uniform(0.9, 1.1)) for _ in range(MIN_GROUP_ROWS)]
        ids += [g] * MIN_GROUP_ROWS
        biases.append(0.5 * np.log1p(size) - 1.0)
    prior = GroupPrior.fit(np.array(biases), np.array(ids), prompts)
    assert abs(prior.slope - 0.5) < 0.05 and abs(prior.intercept + 1.0) < 0.2 and prior.groups == 8
    np.testing.assert_allclose(prior.offsets(["x" * 99]), prior.intercept + prior.slope * log_length(["x" * 99]))
    flat = GroupPrior.fit(np.array([0.3]), np.zeros(5, dtype=np.int64), ["a"] * 5)
    assert flat.slope == 0.0 and flat.intercept == 0.3
    assert GroupPrior.from_config(None).offsets(["abc"]).tolist() == [0.0]  # routers saved before priors


@pytest.mark.slow  # trains and scores a real router
def test_sw_ranking_keeps_labels_relative_to_their_group_and_adds_the_prior(tmp_path):
    rows = []
    for g, rate in enumerate((0.9, 0.7, 0.3, 0.1)):
        rows += [Preference(f"group {g} question {i}" + "?" * (10 * g), float(i < rate * 25), f"g{g}")
                 for i in range(25)]
    router = train_router("sw_ranking", rows, RouterRuntime(cache_dir=tmp_path))
    labels = router.labels.astype(np.float64)
    for g in range(4):
        assert abs(labels[25 * g : 25 * (g + 1)].mean()) < 1e-6  # each group's base rate is taken out
    prior = router.prior
    assert prior.groups == 4 and prior.slope < 0  # here the longer groups have the lower rates
    assert router.to_json()["group_prior"] == prior.to_config()
