"""A lost `routeyard.judge_job` is enqueued again by beat's reconciler (issue 16): a completed `--judge` job whose
shadow pairs are not all judged and that shows no judging progress for ROUTEYARD_STALL_S gets its judging run
again by a real worker, and a pair already judged is never judged again."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from conftest import STRONG, TEST_KEY, WEAK, make_settings
from jobs_helpers import server_stats, submit, write_batch
from pydantic import SecretStr
from sqlalchemy import delete, select, update
from test_distributed import (
    cluster,  # noqa: F401  (the fixture, asked for by name below)
    wait_for,
)

from db import jobs as store
from db import runners
from db.judging import judgment_counts, stalled_judging
from db.models import Feedback, Item, Job, Judgment, Runner, utcnow
from jobs.services.spend import spend_report
from routeyard.settings import Price
from routeyard.states import JudgmentStatus
from worker import pipeline
from worker.judge import run_judge
from worker.runtime import load_job_router

pytestmark = pytest.mark.slow  # worker and beat processes against real PostgreSQL and Redis

JUDGE = "judge-model"
PROMPTS = [f"Recovery question {i}: what is {i} times {i + 3}?" for i in range(10)]


def judge_calls_per_question(base_url: str) -> dict[str, int]:
    rows = [r for r in server_stats(base_url)["calls"] if r["model"] == JUDGE]
    return {q: sum(r["n"] for r in rows if f"\n{q}\n" in r["prompt"]) for q in PROMPTS}


def judged(sf, job_id: str) -> dict[JudgmentStatus, int]:
    with sf() as session:
        return judgment_counts(session, job_id)


def test_the_reconciler_enqueues_a_lost_judge_job_again(request, loopback, tmp_path):
    procs = request.getfixturevalue("cluster")  # tests/test_distributed.py's: worker and beat processes
    loopback.config.judge_models = {JUDGE}
    judge_env = {"ROUTEYARD_JUDGE_BASE_URL": loopback.base_url, "ROUTEYARD_JUDGE_MODEL": JUDGE,
                 "ROUTEYARD_JUDGE_API_KEY": TEST_KEY,
                 "ROUTEYARD_PRICING": json.dumps({JUDGE: {"input": 5, "output": 15}})}
    procs.env.update(judge_env)
    settings = make_settings(tmp_path / "home", procs.database_url, loopback).model_copy(
        update={"judge_base_url": loopback.base_url, "judge_model": JUDGE,
                "judge_api_key": SecretStr(TEST_KEY), "pricing": {JUDGE: Price(input=5.0, output=15.0)}})
    assert (settings.strong_model, settings.weak_model) == (STRONG, WEAK)

    # A completed --judge job, every item with its shadow pair, judged once in this process.
    sf, result = submit(settings, write_batch(tmp_path / "b.jsonl", PROMPTS), shadow_fraction=1.0, judge="pair",
                        strong_fraction=0.0)
    job_id = result.job_id
    pipeline.score_items(sf, job_id, load_job_router("random", settings), 256)
    pipeline.assign_routes(sf, job_id, settings)
    with sf() as session:
        ids = store.claimable_ids(session, job_id, 60)
    clients = pipeline.make_clients(settings)

    async def calls() -> None:
        try:
            await pipeline.complete_items(sf, job_id, ids, clients, settings, 8)
        finally:
            await clients.aclose()

    asyncio.run(calls())
    assert pipeline.finish_if_done(sf, job_id)
    run_judge(sf, settings, job_id)
    with sf() as session:
        by_prompt = {p: i for p, i in session.execute(select(Item.prompt, Item.id).where(Item.job_id == job_id))}
    assert judge_calls_per_question(loopback.base_url) == dict.fromkeys(PROMPTS, 2)

    # Then the judging is undone as lost work leaves it: three pairs never claimed (their task vanished with the
    # broker), two claimed by a worker that died (in flight, its runner gone); the other five stay judged.
    # Everything happened an hour ago.
    never, died = [by_prompt[p] for p in PROMPTS[:3]], [by_prompt[p] for p in PROMPTS[3:5]]
    hour_ago = utcnow() - timedelta(hours=1)
    with sf() as session:
        session.execute(delete(Feedback).where(Feedback.item_id.in_(never + died)))
        session.execute(delete(Judgment).where(Judgment.item_id.in_(never)))
        session.execute(update(Judgment).where(Judgment.item_id.in_(died)).values(
            status=JudgmentStatus.IN_FLIGHT, label=None, finished_at=None, claimed_by="gone-host:1:dead"))
        runners.beat(session, "gone-host:1:dead", "worker")  # the dead worker: its last beat an hour ago
        session.flush()
        session.execute(update(Runner).where(Runner.id == "gone-host:1:dead").values(host="gone-host",
                                                                              heartbeat_at=hour_ago))
        session.execute(update(Judgment).where(Judgment.job_id == job_id).values(started_at=hour_ago))
        session.execute(update(Judgment).where(Judgment.finished_at.is_not(None)).values(finished_at=hour_ago))
        session.execute(update(Job).where(Job.id == job_id).values(finished_at=hour_ago, heartbeat_at=hour_ago))
        session.commit()
        assert stalled_judging(session, stall_s=6, lease_s=8) == [job_id]
        assert stalled_judging(session, stall_s=2 * 3600, lease_s=8) == []  # an hour is not stalled for that long

    try:
        procs.worker("worker")
        procs.beat()
        wait_for(lambda: judged(sf, job_id) == {JudgmentStatus.JUDGED: len(PROMPTS)}, 180,
                 "the reconciler to enqueue judge_job and a worker to judge the lost pairs")
    except AssertionError:
        print(procs.dump())
        raise
    calls = judge_calls_per_question(loopback.base_url)
    assert {q: calls[q] for q in PROMPTS[:5]} == dict.fromkeys(PROMPTS[:5], 4)  # judged again, both orders, once
    assert {q: calls[q] for q in PROMPTS[5:]} == dict.fromkeys(PROMPTS[5:], 2)  # judged pairs never again
    with sf() as session:
        assert len(list(session.scalars(select(Feedback).where(Feedback.source == "judge")))) == len(PROMPTS)
        assert stalled_judging(session, stall_s=6, lease_s=8) == []
        # the dead worker's calls may have been billed: both orders of its two pairs count as unanswered
        assert {j.item_id: j.unanswered_attempts for j in session.scalars(select(Judgment))
                if j.unanswered_attempts} == dict.fromkeys(died, 2)
        assert spend_report(session, settings, job_id).unanswered_requests == 4
    log = (tmp_path / "logs" / "worker.log").read_text()
    assert f"job {job_id}: judging shows no progress" in log
