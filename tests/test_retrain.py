"""Feedback -> preference rows -> retrain -> promotion gate -> router versions recorded per item."""

import json
from pathlib import Path

import numpy as np
import pytest
from jobs_helpers import items, submit_and_run
from sqlalchemy import delete, select

from db.catalog import list_versions
from db.models import Feedback, RouterVersion
from jobs.services.feedback import FeedbackIn, feedback_preferences, record_feedback
from jobs.services.retrain import retrain
from jobs.services.versions import rollback
from routers.data import outcome_to_preference
from routeyard.errors import InvalidInput


@pytest.fixture
def database_url(tmp_path):
    """The database does not matter here (the routers and the gate do): SQLite only, not once per database."""
    return f"sqlite:///{tmp_path / 'routeyard.db'}"


def plain_batch(path, prompts):
    path.write_text("".join(json.dumps({"id": str(i), "prompt": p, "max_tokens": 50}) + "\n"
                            for i, p in enumerate(prompts)))
    return path


def test_feedback_becomes_preference_rows(settings, tmp_path):
    sf, result, _ = submit_and_run(settings, plain_batch(tmp_path / "b.jsonl", [f"q{i}" for i in range(10)]),
                                   strong_fraction=0.5, shadow_fraction=1.0)  # weak items get both answers
    rows = {r.custom_id: r for r in items(sf, result.job_id)}
    weak = [c for c, r in rows.items() if r.tier == "weak"]
    strong = [c for c, r in rows.items() if r.tier == "strong"]
    job = result.job_id
    record_feedback(sf, FeedbackIn(job, weak[0], "thumbs", 1.0))
    record_feedback(sf, FeedbackIn(job, weak[1], "thumbs", 0.0))
    record_feedback(sf, FeedbackIn(job, weak[2], "rating", 0.2))
    record_feedback(sf, FeedbackIn(job, weak[2], "rating", 0.8))  # the latest judgement counts
    record_feedback(sf, FeedbackIn(job, strong[0], "thumbs", 1.0))  # says nothing about the weak model
    both = weak[3]
    assert rows[both].shadow_answer is not None
    record_feedback(sf, FeedbackIn(job, both, "prefer", 1.0))
    with sf() as session:
        labels = {p.prompt: p.label for p in feedback_preferences(session)}
    assert labels == {rows[weak[0]].prompt: 0.5, rows[weak[1]].prompt: 1.0, rows[weak[2]].prompt: 0.6,
                      rows[both].prompt: 1.0}
    with pytest.raises(InvalidInput, match="a preference needs both"):
        record_feedback(sf, FeedbackIn(job, strong[1], "prefer", 1.0))
    with pytest.raises(InvalidInput, match="field 'value'"):
        record_feedback(sf, FeedbackIn(job, weak[0], "prefer", 0.3))
    with pytest.raises(InvalidInput, match="no item 'nope'"):
        record_feedback(sf, FeedbackIn(job, "nope", "thumbs", 1.0))


@pytest.mark.slow
def test_informative_feedback_is_promoted_shuffled_feedback_is_rejected_and_items_record_the_version(
        settings, tmp_path, gsm8k):
    settings = settings.model_copy(update={"default_router": "random"})  # what serves before any promotion
    train, test = gsm8k
    judged, heldout = train[:500], test[:300]
    sf, result, _ = submit_and_run(settings, plain_batch(tmp_path / "b.jsonl", [o.prompt for o in judged]),
                                   strong_fraction=0.0, shadow_fraction=1.0)  # both answers of every item
    for i, o in enumerate(judged):  # what users who saw both answers would say
        record_feedback(sf, FeedbackIn(result.job_id, str(i), "prefer", outcome_to_preference(o).label))

    good = retrain(sf, settings, "mf", [], heldout, margin=0.02)
    assert good.promoted and good.candidate_apgr > good.serving_apgr + 0.02, good.decision
    assert (Path(good.path) / "quality.json").exists()  # its held-out curve, for --target-pgr

    with sf() as session:
        session.execute(delete(Feedback))
        session.commit()
    shuffled = np.random.default_rng(1).permutation([outcome_to_preference(o).label for o in judged])
    for i, label in enumerate(shuffled):
        record_feedback(sf, FeedbackIn(result.job_id, str(i), "prefer", float(label)))
    bad = retrain(sf, settings, "mf", [], heldout)
    assert not bad.promoted and "kept the serving router" in bad.decision
    assert bad.candidate_apgr < good.candidate_apgr

    with sf() as session:
        versions = list_versions(session)
        assert [v.version for v in versions if v.serving] == [good.version]
        assert {v.version for v in versions} == {good.version, bad.version}
        assert all(v.data["feedback_rows"] == 500 for v in versions)

    _, later, _ = submit_and_run(settings, plain_batch(tmp_path / "c.jsonl", ["a new prompt", "another"]),
                                 router="serving")
    assert {r.router_version for r in items(sf, later.job_id)} == {f"mf@{good.version}"}

    rollback(sf, bad.version)
    with sf() as session:
        assert session.scalar(select(RouterVersion.version).where(RouterVersion.serving.is_(True))) == bad.version


@pytest.mark.slow
def test_retrain_weights_stored_feedback_as_the_users_own_traffic(settings, tmp_path, gsm8k):
    from routers.linear import CORRECTION_GRID
    from routers.registry import DEFAULT_ROUTER

    settings = settings.model_copy(update={"default_router": "random"})
    train, test = gsm8k
    base = tmp_path / "base.jsonl"
    base.write_text("".join(json.dumps({"prompt": o.prompt, "strong": o.strong, "weak": o.weak}) + "\n"
                            for o in train[300:500]))
    judged = train[:60]
    sf, result, _ = submit_and_run(settings, plain_batch(tmp_path / "b.jsonl", [o.prompt for o in judged]),
                                   strong_fraction=0.0, shadow_fraction=1.0)
    for i, o in enumerate(judged):
        record_feedback(sf, FeedbackIn(result.job_id, str(i), "prefer", outcome_to_preference(o).label))
    done = retrain(sf, settings, DEFAULT_ROUTER, [base], test[:200])
    config = json.loads((Path(done.path) / "config.json").read_text())
    assert config["train"]["rows"] == 260 and config["train"]["focus_rows"] == 60
    assert config["focus_c"] is None or config["focus_c"] in CORRECTION_GRID
    assert set(config["focus_tried"]) == {"none", *(f"{c:g}" for c in CORRECTION_GRID)}
    # whether the feedback changed the router is said, not left to be guessed from identical scores
    assert ("the feedback left the base heads as they were" in done.decision) == (config["focus_c"] is None)
