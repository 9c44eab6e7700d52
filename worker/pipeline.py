"""The steps of a job, shared by the embedded runner and the Celery tasks.

score_items -> assign_routes -> complete_items. Each step reads its work from the database and writes its
results back before moving on, so any step can be interrupted and re-run: finished items are never called
again and spend (the sum of item costs) is never counted twice.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import jobs as store
from db import planner, routes, runners
from db.jobs import Claim
from db.models import Job, utcnow
from routers.calibration import BatchRouting, route_batch, route_within_budget, shadow_sample
from routers.registry import LoadedRouter
from routeyard.errors import Conflict
from routeyard.pricing import Unbounded, cost_bound, cost_usd, price_for
from routeyard.settings import Price, Settings, Tier
from routeyard.states import JOB_ENDED, JobStatus
from worker.llm_client import CallResult, ModelClient, tls_context
from worker.slots import Slots
from worker.writes import ResultWriter, retrying


@dataclass(frozen=True)
class Clients:
    strong: ModelClient
    weak: ModelClient

    def for_tier(self, tier: str) -> ModelClient:
        return self.strong if tier == "strong" else self.weak

    async def aclose(self) -> None:
        await asyncio.gather(self.strong.aclose(), self.weak.aclose())


def make_clients(settings: Settings) -> Clients:
    tls = tls_context()  # one for both tiers: building it is most of a client's start-up

    def make(tier: Tier) -> ModelClient:
        return ModelClient(settings.endpoint(tier), max_retries=settings.max_retries,
                           timeout_s=settings.request_timeout_s, secrets=settings.secrets(), tls=tls,
                           http_backend=settings.http_backend)

    return Clients(make("strong"), make("weak"))


def job_prices(job: Job, settings: Settings) -> dict[str, Price]:
    """The prices fixed when the job was submitted (jobs stored before that was recorded: today's table)."""
    if not job.prices:
        return settings.price_table
    return {**settings.price_table, **{m: Price.model_validate(p) for m, p in job.prices.items()}}


def score_items(sf: sessionmaker[Session], job_id: str, loaded: LoadedRouter, batch_size: int,
                progress: Callable[[int], None] | None = None, item_ids: Sequence[int] | None = None) -> int:
    """Score the job's unscored items (or those of `item_ids`), a batch at a time; returns how many."""
    scored = last = 0
    while True:
        with sf() as session:
            if item_ids is None:
                batch = store.unscored_items(session, job_id, batch_size, after_id=last)
            else:
                batch = store.unscored_in(session, item_ids)[:batch_size]
            if not batch:
                return scored
            scores = loaded.router.win_rate([prompt for _, prompt in batch])
            store.touch_job(session, job_id)  # the job row before the item rows, as every writer locks them
            routes.store_scores(session, [(item_id, float(s)) for (item_id, _), s in zip(batch, scores, strict=True)],
                               loaded.label)
            session.commit()
        scored += len(batch)
        last = batch[-1][0]
        if progress:
            progress(len(batch))


def _route_budget(session: Session, job: Job, ids: list[int], scores: list[float], settings: Settings
                  ) -> BatchRouting:
    budget = job.budget_usd
    assert budget is not None  # only budgeted jobs are routed here
    bodies = store.item_bodies(session, ids)
    weak, strong = (price_for(m, job_prices(job, settings)) for m in (job.weak_model, job.strong_model))
    bound = settings.default_max_tokens
    return route_within_budget(np.asarray(scores, dtype=np.float64),
                               np.array([cost_bound(bodies[i], weak, bound) for i in ids]),
                               np.array([cost_bound(bodies[i], strong, bound) for i in ids]), budget)


def assign_routes(sf: sessionmaker[Session], job_id: str, settings: Settings) -> float | None:
    """Route the whole batch at its exact quantile: round(fraction * n) top-scoring items go strong.
    Returns the threshold if this call routed the job, None if it was routed already or cannot be yet."""
    with sf() as session:
        # Every scoring task asks once it has committed (so the last one to commit sees none left). Asked first
        # without the job row's lock: thousands of tasks of a large job would otherwise queue on that lock.
        if store.unscored_items(session, job_id, 1, last_first=True):
            return None
    with sf() as session:
        job = store.get_job(session, job_id, lock=True)
        if job.threshold is not None or job.status.ended:  # never route twice, nor an ended job
            return None
        if store.unscored_items(session, job_id, 1, last_first=True):
            return None
        ids, scores = store.item_scores(session, job_id)
        if job.budget_usd is None:
            routing = route_batch(np.asarray(scores, dtype=np.float64), job.strong_fraction)
        else:
            routing = _route_budget(session, job, ids, scores, settings)
        routes.store_routes(session, job, ids, routing.strong.tolist(), routing.threshold)
        if job.shadow_fraction:
            weak = {str(i): i for i, s in zip(ids, routing.strong.tolist(), strict=True) if not s}
            chosen = shadow_sample(list(weak), job.shadow_fraction, job.id)
            routes.mark_shadow(session, [weak[k] for k in chosen])
        store.set_job_status(session, job_id, JobStatus.RUNNING, heartbeat_at=utcnow())
        session.commit()
    with sf() as session:
        planner.refresh_item_statistics(session, len(ids))
        session.commit()
    return routing.threshold


FLUSH_ROWS = 64  # results written per statement, at the latest...
FLUSH_EVERY_S = 1.0  # ...this long after the first of them landed
SIGN_OF_LIFE_S = 10.0  # a job's heartbeat moves this often while its calls progress (a quarter of stall_s, if less)


async def complete_items(sf: sessionmaker[Session], job_id: str, item_ids: Sequence[int], clients: Clients,
                         settings: Settings, concurrency: int,
                         on_done: Callable[[CallResult], None] | None = None, lease_s: float | None = None,
                         runner_id: str | None = None, slots: Slots | None = None) -> None:
    """Call the chosen model for each item, in `slots` (the process's call slots, shared with the other
    completions it runs: worker/slots.py), or in `concurrency` slots of its own.

    Claims are taken a chunk at a time (one conditional UPDATE each), shortly before a slot frees, and results
    are written in groups, at least every second and always before this returns (so before a task is
    acknowledged): a session per batch, not two commits per call. Claims and writes run off the event loop and
    are retried while the database is unreachable (worker/writes.py), so a database restart loses no answer
    and stops no call. A process killed between a call and its flush leaves that item in flight; it is called
    again once its runner is found dead or its lease runs out (or when the embedded runner resumes), and a
    finished item is never called again."""
    with sf() as session:
        prices = job_prices(store.get_job(session, job_id), settings)
    signed = [float("-inf")]
    sign_every_s = min(SIGN_OF_LIFE_S, settings.stall_s / 4)

    def sign_of_life(session: Session) -> None:
        """After a claim or a group of results has committed: the job's heartbeat, for beat's stall check."""
        if time.monotonic() - signed[0] < sign_every_s:
            return
        signed[0] = time.monotonic()
        try:
            runners.sign_of_life(session, job_id, sign_every_s)
            session.commit()
        except SQLAlchemyError:  # only a hint: the claim or results it follows are stored, and must not be redone
            session.rollback()

    writer = ResultWriter(sf, job_id, settings.db_retry_s, FLUSH_ROWS, FLUSH_EVERY_S, after_write=sign_of_life)
    strong_price = price_for(clients.strong.model, prices)

    def claim_now(chunk: list[int]) -> dict[int, Claim]:
        with sf() as session:
            got = store.claim_items(session, job_id, chunk, lease_s, runner_id)
            session.commit()
            sign_of_life(session)
            return got

    async def claim(chunk: list[int]) -> dict[int, Claim]:
        return await retrying(partial(claim_now, chunk), f"job {job_id}: a claim", settings.db_retry_s)

    def renew_now(item_id: int, claim: Claim) -> bool:
        with sf() as session:
            renewed = store.renew_claims(session, job_id, [(item_id, claim.attempts)])
            session.commit()
            return item_id in renewed

    async def renew(item_id: int, claim: Claim) -> bool:
        return await retrying(partial(renew_now, item_id, claim), f"job {job_id}: a claim's renewal",
                              settings.db_retry_s)

    def ended_now() -> bool:
        with sf() as session:
            return store.get_job(session, job_id).status in JOB_ENDED

    async def ended() -> bool:
        try:
            return await asyncio.to_thread(ended_now)
        except SQLAlchemyError:  # only a hint: the item is called, as it would have been without the read
            return False

    async def call(item_id: int, claim: Claim) -> None:
        client = clients.for_tier(claim.tier)
        shadow = None
        shadow_cost = 0.0
        if claim.shadow:  # both answers, for comparison; recorded together so a resume never splits them
            result, shadow = await asyncio.gather(client.complete(claim.body), clients.strong.complete(claim.body))
            shadow_cost = cost_usd(strong_price, shadow.prompt_tokens, shadow.completion_tokens) if shadow.ok else 0.0
        else:
            result = await client.complete(claim.body)
        price = price_for(client.model, prices)
        cost = cost_usd(price, result.prompt_tokens, result.completion_tokens)
        calls = [(result, price)] + ([(shadow, strong_price)] if shadow else [])
        writer.add(store.result_values(
            item_id, result, cost if result.ok else 0.0, shadow, shadow_cost,
            attempts=sum(r.attempts for r, _ in calls), unanswered=sum(r.unanswered for r, _ in calls),
            unanswered_cost=sum(unanswered_cost_bound(claim.body, r, p, settings) for r, p in calls)))
        if on_done:
            on_done(result)

    writer.start()
    try:
        pool = slots or Slots(concurrency)
        # The embedded runner's job is this process's alone, so no claim runs out; a cancel can still come.
        await pool.run(item_ids, claim, call, renew,
                       math.inf if lease_s is None else renew_after_s(lease_s, settings), ended)
    finally:
        await writer.close()


def renew_after_s(lease_s: float, settings: Settings) -> float:
    """How long a claimed item may wait for a call slot before its lease is renewed: what is left of the lease
    once the longest call (every attempt running to its timeout) is set aside; 0 (renew every claim that waits
    at all) where the lease is shorter than that call."""
    return max(0.0, lease_s - settings.request_timeout_s * (settings.max_retries + 1))


def unanswered_cost_bound(body: dict[str, Any], result: CallResult, price: Price, settings: Settings) -> float:
    """What a call's unanswered requests may have cost at most: each one as if the provider had answered it in
    full (pricing.cost_bound); 0 for a request whose cost has no bound (billed by duration or pages)."""
    if not result.unanswered:
        return 0.0
    try:
        return result.unanswered * cost_bound(body, price, settings.default_max_tokens)
    except Unbounded:
        return 0.0


def check_models(sf: sessionmaker[Session], job_id: str, settings: Settings, before_routing: bool = False,
                 item_ids: Sequence[int] | None = None) -> None:
    """A job's models are fixed when it is submitted. A process whose endpoint for a tier the job uses serves
    another model must not call its items (results and spend would name a model that was not called): Conflict,
    and the items are left for a process whose settings match. Before routing, both tiers count. `item_ids`: a
    task's own items, whose tiers are read by primary key (a completion task must not read the whole job)."""
    with sf() as session:
        job = store.get_job(session, job_id)
        used = store.tiers_of(session, item_ids) if item_ids is not None else store.tier_counts(session, job_id)
        tiers = set(used) | ({"strong"} if job.shadow_fraction else set())
        if before_routing and job.threshold is None:
            tiers = {"strong", "weak"}
        pinned = {"strong": job.strong_model, "weak": job.weak_model}
    wrong = [f"the job's {tier} model is {pinned[tier]!r} but this process's ROUTEYARD_{tier.upper()}_MODEL is "
             f"{settings.endpoint(tier).model!r}"  # type: ignore[arg-type]
             for tier in sorted(tiers) if settings.endpoint(tier).model != pinned[tier]]  # type: ignore[arg-type]
    if wrong:
        raise Conflict(f"job {job_id}: {'; '.join(wrong)}. Run it with the settings it was submitted with")


def finish_if_done(sf: sessionmaker[Session], job_id: str) -> bool:
    with sf() as session:
        done = store.finish_job_if_done(session, job_id)
        session.commit()
        return done


def start(sf: sessionmaker[Session], job_id: str) -> bool:
    """Mark the job started; False if it has ended (nothing to do)."""
    with sf() as session:
        job = store.start_job(session, job_id)
        session.commit()
        return not job.status.ended

