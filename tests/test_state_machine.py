"""The job/item state machine (db/jobs.py) in two sessions at once, against real SQLite and PostgreSQL:
a claim holds until its lease runs out, a succeeded item is never overwritten, requeue and cancel never undo an
ended job, and a stalled job is found. These are the guarantees the multi-process tests rely on, proved fast."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import update

from db import jobs as store
from db import runners
from db.models import Item, Job, utcnow
from db.session import open_database
from routeyard.errors import NotFound
from routeyard.states import ITEM_UNFINISHED, ItemStatus, JobStatus
from worker import pipeline


@dataclass
class Outcome:
    ok: bool
    answer: str | None
    status_code: int | None = 200
    response: dict | None = None
    prompt_tokens: int = 10
    completion_tokens: int = 5
    latency_ms: float = 1.0
    error: str | None = None


@pytest.fixture
def sf(database_url):
    return open_database(database_url)


def routed_job(sf, n: int = 4) -> tuple[str, list[int]]:
    """A job whose `n` items are scored and routed, as after assign_routes."""
    job_id = f"job_{uuid.uuid4().hex}"
    with sf() as s:
        s.add(Job(id=job_id, request_hash="", input_format="jsonl", router="random", strong_fraction=0.5,
                  strong_model="strong-m", weak_model="weak-m", n_items=n, threshold=0.5, status=JobStatus.RUNNING))
        s.flush()
        store.add_items(s, [{"job_id": job_id, "line_no": i + 1, "custom_id": f"c{i}", "prompt": f"p{i}",
                             "body": {"messages": []}, "score": 0.5, "tier": "weak", "model": "weak-m",
                             "status": ItemStatus.ROUTED} for i in range(n)])
        s.commit()
        return job_id, store.item_ids(s, job_id, ItemStatus.ROUTED)


def status_of(sf, item_id: int) -> ItemStatus:
    with sf() as s:
        return s.get(Item, item_id).status


def test_a_claim_holds_in_another_session_until_its_lease_runs_out(sf):
    _, ids = routed_job(sf)
    with sf() as a:
        assert store.claim_item(a, ids[0], lease_s=60) is not None
        a.commit()
    with sf() as b:
        assert store.claim_item(b, ids[0], lease_s=60) is None  # live lease: not taken over
        assert store.claim_item(b, ids[0]) is None  # without a lease, in flight is never claimable
        b.execute(update(Item).where(Item.id == ids[0]).values(started_at=utcnow() - timedelta(seconds=61)))
        again = store.claim_item(b, ids[0], lease_s=60)  # its worker died: the lease ran out
        b.commit()
    assert again is not None and again.tier == "weak"
    with sf() as s:
        assert s.get(Item, ids[0]).attempts == 2


def test_a_claim_is_renewed_only_while_it_is_still_the_same_claim_and_its_job_goes_on(sf):
    job_id, ids = routed_job(sf, 3)
    with sf() as s:
        mine = store.claim_items(s, job_id, ids, lease_s=60, runner_id="a")
        s.execute(update(Item).where(Item.id.in_(ids)).values(started_at=utcnow() - timedelta(seconds=61)))
        s.commit()
    with sf() as s:  # another worker takes the second over: its lease ran out
        assert list(store.claim_items(s, job_id, [ids[1]], lease_s=60, runner_id="b")) == [ids[1]]
        s.commit()
    with sf() as s:
        renewed = store.renew_claims(s, job_id, [(i, mine[i].attempts) for i in ids])
        s.commit()
        assert renewed == {ids[0], ids[2]}
        assert store.claim_items(s, job_id, ids, lease_s=60, runner_id="c") == {}  # leases running again
        store.cancel_job(s, store.get_job(s, job_id, lock=True))
        s.commit()
    with sf() as s:  # a cancelled job's claims are not renewed: their calls are not made, the items cancelled
        assert store.renew_claims(s, job_id, [(ids[0], mine[ids[0]].attempts)]) == set()
        s.commit()
    assert status_of(sf, ids[0]) == ItemStatus.CANCELLED
    assert status_of(sf, ids[1]) == ItemStatus.IN_FLIGHT  # the other worker's claim: its call finishes


def test_racing_workers_claim_each_item_exactly_once(sf):
    _, ids = routed_job(sf, 12)

    def claim_all(_: int) -> list[int]:
        won = []
        for item_id in ids:
            with sf() as s:
                if store.claim_item(s, item_id, lease_s=60) is not None:
                    won.append(item_id)
                s.commit()
        return won

    with ThreadPoolExecutor(4) as pool:
        claims = [i for won in pool.map(claim_all, range(4)) for i in won]
    assert sorted(claims) == sorted(ids)


def test_a_succeeded_item_is_never_overwritten_by_a_late_duplicate(sf):
    _, ids = routed_job(sf)
    with sf() as a:
        store.claim_item(a, ids[0])
        a.commit()
    with sf() as a, sf() as b:
        assert store.record_result(a, ids[0], Outcome(True, "first answer"), 0.01)
        a.commit()
        assert not store.record_result(b, ids[0], Outcome(False, None, 500, error="late failure"), 0.0)
        assert not store.record_result(b, ids[0], Outcome(True, "second answer"), 0.02)
        b.commit()
    with sf() as s:
        item = s.get(Item, ids[0])
        assert (item.status, item.answer, item.cost_usd) == (ItemStatus.SUCCEEDED, "first answer", 0.01)


def test_requeue_puts_back_what_was_asked_and_reopens_a_completed_job(sf):
    job_id, ids = routed_job(sf, 3)
    with sf() as s:
        for item_id, ok in zip(ids, (True, False, True), strict=True):
            store.claim_item(s, item_id)
            store.record_result(s, item_id, Outcome(ok, "a" if ok else None, 200 if ok else 500), 0.0)
        assert store.finish_job_if_done(s, job_id)
        s.commit()
    with sf() as s:
        assert store.get_job(s, job_id).status == JobStatus.COMPLETED
        assert store.requeue(s, job_id, [ItemStatus.IN_FLIGHT]) == 0  # nothing in flight: nothing moves
        assert store.requeue(s, job_id, [ItemStatus.FAILED]) == 1
        s.commit()
    with sf() as s:
        assert store.get_job(s, job_id).status == JobStatus.RUNNING
        assert [status_of(sf, i) for i in ids] == [ItemStatus.SUCCEEDED, ItemStatus.ROUTED, ItemStatus.SUCCEEDED]


def test_an_ended_job_never_moves_again(sf):
    job_id, ids = routed_job(sf, 3)
    with sf() as s:
        store.claim_item(s, ids[0])
        s.commit()
    with sf() as reader, sf() as canceller:
        stale = store.get_job(reader, job_id)  # a runner read the job before the cancel
        assert store.cancel_job(canceller, store.get_job(canceller, job_id, lock=True)) == 2  # in flight: kept
        canceller.commit()
        assert stale.status == JobStatus.RUNNING
        assert not store.set_job_status(reader, job_id, JobStatus.RUNNING)
        assert store.requeue(reader, job_id, [ItemStatus.IN_FLIGHT]) == 0
        reader.commit()
    with sf() as s:
        assert store.get_job(s, job_id).status == JobStatus.CANCELLED
        assert store.claim_item(s, ids[1]) is None  # a cancelled item is never called
        assert store.status_counts(s, job_id) == {ItemStatus.CANCELLED: 2, ItemStatus.IN_FLIGHT: 1}
        assert store.cancel_job(s, store.get_job(s, job_id)) == 0


def test_a_job_with_no_sign_of_life_is_found_stalled(sf):
    quiet, _ = routed_job(sf)
    busy, busy_ids = routed_job(sf)
    with sf() as s:
        old = utcnow() - timedelta(seconds=600)
        s.execute(update(Job).where(Job.id.in_([quiet, busy])).values(created_at=old, heartbeat_at=old))
        store.claim_item(s, busy_ids[0])  # a call started just now...
        s.commit()
        runners.sign_of_life(s, busy, every_s=10)  # ...and its runner said so
        s.commit()
    with sf() as s:
        assert [j.id for j in runners.stalled_jobs(s, 300)] == [quiet]
        beat = s.get(Job, busy).heartbeat_at
    with sf() as s:  # many runners report: the row moves at most once every every_s
        runners.sign_of_life(s, busy, every_s=10)
        s.commit()
        assert s.get(Job, busy).heartbeat_at == beat


def test_a_workers_calls_keep_their_job_alive(sf, settings):
    """complete_items reports its claims and results (throttled), so beat's stall check can read the job row
    alone: a job whose calls progress is never found stalled however long it runs."""
    job_id, ids = routed_job(sf)
    with sf() as s:
        old = utcnow() - timedelta(seconds=600)
        s.execute(update(Job).where(Job.id == job_id).values(created_at=old, heartbeat_at=old))
        s.commit()
        assert [j.id for j in runners.stalled_jobs(s, 300)] == [job_id]
    asyncio.run(pipeline.complete_items(sf, job_id, ids, pipeline.make_clients(settings), settings, 4))
    with sf() as s:
        assert not set(store.status_counts(s, job_id)) & ITEM_UNFINISHED  # every item was called
        assert runners.stalled_jobs(s, 300) == []


def test_a_job_only_stored_waits_for_run_and_one_handed_to_the_workers_is_looked_after(sf):
    """`submit --detach` stores a job for `routeyard run` later: the reconciler must not start it on its own,
    however old. One that `run` handed to the workers (its heartbeat set) and whose task was lost is restarted."""
    stored, handed = routed_job(sf)[0], routed_job(sf)[0]
    with sf() as s:
        old = utcnow() - timedelta(seconds=600)
        s.execute(update(Job).where(Job.id.in_([stored, handed])).values(status=JobStatus.QUEUED, threshold=None,
                                                                          created_at=old, heartbeat_at=None))
        s.execute(update(Job).where(Job.id == handed).values(heartbeat_at=old))
        s.commit()
    with sf() as s:
        assert [j.id for j in runners.stalled_jobs(s, 300)] == [handed]
        assert [j.id for j in runners.active_jobs(s)] == [handed]  # after a broker restart, too


def test_another_tenants_job_is_not_found(sf):
    job_id, _ = routed_job(sf)
    with sf() as s:
        assert store.get_job(s, job_id, "local").id == job_id
        with pytest.raises(NotFound, match="no job"):
            store.get_job(s, job_id, "tn_other")
