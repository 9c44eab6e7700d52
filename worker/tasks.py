"""Celery tasks: start -> score batches -> route once -> completion batches; and a periodic reconcile.

Each task only reads its work from the database and writes results back, so a task delivered twice, or
re-run after its worker died, changes nothing that is already done.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine, Sequence
from functools import cache, lru_cache
from typing import Any, TypeVar

from celery.signals import worker_process_init, worker_ready
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import OperationalError as DatabaseError
from sqlalchemy.orm import Session, sessionmaker

from db import jobs as store
from db import provider_batches as provider_rows
from db import runners
from db.judging import jobs_judged_by, stalled_judging
from db.session import open_database
from routers.registry import LoadedRouter
from routeyard.errors import Conflict
from routeyard.redact import install_log_redaction
from routeyard.settings import Settings
from worker import judge, pipeline, provider_batches
from worker.celery_app import app
from worker.cut_off import put_back_cut_off
from worker.heartbeat import process_heartbeat
from worker.judge import wants_judging
from worker.judge_cut_off import put_back_judging
from worker.runtime import load_job_router, load_or_fail
from worker.slots import Slots

log = logging.getLogger(__name__)
T = TypeVar("T")
# The HTTP clients log every request at INFO, the level workers run at: a line per model call is noise, and on a
# fast endpoint formatting it is a measurable share of a worker's CPU per item.
for _name in ("httpx", "httpx2"):
    logging.getLogger(_name).setLevel(logging.WARNING)
RETRY = {"autoretry_for": (DatabaseError, BrokerError, ConnectionError), "retry_backoff": True,
         "retry_backoff_max": 60, "max_retries": None}


@cache
def worker_settings() -> Settings:
    """This worker process's settings, read once."""
    settings = Settings()
    install_log_redaction(settings.secrets())
    return settings


_DB_LOCK = threading.Lock()


@cache
def worker_db() -> sessionmaker[Session]:
    """This worker process's session factory, opened (and migrated) once."""
    with _DB_LOCK:  # task threads of one worker start together; migrate and connect once
        return _open_database()


@cache
def _open_database() -> sessionmaker[Session]:
    return open_database(worker_settings().resolved_database_url)


@lru_cache(maxsize=4)
def _loaded_router(spec: str) -> LoadedRouter:
    """Loaded once per worker process and kept: a job's batches all reuse it."""
    return load_job_router(spec, worker_settings())


def _router(sf: sessionmaker[Session], job_id: str, spec: str) -> LoadedRouter | None:
    """The job's router, or None when it does not load: the job has failed then, with the reason (once; not
    retried: another delivery would fail the same way)."""
    return load_or_fail(sf, job_id, spec, worker_settings(), load=_loaded_router)


def _chunks(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


# A message costs its sender about a millisecond of CPU (1.1 ms a `delay` to Redis here): a million-item job in
# 50-item tasks spent some 25 s of the CPU its first calls needed enqueueing 20,000 of them.
# Past this many tasks a job's tasks grow instead; the fixed costs of a task (its message, model check and job
# reads) then stay a small share of any job, and a task of a few hundred items still spreads across workers.
MAX_COMPLETION_TASKS = 2000


def completion_chunk(items: int, settings: Settings) -> int:
    """Items per completion task: `complete_batch_size`, larger for a job that would need more tasks than
    MAX_COMPLETION_TASKS."""
    return max(settings.complete_batch_size, -(-items // MAX_COMPLETION_TASKS))


def _send_chunks(task: Any, job_id: str, ids: Sequence[int], size: int) -> None:
    """`task(job_id, chunk)` for each chunk of `ids`, over one broker connection. The message's args repr (its
    log line) names the count, not the ids: Celery's own repr of a long id list was a quarter of a send."""
    with task.app.producer_or_acquire() as producer:
        for chunk in _chunks(ids, size):
            task.apply_async((job_id, chunk), producer=producer, argsrepr=f"({job_id!r}, <{len(chunk)} items>)")


@app.task(name="routeyard.start_job", **RETRY)
def start_job(job_id: str) -> None:
    sf = worker_db()
    if not pipeline.start(sf, job_id):
        return
    with sf() as session:
        ids = store.unscored_ids(session, job_id)
    _send_chunks(score_batch, job_id, ids, worker_settings().score_batch_size)
    if not ids:
        route_job(job_id)


@app.task(name="routeyard.score_batch", **RETRY)
def score_batch(job_id: str, item_ids: list[int]) -> None:
    sf = worker_db()
    with sf() as session:
        job = store.get_job(session, job_id)
        spec, ended = job.router, job.status.ended
    loaded = None if ended else _router(sf, job_id, spec)
    if loaded is None:  # the job ended (or its router failed it just now): nothing to score
        return
    pipeline.score_items(sf, job_id, loaded, worker_settings().score_batch_size, item_ids=item_ids)
    route_job(job_id)


@app.task(name="routeyard.route_job", **RETRY)
def route_job(job_id: str) -> None:
    """Route once every item is scored (the last scoring batch gets here first), then fan out the calls."""
    if pipeline.assign_routes(worker_db(), job_id, worker_settings()) is not None:
        enqueue_completion(job_id)


def enqueue_completion(job_id: str) -> int:
    settings = worker_settings()
    with worker_db()() as session:
        ids = store.claimable_ids(session, job_id, settings.effective_lease_s, settings.batch_tiers)
    _send_chunks(complete_batch, job_id, ids, completion_chunk(len(ids), settings))
    if settings.batch_tiers:
        submit_provider_batches.delay(job_id)
    elif not ids:
        pipeline.finish_if_done(worker_db(), job_id)
    return len(ids)


@app.task(name="routeyard.submit_provider_batches", **RETRY)
def submit_provider_batches(job_id: str) -> int:
    """A batch-mode tier's routed share, sent as provider batches (beat polls them: poll_provider_batches)."""
    loop, clients = _thread_loop()
    sent = loop.run_until_complete(provider_batches.submit_share(worker_db(), worker_settings(), job_id, clients))
    pipeline.finish_if_done(worker_db(), job_id)
    return sent


@app.task(name="routeyard.poll_provider_batches", **RETRY)
def poll_provider_batches() -> int:
    """Beat runs this: every open provider batch whose poll is due is retrieved, an ended one merged, and what
    it handed back sent on (to a new provider batch, or to direct calls)."""
    sf = worker_db()
    with sf() as session:
        job_ids = provider_rows.jobs_with_open_batches(session)
    loop, clients = _thread_loop()
    for job_id in job_ids:
        # a row still preparing may be another worker's, uploading now: taken over only past two leases
        loop.run_until_complete(provider_batches.poll_batches(
            sf, worker_settings(), job_id, clients, preparing_stale_s=2 * worker_settings().effective_lease_s))
        enqueue_completion(job_id)
    return len(job_ids)


@app.task(name="routeyard.complete_batch", **RETRY)
def complete_batch(job_id: str, item_ids: list[int]) -> None:
    """Call the items' models in this process's shared call slots (worker/slots.py); return (and so be
    acknowledged) only once their results are written."""
    settings = worker_settings()
    try:
        pipeline.check_models(worker_db(), job_id, settings, item_ids=item_ids)
    except Conflict as exc:  # this worker serves other models: leave the items for one that matches
        log.error("%s; %d items left unclaimed", exc, len(item_ids))
        return
    engine = call_engine()
    me = process_heartbeat(worker_db(), settings, "worker").id
    engine.run(pipeline.complete_items(worker_db(), job_id, item_ids, engine.clients, settings,
                                       settings.concurrency, lease_s=settings.effective_lease_s, runner_id=me,
                                       slots=engine.slots))
    if pipeline.finish_if_done(worker_db(), job_id) and wants_judging(worker_db(), job_id):
        judge_job.delay(job_id)


@app.task(name="routeyard.judge_job", **RETRY)
def judge_job(job_id: str) -> None:
    """A completed job's shadow pairs, judged (`--judge`); a pair already judged is never judged again."""
    loop, _clients = _thread_loop()
    settings = worker_settings()
    me = process_heartbeat(worker_db(), settings, "worker").id  # its pairs are held by this live worker
    loop.run_until_complete(judge.judge_job(worker_db(), settings, job_id, runner_id=me))


_THREAD = threading.local()


def _thread_loop() -> tuple[asyncio.AbstractEventLoop, pipeline.Clients]:
    """One event loop and one pair of model clients per worker thread, kept for the process's life: each
    completion task reuses the clients' open connections instead of dialling the endpoints again."""
    if getattr(_THREAD, "loop", None) is None:
        _THREAD.loop = asyncio.new_event_loop()
        _THREAD.clients = pipeline.make_clients(worker_settings())
    return _THREAD.loop, _THREAD.clients


class CallEngine:
    """The process's completion calls: one event loop in a thread of its own, one pair of model clients and one
    set of `concurrency` call slots, shared by every completion task this process holds (its pool threads each
    wait here for their own task's items). The loop starts after a prefork child is forked: on first use."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="routeyard-calls", daemon=True)
        self._thread.start()
        self.clients = pipeline.make_clients(settings)
        self.slots: Slots = self.run(_make_slots(settings.concurrency))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the engine's loop and wait for it, from any other thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


async def _make_slots(concurrency: int) -> Slots:
    return Slots(concurrency)  # made on the engine's loop, whose primitives it uses


_ENGINE_LOCK = threading.Lock()
_ENGINES: dict[int, CallEngine] = {}


def call_engine() -> CallEngine:
    """This process's CallEngine (a forked child makes its own)."""
    with _ENGINE_LOCK:
        engine = _ENGINES.get(os.getpid())
        if engine is None:
            engine = _ENGINES[os.getpid()] = CallEngine(worker_settings())
        return engine


@app.task(name="routeyard.reconcile", **RETRY)
def reconcile() -> int:
    """Beat runs this: the items of dead workers go back to work at once (release_dead_runners), and jobs with
    no progress for `stall_s` (their tasks lost with a broker that restarted without persistence, say) get
    their remaining work enqueued again."""
    settings = worker_settings()
    release_dead_runners(settings)
    if broker_lost_its_queues(settings):
        with worker_db()() as session:
            active = [(j.id, j.threshold is not None) for j in runners.active_jobs(session)]
        log.warning("the broker lost its queues (restarted without persistence); re-enqueueing %d job(s)",
                    len(active))
        for job_id, routed in active:
            if routed:
                enqueue_completion(job_id)
            else:
                start_job.delay(job_id)
    with worker_db()() as session:
        stalled = [(j.id, j.threshold is not None) for j in runners.stalled_jobs(session, settings.stall_s)]
    for job_id, routed in stalled:
        log.warning("job %s stalled; re-enqueueing its remaining work", job_id)
        if routed:
            enqueue_completion(job_id)
        else:
            start_job.delay(job_id)
    return len(stalled) + len(requeue_stalled_judging(settings))


def requeue_stalled_judging(settings: Settings) -> list[str]:
    """Completed `--judge` jobs with shadow pairs left to judge and no judging progress for `stall_s`: their
    judge_job was lost (a broker restarted without persistence, a worker gone with the task) and is enqueued
    again. Judging is idempotent: a pair judged (or claimed within its lease) is never judged again. The job's
    heartbeat records each re-enqueue, so a task still waiting in a long queue is not enqueued again every
    reconcile."""
    with worker_db()() as session:
        job_ids = stalled_judging(session, settings.stall_s, settings.effective_lease_s)
        for job_id in job_ids:
            store.touch_job(session, job_id)
        session.commit()
    for job_id in job_ids:
        log.warning("job %s: judging shows no progress for %.0f s; re-enqueueing routeyard.judge_job", job_id,
                    settings.stall_s)
        judge_job.delay(job_id)
    return job_ids


BROKER_MARK = "routeyard:broker-alive"  # a key in the broker's Redis; gone after a restart without persistence


def broker_lost_its_queues(settings: Settings) -> bool:
    """True when the broker's Redis has lost its data since the last look (its mark is gone): every queued task
    went with it, so the jobs' remaining work is enqueued again now rather than after `stall_s` of no
    progress. Also true on the very first look; enqueueing twice is harmless (claims skip finished items)."""
    url = settings.broker_url or ""
    if not url.startswith(("redis://", "rediss://")):
        return False
    import redis  # the broker's client (celery[redis]); only Redis loses its queues this way

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return bool(client.set(BROKER_MARK, "1", nx=True))
    finally:
        client.close()


def release_dead_runners(settings: Settings) -> list[str]:
    """Workers that stopped beating (killed, their machine gone): their items in flight go back to routed (their
    calls counted as unanswered: worker/cut_off.py) and
    every running job's remaining work is enqueued again, which also covers the tasks a dead worker had taken
    from the broker but not acknowledged (they would come back only after the visibility timeout). Only a
    reconciler whose own beats have reached the database for `dead_after_s` judges others (after an outage
    every last beat is old). Returns the jobs re-enqueued."""
    if not process_heartbeat(worker_db(), settings, "worker").steady:
        return []
    with worker_db()() as session:
        dead = runners.dead_runners(session, settings.dead_after_s)
        if not dead:
            return []
        released = {job_id: put_back_cut_off(session, settings, job_id, dead)
                    for job_id in runners.jobs_held_by(session, dead)}
        # their pairs in flight too: judged again, their judge calls counted as unanswered
        judging = {job_id: put_back_judging(session, settings, job_id, dead)
                   for job_id in jobs_judged_by(session, dead)}
        runners.forget_runners(session, dead)
        job_ids = runners.running_jobs(session)
        session.commit()
    log.warning("runners %s stopped beating; %d items and %d judged pairs they had in flight released; "
                "re-enqueueing %d running job(s)", ", ".join(dead), sum(released.values()), sum(judging.values()),
                len(job_ids))
    for job_id in job_ids:
        enqueue_completion(job_id)
    for job_id in judging:
        if wants_judging(worker_db(), job_id):
            judge_job.delay(job_id)
    return job_ids


@worker_ready.connect
@worker_process_init.connect
def _start_heartbeat(**_: object) -> None:
    """Beat from the start (a thread pool's process, or each prefork child), not from the first task: the
    reconciler trusts its own judgement only after `dead_after_s` of steady beats."""
    try:
        process_heartbeat(worker_db(), worker_settings(), "worker")
    except Exception:  # the database is away: the first task starts it instead
        log.warning("could not start the heartbeat yet; the first task will")
