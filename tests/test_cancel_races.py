"""Cancel against scoring and completion on real PostgreSQL: several threads score, route and call a job's
items (as Celery tasks do) while others cancel it again and again. Every lock is taken in one order (the job
row, then items by id), so no cancel and no worker ever meets a deadlock, the job ends cancelled, and no item
is called that was not already in flight when the first cancel was acknowledged."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import timedelta

import pytest
from conftest import make_settings
from jobs_helpers import server_stats
from sqlalchemy import func, select, update

from db import jobs as store
from db.models import Item, Job, utcnow
from db.session import open_database
from jobs.services.control import cancel
from routeyard.states import ItemStatus, JobStatus
from worker import pipeline
from worker.runtime import load_job_router


def pending_job(sf, n: int, tag: str) -> str:
    job_id = f"job_{uuid.uuid4().hex}"
    with sf() as s:
        s.add(Job(id=job_id, request_hash="", input_format="jsonl", router="random", strong_fraction=0.3,
                  strong_model="gpt-4-1106-preview", weak_model="mixtral-8x7b-instruct", n_items=n,
                  status=JobStatus.QUEUED))
        s.flush()
        store.add_items(s, [{"job_id": job_id, "line_no": i + 1, "custom_id": f"c{i}", "prompt": f"{tag} {i}",
                             "body": {"messages": [{"role": "user", "content": f"{tag} {i}"}], "max_tokens": 20}}
                            for i in range(n)])
        s.commit()
    return job_id


def count(sf, job_id: str, *statuses: ItemStatus) -> int:
    with sf() as s:
        return s.scalar(select(func.count()).where(Item.job_id == job_id, Item.status.in_(statuses))) or 0


def routed_job(sf, n: int) -> tuple[str, list[int]]:
    job_id = pending_job(sf, n, f"routed {uuid.uuid4().hex}")
    with sf() as s:
        s.execute(update(Item).where(Item.job_id == job_id).values(status=ItemStatus.ROUTED, tier="weak",
                                                                   model="mixtral-8x7b-instruct", score=0.5))
        s.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.RUNNING, threshold=0.5))
        s.commit()
        return job_id, store.item_ids(s, job_id, ItemStatus.ROUTED)


def test_a_transaction_holding_claimed_items_never_deadlocks_with_a_cancel(postgres_url):
    """A claim holds its items (here the last one) until it commits; a cancel that arrives meanwhile must not
    lock items the claim goes on to take (here the first one): it waits at the job row instead."""
    sf = open_database(postgres_url)
    job_id, ids = routed_job(sf, 4)
    errors: list[BaseException] = []

    def cancel_now() -> None:
        try:
            cancel(sf, job_id)
        except BaseException as exc:
            errors.append(exc)

    with sf() as claimer:
        assert set(store.claim_items(claimer, job_id, [ids[-1]], 60)) == {ids[-1]}
        canceller = threading.Thread(target=cancel_now)
        canceller.start()
        time.sleep(1.0)  # the cancel is waiting now (for the job row, or, before, for the last item)
        assert set(store.claim_items(claimer, job_id, [ids[0]], 60)) == {ids[0]}
        claimer.commit()
    canceller.join(30)
    assert not errors, errors
    with sf() as s:
        assert store.get_job(s, job_id).status == JobStatus.CANCELLED
        assert store.status_counts(s, job_id) == {ItemStatus.IN_FLIGHT: 2, ItemStatus.CANCELLED: 2}


def test_an_item_abandoned_in_flight_is_not_called_again_after_a_cancel(database_url):
    sf = open_database(database_url)
    job_id, ids = routed_job(sf, 3)
    with sf() as s:
        assert set(store.claim_items(s, job_id, ids[:1], 60)) == {ids[0]}
        s.execute(update(Item).where(Item.id == ids[0]).values(started_at=utcnow() - timedelta(seconds=600)))
        s.commit()
    cancel(sf, job_id)
    with sf() as s:  # its worker died long ago, but the job was cancelled since: nobody takes the item up again
        assert store.claim_items(s, job_id, ids, 60) == {}


@pytest.mark.slow  # six rounds of a 1,500-item job on PostgreSQL
def test_repeated_cancels_never_deadlock_with_scoring_and_completion(postgres_url, loopback, tmp_path):
    settings = make_settings(tmp_path / "home", postgres_url, loopback)
    sf = open_database(postgres_url)
    loaded = load_job_router("random", settings)
    n, workers = 1500, 4
    for round_no in range(6):
        tag = f"round {round_no} prompt"
        job_id = pending_job(sf, n, tag)
        with sf() as s:
            ids = store.unscored_ids(s, job_id)
        errors: list[BaseException] = []
        routed = threading.Event()

        def work(k: int, part: list[int], job_id: str = job_id, errors: list = errors, routed=routed) -> None:
            try:  # a scoring task, then (once the job is routed) completion tasks, as a Celery worker runs them
                pipeline.score_items(sf, job_id, loaded, 25, item_ids=part)
                if pipeline.assign_routes(sf, job_id, settings) is not None:
                    routed.set()
                while not routed.is_set() and count(sf, job_id, ItemStatus.PENDING):
                    time.sleep(0.01)
                routed.set()
                with sf() as s:
                    todo = store.claimable_ids(s, job_id, 60)
                mine = todo[k::workers]
                clients = pipeline.make_clients(settings)

                async def run() -> None:
                    try:
                        await pipeline.complete_items(sf, job_id, mine, clients, settings, 32, lease_s=60)
                    finally:
                        await clients.aclose()

                asyncio.run(run())
                pipeline.finish_if_done(sf, job_id)
            except BaseException as exc:  # every error is a failure of this test
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k, ids[k::workers])) for k in range(workers)]
        for t in threads:
            t.start()
        # Even rounds cancel while items are being scored, odd ones while they are being called.
        if round_no % 2 == 0:
            deadline = time.monotonic() + 60
            while count(sf, job_id, ItemStatus.PENDING) == n and time.monotonic() < deadline:
                time.sleep(0.005)
        else:
            routed.wait(60)
            deadline = time.monotonic() + 60
            while count(sf, job_id, ItemStatus.SUCCEEDED) < 50 and time.monotonic() < deadline:
                time.sleep(0.01)
        cancel(sf, job_id)
        with sf() as s:  # what was in flight or done when the cancel was acknowledged: nothing else may be called
            started = set(s.scalars(select(Item.prompt).where(Item.job_id == job_id, Item.started_at.is_not(None))))

        def cancel_again(job_id: str = job_id, errors: list = errors) -> None:
            try:
                for _ in range(5):
                    cancel(sf, job_id)
            except BaseException as exc:
                errors.append(exc)

        cancels = [threading.Thread(target=cancel_again) for _ in range(3)]
        for t in cancels:
            t.start()
        for t in cancels + threads:
            t.join(120)
        assert not errors, f"round {round_no}: {errors!r}"
        with sf() as s:
            assert store.get_job(s, job_id).status == JobStatus.CANCELLED
            counts = store.status_counts(s, job_id)
        assert ItemStatus.CANCELLED in counts and not counts.get(ItemStatus.IN_FLIGHT), counts
        called = {row["prompt"] for row in server_stats(loopback.base_url)["calls"] if row["prompt"].startswith(tag)}
        assert called <= started, f"round {round_no}: {len(called - started)} items called after the cancel"
