"""The OpenAI Batch API on Routeyard: a batch is a job (the same id), made from an uploaded input file.

create: the input file is validated and stored as a job in the request (so `validating` is never seen
afterwards): lines the job cannot take are rejected one by one and end in the error file; a file with no
valid line makes a `failed` batch whose `errors` name each line. The routing options travel in `metadata`.

Status, from the job's: queued/scoring/running -> in_progress; completed -> finalizing while the output and
error files are written, then completed; cancelled -> cancelling while calls already in flight finish, then
cancelled. A batch never expires: it runs to its end (cancel it to stop it).

The output and error files are written once, by the first read (retrieve or list) after the job ends, and
stored as files, so files.content returns the same bytes every time; writing is claimed with a lease, so two
readers never write them twice. A job run again (resume) gets new files when it ends again.
"""

from __future__ import annotations

import io
import math
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import batches as batch_store
from db import files as file_store
from db import jobs as store
from db.models import Batch, Job, aware, utcnow
from jobs.services.files import OUTPUT_PURPOSE, store_file, unix
from jobs.services.input_formats import Rejection
from jobs.services.results import Usage, openai_error_lines, openai_output_lines
from jobs.services.submit import JobOptions, NoValidLines, submit_job
from routeyard.errors import Conflict, InvalidInput
from routeyard.pricing import price_for
from routeyard.settings import Settings
from routeyard.states import ItemStatus, JobStatus

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
FINALIZE_LEASE_S = 300.0  # a writer of output files silent this long is taken over
MAX_ERRORS = 1000  # validation errors listed on a failed batch
METADATA_KEYS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512
# numeric metadata keys read as routing options (with router and tag): name -> (lowest, highest, lowest allowed)
NUMBERS = {"strong_fraction": (0.0, 1.0, True), "budget_usd": (0.0, float("inf"), False),
           "target_pgr": (0.0, 1.0, False), "shadow": (0.0, 1.0, True)}


@dataclass(frozen=True)
class BatchRequest:
    input_file_id: str
    endpoint: str = ENDPOINT
    completion_window: str = COMPLETION_WINDOW
    metadata: dict[str, str] | None = None
    output_expires_s: int | None = None  # output_expires_after.seconds


def _number(metadata: dict[str, str], key: str) -> float | None:
    if key not in metadata:
        return None
    low, high, low_ok = NUMBERS[key]
    try:
        value = float(metadata[key])
    except ValueError:
        value = float("nan")
    if not (low <= value <= high and (low_ok or value > low) and math.isfinite(value)):
        bounds = "a positive number" if high == float("inf") else f"a number in {'[' if low_ok else '('}{low}, {high}]"
        raise InvalidInput(f"metadata['{key}'] must be {bounds}, got {metadata[key]!r}")
    return value


def routing_options(metadata: dict[str, str] | None, settings: Settings, tenant_id: str,
                    idempotency_key: str | None = None) -> JobOptions:
    """The job's options from the batch's metadata (the other keys are kept, and not read)."""
    md = metadata or {}
    if len(md) > METADATA_KEYS:
        raise InvalidInput(f"metadata takes at most {METADATA_KEYS} keys, got {len(md)}")
    for key, value in md.items():
        if not isinstance(value, str) or len(key) > METADATA_KEY_CHARS or len(value) > METADATA_VALUE_CHARS:
            raise InvalidInput(f"metadata[{key[:80]!r}]: keys are strings of at most {METADATA_KEY_CHARS} "
                               f"characters and values strings of at most {METADATA_VALUE_CHARS}")
    ways = [k for k in ("strong_fraction", "budget_usd", "target_pgr") if k in md]
    if len(ways) > 1:
        raise InvalidInput(f"metadata: give one of {' and '.join(ways)}: each sets how many requests go to the "
                           "strong model")
    return JobOptions(router=md.get("router") or None,
                      strong_fraction=_number(md, "strong_fraction"),
                      idempotency_key=idempotency_key, tag=md.get("tag"), tenant_id=tenant_id,
                      budget_usd=_number(md, "budget_usd"), target_pgr=_number(md, "target_pgr"),
                      shadow_fraction=_number(md, "shadow"), judge=_judge(md))


JUDGE_VALUES = {"true": "pair", "pair": "pair", "grade": "grade", "false": None}


def _judge(metadata: dict[str, str]) -> str | None:
    """metadata['judge']: true or pair (pairwise), grade (each answer 1-10), false."""
    value = metadata.get("judge")
    if value is None:
        return None
    if value.lower() not in JUDGE_VALUES:
        raise InvalidInput(f"metadata['judge'] must be one of {', '.join(JUDGE_VALUES)}, got {value[:80]!r}")
    return JUDGE_VALUES[value.lower()]


def _check_request(request: BatchRequest, settings: Settings) -> None:
    if request.endpoint != ENDPOINT:
        raise InvalidInput(f"endpoint {request.endpoint!r} is not routed: Routeyard runs {ENDPOINT} batches only")
    if request.completion_window != COMPLETION_WINDOW:
        raise InvalidInput(f"completion_window must be '{COMPLETION_WINDOW}', got {request.completion_window!r}")
    problems = settings.endpoint_problems()  # the job's own checks, made before the file is judged
    if problems:
        raise InvalidInput("; ".join(problems))
    price_for(settings.strong_model, settings.price_table)
    price_for(settings.weak_model, settings.price_table)


def _failed(sf: sessionmaker[Session], settings: Settings, tenant_id: str, request: BatchRequest,
            rejections: list[Rejection]) -> dict[str, Any]:
    """A batch whose file has no valid line: failed, each line's error listed (as OpenAI fails a batch)."""
    errors: list[dict[str, Any]] = [{"code": r.code, "line": r.line_no, "message": r.reason, "param": r.param}
                                    for r in rejections[:MAX_ERRORS]]
    if len(rejections) > MAX_ERRORS:
        errors.append({"code": "too_many_errors", "line": None, "param": None,
                       "message": f"{len(rejections) - MAX_ERRORS} more lines are invalid"})
    if not errors:
        errors = [{"code": "empty_file", "line": None, "param": None, "message": "the input file has no requests"}]
    now = utcnow()
    row = Batch(id=f"batch_{uuid.uuid4().hex}", tenant_id=tenant_id, job_id=None,
                input_file_id=request.input_file_id, endpoint=request.endpoint,
                completion_window=request.completion_window, meta=request.metadata,
                errors={"object": "list", "data": errors}, output_expires_s=request.output_expires_s,
                created_at=now, failed_at=now)
    with sf() as session:
        batch_store.add_batch(session, row)
        session.commit()
    return retrieve_batch(sf, settings, tenant_id, row.id)


def create_batch(sf: sessionmaker[Session], settings: Settings, tenant_id: str, request: BatchRequest,
                 idempotency_key: str | None = None) -> tuple[dict[str, Any], str | None]:
    """(the Batch object, the id of a job to start: None when nothing new was stored)."""
    _check_request(request, settings)
    options = routing_options(request.metadata, settings, tenant_id, idempotency_key)
    with sf() as session:
        source = file_store.get_file(session, request.input_file_id, tenant_id, with_content=True)
        if source.purpose != "batch":
            raise InvalidInput(f"file {source.id} has purpose {source.purpose!r}; a batch's input file must have "
                               "purpose 'batch'")
        content, filename = source.content, source.filename
    try:  # the same parse, codes and custom_ids as every front door's; each line is read as a Batch line
        result = submit_job(sf, settings, io.BytesIO(content), "jsonl", options, source_name=filename, form="batch")
    except NoValidLines as exc:
        return _failed(sf, settings, tenant_id, request, exc.rejections), None
    with sf() as session:
        if not result.created:  # the same idempotency key and request: the batch already stored
            existing = batch_store.batch_for_job(session, result.job_id)
            if existing is None:
                raise Conflict(f"idempotency key {idempotency_key!r} was used for job {result.job_id}, which is "
                               "not a batch; use a new key")
            return retrieve_batch(sf, settings, tenant_id, existing.id), None
        now = utcnow()
        batch_store.add_batch(session, Batch(
            id=result.job_id, tenant_id=tenant_id, job_id=result.job_id, input_file_id=request.input_file_id,
            endpoint=request.endpoint, completion_window=request.completion_window, meta=request.metadata,
            output_expires_s=request.output_expires_s, created_at=now, in_progress_at=now))
        session.commit()
    return retrieve_batch(sf, settings, tenant_id, result.job_id), result.job_id



def _written(batch: Batch, job: Job) -> bool:
    """The output files were written for the job's latest end."""
    if batch.finalized_at is None:
        return False
    return job.finished_at is None or aware(batch.finalized_at) >= aware(job.finished_at)


def finalize(sf: sessionmaker[Session], settings: Settings, batch: Batch) -> None:
    """Write the output and error files of an ended job's batch, unless written already, being written, or
    calls are still in flight after a cancel."""
    if batch.job_id is None:
        return
    with sf() as session:
        job = store.get_job(session, batch.job_id)
        if not job.status.ended or _written(batch, job):
            return
        recent = utcnow() - timedelta(seconds=settings.effective_lease_s)
        if job.status == JobStatus.CANCELLED and batch_store.in_flight(session, job.id, recent):
            return  # cancelling: calls in flight finish and are kept
        claim = batch_store.claim_finalize(session, batch.id, job.finished_at or utcnow(), FINALIZE_LEASE_S)
        session.commit()
    if claim is None:
        return
    with sf() as session:
        usage = Usage()
        output = "".join(openai_output_lines(session, job.id, usage)).encode()
        errors = "".join(openai_error_lines(session, job.id)).encode()
        ids: dict[str, Any] = {"usage": usage.to_dict(), "output_file_id": None, "error_file_id": None}
        for key, content, suffix in (("output_file_id", output, "output"), ("error_file_id", errors, "error")):
            if content:
                ids[key] = store_file(session, batch.tenant_id, f"{batch.id}_{suffix}.jsonl", OUTPUT_PURPOSE,
                                      content, batch.output_expires_s).id
        if batch_store.record_finalized(session, batch.id, claim, ids):
            session.commit()
        else:  # another writer took the claim over: its files stand, these go
            session.rollback()


def _status(batch: Batch, job: Job | None) -> str:
    if job is None:
        return "failed"
    if not job.status.ended:
        return "in_progress"
    if job.status == JobStatus.FAILED:  # its router did not load: every request failed, with the reason
        return "failed"
    if _written(batch, job):
        return "completed" if job.status == JobStatus.COMPLETED else "cancelled"
    return "finalizing" if job.status == JobStatus.COMPLETED else "cancelling"


def batch_object(session: Session, batch: Batch, job: Job | None) -> dict[str, Any]:
    """The OpenAI Batch object."""
    status = _status(batch, job)
    done = status in ("completed", "cancelled") or (status == "failed" and job is not None and _written(batch, job))
    counts = {"total": 0, "completed": 0, "failed": 0}
    if job is not None:
        by_status = store.status_counts(session, job.id)
        counts = {"total": job.n_items + job.n_rejected, "completed": by_status.get(ItemStatus.SUCCEEDED, 0),
                  "failed": by_status.get(ItemStatus.FAILED, 0) + job.n_rejected}
    cancelled = job is not None and job.status == JobStatus.CANCELLED
    return {
        "id": batch.id, "object": "batch", "endpoint": batch.endpoint, "errors": batch.errors,
        "input_file_id": batch.input_file_id, "completion_window": batch.completion_window, "status": status,
        "output_file_id": batch.output_file_id if done else None,
        "error_file_id": batch.error_file_id if done else None,
        "created_at": unix(batch.created_at), "in_progress_at": unix(batch.in_progress_at), "expires_at": None,
        "finalizing_at": unix(batch.finalizing_at) if status in ("finalizing", "completed") else None,
        "completed_at": unix(batch.finalized_at) if status == "completed" else None,
        "failed_at": unix(batch.failed_at or (job.finished_at if job and status == "failed" else None)),
        "expired_at": None,
        "cancelling_at": unix(batch.cancelling_at or (job.finished_at if job else None)) if cancelled else None,
        "cancelled_at": unix(batch.finalized_at) if status == "cancelled" else None,
        "request_counts": counts, "metadata": batch.meta, "model": None,
        "usage": batch.usage if done else None,
    }


def retrieve_batch(sf: sessionmaker[Session], settings: Settings, tenant_id: str, batch_id: str) -> dict[str, Any]:
    with sf() as session:
        batch = batch_store.get_batch(session, batch_id, tenant_id)
    finalize(sf, settings, batch)
    with sf() as session:
        batch = batch_store.get_batch(session, batch_id, tenant_id)
        job = store.get_job(session, batch.job_id) if batch.job_id else None
        return batch_object(session, batch, job)


def list_batches(sf: sessionmaker[Session], settings: Settings, tenant_id: str, after: str | None = None,
                 limit: int = 20) -> dict[str, Any]:
    """A page of the tenant's batches, newest first (cursor paging: `after` is the last id of a page)."""
    with sf() as session:
        rows, more = batch_store.list_batches(session, tenant_id, after, limit)
        jobs = batch_store.jobs_by_id(session, [r.job_id for r in rows if r.job_id])
    due = [r for r in rows if r.job_id and jobs[r.job_id].status.ended and not _written(r, jobs[r.job_id])]
    for row in due:
        finalize(sf, settings, row)
    with sf() as session:
        if due:  # read again what finalize changed
            rows = [batch_store.get_batch(session, row.id, tenant_id) for row in rows]
        data = [batch_object(session, r, jobs.get(r.job_id) if r.job_id else None) for r in rows]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": more}


def cancel_batch(sf: sessionmaker[Session], settings: Settings, tenant_id: str, batch_id: str) -> dict[str, Any]:
    """Stop a batch: requests not yet sent never are; those in flight finish (cancelling), then cancelled."""
    with sf() as session:
        batch = batch_store.get_batch(session, batch_id, tenant_id)
        if batch.job_id is None:
            raise Conflict(f"Cannot cancel a batch with status 'failed': {batch_id}")
        job = store.get_job(session, batch.job_id, tenant_id, lock=True)  # the job row first, as every writer
        if job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
            raise Conflict(f"Cannot cancel a batch with status '{job.status}': {batch_id}")
        if job.status != JobStatus.CANCELLED:
            store.cancel_job(session, job)
            batch_store.mark_cancelling(session, batch_id)
        session.commit()
    return retrieve_batch(sf, settings, tenant_id, batch_id)
