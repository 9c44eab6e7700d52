"""--budget-usd: the strong calls go to the highest-scoring items that fit, and the bill never exceeds it."""

import numpy as np
import pytest
from jobs_helpers import items, submit, submit_and_run, write_batch

from routers.calibration import route_within_budget
from routeyard.errors import InvalidInput
from routeyard.pricing import cost_bound, price_for


@pytest.fixture
def database_url(tmp_path):
    """The database does not matter here (the routers and the gate do): SQLite only, not once per database."""
    return f"sqlite:///{tmp_path / 'routeyard.db'}"

PROMPTS = [f"Budget question {i}: " + "explain in detail " * (i % 7) for i in range(40)]


def test_the_budget_buys_strong_calls_in_score_order_and_skips_what_does_not_fit():
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    weak, strong = np.array([1.0, 1.0, 1.0, 1.0]), np.array([3.0, 6.0, 2.0, 2.0])
    routing = route_within_budget(scores, weak, strong, budget=4 + 2 + 1)  # room for 3 dollars of upgrades
    assert routing.strong.tolist() == [True, False, True, False] and routing.threshold == 0.7
    assert (np.where(routing.strong, strong, weak)).sum() <= 7
    with pytest.raises(ValueError, match="below the cost bound"):
        route_within_budget(scores, weak, strong, budget=3.5)


def test_a_budgeted_job_never_costs_more_than_its_budget(settings, tmp_path):
    path = write_batch(tmp_path / "b.jsonl", PROMPTS)  # max_tokens 200 on every line
    sf, probe = submit(settings, path)  # to read the bodies as stored
    bodies = [r.body for r in items(sf, probe.job_id)]
    weak = sum(cost_bound(b, price_for(settings.weak_model, settings.price_table), 1024) for b in bodies)
    strong = sum(cost_bound(b, price_for(settings.strong_model, settings.price_table), 1024) for b in bodies)
    budget = weak + 0.25 * (strong - weak)
    sf, result, summary = submit_and_run(settings, path, budget_usd=budget)
    assert summary.counts == {"succeeded": 40}
    rows = items(sf, result.job_id)
    n_strong = sum(r.tier == "strong" for r in rows)
    assert 0 < n_strong < 40
    assert sum(r.cost_usd for r in rows) <= budget
    strong_scores = [r.score for r in rows if r.tier == "strong"]
    weak_scores = [r.score for r in rows if r.tier == "weak"]
    assert np.median(strong_scores) > np.median(weak_scores)


def test_a_budget_too_small_for_all_weak_is_refused_and_unbounded_answers_get_a_cap(settings, tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text('{"id": "a", "prompt": "no max_tokens here"}\n{"id": "b", "prompt": "nor here"}\n')
    with pytest.raises(InvalidInput, match=r"budget \$1e-09 is below"):
        submit(settings, path, budget_usd=1e-9)
    sf, result = submit(settings, path, budget_usd=1.0)
    assert all(r.body["max_tokens"] == settings.default_max_tokens for r in items(sf, result.job_id))


@pytest.mark.slow
def test_target_pgr_routes_at_the_fraction_the_held_out_curve_gives(settings, tmp_path):
    import shutil

    from routers.calibration import save_quality_curve
    from routers.registry import PRETRAINED_DIR

    router_dir = tmp_path / "router"
    shutil.copytree(PRETRAINED_DIR / "mf", router_dir)
    with pytest.raises(InvalidInput, match="no held-out quality curve"):
        submit(settings, write_batch(tmp_path / "a.jsonl", PROMPTS), router=str(router_dir), target_pgr=0.5)
    fractions = np.linspace(0, 1, 41)
    save_quality_curve(router_dir, fractions, np.sqrt(fractions), "synthetic")  # PGR 0.5 at 25% strong
    sf, result, _ = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", PROMPTS),
                                   router=str(router_dir), target_pgr=0.5)
    assert sum(r.tier == "strong" for r in items(sf, result.job_id)) == 10  # 25% of 40
    with sf() as session:
        from db.models import Job

        job = session.get(Job, result.job_id)
        assert job.target_pgr == 0.5 and job.strong_fraction == pytest.approx(0.25)


def test_shadow_sends_a_share_of_weak_items_to_the_strong_model_too(settings, tmp_path, loopback):
    from conftest import STRONG, WEAK
    from jobs_helpers import server_stats

    from jobs.services.spend import spend_report
    from routeyard.testing.loopback import compose_answer

    sf, result, summary = submit_and_run(settings, write_batch(tmp_path / "s.jsonl", PROMPTS), strong_fraction=0.3,
                                         shadow_fraction=0.25)
    assert summary.counts == {"succeeded": 40}
    rows = items(sf, result.job_id)
    shadows = [r for r in rows if r.shadow]
    assert len(shadows) == 7 and all(r.tier == "weak" for r in shadows)  # 25% of the 28 weak items
    for r in shadows:
        assert r.answer == compose_answer(WEAK, r.prompt, 40)
        assert r.shadow_answer == compose_answer(STRONG, r.prompt, 60)
        assert r.shadow_cost_usd > 0
    assert server_stats(loopback.base_url)["by_model"] == {STRONG: 12 + 7, WEAK: 28}
    with sf() as session:
        report = spend_report(session, settings, result.job_id)
    shadow_row = next(m for m in report.models if m.tier == "shadow")
    assert shadow_row.calls == 7 and report.calls == 40
    assert report.cost_usd == pytest.approx(sum(r.cost_usd for r in rows) + sum(r.shadow_cost_usd for r in shadows))


def random_body(rng: np.random.Generator, i: int) -> dict:
    """A chat request using what multiplies or adds tokens: n, tools, a response-format schema, image parts,
    either length cap (or both, or none), a predicted output."""
    text = f"Randomised budget question {i}: " + "consider this carefully " * int(rng.integers(0, 30))
    content: object = text
    if rng.random() < 0.3:
        content = [{"type": "text", "text": text},
                   {"type": "image_url", "image_url": {"url": f"https://example.com/{i}.png", "detail": "high"}}]
    body: dict = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]}
    if rng.random() < 0.5:
        body["n"] = int(rng.integers(1, 9))
    if rng.random() < 0.4:
        props = {f"field_{k}": {"type": "string", "description": "x" * int(rng.integers(10, 400))}
                 for k in range(int(rng.integers(1, 12)))}
        body["tools"] = [{"type": "function", "function": {"name": f"tool_{t}", "parameters": {
            "type": "object", "properties": props}}} for t in range(int(rng.integers(1, 4)))]
    if rng.random() < 0.3:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
            "type": "object", "properties": {"answer": {"type": "string", "description": "y" * 300}}}}}
    caps = rng.choice(["max_tokens", "max_completion_tokens", "both", "none"])
    if caps in ("max_tokens", "both"):
        body["max_tokens"] = int(rng.integers(5, 400))
    if caps in ("max_completion_tokens", "both"):
        body["max_completion_tokens"] = int(rng.integers(5, 400))
    if rng.random() < 0.2:
        body["prediction"] = {"type": "content", "content": "a predicted answer " * int(rng.integers(1, 20))}
    return body


def test_realised_spend_never_exceeds_the_budget_over_randomised_requests(settings, tmp_path, loopback):
    """Against a server that bills n choices, tool and schema tokens, images and reasoning tokens."""
    import json

    from routeyard.testing.loopback import ModelProfile

    loopback.config.models = {m: ModelProfile(first_token_ms=1, ms_per_token=0.01, answer_words=400,
                                              reasoning_tokens=150) for m in (settings.strong_model,
                                                                             settings.weak_model)}
    rng = np.random.default_rng(7)
    for trial in range(4):
        path = tmp_path / f"random-{trial}.jsonl"
        path.write_text("".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                            "body": random_body(rng, i)}) + "\n" for i in range(30)))
        sf, probe = submit(settings, path, strong_fraction=0.0)
        bodies = [r.body for r in items(sf, probe.job_id)]
        weak = sum(cost_bound(b, price_for(settings.weak_model, settings.price_table), 1024) for b in bodies)
        strong = sum(cost_bound(b, price_for(settings.strong_model, settings.price_table), 1024) for b in bodies)
        budget = weak + float(rng.uniform(0.05, 0.9)) * (strong - weak)
        sf, result, summary = submit_and_run(settings, path, budget_usd=budget)
        rows = items(sf, result.job_id)
        assert summary.counts == {"succeeded": 30}, summary
        assert any(r.tier == "strong" for r in rows)
        spent = sum(r.cost_usd for r in rows)
        assert spent <= budget, (trial, spent, budget)
