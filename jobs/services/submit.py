"""Submit a batch: validate, store the job with its items and rejected lines in one transaction.

Idempotent by the client's key: the same key and the same request return the job already stored; the same
key with a different request is refused rather than silently answered with the wrong job.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db import jobs as store
from db import rejections as rejected_store
from db.models import LOCAL_TENANT, Job
from jobs.services.input_formats import LineForm, ParsedItem, Rejection, parse_stream
from jobs.services.results import stored_rejection
from jobs.services.versions import job_router
from routers.calibration import fraction_for_target_pgr
from routeyard.errors import Conflict, InvalidInput
from routeyard.pricing import Unbounded, cost_bound, price_for
from routeyard.redact import safe_url
from routeyard.settings import Price, Settings
from routeyard.text import shown, unstorable

INSERT_CHUNK = 1000
JUDGE_MODES = ("pair", "grade")
DEFAULT_STRONG_FRACTION = 0.3


@dataclass(frozen=True)
class JobOptions:
    # None: the operator's ROUTEYARD_DEFAULT_ROUTER. A tenant's job may name only published routers
    # (versions.job_router); the CLI (the local tenant, the operator) may name directories and hub ids too.
    router: str | None = None
    strong_fraction: float | None = None  # share of items sent strong; DEFAULT_STRONG_FRACTION when no way is given
    idempotency_key: str | None = None
    tag: str | None = None
    tenant_id: str = LOCAL_TENANT
    budget_usd: float | None = None  # route to stay under this many dollars (strong_fraction is then unused)
    target_pgr: float | None = None  # route at the fraction whose held-out PGR reaches this (from the router's curve)
    shadow_fraction: float | None = None  # also send this share of weak items to the strong model, for comparison
    judge: str | None = None  # judge the shadow pairs when the job completes: "pair" (MT-Bench pairwise) or "grade"


@dataclass(frozen=True)
class SubmitResult:
    job_id: str
    created: bool  # False: the idempotency key matched a job already stored
    n_items: int
    rejections: list[Rejection]  # each rejected line: its number, reason, error code and custom_id

    @property
    def rejected(self) -> list[tuple[int, str]]:
        """(line, reason) of each rejected line."""
        return [(r.line_no, r.reason) for r in self.rejections]


class NoValidLines(InvalidInput):
    """A file with no line a job can take: nothing is stored. Its rejections go with it, so a front door can
    show every line (the Batch API makes them a failed batch's `errors`)."""

    def __init__(self, message: str, rejections: list[Rejection]) -> None:
        super().__init__(message)
        self.rejections = rejections


class _HashingReader(io.RawIOBase):
    """Hashes the bytes as the parser streams them, so the file is read once."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner, self.digest = inner, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        data = self.inner.read(len(buffer))
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)


def _request_hash(file_digest: str, options: JobOptions, settings: Settings) -> str:
    fraction = options.strong_fraction
    if fraction is None and options.budget_usd is None and options.target_pgr is None:
        fraction = DEFAULT_STRONG_FRACTION  # leaving the default out asks for the same job as giving it
    parts = [file_digest, options.router or settings.default_router, repr(fraction), repr(options.budget_usd),
             repr(options.target_pgr), repr(options.shadow_fraction),
             settings.strong_model, settings.weak_model]
    if options.judge:  # jobs stored before the judge existed keep their hash
        parts.append(options.judge)
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def submit_job(sf: sessionmaker[Session], settings: Settings, source: BinaryIO, fmt: str, options: JobOptions,
               source_name: str | None = None, form: LineForm = "auto") -> SubmitResult:
    """Store the job: its items, and its rejected lines with their codes and custom_ids (the error file reads
    them). `form` "batch": the file is a Batch API input file. Raises NoValidLines when no line is valid."""
    ways = [name for name, value in (("strong fraction", options.strong_fraction),
                                     ("budget", options.budget_usd), ("target PGR", options.target_pgr))
            if value is not None]
    if len(ways) > 1:  # each decides how many items go strong: taking one would silently ignore the other
        raise InvalidInput(f"give a {' or a '.join(ways)}, not both: each sets how many items go to the strong "
                           "model (--strong-fraction, --budget-usd, --target-pgr; API: strong_fraction, budget_usd, "
                           "target_pgr)")
    if options.strong_fraction is not None and not 0.0 <= options.strong_fraction <= 1.0:
        raise InvalidInput("strong fraction (--strong-fraction; API: strong_fraction) must be between 0 and 1, got "
                           f"{options.strong_fraction}")
    if options.target_pgr is not None and not 0.0 < options.target_pgr <= 1.0:
        raise InvalidInput("target PGR (--target-pgr; API: target_pgr) must be in (0, 1] (a share of the strong "
                           f"model's gain), got {options.target_pgr}")
    if options.shadow_fraction is not None and not 0.0 <= options.shadow_fraction <= 1.0:
        raise InvalidInput("shadow fraction (--shadow; API: shadow) must be between 0 and 1, got "
                           f"{options.shadow_fraction}")
    if options.budget_usd is not None and not (0 < options.budget_usd < math.inf):  # NaN and inf fail too
        raise InvalidInput("budget (--budget-usd; API: budget_usd) must be a positive, finite number of dollars, "
                           f"got {options.budget_usd}")
    for field, text in (("router (--router; API: router)", options.router), ("tag (--tag; API: tag)", options.tag),
                        ("idempotency key (--key; API: Idempotency-Key)", options.idempotency_key)):
        if text is not None and (why := unstorable(text)):  # stored with the job: it would fail the insert
            raise InvalidInput(f"{field}: {why}")
    if options.judge is not None and options.judge not in JUDGE_MODES:
        raise InvalidInput(f"judge must be one of {', '.join(JUDGE_MODES)}, got {options.judge!r}")
    if options.judge and not options.shadow_fraction:
        raise InvalidInput("--judge judges shadow pairs: give a shadow share too (--shadow 0.05; API: shadow), so "
                           "some weak items also get the strong answer")
    problems = settings.endpoint_problems() + (settings.judge_problems() if options.judge else [])
    if problems:  # a job that could never be called is refused, not stored
        raise InvalidInput("; ".join(problems))
    weak_price = price_for(settings.weak_model, settings.price_table)  # refuse before storing anything if spend
    strong_price = price_for(settings.strong_model, settings.price_table)  # could not be counted
    prices = {settings.strong_model: strong_price.model_dump(), settings.weak_model: weak_price.model_dump()}
    if options.judge:
        prices[settings.judge_model] = price_for(settings.judge_model, settings.price_table).model_dump()
    if options.idempotency_key:
        with sf() as session:
            existing = store.job_by_key(session, options.idempotency_key, options.tenant_id)
            if existing is not None:
                return _existing(session, existing, source, options, settings)

    requested = options  # idempotency compares what the client sent, not what it resolved to
    # The exact version, recorded; a router that could not load is refused now, not left `scoring`.
    router = job_router(sf, options.router, settings, None if options.tenant_id == LOCAL_TENANT else options.tenant_id)
    options = replace(options, router=router)
    if options.target_pgr is not None:
        if not Path(router).is_dir():
            raise InvalidInput(f"a target PGR needs a router directory with a held-out quality curve, got "
                               f"{router!r}: train one (`routeyard router train --out DIR ...`), then "
                               "`routeyard router eval --router DIR --outcomes HELDOUT --save-curve`")
        try:
            options = replace(options, strong_fraction=fraction_for_target_pgr(Path(router),
                                                                               options.target_pgr))
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    if options.strong_fraction is None:  # a budgeted job's share is whatever its budget buys: status shows it
        options = replace(options, strong_fraction=0.0 if options.budget_usd is not None else DEFAULT_STRONG_FRACTION)
    job_id = f"job_{uuid.uuid4().hex}"
    source_name = shown(source_name) if source_name else source_name  # a file name that is no UTF-8 (CLI), stored
    reader = _HashingReader(source)
    rejected: list[Rejection] = []
    n_items = 0
    with sf() as session:
        job = Job(id=job_id, tenant_id=options.tenant_id, idempotency_key=options.idempotency_key,
                  request_hash="", tag=options.tag, source=source_name, input_format=fmt, router=router,
                  strong_fraction=options.strong_fraction, budget_usd=options.budget_usd,
                  target_pgr=options.target_pgr, shadow_fraction=options.shadow_fraction,
                  judge=options.judge, strong_model=settings.strong_model,
                  weak_model=settings.weak_model, strong_base_url=safe_url(settings.strong_base_url),
                  weak_base_url=safe_url(settings.weak_base_url), prices=prices)
        try:
            n_items = _store(session, job, reader, (fmt, form), options, settings, rejected, weak_price)
            job.request_hash = _request_hash(reader.digest.hexdigest(), requested, settings)
            session.commit()
        except IntegrityError:  # a concurrent submit with the same key stored its job first
            session.rollback()
            if not options.idempotency_key:
                raise
            return _raced(session, reader, requested, settings)
    return SubmitResult(job_id, True, n_items, rejected)


def _store(session: Session, job: Job, reader: _HashingReader, fmt: tuple[str, LineForm], options: JobOptions,
           settings: Settings, rejected: list[Rejection], weak_price: Price) -> int:
    """Add the job, its items and rejected lines in the caller's transaction; the number of items."""
    job_id, source_name, n_items = job.id, job.source, 0
    session.add(job)
    session.flush()  # PostgreSQL: waits here for a concurrent submit with the same key, then IntegrityError
    chunk: list[dict] = []
    weak_bound = 0.0
    costliest = (0.0, 0)  # the line whose answer may cost most, named when the budget cannot cover them all
    lines = parse_stream(io.BufferedReader(reader), fmt[0], settings.max_line_bytes, fmt[1])  # type: ignore[arg-type]
    for entry in lines:
        if isinstance(entry, Rejection):
            rejected.append(entry)
            continue
        if options.budget_usd is not None:
            # A budget is only a promise if every answer has a length limit.
            if not (entry.body.get("max_tokens") or entry.body.get("max_completion_tokens")):
                entry.body["max_tokens"] = settings.default_max_tokens
            try:
                line_bound = cost_bound(entry.body, weak_price, settings.default_max_tokens)
                weak_bound += line_bound
                costliest = max(costliest, (line_bound, entry.line_no))
            except Unbounded as exc:
                rejected.append(Rejection(entry.line_no, f"{exc}: a budgeted job cannot take it", "unbounded_cost",
                                          None, entry.custom_id))
                continue
        chunk.append(_row(job_id, entry))
        if len(chunk) >= INSERT_CHUNK:
            store.add_items(session, chunk)
            n_items += len(chunk)
            chunk = []
    store.add_items(session, chunk)
    n_items += len(chunk)
    if n_items == 0:
        session.rollback()
        detail = "; ".join(f"line {r.line_no}: {r.reason}" for r in rejected[:5]) or "the file is empty"
        more = f" (and {len(rejected) - 5} more lines)" if len(rejected) > 5 else ""
        raise NoValidLines(f"no valid items in {source_name or 'the input'}: {detail}{more}", rejected)
    if options.budget_usd is not None and weak_bound > options.budget_usd:
        session.rollback()
        raise InvalidInput(f"budget ${options.budget_usd:.6g} is below ${weak_bound:.6g}, the most these "
                          f"{n_items} items can cost on the weak model alone (line {costliest[1]} the most, "
                          f"${costliest[0]:.6g}); raise the budget or lower max_tokens")
    rejected_store.add_rejected(session, job_id, rejected)
    job.n_items, job.n_rejected = n_items, len(rejected)
    return n_items


def _raced(session: Session, reader: _HashingReader, requested: JobOptions, settings: Settings) -> SubmitResult:
    """The job a concurrent submit with the same key stored: this request's answer if it asked for the same job
    (the rest of the file is hashed to tell), else a conflict."""
    while reader.read(1 << 20):
        pass
    existing = store.job_by_key(session, requested.idempotency_key or "", requested.tenant_id)
    if existing is None:  # it was rolled back after all: nothing to answer with, and nothing stored here
        raise Conflict(f"idempotency key {requested.idempotency_key!r} was being used by another submit at the "
                       "same moment; submit again")
    if _request_hash(reader.digest.hexdigest(), requested, settings) != existing.request_hash:
        raise Conflict(f"idempotency key {requested.idempotency_key!r} was used for job {existing.id} with a "
                       "different file or options; use a new key for a new job")
    return SubmitResult(existing.id, False, existing.n_items, _stored_rejections(session, existing.id))


def _existing(session: Session, job: Job, source: BinaryIO, options: JobOptions, settings: Settings) -> SubmitResult:
    digest = hashlib.sha256()
    for block in iter(lambda: source.read(1 << 20), b""):
        digest.update(block)
    if _request_hash(digest.hexdigest(), options, settings) != job.request_hash:
        raise Conflict(f"idempotency key {options.idempotency_key!r} was used for job {job.id} with a "
                          "different file or options; use a new key for a new job")
    return SubmitResult(job.id, False, job.n_items, _stored_rejections(session, job.id))


def _stored_rejections(session: Session, job_id: str) -> list[Rejection]:
    return [stored_rejection(r) for r in rejected_store.rejected_lines(session, job_id)]


def _row(job_id: str, item: ParsedItem) -> dict:
    return {"job_id": job_id, "line_no": item.line_no, "custom_id": item.custom_id, "body": item.body,
            "prompt": item.prompt}
