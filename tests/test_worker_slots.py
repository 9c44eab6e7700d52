"""A worker process's completion tasks share one set of call slots (worker/slots.py, issue 14.4): a task's slow
tail holds only the slots of its own calls in flight, the next task's items take the rest, claims wait for
room (so a claimed item starts within about a call's time, far inside its lease), and every result is written
before its task returns."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import STRONG, WEAK, make_settings
from jobs_helpers import calls_per_prompt, server_stats, submit, write_batch
from sqlalchemy import select
from test_distributed import (
    assert_exactly_once,
    batch_file,
    cluster,  # noqa: F401  (the fixture, asked for by name below)
    submit_over_http,
    succeeded,
    tenant_and_api,
    wait_completed,
    wait_for,
)

from db import jobs as store
from db.jobs import Claim
from db.models import Item
from routeyard.states import ItemStatus
from routeyard.testing.loopback import LoopbackConfig, LoopbackServer, ModelProfile
from worker import pipeline
from worker.runtime import load_job_router
from worker.slots import Slots
from worker.tasks import CallEngine

# Latency is 40 ms a completion token and answers are long: an item's max_tokens sets how long its call takes.
SLOW_TOKENS = {STRONG: ModelProfile(first_token_ms=5, ms_per_token=40.0, answer_words=200),
               WEAK: ModelProfile(first_token_ms=5, ms_per_token=40.0, answer_words=200)}


def routed_job(settings, tmp_path: Path, prompts: list[str], max_tokens: list[int]) -> tuple:
    path = write_batch(tmp_path / "b.jsonl", prompts)
    lines = path.read_text().splitlines()
    path.write_text("".join(line.replace('"max_tokens": 200', f'"max_tokens": {m}') + "\n"
                            for line, m in zip(lines, max_tokens, strict=True)))
    sf, result = submit(settings, path)
    pipeline.score_items(sf, result.job_id, load_job_router("random", settings), 256)
    pipeline.assign_routes(sf, result.job_id, settings)
    with sf() as session:
        ids = store.claimable_ids(session, result.job_id, settings.effective_lease_s)
    return sf, result.job_id, ids


def test_a_feed_ends_only_after_its_last_claim_has_been_called():
    """The last chunk's claim can take longer than every call before it: the feed must not count as drained (and
    its task return, closing its result writer) while that claim is on its way, or the claimed items would never
    be called nor written and would sit in flight until their lease ran out."""
    called: list[int] = []
    called_when_it_returned: list[int] = []

    async def scenario() -> None:
        slots = Slots(2)  # a chunk of 1: items 0..3 claimed one at a time
        everything_before_called = asyncio.Event()

        async def claim(chunk: list[int]) -> dict[int, Claim]:
            if chunk == [3]:  # the last claim returns only after the calls before it have all ended
                await everything_before_called.wait()
                await asyncio.sleep(0)
            return {i: Claim("weak", {}) for i in chunk}

        async def call(item_id: int, claim: Claim) -> None:
            called.append(item_id)
            if len(called) == 3:
                everything_before_called.set()

        await slots.run([0, 1, 2, 3], claim, call)
        called_when_it_returned.extend(called)

    asyncio.run(scenario())
    assert sorted(called_when_it_returned) == [0, 1, 2, 3]


def test_a_slow_call_holds_its_own_slot_while_the_next_task_fills_the_others(tmp_path, postgres_url):
    with LoopbackServer(LoopbackConfig(models=dict(SLOW_TOKENS), jitter=False)) as server:
        settings = make_settings(tmp_path / "home", postgres_url, server).model_copy(update={"concurrency": 4})
        prompts = ["the slow one"] + [f"fast prompt {i}" for i in range(31)]
        # ~2 s for the slow call, ~45 ms for each fast one
        sf, job_id, ids = routed_job(settings, tmp_path, prompts, [50] + [1] * 31)
        slow_id, first, second = ids[0], ids[:4], ids[4:]
        engine = CallEngine(settings)
        errors: list[BaseException] = []
        slow_state_when_second_returned: list[str] = []

        def task(item_ids: list[int], after: threading.Event | None, done: threading.Event) -> None:
            try:  # as a Celery pool thread runs complete_batch: wait on the engine for this task's items
                if after is not None:
                    after.wait(30)
                engine.run(pipeline.complete_items(sf, job_id, item_ids, engine.clients, settings,
                                                   settings.concurrency, lease_s=settings.effective_lease_s,
                                                   slots=engine.slots))
                if after is not None:  # the second task
                    with sf() as session:
                        slow_state_when_second_returned.append(session.get(Item, slow_id).status)
            except BaseException as exc:  # every error fails the test
                errors.append(exc)
            finally:
                done.set()

        first_claimed, first_done, second_done = threading.Event(), threading.Event(), threading.Event()
        threads = [threading.Thread(target=task, args=(first, None, first_done)),
                   threading.Thread(target=task, args=(second, first_claimed, second_done))]
        threads[0].start()
        while engine.slots.stats.claims == 0 and not first_done.is_set():
            first_done.wait(0.01)
        first_claimed.set()  # the second task arrives while the first one is calling
        threads[1].start()
        for t in threads:
            t.join(60)
        engine.run(engine.clients.aclose())
        assert not errors, errors

        # The second task's 28 calls ran in the three slots the slow call left free, and it returned (its results
        # written) while the first task's slow call was still in flight.
        assert slow_state_when_second_returned == ["in_flight"]
        stats = engine.slots.stats
        assert stats.peak_busy == settings.concurrency  # the slots were full, and never more than that in flight
        assert stats.peak_waiting <= engine.slots.ahead  # claimed items waiting for a slot: two chunks at most
        with sf() as session:
            rows = list(session.scalars(select(Item).where(Item.job_id == job_id)))
        assert {r.status for r in rows} == {"succeeded"} and len(rows) == 32
        assert set(calls_per_prompt(server.base_url).values()) == {1}
        assert pipeline.finish_if_done(sf, job_id)


def test_an_item_that_waited_past_its_lease_is_renewed_or_left_to_the_worker_that_took_it_over(tmp_path,
                                                                                             postgres_url):
    """One slot, three items claimed together; the first call takes 2 s, past the 0.5 s lease, while the other two
    wait for the slot. Meanwhile another worker takes over the second (its lease ran out: a stalled job's task
    delivered again would). When the slot frees, the second is not called (it is the other worker's now) and
    the third, still this worker's, has its lease renewed and is called: no prompt is called twice."""
    with LoopbackServer(LoopbackConfig(models=dict(SLOW_TOKENS), jitter=False)) as server:
        settings = make_settings(tmp_path / "home", postgres_url, server).model_copy(
            update={"concurrency": 1, "lease_s": 0.5})
        assert pipeline.renew_after_s(settings.effective_lease_s, settings) == 0.0  # a call can outlast this lease
        sf, job_id, ids = routed_job(settings, tmp_path, ["slow one", "taken over", "renewed"], [50, 1, 1])
        engine = CallEngine(settings)
        taken: dict[int, Claim] = {}

        def other_worker() -> None:
            time.sleep(1.0)  # the items were claimed at once: by now the waiting ones are past their lease
            with sf() as session:
                taken.update(store.claim_items(session, job_id, [ids[1]], settings.lease_s, "other-worker"))
                session.commit()

        thread = threading.Thread(target=other_worker)
        thread.start()
        try:
            engine.run(pipeline.complete_items(sf, job_id, ids, engine.clients, settings, settings.concurrency,
                                               lease_s=settings.effective_lease_s, runner_id="this-worker",
                                               slots=engine.slots))
        finally:
            thread.join(10)
            engine.run(engine.clients.aclose())
        assert list(taken) == [ids[1]] and taken[ids[1]].attempts == 2  # the other worker's claim
        assert (engine.slots.stats.lost, engine.slots.stats.renewed) == (1, 2)  # renewed: the first and third
        assert calls_per_prompt(server.base_url) == {"slow one": 1, "renewed": 1}
        with sf() as session:
            rows = {r.id: r for r in session.scalars(select(Item).where(Item.job_id == job_id))}
        assert rows[ids[1]].status == ItemStatus.IN_FLIGHT and rows[ids[1]].claimed_by == "other-worker"
        assert rows[ids[0]].status == rows[ids[2]].status == ItemStatus.SUCCEEDED


def test_items_waiting_for_a_slot_read_once_whether_their_job_ended_and_are_not_called_if_it_has():
    """One slot, three items claimed together; the first call takes 1.5 s and the job ends (a cancel) 0.3 s into
    it. The two waiting items have waited over a second when the slot frees: they read the job's status (once,
    for both), go through the renewal, which refuses them, and are not called."""
    called: list[int] = []
    renewed: list[int] = []
    reads: list[float] = []
    ended_at = time.monotonic() + 0.3

    async def claim(chunk: list[int]) -> dict[int, Claim]:
        return {i: Claim("weak", {}, False, 1) for i in chunk}

    async def call(item_id: int, claim: Claim) -> None:
        called.append(item_id)
        await asyncio.sleep(1.5 if item_id == 1 else 0.01)

    async def renew(item_id: int, claim: Claim) -> bool:
        renewed.append(item_id)
        return False  # what renew_claims answers for a waiting item of an ended job (and cancels it)

    async def ended() -> bool:
        reads.append(time.monotonic())
        return time.monotonic() > ended_at

    async def main() -> Slots:
        slots = Slots(1)
        await slots.run([1, 2, 3], claim, call, renew, ended=ended)
        return slots

    slots = asyncio.run(main())
    assert called == [1] and renewed == [2, 3] and slots.stats.lost == 2
    assert len(reads) == 1


def test_quick_calls_never_read_whether_their_job_ended():
    reads: list[int] = []

    async def claim(chunk: list[int]) -> dict[int, Claim]:
        return {i: Claim("weak", {}, False, 1) for i in chunk}

    async def call(item_id: int, claim: Claim) -> None:
        await asyncio.sleep(0.01)

    async def ended() -> bool:
        reads.append(1)
        return True

    async def renew(item_id: int, claim: Claim) -> bool:
        raise AssertionError("no item waited long enough to be renewed")

    asyncio.run(Slots(2).run(list(range(20)), claim, call, renew, ended=ended))
    assert reads == []


def test_items_whose_claim_was_under_way_at_ctrl_c_count_as_never_sent():
    """Ctrl-C (the run cancelled) while a claim's UPDATE runs in its thread: the claim may still commit, so those
    items may be in flight under this runner, but none was called: they must go back uncounted, not as calls cut
    off (the interrupt test saw 10 counted with 4 slots when a slow claim was under way)."""
    claiming = asyncio.Event()
    claimed: list[int] = []
    under_way: list[int] = []
    called: set[int] = set()

    async def claim(chunk: list[int]) -> dict[int, Claim]:
        claimed.extend(chunk)
        # A claim once the first four calls have made room (its chunk depends on timing: the room freed so far)
        # is under way when the run is cancelled.
        if max(chunk) >= 8:
            under_way.extend(chunk)
            claiming.set()
            await asyncio.sleep(60)
        return {i: Claim("weak", {}, False, 1) for i in chunk}

    async def call(item_id: int, claim: Claim) -> None:
        called.add(item_id)
        await asyncio.sleep(0.01 if item_id < 4 else 60)  # the first four end and make room for the next claim

    async def main() -> Slots:
        slots = Slots(4)
        run = asyncio.create_task(slots.run(list(range(12)), claim, call))
        await claiming.wait()
        run.cancel()
        slots._feeder.cancel()  # as asyncio.run cancels every task on Ctrl-C
        for task in [*slots._running, slots._feeder]:
            task.cancel()
        await asyncio.gather(run, slots._feeder, *slots._running, return_exceptions=True)
        return slots

    slots = asyncio.run(main())
    # every item of the claim under way, and every claimed item whose call had not started; none whose had (it
    # may have been sent)
    assert under_way and set(under_way) <= slots.never_sent, (under_way, slots.never_sent)
    assert slots.never_sent == set(claimed) - called, (claimed, called, slots.never_sent)
    assert called >= {0, 1, 2, 3, 4, 5, 6, 7} - slots.never_sent and not called & slots.never_sent


@pytest.mark.parametrize("lease", ["embedded", "worker"])
def test_a_cancel_stops_the_items_still_waiting_for_a_slot(tmp_path, postgres_url, lease):
    """A cancel leaves calls in flight to finish, and cancels what has not been called. Items a runner claimed
    ahead, waiting for its one slot behind a 2 s call, had not been called: they end cancelled and their prompts
    never reach the model server, in the embedded runner (no lease) and in a worker (a lease far longer than the
    wait) alike."""
    with LoopbackServer(LoopbackConfig(models=dict(SLOW_TOKENS), jitter=False)) as server:
        settings = make_settings(tmp_path / "home", postgres_url, server).model_copy(update={"concurrency": 1})
        sf, job_id, ids = routed_job(settings, tmp_path, ["slow one", "waiting", "waiting too"], [50, 1, 1])
        engine = CallEngine(settings)

        def cancel() -> None:
            time.sleep(0.5)
            with sf() as session:
                store.cancel_job(session, store.get_job(session, job_id, lock=True))
                session.commit()

        thread = threading.Thread(target=cancel)
        thread.start()
        try:
            engine.run(pipeline.complete_items(
                sf, job_id, ids, engine.clients, settings, settings.concurrency, slots=engine.slots,
                lease_s=None if lease == "embedded" else settings.effective_lease_s, runner_id="this-worker"))
        finally:
            thread.join(10)
            engine.run(engine.clients.aclose())
        assert calls_per_prompt(server.base_url) == {"slow one": 1}
        with sf() as session:
            rows = {r.id: r.status for r in session.scalars(select(Item).where(Item.job_id == job_id))}
        assert rows == {ids[0]: ItemStatus.SUCCEEDED, ids[1]: ItemStatus.CANCELLED, ids[2]: ItemStatus.CANCELLED}
        assert engine.slots.stats.lost == 2


@pytest.mark.slow  # 400 calls of 125 ms, most of them in 8 slots
def test_claims_wait_for_room_so_no_claimed_item_outlives_its_lease(tmp_path, postgres_url):
    """A worker process (8 slots) runs 400 items of 125 ms a call, with a 2 s lease: the batch takes far longer
    than that. Once 150 have finished, a second worker process is handed the same items, as a task delivered
    twice would be. Claims are taken only shortly before a slot frees, so none of the first worker's claimed items
    has waited past its lease and the second never takes one over: every prompt is called exactly once. (Claiming
    the batch up front would leave hundreds of items claimed for seconds, and the second worker would call them
    again.)"""
    with LoopbackServer(LoopbackConfig(models=dict(SLOW_TOKENS), jitter=False)) as server:
        settings = make_settings(tmp_path / "home", postgres_url, server).model_copy(
            update={"concurrency": 8, "lease_s": 2.0})
        sf, job_id, ids = routed_job(settings, tmp_path, [f"prompt {i}" for i in range(400)], [3] * 400)
        engines = [CallEngine(settings), CallEngine(settings)]
        errors: list[BaseException] = []

        def succeeded() -> int:
            with sf() as session:
                return store.status_counts(session, job_id).get(ItemStatus.SUCCEEDED, 0)

        def worker(engine: CallEngine, after: int) -> None:
            try:
                while succeeded() < after:
                    time.sleep(0.05)
                engine.run(pipeline.complete_items(sf, job_id, ids, engine.clients, settings, settings.concurrency,
                                                   lease_s=settings.lease_s, slots=engine.slots))
            except BaseException as exc:  # every error fails the test
                errors.append(exc)
            finally:
                engine.run(engine.clients.aclose())

        threads = [threading.Thread(target=worker, args=(e, after)) for e, after in zip(engines, (0, 150), strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert all(e.slots.stats.peak_waiting <= e.slots.ahead for e in engines)
        with sf() as session:
            assert store.status_counts(session, job_id) == {"succeeded": 400}
        assert set(calls_per_prompt(server.base_url).values()) == {1}


@pytest.mark.slow  # worker, beat and API processes against real PostgreSQL and Redis
def test_a_worker_killed_between_calls_and_their_flush_loses_nothing(request, loopback, tmp_path):
    """Issue 17.2: answers that came back but were not yet written (results are flushed in groups, at least
    every second) die with a worker killed by SIGKILL. The worker is frozen (SIGSTOP) until a moment when more
    of its items are answered by the model server but still in flight in the database than it has call slots,
    so some of them had certainly returned and sat in its write buffer, and is then killed. Nothing is lost:
    its tasks were not acknowledged (they are acknowledged only after their flush), its items in flight are
    released once it is found dead, and a second worker finishes the job. Every item succeeds exactly once, no
    item written before the kill is called again, and the answers lost in the buffer are called once more."""
    procs = request.getfixturevalue("cluster")  # tests/test_distributed.py's: worker, beat and API processes
    concurrency = int(procs.env["ROUTEYARD_CONCURRENCY"])
    sf, key, base = tenant_and_api(procs)
    n = 1000
    try:
        first = procs.worker("worker-a")
        procs.beat()
        job_id = submit_over_http(base, key, batch_file(tmp_path / "flush.jsonl", n))
        wait_for(lambda: succeeded(sf) >= 100, 180, "100 items to finish on worker A")
        unflushed: set[str] = set()
        for _ in range(400):
            os.killpg(first.pid, signal.SIGSTOP)  # frozen: nothing is written or called meanwhile
            answered = {row["prompt"] for row in server_stats(loopback.base_url)["calls"] if row["answered"] >= 1}
            with sf() as session:
                in_flight = set(session.scalars(select(Item.prompt).where(Item.job_id == job_id,
                                                                          Item.status == "in_flight")))
            if len(in_flight & answered) > concurrency:
                unflushed = in_flight & answered
                break
            os.killpg(first.pid, signal.SIGCONT)
            time.sleep(0.02)
        assert unflushed, "never caught worker A with answers waiting to be written"
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        with sf() as session:
            done_at_kill = set(session.scalars(select(Item.prompt).where(Item.job_id == job_id,
                                                                         Item.status == "succeeded")))
        assert len(done_at_kill) < n
        procs.worker("worker-b")
        wait_completed(base, key, job_id, "the job to complete on worker B")
    except AssertionError:
        print(procs.dump())
        raise
    assert_exactly_once(sf, base, key, job_id, n, loopback)
    calls = {row["prompt"]: row["answered"] for row in server_stats(loopback.base_url)["calls"]}
    assert all(calls[p] == 1 for p in done_at_kill), "an item written before the kill was called again"
    assert all(calls[p] == 2 for p in unflushed), "an answer lost with the worker's buffer was not called again"
    assert max(calls.values()) <= 2
