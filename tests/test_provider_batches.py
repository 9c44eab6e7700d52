"""A tier in batch mode: its routed share goes through the provider's Batch API (the loopback server's), at the
batch price, crash-safe: a killed runner resumes polling the batch it created and never submits a share twice."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import openai
import pytest
from conftest import STRONG, TEST_KEY, WEAK, make_settings
from jobs_helpers import items, server_stats, submit, submit_and_run, write_batch
from sqlalchemy import select

from db import provider_batches as provider_rows
from db.models import Item, ProviderBatch
from routeyard.pricing import batch_price, cost_usd, price_for
from routeyard.states import ItemStatus, JobStatus, ProviderBatchStatus
from routeyard.testing.loopback_batches import BatchBehaviour
from worker.embedded import run_embedded
from worker.provider_batches import KEY, split

PROMPTS = [f"Question {i}: explain fact {i} about prime numbers." for i in range(120)]


@pytest.fixture
def batch_settings(tmp_path, database_url, loopback, embedding_cache):
    loopback.config.batches = BatchBehaviour(delay_s=0.3)
    return make_settings(tmp_path / "home", database_url, loopback, embedding_cache, strong_mode="batch",
                         batch_poll_s=0.1, batch_poll_max_s=0.5)


def test_the_strong_share_runs_as_provider_batches_at_the_batch_price(batch_settings, tmp_path, loopback):
    sf, result, summary = submit_and_run(batch_settings, write_batch(tmp_path / "b.jsonl", PROMPTS),
                                         strong_fraction=0.4)
    assert summary.status == JobStatus.COMPLETED
    got = items(sf, result.job_id)
    assert all(i.status == ItemStatus.SUCCEEDED for i in got)
    strong = [i for i in got if i.tier == "strong"]
    weak = [i for i in got if i.tier == "weak"]
    assert len(strong) == 48 and all(i.provider_batch_id is not None for i in strong)
    assert all(i.provider_batch_id is None for i in weak)
    stats = server_stats(loopback.base_url)
    assert stats["batches_created"] == 1 and stats["batch_lines_run"] == 48
    assert stats["max_calls_per_prompt"] == 1  # nothing was called twice, nor directly as well
    list_price = price_for(STRONG, batch_settings.price_table)
    for item in strong:
        assert item.response["request_id"].startswith("req_") and item.answer
        assert item.cost_usd == pytest.approx(cost_usd(batch_price(list_price), item.prompt_tokens,
                                                       item.completion_tokens))
        assert item.cost_usd == pytest.approx(cost_usd(list_price, item.prompt_tokens, item.completion_tokens) / 2)


def test_input_files_are_split_at_the_providers_limits():
    bodies = [(i, {"messages": [{"role": "user", "content": "x" * 100}]}) for i in range(10)]
    assert [len(f) for f in split(bodies, "m", max_requests=4, max_bytes=10**9)] == [4, 4, 2]
    one_line = len(json.dumps({"custom_id": "0", "method": "POST", "url": "/v1/chat/completions",
                               "body": {**bodies[0][1], "model": "m"}})) + 1
    assert [len(f) for f in split(bodies, "m", max_requests=100, max_bytes=3 * one_line)] == [3, 3, 3, 1]


def test_a_batch_created_just_before_a_crash_is_found_not_created_again(batch_settings, tmp_path, loopback):
    """The runner died after batches.create returned and before its id was stored: the row has only the
    input file. Resuming finds the provider's batch by the row's key in its metadata."""
    sf, result = submit(batch_settings, write_batch(tmp_path / "b.jsonl", PROMPTS[:20]), strong_fraction=1.0)
    from worker import pipeline
    from worker.runtime import load_or_fail

    loaded = load_or_fail(sf, result.job_id, "random", batch_settings)
    assert loaded is not None
    with sf() as session:
        from db import jobs as store

        store.start_job(session, result.job_id)
        session.commit()
    pipeline.score_items(sf, result.job_id, loaded, 64)
    pipeline.assign_routes(sf, result.job_id, batch_settings)
    with sf() as session:
        todo = provider_rows.unbatched(session, result.job_id, "strong")
        row = provider_rows.store_batch(session, result.job_id, "strong", STRONG, [i for i, _ in todo])
        session.commit()
        key = f"{result.job_id}:{row.id}"
    client = openai.OpenAI(base_url=loopback.base_url, api_key=TEST_KEY)
    lines = "".join(json.dumps({"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions",
                                "body": {**body, "model": STRONG}}) + "\n" for i, body in todo).encode()
    uploaded = client.files.create(file=("in.jsonl", lines), purpose="batch")
    client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                          metadata={KEY: key})
    with sf() as session:
        session.get_one(ProviderBatch, row.id).input_file_id = uploaded.id
        session.commit()
    summary = run_embedded(sf, batch_settings, result.job_id)
    assert summary.status == JobStatus.COMPLETED
    assert server_stats(loopback.base_url)["batches_created"] == 1  # the crash's batch, not a second one
    assert all(i.status == ItemStatus.SUCCEEDED for i in items(sf, result.job_id))


@pytest.mark.parametrize("fallback", ["resubmit", "direct"])
def test_an_expired_batch_sends_only_its_unanswered_items_again(batch_settings, tmp_path, loopback, fallback):
    loopback.config.batches = BatchBehaviour(delay_s=0.2, expire_share=0.5, seed=3)
    settings = batch_settings.model_copy(update={"batch_fallback": fallback, "max_retries": 30})
    sf, result, summary = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", PROMPTS[:40]),
                                         strong_fraction=1.0)
    assert summary.status == JobStatus.COMPLETED
    got = items(sf, result.job_id)
    assert all(i.status == ItemStatus.SUCCEEDED for i in got)
    stats = server_stats(loopback.base_url)
    assert stats["max_calls_per_prompt"] == 1  # an item answered in one batch is never sent again
    with sf() as session:
        batches = session.scalars(select(ProviderBatch).where(ProviderBatch.job_id == result.job_id)).all()
    if fallback == "resubmit":
        assert len(batches) > 1 and stats["batch_lines_run"] == 40
    else:  # one batch; what it left unanswered was called directly, at the list price
        assert len(batches) == 1 and 0 < stats["batch_lines_run"] < 40
        assert stats["total"] == 40


@pytest.mark.slow
def test_a_runner_killed_while_its_provider_batch_is_in_flight_resumes_it(tmp_path, database_url, loopback):
    from test_cli import cli_env, routeyard

    from db.session import open_database

    loopback.config.batches = BatchBehaviour(delay_s=4.0)
    env = cli_env(tmp_path / "home", database_url, loopback.base_url, ROUTEYARD_STRONG_MODE="batch",
                  ROUTEYARD_BATCH_POLL_S="0.2", ROUTEYARD_BATCH_POLL_MAX_S="0.5")
    lines = [json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": STRONG, "messages": [{"role": "user", "content": f"Item {i}: 2+{i}?"}]}})
             for i in range(1000)]
    batch = tmp_path / "openai.jsonl"
    batch.write_text("\n".join(lines) + "\n")
    stored = json.loads(routeyard("submit", str(batch), "--router", "random", "--strong-fraction", "0.5",
                                  "--detach", "--json", env=env).stdout)
    job_id = stored["job_id"]
    from conftest import ROOT
    from test_cli import ROUTEYARD

    runner = subprocess.Popen([*ROUTEYARD, "run", job_id], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    sf = open_database(database_url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with sf() as session:
            submitted = session.scalars(select(ProviderBatch).where(
                ProviderBatch.job_id == job_id, ProviderBatch.status == ProviderBatchStatus.SUBMITTED)).all()
        if submitted:
            break
        time.sleep(0.1)
    assert submitted, "the provider batch was never submitted"
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    routeyard("run", job_id, env=env)
    got = items(sf, job_id)
    assert len(got) == 1000 and all(i.status == ItemStatus.SUCCEEDED for i in got)
    stats = server_stats(loopback.base_url)
    assert stats["batches_created"] == 1 and stats["batch_lines_run"] == 500  # the share was sent once
    strong_calls = [c for c in stats["calls"] if c["model"] == STRONG]
    assert len(strong_calls) == 500 and all(c["n"] == 1 for c in strong_calls)
    # The weak share is called directly: a call in flight when the runner was killed is made again on resume
    # (its answer died with the process), and none other.
    weak_calls = [c for c in stats["calls"] if c["model"] == WEAK]
    assert len(weak_calls) == 500 and sum(c["n"] for c in weak_calls) <= 500 + 2 * 16
    spend = json.loads(routeyard("spend", job_id, "--json", env=env).stdout)
    with sf() as session:
        total = sum(session.scalars(select(Item.cost_usd).where(Item.job_id == job_id)))
    assert spend["cost_usd"] == pytest.approx(total)
    # all-strong at the list price, and through the Batch API at half of it
    assert spend["all_strong_batch_cost_usd"] == pytest.approx(spend["all_strong_cost_usd"] / 2)
    assert spend["saving_vs_batch_pct"] < spend["saving_pct"]
    assert WEAK in {i.model for i in got}


def test_a_cancel_cancels_the_provider_batch_and_keeps_nothing_it_did_not_answer(batch_settings, tmp_path,
                                                                                 loopback):
    import threading

    from jobs.services import control

    loopback.config.batches = BatchBehaviour(delay_s=30.0)  # the provider holds the batch until it is cancelled
    sf, result = submit(batch_settings, write_batch(tmp_path / "b.jsonl", PROMPTS[:30]), strong_fraction=0.5)
    runner = threading.Thread(target=run_embedded, args=(sf, batch_settings, result.job_id))
    runner.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with sf() as session:
            if provider_rows.open_batches(session, result.job_id) and all(
                    b.provider_batch_id for b in provider_rows.open_batches(session, result.job_id)):
                break
        time.sleep(0.05)
    control.cancel(sf, result.job_id)
    runner.join(60)
    assert not runner.is_alive()
    got = items(sf, result.job_id)
    strong = [i for i in got if i.tier == "strong"]
    assert len(strong) == 15 and all(i.status == ItemStatus.CANCELLED for i in strong)
    assert all("provider batch" in (i.error or "") and i.cost_usd is None for i in strong)
    with sf() as session:
        assert not provider_rows.open_batches(session, result.job_id)  # merged: nothing left to poll
    client = openai.OpenAI(base_url=loopback.base_url, api_key=TEST_KEY)
    assert [b.status for b in client.batches.list()] == ["cancelled"]
