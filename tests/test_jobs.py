"""The job path on the embedded runner, against SQLite and a real PostgreSQL, through the real openai client
and the loopback OpenAI-compatible server."""

import csv
import io
import json

import pytest
from conftest import STRONG, WEAK
from jobs_helpers import calls_per_prompt, items, server_stats, submit, submit_and_run, write_batch
from sqlalchemy import select, text

from db.models import Job, RejectedLine
from jobs.services.results import export_results, job_status
from jobs.services.spend import spend_report
from jobs.services.submit import JobOptions, submit_job
from routeyard.errors import Conflict, InvalidInput
from routeyard.pricing import cost_usd, price_for
from routeyard.testing.loopback import compose_answer
from worker.embedded import run_embedded

PROMPTS = [f"Question number {i}: what is {i} times {i + 3}?" for i in range(40)]


def test_a_routed_job_stores_answers_tokens_cost_and_routing(settings, loopback, tmp_path):
    sf, result, summary = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", PROMPTS), strong_fraction=0.3)
    assert result.created and result.n_items == 40 and summary.status == "completed"
    assert summary.counts == {"succeeded": 40}
    rows = items(sf, result.job_id)
    strong = [r for r in rows if r.tier == "strong"]
    assert len(strong) == 12  # exactly 30% of this batch
    threshold = rows[0].threshold
    assert all(r.score >= threshold for r in strong)
    assert all(r.score <= threshold for r in rows if r.tier == "weak")
    for r in rows:
        assert r.model == (STRONG if r.tier == "strong" else WEAK)
        assert r.answer == compose_answer(r.model, r.prompt, 60 if r.tier == "strong" else 40)
        assert r.prompt_tokens > 0 and r.completion_tokens > 0 and r.latency_ms > 0
        price = price_for(r.model, settings.price_table)
        assert r.cost_usd == pytest.approx(cost_usd(price, r.prompt_tokens, r.completion_tokens))
        assert r.router_version == "random@default" and r.attempts == 1
        assert r.response["body"]["usage"]["completion_tokens"] == r.completion_tokens  # the body as returned
        assert r.response["status_code"] == 200 and r.response["request_id"].startswith("req_")
    assert server_stats(loopback.base_url)["by_model"] == {STRONG: 12, WEAK: 28}
    with sf() as session:
        job = session.get(Job, result.job_id)
        assert job.threshold == threshold and job.finished_at is not None
        assert job.strong_base_url == loopback.base_url


def test_spend_report_sums_item_costs_and_prices_the_all_strong_run(settings, tmp_path):
    sf, result, _ = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", PROMPTS), strong_fraction=0.25)
    rows = items(sf, result.job_id)
    with sf() as session:
        report = spend_report(session, settings, result.job_id)
    assert report.calls == 40 and report.strong_share == pytest.approx(0.25)
    assert report.cost_usd == pytest.approx(sum(r.cost_usd for r in rows))
    by_model = {m.model: m for m in report.models}
    assert by_model[STRONG].calls == 10 and by_model[WEAK].calls == 30
    assert by_model[WEAK].completion_tokens == sum(r.completion_tokens for r in rows if r.tier == "weak")
    strong_price = price_for(STRONG, settings.price_table)
    expected_all_strong = sum(cost_usd(strong_price, r.prompt_tokens, r.completion_tokens) for r in rows)
    assert report.all_strong_cost_usd == pytest.approx(expected_all_strong)
    assert report.saving_usd == pytest.approx(expected_all_strong - report.cost_usd) and report.saving_pct > 50


def test_results_export_in_input_order_as_jsonl_csv_and_openai_batch_output(settings, tmp_path):
    sf, result, _ = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", PROMPTS[:6]))
    with sf() as session:
        own = [json.loads(line) for line in export_results(session, result.job_id, "jsonl")]
        table = list(csv.DictReader(io.StringIO("".join(export_results(session, result.job_id, "csv")))))
        batch = [json.loads(line) for line in export_results(session, result.job_id, "openai")]
    assert [r["custom_id"] for r in own] == [f"req-{i}" for i in range(6)] == [r["custom_id"] for r in table]
    assert all(r["status"] == "succeeded" and r["answer"] for r in own)
    assert float(table[0]["cost_usd"]) == pytest.approx(own[0]["cost_usd"])
    first = batch[0]
    assert set(first) == {"id", "custom_id", "response", "error"} and first["error"] is None
    assert first["response"]["status_code"] == 200
    assert first["response"]["body"]["choices"][0]["message"]["content"] == own[0]["answer"]
    assert first["response"]["body"]["usage"]["total_tokens"] > 0


def test_bad_lines_are_reported_with_line_numbers_and_the_rest_of_the_batch_runs(settings, tmp_path):
    path = write_batch(tmp_path / "b.jsonl", PROMPTS[:10], {3: "{oops", 7: '{"custom_id": "x", "method": "GET"}'})
    sf, result, summary = submit_and_run(settings, path)
    assert result.n_items == 10 and [n for n, _ in result.rejected] == [4, 9]
    assert "invalid JSON" in result.rejected[0][1] and "field 'method'" in result.rejected[1][1]
    assert summary.counts == {"succeeded": 10}
    with sf() as session:
        assert [r.line_no for r in session.scalars(select(RejectedLine))] == [4, 9]
        assert job_status(session, result.job_id).n_rejected == 2


def test_a_file_with_no_valid_line_is_refused_and_nothing_is_stored(settings, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("{nope\n[]\n")
    with pytest.raises(InvalidInput, match=r"no valid items.*line 1: invalid JSON"):
        submit(settings, path)
    sf, _ = submit(settings, write_batch(tmp_path / "ok.jsonl", PROMPTS[:1]))
    with sf() as session:
        assert len(list(session.scalars(select(Job)))) == 1


def test_resubmitting_with_the_same_idempotency_key_does_not_duplicate(settings, tmp_path):
    path = write_batch(tmp_path / "b.jsonl", PROMPTS[:5])
    sf, first = submit(settings, path, idempotency_key="nightly-2026-11-24")
    _, again = submit(settings, path, idempotency_key="nightly-2026-11-24")
    assert first.created and not again.created and again.job_id == first.job_id
    with sf() as session:
        assert len(list(session.scalars(select(Job)))) == 1
    assert len(items(sf, first.job_id)) == 5
    other = write_batch(tmp_path / "c.jsonl", PROMPTS[5:9])
    with pytest.raises(Conflict, match="different file or options"):
        submit(settings, other, idempotency_key="nightly-2026-11-24")


def test_rate_limits_and_server_errors_are_retried_with_backoff(settings, loopback, tmp_path):
    loopback.config.fail_first = 2  # 429 then 500, then success
    *_, summary = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", PROMPTS[:8]))
    assert summary.counts == {"succeeded": 8}
    assert set(calls_per_prompt(loopback.base_url).values()) == {3}


def test_timeouts_are_retried(settings, loopback, tmp_path):
    loopback.config.hang_first, loopback.config.hang_s = 1, 5.0
    fast_timeout = settings.model_copy(update={"request_timeout_s": 1.0})
    *_, summary = submit_and_run(fast_timeout, write_batch(tmp_path / "b.jsonl", PROMPTS[:4]))
    assert summary.counts == {"succeeded": 4}
    calls = calls_per_prompt(loopback.base_url).values()
    # Every first call hung past the timeout and was retried. On a loaded CI machine a retry can itself
    # exceed a short timeout, so a third call is allowed; more than the retry budget is not.
    assert min(calls) >= 2 and max(calls) <= fast_timeout.max_retries + 1


def test_a_failing_prompt_is_marked_failed_and_retried_later_without_redoing_the_others(settings, loopback, tmp_path):
    prompts = [*PROMPTS[:5], "ROUTEYARD_ALWAYS_FAIL please"]
    sf, result, summary = submit_and_run(settings.model_copy(update={"max_retries": 1}),
                                         write_batch(tmp_path / "b.jsonl", prompts))
    assert summary.status == "completed" and summary.counts == {"succeeded": 5, "failed": 1}
    failed = next(r for r in items(sf, result.job_id) if r.status == "failed")
    assert failed.status_code == 500 and "InternalServerError" in failed.error and failed.cost_usd == 0
    assert calls_per_prompt(loopback.base_url)[prompts[-1]] == 2  # first try + 1 retry
    loopback.config.always_fail_marker = "no longer failing"
    summary = run_embedded(sf, settings, result.job_id, retry_failed=True)
    assert summary.counts == {"succeeded": 6} and summary.status == "completed"
    calls = calls_per_prompt(loopback.base_url)
    assert all(calls[p] == 1 for p in prompts[:5])
    with sf() as session:
        assert spend_report(session, settings, result.job_id).calls == 6


def test_api_keys_never_reach_the_database_or_the_logs(settings, loopback, tmp_path, caplog):
    caplog.set_level("DEBUG")
    prompts = [*PROMPTS[:3], "ROUTEYARD_ECHO_KEY: a gateway that echoes headers in its errors"]
    sf, result, summary = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", prompts))
    assert summary.counts == {"succeeded": 3, "failed": 1}
    failed = next(r for r in items(sf, result.job_id) if r.status == "failed")
    assert "Authorization" in failed.error and "[REDACTED]" in failed.error
    dump = []
    with sf() as session:
        for table in ("jobs", "items", "rejected_lines"):
            dump += [repr(tuple(row)) for row in session.execute(text(f"SELECT * FROM {table}"))]
    everything = "\n".join(dump) + caplog.text
    assert "sk-test-routeyard" not in everything and "SECRET-0123456789" not in everything


def test_unknown_model_price_is_refused_before_anything_is_stored(settings, tmp_path):
    sf, _ = submit(settings, write_batch(tmp_path / "a.jsonl", PROMPTS[:1]))
    priced = settings.model_copy(update={"weak_model": "my-local-llama"})
    with pytest.raises(Exception, match=r"no price for model 'my-local-llama'.*ROUTEYARD_PRICING"):
        with (tmp_path / "a.jsonl").open("rb") as f:
            submit_job(sf, priced, f, "jsonl", JobOptions(router="random"))


def test_a_cancel_is_never_undone_by_a_runner_that_read_the_job_before_it(settings, tmp_path):
    from db import jobs as store
    from db import routes
    from routers.registry import load_router
    from worker import pipeline

    sf, result = submit(settings, write_batch(tmp_path / "b.jsonl", PROMPTS[:10]))
    pipeline.score_items(sf, result.job_id, load_router("random"), 100)
    with sf() as session:  # the runner's view, taken before the cancel
        job = store.get_job(session, result.job_id)
        ids, _ = store.item_scores(session, result.job_id)
        with sf() as other:  # the cancel lands
            store.cancel_job(other, store.get_job(other, result.job_id))
            other.commit()
        routes.store_routes(session, job, ids, [True] * 3 + [False] * 7, 0.5)
        assert not store.set_job_status(session, result.job_id, "running")
        session.commit()
    with sf() as session:
        assert store.get_job(session, result.job_id).status == "cancelled"
        assert store.status_counts(session, result.job_id) == {"cancelled": 10}
    assert run_embedded(sf, settings, result.job_id).status == "cancelled"
