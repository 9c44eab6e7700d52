"""Judge calls cut off with their runner: a killed `routeyard judge` or a dead worker leaves shadow pairs in
flight. The next judge run takes back a dead holder's pairs at once (not after their lease) and counts their
calls as unanswered in `routeyard spend`; a live holder's pairs are left to it, reported (who holds them, and
when they can be taken back), and `routeyard judge` exits 3 while any pair lacks a verdict."""

import json
import subprocess
import time
from datetime import timedelta

import pytest
from conftest import TEST_KEY, judge_settings
from jobs_helpers import server_stats, submit_and_run, write_batch
from sqlalchemy import func, select, update
from test_cli import ROUTEYARD, cli_env, routeyard

from db import runners
from db.judging import claim_pairs, judgeable_ids
from db.models import Job, Judgment, Runner, utcnow
from jobs.services.judge import judging_view
from jobs.services.spend import spend_report
from routeyard.states import JudgmentStatus
from routeyard.testing.loopback import ModelProfile
from worker.embedded import run_embedded
from worker.judge import judge_spec, run_judge

JUDGE = "judge-model"
PRICING = {JUDGE: {"input": 5.0, "output": 15.0}}
PROMPTS = [f"Cut-off question {i}: what is {i} squared plus {i + 2}?" for i in range(12)]


@pytest.fixture
def settings(tmp_path, database_url, loopback, embedding_cache):
    return judge_settings(tmp_path / "home", database_url, loopback, JUDGE, embedding_cache)


def judge_calls(base_url: str) -> int:
    return server_stats(base_url)["by_model"].get(JUDGE, 0)


def env_for(tmp_path, database_url, loopback, **extra: str) -> dict:
    return cli_env(tmp_path / "home", database_url, loopback.base_url, ROUTEYARD_JUDGE_BASE_URL=loopback.base_url,
                   ROUTEYARD_JUDGE_MODEL=JUDGE, ROUTEYARD_JUDGE_API_KEY=TEST_KEY,
                   ROUTEYARD_PRICING=json.dumps(PRICING), **extra)


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_dead_holders_pairs_come_back_at_once_counted_as_unanswered_and_a_live_ones_are_reported(
        settings, tmp_path, loopback, database_url):
    sf, result, _ = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", PROMPTS), strong_fraction=0.0,
                                   shadow_fraction=1.0)  # no --judge: nothing judged yet
    job_id, lease = result.job_id, 600.0
    with sf() as session:
        for runner_id in ("dead-runner", "live-runner"):
            runners.beat(session, runner_id, "worker")
        session.flush()
        # on another host, so only their heartbeats say whether they live; the dead one stopped long ago
        session.execute(update(Runner).values(host="another-host"))
        session.execute(update(Runner).where(Runner.id == "dead-runner")
                        .values(heartbeat_at=utcnow() - timedelta(hours=1)))
        job = session.get(Job, job_id)
        todo = judgeable_ids(session, job_id, lease)
        spec = judge_spec("pair", settings)
        assert len(claim_pairs(session, job, todo[:4], spec, lease, me="dead-runner")) == 4
        assert len(claim_pairs(session, job, todo[4:7], spec, lease, me="live-runner")) == 3
        session.commit()

    done = run_judge(sf, settings, job_id, lease_s=lease)  # well within the lease: the dead holder's come back
    assert done.judged_now == len(PROMPTS) - 3 and judge_calls(loopback.base_url) == 2 * (len(PROMPTS) - 3)
    with sf() as session:
        report = spend_report(session, settings, job_id)
        view = judging_view(session, job_id, settings=settings)
        taken = list(session.scalars(select(Judgment).where(Judgment.item_id.in_(todo[:4]))))
    assert {(j.status, j.attempts, j.unanswered_attempts) for j in taken} == {(JudgmentStatus.JUDGED, 2, 2)}
    # the dead runner's calls may have been answered and billed: both orders of each of its 4 pairs
    assert report.unanswered_requests == 8 and report.unanswered_cost_bound_usd > 0
    judge_line = next(m for m in report.models if m.tier == "judge")
    assert judge_line.calls == judge_calls(loopback.base_url)
    assert (view.pairs, view.judged, view.in_flight, view.unjudged) == (len(PROMPTS), len(PROMPTS) - 3, 3, 3)
    assert len(view.in_flight_notes) == 1 and "held by a live worker runner" in view.in_flight_notes[0]

    env = env_for(tmp_path, database_url, loopback)
    held = routeyard("judge", job_id, "--json", env=env, check=False)
    assert held.returncode == 3, held.stdout + held.stderr  # 3 pairs still without a verdict
    body = json.loads(held.stdout)
    assert (body["judged_now"], body["unjudged"], body["in_flight"]) == (0, 3, 3)
    assert "live worker runner" in body["in_flight_notes"][0]

    with sf() as session:  # the live runner dies: the next run takes its pairs back, without waiting for a lease
        session.execute(update(Runner).values(heartbeat_at=utcnow() - timedelta(hours=1)))
        session.commit()
    again = routeyard("judge", job_id, "--json", env=env)
    assert json.loads(again.stdout)["judged_now"] == 3 and json.loads(again.stdout)["unjudged"] == 0
    spend = json.loads(routeyard("spend", job_id, "--json", env=env).stdout)
    assert spend["unanswered_requests"] == 14
    assert [m["calls"] for m in spend["models"] if m["tier"] == "judge"] == [judge_calls(loopback.base_url)]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_resuming_a_judge_job_takes_back_the_pairs_its_dead_run_left_in_flight(settings, tmp_path, loopback):
    sf, result, _ = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", PROMPTS[:6]), strong_fraction=0.0,
                                   shadow_fraction=1.0, judge="pair")
    with sf() as session:  # as a kill -9 mid-judging leaves them: in flight under a runner that is gone, just now
        session.execute(update(Judgment).where(Judgment.item_id.in_(
            select(Judgment.item_id).order_by(Judgment.item_id).limit(2).scalar_subquery())).values(
            status=JudgmentStatus.IN_FLIGHT, claimed_by="gone:1:x", started_at=utcnow(), finished_at=None))
        session.commit()
    sent = judge_calls(loopback.base_url)
    run_embedded(sf, settings, result.job_id)  # `routeyard resume JOB`: the job completed, its judging did not
    assert judge_calls(loopback.base_url) == sent + 4
    with sf() as session:
        assert judging_view(session, result.job_id, settings=settings).unjudged == 0
        assert spend_report(session, settings, result.job_id).unanswered_requests == 4


@pytest.mark.slow
def test_a_killed_routeyard_judge_leaves_nothing_uncounted_and_the_next_run_judges_its_pairs_at_once(
        settings, tmp_path, loopback, database_url):
    sf, result, _ = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", PROMPTS), strong_fraction=0.0,
                                   shadow_fraction=1.0)
    job_id = result.job_id
    loopback.config.models[JUDGE] = ModelProfile(first_token_ms=30_000, ms_per_token=0.0)  # never answers in time
    env = env_for(tmp_path, database_url, loopback, ROUTEYARD_LEASE_S="3600", ROUTEYARD_CONCURRENCY="4")
    proc = subprocess.Popen([*ROUTEYARD, "judge", job_id], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while judge_calls(loopback.base_url) < 8 and time.monotonic() < deadline:  # 4 pairs, both orders
            time.sleep(0.2)
        assert judge_calls(loopback.base_url) >= 8, "the judge never called the judge model"
    finally:
        proc.kill()  # kill -9: no handler runs
        proc.communicate(timeout=30)
    with sf() as session:
        in_flight = session.scalar(select(func.count()).select_from(Judgment)
                                   .where(Judgment.status == JudgmentStatus.IN_FLIGHT))
    assert in_flight >= 4
    sent_before = judge_calls(loopback.base_url)
    loopback.config.models[JUDGE] = ModelProfile(first_token_ms=1.0, ms_per_token=0.0)
    out = routeyard("judge", job_id, "--json", env=env)  # its lease is an hour: only its death frees the pairs
    assert json.loads(out.stdout)["unjudged"] == 0
    spend = json.loads(routeyard("spend", job_id, "--json", env=env).stdout)
    judge_line = next(m for m in spend["models"] if m["tier"] == "judge")
    # every call the server got is either billed on the judge line or counted as unanswered
    assert judge_line["calls"] == judge_calls(loopback.base_url) - sent_before == 2 * len(PROMPTS)
    assert spend["unanswered_requests"] == 2 * in_flight >= sent_before
