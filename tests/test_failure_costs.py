"""Failures are not free: every HTTP request a call made is counted (the client's retries included), and one that
got no answer (timed out) may have been answered and billed by the provider. Its cost is bounded from the
request (pricing.cost_bound) and reported on its own line of the spend report, apart from the items' costs."""

from __future__ import annotations

import pytest
from conftest import STRONG, WEAK
from fastapi.testclient import TestClient
from jobs_helpers import items, submit_and_run, write_batch

from jobs.api.app import create_app
from jobs.services.spend import spend_report
from jobs.services.tenants import create_tenant
from routeyard.pricing import cost_bound, price_for
from routeyard.testing.inline import InlineExecutor


def test_timed_out_requests_are_counted_and_their_cost_bounded_on_their_own_line(settings, tmp_path, loopback):
    settings = settings.model_copy(update={"request_timeout_s": 0.5, "max_retries": 2})
    loopback.config.hang_first, loopback.config.hang_s = 1, 2.0  # each prompt's first request times out
    prompts = ["a prompt that times out once", "another one", "ROUTEYARD_ALWAYS_FAIL this one"]
    sf, result, _ = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", prompts))
    rows = {row.prompt: row for row in items(sf, result.job_id)}
    answered, failed = rows["another one"], rows["ROUTEYARD_ALWAYS_FAIL this one"]
    assert (answered.status, answered.call_attempts, answered.unanswered_attempts) == ("succeeded", 2, 1)
    price = price_for(answered.model, settings.price_table)
    assert answered.unanswered_cost_usd == pytest.approx(cost_bound(answered.body, price, settings.default_max_tokens))
    assert answered.unanswered_cost_usd > answered.cost_usd > 0  # a bound: as if answered in full, max_tokens long
    # The always-failing prompt is answered 500 every time: three requests, none unanswered, nothing billed.
    assert (failed.status, failed.call_attempts, failed.unanswered_attempts, failed.cost_usd) == ("failed", 3, 0, 0)

    with sf() as session:
        report = spend_report(session, settings, result.job_id)
    assert report.unanswered_requests == 2
    assert report.unanswered_cost_bound_usd == pytest.approx(sum(r.unanswered_cost_usd for r in rows.values()))
    assert report.cost_usd == pytest.approx(sum(r.cost_usd for r in rows.values()))  # the bound is not in the total

    _, key = create_tenant(sf, "acme")
    with TestClient(create_app(settings, executor=InlineExecutor())) as client:
        spend = client.get("/v1/spend", headers={"Authorization": f"Bearer {key}"}).json()
    assert spend["unanswered_requests"] == 0  # another tenant's job: none of its requests
    assert {STRONG, WEAK} >= {r.model for r in rows.values()}
