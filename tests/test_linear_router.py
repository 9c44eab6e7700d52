"""The default router: quality heads on every MiniLM layer, its validation choices, and learning a user's traffic."""

import json

import numpy as np
import pytest

from routers.base import RouterRuntime, TrainOptions
from routers.data import Outcome, Preference, outcome_to_preference
from routers.embeddings import Embedder
from routers.evaluate import metrics, random_metrics
from routers.linear import (
    C_GRID,
    CORRECTION_GRID,
    MIN_FOCUS_ROWS,
    choose_correction,
    correct_heads,
    cross_entropy,
    fit_heads,
    qualities,
    with_own_fit,
)
from routers.registry import DEFAULT_ROUTER, PRETRAINED_DIR, load_router, train_router
from routeyard.errors import InvalidInput


@pytest.fixture(scope="module")
def runtime(embedding_cache):
    return RouterRuntime(cache_dir=embedding_cache)


COUNTRIES = ["France", "Peru", "Japan", "Kenya", "Norway", "Chile", "Egypt", "Canada", "India", "Spain", "Ghana",
             "Nepal", "Cuba", "Iraq", "Laos", "Mali", "Oman", "Chad", "Fiji", "Togo"]


def synthetic(seed: int, n: int) -> list[Outcome]:
    """Hard algebra (strong right, weak mostly wrong) mixed with easy geography (both right)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        if i % 2:
            a, b, c = rng.integers(2, 99, 3)
            rows.append(Outcome(f"Solve for x, showing each step: {a}x^2 + {b}x - {c} = 0.", 1.0,
                                float(rng.random() < 0.2), "algebra"))
        else:
            rows.append(Outcome(f"What is the capital city of {COUNTRIES[rng.integers(len(COUNTRIES))]}?", 1.0,
                                float(rng.random() < 0.95), "geography"))
    return rows


@pytest.mark.slow  # scores the shipped checkpoint on real rows (7 s)
def test_the_default_router_is_linear_and_ships_a_checkpoint(runtime):
    assert DEFAULT_ROUTER == "linear"
    loaded = load_router(DEFAULT_ROUTER, runtime)
    config = json.loads((PRETRAINED_DIR / DEFAULT_ROUTER / "config.json").read_text())
    assert loaded.name == "linear" and config["c"] in C_GRID and config["train"]["rows"] > 12000
    assert loaded.router.config.c == config["c"] and loaded.router.tried["c_tried"] == config["c_tried"]
    scores = loaded.router.win_rate(["hello there", "Prove that there are infinitely many primes.", ""])
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all() and scores.std() > 0


def test_layer_features_hold_the_sentence_embedding_as_their_top_layer():
    texts = ["What is the capital of France?", "Solve 3x + 5 = 20 for x, step by step."]
    layers = Embedder(layers=True, device="cpu").embed(texts)
    sentence = Embedder(device="cpu").embed(texts)
    assert layers.shape == (2, 7 * 384)
    top = layers[:, -384:] / np.linalg.norm(layers[:, -384:], axis=1, keepdims=True)
    np.testing.assert_allclose(top, sentence, atol=1e-5)
    assert not np.allclose(layers[:, :384], layers[:, -384:])  # the lower layers are really there


@pytest.mark.slow
def test_linear_learns_which_prompts_need_the_strong_model_and_reloads_identically(runtime, tmp_path):
    train, test = synthetic(0, 240), synthetic(1, 120)
    router = train_router("linear", [outcome_to_preference(o) for o in train], runtime, TrainOptions(seed=0))
    assert router.config.c in C_GRID and set(router.tried["c_tried"]) == {f"{c:g}" for c in C_GRID}
    scores = router.win_rate([o.prompt for o in test])
    algebra = np.array([o.group == "algebra" for o in test])
    assert scores[algebra].min() > scores[~algebra].max()  # every hard prompt ranks above every easy one
    assert metrics(scores, test).apgr > random_metrics(test).apgr + 0.15
    version = router.save(tmp_path / "linear")
    loaded = load_router(str(tmp_path / "linear"), runtime)
    assert loaded.name == "linear" and loaded.version == version
    np.testing.assert_allclose(loaded.router.win_rate([o.prompt for o in test]), scores, rtol=1e-5)


@pytest.mark.slow
def test_linear_beats_random_on_held_out_gsm8k(gsm8k, runtime):
    train, test = gsm8k
    router = train_router("linear", [outcome_to_preference(o) for o in train], runtime, TrainOptions(seed=0))
    assert metrics(router.win_rate([o.prompt for o in test]), test).apgr > random_metrics(test).apgr + 0.05


def test_preference_rows_without_qualities_enter_as_label_and_its_complement():
    rows = [Preference("a", 1.0), Preference("b", 0.5), Preference("c", 0.0), Preference("d", 0.0, "", 0.0, 0.0)]
    np.testing.assert_array_equal(qualities(rows), [[1, 0], [0.5, 0.5], [0, 1], [0, 0]])


def user_domain(seed: int, n: int) -> list[Preference]:
    """A domain the base rows never show: Python questions need the strong model, shell one-liners do not."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = int(rng.integers(1000))
        if i % 2:
            rows.append(Preference(f"Refactor this Python class #{k} to use async generators and typing.", 1.0,
                                   "user", 1.0, float(rng.random() < 0.15)))
        else:
            rows.append(Preference(f"Which bash command lists the files in folder {k}?", 0.5, "user", 1.0, 1.0))
    return rows


@pytest.mark.slow
def test_focus_rows_move_the_router_toward_the_users_traffic(runtime, tmp_path):
    base = [outcome_to_preference(o) for o in synthetic(2, 200)]
    # The base rows teach the opposite of the user's traffic (Python easy, shell hard), so the base-only
    # router ranks the user's prompts backwards until the user's rows outweigh them.
    base += [Preference(f"Write a Python class #{i} with a method that adds two numbers.", 0.5, "misc", 1.0, 1.0)
             for i in range(40)]
    base += [Preference(f"Which shell command shows the disk usage of folder {i}?", 1.0, "misc", 1.0, 0.0)
             for i in range(40)]
    user, test = user_domain(3, 120), user_domain(4, 100)
    as_outcomes = [Outcome(r.prompt, r.strong, r.weak) for r in test]
    fixed = {"c": 1e-4}
    base_only = train_router("linear", base, runtime, TrainOptions(params=fixed))
    focused = train_router("linear", base + user, runtime,
                           TrainOptions(params=fixed, focus_groups=frozenset({"user"})))
    assert focused.config.focus_c in CORRECTION_GRID and focused.trained["focus_rows"] == 120
    assert set(focused.tried["focus_tried"]) == {"none", *(f"{c:g}" for c in CORRECTION_GRID)}
    assert base_only.config.c == 1e-4 and base_only.config.focus_c == "auto" and not base_only.tried
    before = metrics(base_only.win_rate([r.prompt for r in test]), as_outcomes).apgr
    after = metrics(focused.win_rate([r.prompt for r in test]), as_outcomes).apgr
    assert before < 0.5 and after > before + 0.2, (before, after)
    # Corrected base heads and heads on the user's rows alone, averaged; saved and reloaded as two members.
    assert focused.heads.w.shape[0] == 2 and base_only.heads.w.shape[0] == 1
    focused.save(tmp_path / "focused")
    loaded = load_router(str(tmp_path / "focused"), runtime).router
    np.testing.assert_allclose(loaded.win_rate([r.prompt for r in test]), focused.win_rate([r.prompt for r in test]),
                               rtol=1e-5)
    alone = train_router("linear", base + user, runtime,
                         TrainOptions(params={**fixed, "own_c": None}, focus_groups=frozenset({"user"})))
    assert alone.heads.w.shape[0] == 1  # own_c None: the corrected heads alone


def _outcomes(rng: np.random.Generator, x: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Strong right where x leans along `direction`, weak right where it leans against it."""
    lean = x @ direction
    return np.column_stack([rng.random(len(x)) < 1 / (1 + np.exp(-3 * lean)),
                            rng.random(len(x)) < 1 / (1 + np.exp(3 * lean))]).astype(np.float64)


def test_the_correction_is_chosen_by_held_out_cross_entropy_on_the_users_rows():
    rng = np.random.default_rng(0)
    d = 8
    x_base, x_user = rng.normal(size=(600, d)), rng.normal(size=(200, d))
    along = np.eye(d)[0]
    heads = fit_heads(x_base, _outcomes(rng, x_base, along), 1.0)
    # The user's traffic ranks by another feature: the base heads are wrong about it, a correction must help.
    shifted = _outcomes(rng, x_user, np.eye(d)[1])
    chosen, tried = choose_correction(heads, x_user, shifted, seed=0)
    assert set(tried) == {"none", *(f"{c:g}" for c in CORRECTION_GRID)}
    assert chosen is not None and tried[f"{chosen:g}"] == min(tried.values()) < tried["none"]
    assert tried["none"] == pytest.approx(cross_entropy(heads, x_user, shifted))
    # Too few rows to validate on: the base heads stay, nothing is tried.
    few = MIN_FOCUS_ROWS - 1
    assert choose_correction(heads, x_user[:few], shifted[:few]) == (None, {})


def test_heads_fitted_on_the_users_rows_alone_join_as_a_member_whose_probabilities_are_averaged():
    rng = np.random.default_rng(1)
    d = 6
    x_base, x_user = rng.normal(size=(400, d)), rng.normal(loc=2.0, scale=3.0, size=(150, d))
    heads = fit_heads(x_base, _outcomes(rng, x_base, np.eye(d)[0]), 1.0)
    q_user = _outcomes(rng, x_user, np.eye(d)[1])
    corrected = correct_heads(heads, x_user, q_user, 1e-2)
    both = with_own_fit(corrected, x_user, q_user, 1e-1)
    assert both.w.shape == (2, 2, d) and both.b.shape == (2, 2)
    # The own member, written in the base standardisation, equals a fit standardised on the user's rows.
    mean, scale = x_user.mean(axis=0), x_user.std(axis=0) + 1e-6
    own = fit_heads(x_user, q_user, 1e-1)
    z_own = ((x_user - mean) / scale) @ own.w[0].T + own.b[0]
    z_member = ((x_user - both.mean) / both.scale) @ both.w[1].T + both.b[1]
    np.testing.assert_allclose(z_member, z_own, atol=2e-3)
    p = both.probabilities(x_user)
    np.testing.assert_allclose(p, 0.5 * (corrected.probabilities(x_user) + 1 / (1 + np.exp(-z_own))), atol=1e-3)
    np.testing.assert_allclose(both.score(x_user), 0.5 * (1 + p[:, 0] - p[:, 1]))
    # The user's traffic ranks by feature 1: the averaged heads rank it better than the base heads did.
    gain = q_user[:, 0] - q_user[:, 1]
    assert np.corrcoef(both.score(x_user), gain)[0, 1] > np.corrcoef(heads.score(x_user), gain)[0, 1] + 0.3


def test_an_unknown_linear_setting_is_an_error_naming_the_known_ones(runtime):
    with pytest.raises(InvalidInput, match="unknown setting 'gamma' of router 'linear'; valid settings: encoder, c, "
                                           "focus_c, own_c"):
        train_router("linear", [Preference("a", 1.0)], runtime, TrainOptions(params={"gamma": 1}))
    with pytest.raises(InvalidInput, match="setting 'focus_c' of router 'linear': 'sometimes' is not a number or "
                                           "'auto' or null"):
        train_router("linear", [Preference("a", 1.0)], runtime, TrainOptions(params={"focus_c": "sometimes"}))
