"""A fair promotion gate: routers are judged only on held-out prompts they never trained on; the shipped router
is a version like the others, so the first promotion can be rolled back."""

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from test_cli import cli_env, routeyard

from db.models import RouterVersion
from db.session import open_database
from jobs.services.retrain import retrain
from jobs.services.versions import SERVING, resolve_router_spec, rollback, version_rows
from routers.base import RouterRuntime, version_of
from routers.data import (
    Outcome,
    load_training_prompts,
    outcome_to_preference,
    prompt_fingerprints,
    save_training_prompts,
)
from routers.evaluate import metrics
from routers.random_router import RandomConfig, RandomRouter
from routers.registry import DEFAULT_ROUTER, PRETRAINED_DIR
from routeyard.errors import NotFound


@pytest.fixture
def database_url(tmp_path):
    """The database does not matter here (the routers and the gate do): SQLite only, not once per database."""
    return f"sqlite:///{tmp_path / 'routeyard.db'}"


def synthetic(name: str, n: int, seed: int) -> list[Outcome]:
    rng = np.random.default_rng(seed)
    return [Outcome(f"{name} prompt {i}", float(rng.random() < 0.8), float(rng.random() < 0.45), name)
            for i in range(n)]


def saved_random_router(path, trained_on: list[str] | None, seed: int = 5):
    """A saved router (random scores, so nothing trains) that records `trained_on` as its training prompts."""
    version = RandomRouter(RandomConfig(seed=seed), RouterRuntime()).save(path)
    if trained_on is not None:
        save_training_prompts(path, trained_on, version)
    return path


def test_the_shipped_router_records_its_training_prompts_and_the_gate_refuses_its_own_training_data(
        settings, gsm8k):
    shipped = PRETRAINED_DIR / DEFAULT_ROUTER
    seen = load_training_prompts(shipped, version_of(shipped))
    assert seen is not None and len(seen) > 10_000
    _, test = gsm8k
    assert np.isin(prompt_fingerprints(o.prompt for o in test), seen).all()  # it saw every shared prompt

    sf = open_database(settings.resolved_database_url)
    with pytest.raises(ValueError) as exc:
        retrain(sf, settings, "random", [], test)  # settings serve the shipped router (no promotion yet)
    message = str(exc.value)
    assert f"trained on {len(test)} of the {len(test)} held-out prompts" in message
    assert "leaving 0 that neither router saw" in message and "at least 100" in message
    with sf() as session:
        assert session.scalar(select(func.count()).select_from(RouterVersion)) == 0  # refused before training
    assert not (settings.home / "routers").exists()


def test_both_routers_are_judged_only_on_heldout_prompts_neither_trained_on(settings, tmp_path):
    heldout = synthetic("held", 400, 1)
    serving_dir = saved_random_router(tmp_path / "serving", [o.prompt for o in heldout[:150]] + ["other"])
    settings = settings.model_copy(update={"default_router": str(serving_dir)})
    sf = open_database(settings.resolved_database_url)
    extra = [Outcome(f"train prompt {i}", 1.0, float(i % 2), "train") for i in range(50)]
    result = retrain(sf, settings, "random", [], heldout, extra=[outcome_to_preference(o) for o in extra]
                     + [outcome_to_preference(heldout[0])])  # a held-out prompt in the training data is set aside
    assert "on 250 held-out prompts" in result.decision
    assert "150 of 400 held-out prompts excluded because the serving router random@" in result.decision
    fair = heldout[150:]
    serving = RandomRouter(RandomConfig(seed=5), RouterRuntime())
    expected = metrics(serving.win_rate([o.prompt for o in fair]), fair).apgr
    assert result.serving_apgr == pytest.approx(expected)
    with sf() as session:
        row = session.scalar(select(RouterVersion))
        assert (row.data["heldout"], row.data["judged_on"], row.data["heldout_excluded"]) == (400, 250, 150)
    candidate_seen = load_training_prompts(Path(result.path), result.version)
    assert np.array_equal(candidate_seen, prompt_fingerprints(o.prompt for o in extra))

    # Fewer than 100 left once the overlap is set aside: refused, saying how many overlapped.
    with pytest.raises(ValueError, match="trained on 150 of the 200 held-out prompts, leaving 50"):
        retrain(sf, settings, "random", [], heldout[:200], extra=[outcome_to_preference(o) for o in extra])


def test_an_unknown_training_set_is_said_and_a_near_tie_is_refused(settings, tmp_path):
    heldout = synthetic("held", 200, 2)
    unknown = saved_random_router(tmp_path / "old", None)  # a checkpoint from before the record existed
    stale = saved_random_router(tmp_path / "stale", [o.prompt for o in heldout])
    (stale / "config.json").write_text(json.dumps({"router": "random", "seed": 6}))  # other weights since
    rows = [Outcome(f"train prompt {i}", 1.0, 0.0, "train") for i in range(30)]
    extra = [outcome_to_preference(o) for o in rows]
    for serving in (unknown, stale):
        s = settings.model_copy(update={"default_router": str(serving)})
        result = retrain(open_database(s.resolved_database_url), s, "random", [], heldout, margin=1.0, extra=extra)
        assert "on 200 held-out prompts" in result.decision
        assert "cannot tell whether it trained on these held-out prompts" in result.decision

    tied = [Outcome(o.prompt, o.strong, o.strong) for o in heldout]  # the two models equally good
    s = settings.model_copy(update={"default_router": "random"})
    with pytest.raises(ValueError, match="PGR divides by that gap"):
        retrain(open_database(s.resolved_database_url), s, "random", [], tied, extra=extra)


def test_the_shipped_version_is_listed_and_can_be_served_again_after_a_promotion(settings):
    sf = open_database(settings.resolved_database_url)
    shipped_version = version_of(PRETRAINED_DIR / DEFAULT_ROUTER)
    with sf() as session:
        [only] = version_rows(session, settings)
    assert only.shipped and only.serving and only.version == shipped_version and only.router == DEFAULT_ROUTER

    with sf() as session:  # a promoted version, as retrain leaves it
        session.add(RouterVersion(router="random", version="abc123", path="random", apgr=0.6, baseline_apgr=0.5,
                                  decision="promoted: test", serving=True, data={"rows": 10}))
        session.commit()
    with sf() as session:
        rows = version_rows(session, settings)
    assert [(r.version, r.serving, r.shipped) for r in rows] == [("abc123", True, False),
                                                                  (shipped_version, False, True)]
    assert resolve_router_spec(sf, SERVING) == "random"

    back = rollback(sf, shipped_version, settings)
    assert back.version == shipped_version
    assert resolve_router_spec(sf, SERVING) == DEFAULT_ROUTER
    with sf() as session:
        rows = version_rows(session, settings)
        assert [(r.version, r.serving) for r in rows] == [("abc123", False), (shipped_version, True)]
        assert "replaced by the shipped router" in rows[0].decision
    rollback(sf, "abc123", settings)
    assert resolve_router_spec(sf, SERVING) == "random"
    rollback(sf, "shipped", settings)
    assert resolve_router_spec(sf, SERVING) == DEFAULT_ROUTER
    with pytest.raises(NotFound, match="no router version 'nope'"):
        rollback(sf, "nope", settings)


@pytest.mark.slow
def test_router_versions_and_rollback_on_the_command_line(tmp_path):
    env = cli_env(tmp_path / "home")
    shipped_version = version_of(PRETRAINED_DIR / DEFAULT_ROUTER)
    listed = routeyard("router", "versions", env=env)
    assert shipped_version in listed.stdout and "*" in listed.stdout
    back = routeyard("router", "rollback", shipped_version, env=env)
    assert f"now serving {DEFAULT_ROUTER} {shipped_version}" in back.stdout
