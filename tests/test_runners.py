"""One runner per embedded job, and dead runners found by their heartbeats (db/runners.py): a second `resume` of
a job that a live process runs is refused with who holds it, a killed runner's job is taken up at once (by a
`resume`, or by the embedded API at start-up), and a dead worker's items in flight go back to routed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from datetime import timedelta

import pytest
from conftest import TEST_KEY
from fastapi.testclient import TestClient
from jobs_helpers import calls_per_prompt, write_batch
from sqlalchemy import func, select, update
from test_cli import ROOT, ROUTEYARD, cli_env, routeyard

from db import jobs as store
from db import runners
from db.models import Item, Job, Runner, utcnow
from db.session import open_database
from jobs.api.app import create_app
from routeyard.settings import Settings
from routeyard.states import ItemStatus, JobStatus
from routeyard.testing.inline import InlineExecutor
from worker.cut_off import put_back_cut_off


def other_host_runner(sf, runner_id: str, seen_s_ago: float = 0.0) -> None:
    with sf() as s:
        s.add(Runner(id=runner_id, kind="worker", host="elsewhere", pid=1,
                     heartbeat_at=utcnow() - timedelta(seconds=seen_s_ago)))
        s.commit()


def routed_job(sf, n: int) -> tuple[str, list[int]]:
    job_id = f"job_{uuid.uuid4().hex}"
    with sf() as s:
        s.add(Job(id=job_id, request_hash="", input_format="jsonl", router="random", strong_fraction=0.5,
                  strong_model="s", weak_model="w", n_items=n, threshold=0.5, status=JobStatus.RUNNING))
        s.flush()
        store.add_items(s, [{"job_id": job_id, "line_no": i + 1, "custom_id": f"c{i}", "prompt": f"p{i}",
                             "body": {"messages": []}, "tier": "weak", "model": "w", "status": ItemStatus.ROUTED}
                            for i in range(n)])
        s.commit()
        return job_id, store.item_ids(s, job_id, ItemStatus.ROUTED)


def test_a_job_is_held_by_one_live_runner_and_freed_when_it_dies(database_url):
    sf = open_database(database_url)
    job_id, _ = routed_job(sf, 2)
    other_host_runner(sf, "elsewhere:1:a")
    with sf() as s:
        assert runners.acquire_job(s, job_id, "elsewhere:1:a", 20) is None
        s.commit()
    with sf() as s:
        holder = runners.acquire_job(s, job_id, "here:2:b", 20)
        s.rollback()
    assert holder is not None and holder.runner_id == "elsewhere:1:a"
    assert "pid 1 on elsewhere" in holder.describe(job_id, 20)
    with sf() as s:  # its heartbeat stops
        s.execute(update(Runner).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
        assert runners.acquire_job(s, job_id, "here:2:b", 20) is None
        s.commit()
        assert s.get(Job, job_id).runner_id == "here:2:b"


def test_a_dead_runners_items_in_flight_go_back_to_routed(database_url):
    sf = open_database(database_url)
    job_id, ids = routed_job(sf, 4)
    other_host_runner(sf, "elsewhere:1:dead", seen_s_ago=60)
    other_host_runner(sf, "elsewhere:1:live")
    with sf() as s:
        store.claim_items(s, job_id, ids[:2], 600, runner_id="elsewhere:1:dead")
        store.claim_items(s, job_id, ids[2:3], 600, runner_id="elsewhere:1:live")
        s.commit()
    with sf() as s:
        s.execute(update(Item).where(Item.job_id == job_id).values(model="mixtral-8x7b-instruct",
                                                                   body={"messages": [], "max_tokens": 100}))
        dead = runners.dead_runners(s, 20)
        assert dead == ["elsewhere:1:dead"]
        assert runners.jobs_held_by(s, dead) == [job_id]
        assert put_back_cut_off(s, Settings(), job_id, dead) == 2
        runners.forget_runners(s, dead)
        s.commit()
    with sf() as s:
        rows = {i: (st, n, c) for i, st, n, c in s.execute(
            select(Item.id, Item.status, Item.unanswered_attempts, Item.unanswered_cost_usd)
            .where(Item.job_id == job_id)).all()}
        assert [rows[i][0] for i in ids] == [ItemStatus.ROUTED, ItemStatus.ROUTED, ItemStatus.IN_FLIGHT,
                                             ItemStatus.ROUTED]
        # The dead runner's calls may have reached the provider: counted as unanswered, with a cost bound.
        assert [rows[i][1] for i in ids[:2]] == [1, 1] and all(rows[i][2] > 0 for i in ids[:2])
        assert not rows[ids[2]][1] and not rows[ids[3]][1]  # the live runner's item and one never claimed
        assert s.get(Runner, "elsewhere:1:dead") is None and s.get(Runner, "elsewhere:1:live") is not None


@pytest.mark.slow  # CLI processes
def test_a_second_resume_is_refused_and_a_killed_runners_job_is_taken_up_by_the_api(tmp_path, postgres_url,
                                                                                      loopback):
    loopback.config.latency_scale = 20.0  # ~0.6 s a call, 4 at a time: slow enough to act mid-job
    prompts = [f"Runner prompt {i}: explain a prime." for i in range(240)]
    env = cli_env(tmp_path / "home", postgres_url, loopback.base_url, ROUTEYARD_CONCURRENCY="4")
    stored = routeyard("submit", str(write_batch(tmp_path / "b.jsonl", prompts)), "--router", "random",
                       "--detach", "--json", env=env)
    sf = open_database(postgres_url)
    with sf() as s:
        job_id = s.scalar(select(Job.id))
    first = subprocess.Popen([*ROUTEYARD, "run", job_id], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            with sf() as s:
                done = s.scalar(select(func.count()).where(Item.status == "succeeded"))
            if done >= 8:
                break
            assert time.monotonic() < deadline and first.poll() is None, "the first run ended too soon"
            time.sleep(0.05)
        second = routeyard("resume", job_id, env=env, check=False)
        assert second.returncode == 2, second.stdout + second.stderr
        message = " ".join(second.stderr.split())
        assert f"job {job_id} is being run by another process" in message and f"pid {first.pid}" in message
        assert first.poll() is None  # the second one left the first alone
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    with sf() as s:
        done_before = set(s.scalars(select(Item.prompt).where(Item.status == "succeeded")))
        in_flight = set(s.scalars(select(Item.prompt).where(Item.status == "in_flight")))
        assert s.get(Job, job_id).status == JobStatus.RUNNING and len(done_before) < len(prompts)

    loopback.config.latency_scale = 1.0
    settings_env = {k.removeprefix("ROUTEYARD_").lower(): v for k, v in env.items() if k.startswith("ROUTEYARD_")}
    from routeyard.settings import Settings

    settings = Settings(_env_file=None, **settings_env)
    with TestClient(create_app(settings, executor=InlineExecutor())):
        pass  # the start-up took the job up (its runner's process is gone) and ran it inline
    with sf() as s:
        job = s.get(Job, job_id)
        assert job.status == JobStatus.COMPLETED and job.runner_id is None
        assert store.status_counts(s, job_id) == {ItemStatus.SUCCEEDED: len(prompts)}
    calls = calls_per_prompt(loopback.base_url)
    assert all(calls[p] == 1 for p in done_before), "an item finished before the kill was called again"
    assert {p for p, n in calls.items() if n > 1} <= in_flight
    assert TEST_KEY not in stored.stdout + second.stderr



def test_a_started_job_that_no_live_process_holds_reads_as_interrupted(database_url):
    from jobs.services.results import job_status

    sf = open_database(database_url)
    job_id, _ = routed_job(sf, 2)
    other_host_runner(sf, "beating", seen_s_ago=0.0)
    other_host_runner(sf, "silent", seen_s_ago=600.0)
    with sf() as s:
        assert job_status(s, job_id, dead_after_s=30.0).interrupted  # running, held by no one
        assert not job_status(s, job_id).interrupted  # distributed: workers never hold a job, nothing to say
        for holder, stopped in (("beating", False), ("silent", True)):
            s.get(Job, job_id).runner_id = holder
            s.commit()
            assert job_status(s, job_id, dead_after_s=30.0).interrupted is stopped, holder
        s.get(Job, job_id).status = JobStatus.COMPLETED
        s.commit()
        assert not job_status(s, job_id, dead_after_s=30.0).interrupted  # ended: nothing to resume
