"""A tier in batch mode (ROUTEYARD_STRONG_MODE=batch, _WEAK_MODE=batch): its routed share goes through the
provider's Batch API at the batch price, instead of a call per item.

submit_share: the tier's unbatched routed items, split at the provider's limits (requests and bytes per input
    file), each split stored as a ProviderBatch row (its items BATCHED) before anything is uploaded; then the
    input file is uploaded and the batch created, each id stored as soon as it exists.
poll_batches: every open row whose time has come: a row without a file or batch id is finished first (after a
    crash; the provider's batches are searched for this row's key before one is created, so a share is never
    submitted twice); a submitted batch is retrieved, and once it has ended its output and error files are
    merged into the items by custom_id (the item id). Lines without an answer (a failed line, an expired
    batch) go back to ROUTED: to the next provider batch, or, with ROUTEYARD_BATCH_FALLBACK=direct, to direct
    calls; after max_retries rounds an item fails with the last reason.

Both are steps like worker/pipeline.py's: they read their work from the database and write back before
returning, so the embedded runner (which polls until the job ends) and beat (distributed mode) share them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal

import openai
from sqlalchemy.orm import Session, sessionmaker

from db import jobs as store
from db import provider_batches as rows
from db.models import ProviderBatch, aware, utcnow
from routeyard.pricing import batch_price, cost_usd, price_for
from routeyard.settings import Price, Settings
from routeyard.states import JOB_ENDED, ProviderBatchStatus
from worker.llm_client import CallResult
from worker.pipeline import Clients, job_prices

log = logging.getLogger(__name__)

ENDED = frozenset({"completed", "failed", "expired", "cancelled"})  # the provider's words for a batch that is over
ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"
KEY = "routeyard_batch"  # the metadata key naming this row: job id and row id


def _key(batch: ProviderBatch) -> str:
    return f"{batch.job_id}:{batch.id}"


def _line(item_id: int, body: dict[str, Any], model: str) -> bytes:
    return (json.dumps({"custom_id": str(item_id), "method": "POST", "url": ENDPOINT,
                        "body": {**body, "model": model}}, ensure_ascii=False) + "\n").encode()


def split(items: Sequence[tuple[int, dict[str, Any]]], model: str, max_requests: int, max_bytes: int
          ) -> list[list[int]]:
    """Item ids in input files no larger than the provider allows."""
    files: list[list[int]] = []
    size = 0
    for item_id, body in items:
        n = len(_line(item_id, body, model))
        if not files or len(files[-1]) >= max_requests or size + n > max_bytes:
            files.append([])
            size = 0
        files[-1].append(item_id)
        size += n
    return files


async def submit_share(sf: sessionmaker[Session], settings: Settings, job_id: str, clients: Clients) -> int:
    """Put every unbatched routed item of the job's batch-mode tiers in provider batches; the number of items."""
    submitted = 0
    for tier in settings.batch_tiers:
        model = clients.for_tier(tier).model
        with sf() as session:
            if store.get_job(session, job_id).status in JOB_ENDED:
                return submitted
            todo = rows.unbatched(session, job_id, tier)
        for ids in split(todo, model, settings.batch_max_requests, settings.batch_max_bytes):
            with sf() as session:
                batch = rows.store_batch(session, job_id, tier, model, ids)
                session.commit()
                batch_id = batch.id
            await _create(sf, settings, clients, batch_id)
            submitted += len(ids)
    return submitted


async def _create(sf: sessionmaker[Session], settings: Settings, clients: Clients, batch_id: int) -> None:
    """Upload the row's input file and create its provider batch, whichever is missing; each id stored at once."""
    with sf() as session:
        batch = rows.get_batch(session, batch_id)
        items = rows.batch_items(session, batch_id)
    client = _client(clients, batch.tier)
    if not items:  # every item was cancelled (or merged) before the batch existed
        with sf() as session:
            rows.mark_merged(session, batch_id, "no item left to send")
            session.commit()
        return
    if batch.provider_batch_id is None and batch.input_file_id is not None:
        found = await _find(client, _key(batch))  # created just before a crash, its id not yet stored?
        if found is not None:
            await _store(sf, batch_id, provider_batch_id=found)
            return
    if batch.input_file_id is None:
        content = b"".join(_line(i, body, batch.model) for i, (body, _) in sorted(items.items()))
        uploaded = await client.files.create(file=(f"routeyard-{batch.job_id}-{batch_id}.jsonl", content),
                                             purpose="batch")
        await _store(sf, batch_id, input_file_id=uploaded.id)
        batch.input_file_id = uploaded.id
    created = await client.batches.create(input_file_id=batch.input_file_id, endpoint=ENDPOINT,
                                          completion_window=settings.batch_completion_window,  # type: ignore[arg-type]
                                          metadata={KEY: _key(batch)})
    await _store(sf, batch_id, provider_batch_id=created.id, provider_status=created.status,
                 next_poll_at=utcnow() + timedelta(seconds=settings.batch_poll_s))


async def _store(sf: sessionmaker[Session], batch_id: int, **values: Any) -> None:
    with sf() as session:
        batch = rows.get_batch(session, batch_id)
        for name, value in values.items():
            setattr(batch, name, value)
        if "provider_batch_id" in values:  # from now on it is polled, never created again
            batch.status = ProviderBatchStatus.SUBMITTED
        session.commit()


async def _find(client: openai.AsyncOpenAI, key: str) -> str | None:
    async for found in client.batches.list(limit=100):
        if (found.metadata or {}).get(KEY) == key:
            return found.id
    return None


def _client(clients: Clients, tier: str) -> openai.AsyncOpenAI:
    client = clients.for_tier(tier).client
    if client is None:
        raise RuntimeError(clients.for_tier(tier).setup_error or f"no client for the {tier} tier")
    return client


async def poll_batches(sf: sessionmaker[Session], settings: Settings, job_id: str, clients: Clients,
                       force: bool = False, preparing_stale_s: float = 0.0) -> bool:
    """Advance every open provider batch of the job whose poll is due (all, with `force`); True when none is
    left open. A row still preparing is taken over only once it is `preparing_stale_s` old: the embedded runner,
    the job's only runner, takes it at once; beat waits until the process creating it must have died. A job
    that has ended (cancelled) cancels its open batches at the provider and merges what they answered: a
    provider bills what it ran."""
    with sf() as session:
        ended = store.get_job(session, job_id).status in JOB_ENDED
        open_rows = rows.open_batches(session, job_id)
        prices = job_prices(store.get_job(session, job_id), settings)
    now = utcnow()
    for batch in open_rows:
        if batch.status == ProviderBatchStatus.PREPARING:
            if (now - aware(batch.created_at)).total_seconds() < preparing_stale_s:
                continue
            if not ended:
                await _create(sf, settings, clients, batch.id)
            else:
                await _finish(sf, settings, clients, batch, None, prices, ended)
            continue
        due = batch.next_poll_at is None or aware(batch.next_poll_at) <= now
        if not (due or force or ended):
            continue
        client = _client(clients, batch.tier)
        assert batch.provider_batch_id is not None
        found = await client.batches.retrieve(batch.provider_batch_id)
        if ended and found.status not in ENDED and found.status != "cancelling":
            found = await client.batches.cancel(batch.provider_batch_id)
        if found.status in ENDED:
            await _finish(sf, settings, clients, batch, found, prices, ended)
        else:
            wait = min(settings.batch_poll_s * 2 ** batch.polls, settings.batch_poll_max_s)
            with sf() as session:
                rows.record_polled(session, batch.id, found.status, utcnow() + timedelta(seconds=wait))
                session.commit()
    with sf() as session:
        return not rows.open_batches(session, job_id)


async def _finish(sf: sessionmaker[Session], settings: Settings, clients: Clients, batch: ProviderBatch,
                  found: Any, prices: dict[str, Price], ended: bool) -> None:
    """Merge an ended provider batch (None: one never created, of a job that ended) into its items."""
    answers: dict[int, dict[str, Any]] = {}
    if found is not None:
        for file_id in (found.output_file_id, found.error_file_id):
            if file_id:
                text = (await _client(clients, batch.tier).files.content(file_id)).text
                for raw in text.splitlines():
                    if raw.strip():
                        entry = json.loads(raw)
                        answers[int(entry["custom_id"])] = entry
    price = price_for(batch.model, prices)
    latency_ms = (utcnow() - aware(batch.created_at)).total_seconds() * 1000
    with sf() as session:
        waiting = rows.batch_items(session, batch.id)
    results, unanswered, reasons = [], [], {}
    for item_id, (_, attempts) in waiting.items():
        result = _result(answers.get(item_id), latency_ms, found.status if found is not None else "not created")
        if result.ok:
            cost = cost_usd(batch_price(price), result.prompt_tokens, result.completion_tokens)
            results.append(store.result_values(item_id, result, cost))
        elif ended:
            continue  # cancelled below: the job was cancelled while the provider held the item
        elif attempts + 1 > settings.max_retries:
            results.append(store.result_values(item_id, result, 0.0))
        else:
            unanswered.append(item_id)
            reasons[item_id] = result.error
    with sf() as session:
        store.record_results(session, batch.job_id, results)
        rows.hand_back(session, batch.job_id, batch.id, unanswered, keep_batch=settings.batch_fallback == "direct")
        if ended:
            rows.cancel_waiting(session, batch.job_id, batch.id)
        rows.mark_merged(session, batch.id, None if not unanswered else
                         f"{len(unanswered)} items unanswered ({found.status if found is not None else 'none'})")
        session.commit()
    if unanswered:
        log.info("provider batch %s of job %s: %d items unanswered, %s", batch.provider_batch_id, batch.job_id,
                 len(unanswered), "called directly" if settings.batch_fallback == "direct" else "sent again")


def _result(entry: dict[str, Any] | None, latency_ms: float, batch_status: str) -> CallResult:
    """One output or error file line as the result of a call (None: the batch has no line for the item)."""
    if entry is None:
        return CallResult(False, None, None, None, 0, 0, latency_ms, f"the provider batch ended {batch_status} "
                                                                    "without an answer for this item")
    response = entry.get("response")
    if entry.get("error") or not response:
        error = entry.get("error") or {}
        return CallResult(False, None, None, None, 0, 0, latency_ms,
                          f"provider batch: {error.get('code')}: {error.get('message')}")
    body, status = response.get("body") or {}, response.get("status_code")
    if status != 200:
        message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
        return CallResult(False, status, response, None, 0, 0, latency_ms, f"provider batch: HTTP {status}: {message}")
    usage = body.get("usage") or {}
    choices = body.get("choices") or []
    answer = (choices[0].get("message") or {}).get("content") if choices else None
    return CallResult(True, 200, response, answer, int(usage.get("prompt_tokens") or 0),
                      int(usage.get("completion_tokens") or 0), latency_ms)

