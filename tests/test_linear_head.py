"""The logistic head behind causal_llm and bert's linear probe: fitting, and validation by whole groups."""

import numpy as np

from routers.data import Outcome
from routers.evaluate import metrics
from routers.linear_head import (
    choose_l2,
    fit_logistic,
    fit_outcome_heads,
    label_apgr,
    outcome_score,
    validation_folds,
)


def test_fit_logistic_recovers_the_direction_that_separates_the_labels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 5))
    y = (1 / (1 + np.exp(-(2 * x[:, 1] - x[:, 3]))) > rng.random(2000)).astype(float)
    w, b = fit_logistic(x, y, l2=1e-4)
    assert b.shape == (1,)
    assert np.argmax(w) == 1 and np.argmin(w) == 3 and abs(w[0]) < 0.3
    strong, _ = fit_logistic(x, y, l2=1.0)
    assert np.linalg.norm(strong) < 0.5 * np.linalg.norm(w)  # the penalty shrinks


def test_label_apgr_is_the_apgr_of_outcomes_with_those_labels():
    labels = np.array([1.0, 0.5, 0.0, 1.0, 0.5, 0.5, 0.0, 1.0])
    scores = np.array([0.9, 0.2, 0.1, 0.3, 0.8, 0.5, 0.6, 0.7])
    rows = [Outcome(f"p{i}", y, 1 - y) for i, y in enumerate(labels)]
    assert label_apgr(scores, labels) == metrics(scores, rows).apgr


def test_validation_holds_out_whole_groups_and_falls_back_to_rows_without_them():
    groups = [f"subject{i % 7}" for i in range(700)]
    folds = validation_folds(groups, k=5)
    assert sorted(np.concatenate(folds).tolist()) == list(range(700))
    for held in folds:
        inside = {groups[i] for i in held}
        assert all(groups[i] not in inside for i in set(range(700)) - set(held.tolist()))
    plain = validation_folds([""] * 100, k=5)
    assert len(plain) == 5 and all(15 <= len(f) <= 25 for f in plain)


def test_choose_l2_prefers_more_penalty_when_the_features_are_noise_beyond_one():
    rng = np.random.default_rng(1)
    x = np.hstack([rng.normal(size=(600, 1)), rng.normal(size=(600, 300))])
    y = (x[:, 0] + rng.normal(0, 1.0, 600) > 0).astype(float)
    best, tried = choose_l2(x, y, [f"g{i % 10}" for i in range(600)], ["p"] * 600, grid=(1e-5, 1e-1))
    assert set(tried) == {"1e-05", "0.1"} and best == 0.1 and tried["0.1"] > tried["1e-05"]


def test_quality_heads_rank_the_middle_difficulty_first_where_one_preference_head_cannot():
    """Strong wins only at middle difficulty: easy prompts are ties of two right answers, hard ones ties of
    two wrong ones. A linear preference head is monotone in difficulty; two quality heads are not."""
    rng = np.random.default_rng(0)
    n = 3000
    difficulty = rng.uniform(-3, 3, n)
    strong = (difficulty + 0.3 * rng.normal(size=n) < 1.0).astype(float)
    weak = (difficulty + 0.3 * rng.normal(size=n) < -1.0).astype(float)
    x = np.column_stack([difficulty])
    y = (1 + strong - weak) / 2
    groups, prompts = [f"g{i % 8}" for i in range(n)], ["p"] * n
    train, test = slice(0, 2000), slice(2000, n)
    w, b = fit_logistic(x[train], y[train], 1e-3)
    preference_apgr = label_apgr(x[test] @ w + b[0], y[test])
    s_head, w_head = fit_outcome_heads(x[train], np.column_stack([strong, weak])[train], groups[:2000],
                                       prompts[:2000], 1e-3)
    scores = outcome_score(x[test] @ s_head.w + s_head.prior.offsets(prompts[2000:]),
                           x[test] @ w_head.w + w_head.prior.offsets(prompts[2000:]))
    assert scores.min() >= 0 and scores.max() <= 1
    assert label_apgr(scores, y[test]) > preference_apgr + 0.15
    # validation scores the pair the same way
    l2, tried = choose_l2(x, y, groups, prompts, grid=(1e-3,), outcomes=np.column_stack([strong, weak]))
    assert l2 == 1e-3 and tried["0.001"] > preference_apgr + 0.1
