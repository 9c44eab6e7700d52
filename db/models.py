"""Tables. Spend is never stored as a running total: it is the sum of item costs, so it cannot drift."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from routeyard.states import ItemStatus, JobStatus, JudgmentStatus, ProviderBatchStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(t: datetime) -> datetime:
    """A stored time as UTC: SQLite hands datetimes back naive (they were stored in UTC)."""
    return t if t.tzinfo else t.replace(tzinfo=UTC)


E = TypeVar("E", bound=StrEnum)


class StateType(TypeDecorator[E]):
    """A state enum stored as its plain string (VARCHAR), so the schema needs no native enum type and a
    row read back is the enum again."""

    impl = String(20)
    cache_ok = True

    def __init__(self, enum: type[E]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        return None if value is None else self.enum(value)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


LOCAL_TENANT = "local"  # jobs submitted from the CLI on this machine


class Tenant(Base):
    """Who owns jobs. Only a hash of the API key is stored; the key is shown once, when created or rotated.
    A revoked tenant has no key hash (so no key matches it) and keeps its jobs."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    key_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    key_issued_at: Mapped[datetime | None] = mapped_column()  # when the current key was made (create, rotate)
    revoked_at: Mapped[datetime | None] = mapped_column()


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_key"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), default=LOCAL_TENANT, index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    tag: Mapped[str | None] = mapped_column(String(200), index=True)
    source: Mapped[str | None] = mapped_column(String(500))
    input_format: Mapped[str] = mapped_column(String(20))
    status: Mapped[JobStatus] = mapped_column(StateType(JobStatus), default=JobStatus.QUEUED, index=True)
    router: Mapped[str] = mapped_column(String(500))
    router_version: Mapped[str | None] = mapped_column(String(100))
    strong_fraction: Mapped[float] = mapped_column(Float)
    budget_usd: Mapped[float | None] = mapped_column(Float)  # when set, routing spends this instead of a fraction
    target_pgr: Mapped[float | None] = mapped_column(Float)  # when set, strong_fraction was derived from it
    shadow_fraction: Mapped[float | None] = mapped_column(Float)  # share of weak items also sent strong
    judge: Mapped[str | None] = mapped_column(String(20))  # its shadow pairs are judged: "pair" or "grade"
    threshold: Mapped[float | None] = mapped_column(Float)
    strong_model: Mapped[str] = mapped_column(String(200))
    weak_model: Mapped[str] = mapped_column(String(200))
    strong_base_url: Mapped[str | None] = mapped_column(String(500))
    weak_base_url: Mapped[str | None] = mapped_column(String(500))
    # {model: {"input": $/1M, "output": $/1M}} for its two models, fixed at submit: what its calls are billed at
    prices: Mapped[dict[str, Any] | None] = mapped_column()
    n_items: Mapped[int] = mapped_column(Integer, default=0)
    n_rejected: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()  # last scoring/routing step; for stall detection
    # The embedded runner (a runners row) that holds this job: one at a time (db/runners.py), so two `resume`
    # processes never take each other's items. Celery jobs have none: claims and leases share their items out.
    runner_id: Mapped[str | None] = mapped_column(String(120))


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("job_id", "custom_id", name="uq_items_job_custom_id"),
        Index("ix_items_job_status", "job_id", "status"),
        Index("ix_items_job_line", "job_id", "line_no"),  # results and exports walk a job in input order
        # Only the items still to score: "is any left?" after each scoring batch is one probe, not a walk past
        # every item scored so far (quadratic in a million-item job's size).
        Index("ix_items_unscored", "job_id", "id", sqlite_where=text("score IS NULL"),
              postgresql_where=text("score IS NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    line_no: Mapped[int] = mapped_column(Integer)
    custom_id: Mapped[str] = mapped_column(String(500))
    body: Mapped[dict[str, Any]] = mapped_column()  # the chat request minus `model`
    prompt: Mapped[str] = mapped_column(Text)  # the text the router scores
    status: Mapped[ItemStatus] = mapped_column(StateType(ItemStatus), default=ItemStatus.PENDING)
    score: Mapped[float | None] = mapped_column(Float)
    tier: Mapped[str | None] = mapped_column(String(10))
    model: Mapped[str | None] = mapped_column(String(200))
    router_version: Mapped[str | None] = mapped_column(String(100))
    threshold: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    status_code: Mapped[int | None] = mapped_column(Integer)
    # the endpoint's answer as it came: {"status_code", "request_id" (x-request-id), "body" (JSON as returned)};
    # rows stored before that hold the bare completion body
    response: Mapped[dict[str, Any] | None] = mapped_column()
    answer: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column()
    claimed_by: Mapped[str | None] = mapped_column(String(120))  # the runner calling it (while in flight)
    # HTTP requests of the call that gave its result (the client's retries included), those that got no answer
    # (timed out or cut off after being sent: the provider may have answered and billed them), and what those
    # may have cost at most (routeyard.pricing.cost_bound each): failures are not free.
    call_attempts: Mapped[int | None] = mapped_column(Integer)
    unanswered_attempts: Mapped[int | None] = mapped_column(Integer)
    unanswered_cost_usd: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[datetime | None] = mapped_column(index=True)
    # A shadow item is weak-routed and also sent to the strong model, so both answers can be compared.
    shadow: Mapped[bool] = mapped_column(default=False)
    shadow_answer: Mapped[str | None] = mapped_column(Text)
    shadow_prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    shadow_completion_tokens: Mapped[int | None] = mapped_column(Integer)
    shadow_cost_usd: Mapped[float | None] = mapped_column(Float)
    shadow_error: Mapped[str | None] = mapped_column(Text)
    # The provider batch the item was sent in last (its tier in batch mode); kept after the batch is merged.
    provider_batch_id: Mapped[int | None] = mapped_column(ForeignKey("provider_batches.id", ondelete="SET NULL"),
                                                          index=True)


class Runner(Base):
    """A process that runs jobs (a Celery worker process, an embedded runner: the CLI or the API) and its last
    heartbeat. One that has not beaten for `Settings.dead_after_s` is dead: its items in flight are released at
    once and the job it held may be taken up by another process."""

    __tablename__ = "runners"

    id: Mapped[str] = mapped_column(String(120), primary_key=True)  # host:pid:random
    kind: Mapped[str] = mapped_column(String(20))  # worker | embedded
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class RejectedLine(Base):
    """An input line that could not be accepted, kept so the user can see and fix it."""

    __tablename__ = "rejected_lines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    line_no: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    # for the OpenAI Batch API's error file (batches only): the line's custom_id if it had one, an error code
    custom_id: Mapped[str | None] = mapped_column(String(500))
    code: Mapped[str | None] = mapped_column(String(40))


class Feedback(Base):
    """A judgement of a stored result, by a user or the judge: `prefer` (strong/weak/tie, when both answers
    exist), `rating` of the routed answer (0..1), or `thumbs` (1 up, 0 down). It belongs to the job's tenant:
    only that tenant's router learns from it."""

    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), default=LOCAL_TENANT)
    kind: Mapped[str] = mapped_column(String(20))
    value: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(20), default="user")  # user, or judge
    judge_model: Mapped[str | None] = mapped_column(String(200))  # source=judge: which model said so
    prompt_version: Mapped[str | None] = mapped_column(String(40))  # source=judge: with which prompt
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Judgment(Base):
    """The judge's reading of one shadow pair (the weak answer and the strong one): claimed before its calls
    (a unique row per item, so a pair is judged once), then its verdict, or the error that kept it from one.
    `heldout` pairs are the tenant's gate: fixed per prompt, never trained on."""

    __tablename__ = "judgments"
    __table_args__ = (Index("ix_judgments_job_status", "job_id", "status"),
                      Index("ix_judgments_tenant_heldout", "tenant_id", "heldout"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    status: Mapped[JudgmentStatus] = mapped_column(StateType(JudgmentStatus), default=JudgmentStatus.IN_FLIGHT)
    mode: Mapped[str] = mapped_column(String(20))  # pair (both orders) or grade (each answer 1-10)
    judge_model: Mapped[str] = mapped_column(String(200))
    prompt_version: Mapped[str] = mapped_column(String(40))
    heldout: Mapped[bool] = mapped_column(default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    verdicts: Mapped[dict[str, Any] | None] = mapped_column()  # each call's parsed verdict, as read
    label: Mapped[float | None] = mapped_column(Float)  # 1 strong needed, 0.5 tie, 0 the weak answer is as good
    strong_quality: Mapped[float | None] = mapped_column(Float)  # the pair as an outcome, for held-out APGR
    weak_quality: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    # every attempt's answered calls, tokens and cost, added up (a retry never erases what was billed)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    calls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # calls sent that got no answer (timed out, or cut off with their runner) and what they may cost at most
    unanswered_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    unanswered_cost_usd: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    claimed_by: Mapped[str | None] = mapped_column(String(120))  # the runner whose calls are in flight
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(index=True)


class RouterVersion(Base):
    """A trained router: where it lies, what it was trained on, how it evaluated, and whether it serves."""

    __tablename__ = "router_versions"
    # One row per version per owner (NULL, the global default, compared as ''): a retrain that derives a version
    # already stored updates that row instead of listing it twice (rollback names a version: it must be one).
    __table_args__ = (Index("uq_router_versions_owner_version", func.coalesce(text("tenant_id"), ""), "version",
                            unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # whose router it is: a tenant's, trained on its feedback and serving only its jobs; None: the global default
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    router: Mapped[str] = mapped_column(String(40))
    version: Mapped[str] = mapped_column(String(40))
    path: Mapped[str] = mapped_column(String(1000))
    apgr: Mapped[float | None] = mapped_column(Float)
    baseline_apgr: Mapped[float | None] = mapped_column(Float)  # the serving router's, on the same held-out set
    metrics: Mapped[dict[str, Any] | None] = mapped_column()
    data: Mapped[dict[str, Any] | None] = mapped_column()  # rows, data hash, feedback rows used
    decision: Mapped[str] = mapped_column(Text)  # why it was or was not promoted
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column()
    serving: Mapped[bool] = mapped_column(default=False, index=True)


class RetrainLock(Base):
    """The retrain running now for an owner (a tenant, or '' for the global default): one at a time, so a
    schedule firing again while a long retrain runs skips instead of training a second candidate. Held by a
    runner (db/runners.py): a holder that died stops counting once its heartbeat is old."""

    __tablename__ = "retrain_locks"

    owner: Mapped[str] = mapped_column(String(40), primary_key=True)
    token: Mapped[str] = mapped_column(String(40))  # this claim's: threads of one process share a runner id
    runner_id: Mapped[str] = mapped_column(String(120))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)


class Schedule(Base):
    """A periodic job that survives restarts: beat reads this table (see jobs/periodic.py:run_schedules)."""

    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(40))  # what to run: "retrain"
    cron: Mapped[str | None] = mapped_column(String(100))  # "0 2 * * *"
    every_s: Mapped[float | None] = mapped_column(Float)  # or a fixed interval
    args: Mapped[dict[str, Any]] = mapped_column()
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_run_at: Mapped[datetime | None] = mapped_column()
    last_result: Mapped[str | None] = mapped_column(Text)


class File(Base):
    """A file of the OpenAI-compatible Files API, stored in the database (so every API process and worker sees
    it): a batch's input (purpose `batch`), or its output and error files (`batch_output`). Tenant-scoped."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_created", "tenant_id", "created_at"),)  # a tenant's, newest first

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # file-...
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    filename: Mapped[str] = mapped_column(String(500))
    purpose: Mapped[str] = mapped_column(String(40))
    size: Mapped[int] = mapped_column("bytes", Integer)  # the object's `bytes`
    content: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)  # loaded only when asked for
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column()


class Batch(Base):
    """An OpenAI Batch API batch. A valid one is a Routeyard job with the same id (`job_id` == `id`), whose
    status it reads; a batch whose input had no valid line failed validation and has no job, only `errors`."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    input_file_id: Mapped[str] = mapped_column(String(40))  # no foreign key: deleting the input file is allowed
    endpoint: Mapped[str] = mapped_column(String(100))
    completion_window: Mapped[str] = mapped_column(String(20))
    meta: Mapped[dict[str, Any] | None] = mapped_column()  # the metadata the client sent, returned as sent
    errors: Mapped[dict[str, Any] | None] = mapped_column()  # {"data": [{code, line, message, param}]} if failed
    output_expires_s: Mapped[int | None] = mapped_column(Integer)  # output_expires_after.seconds
    output_file_id: Mapped[str | None] = mapped_column(String(40))
    error_file_id: Mapped[str | None] = mapped_column(String(40))
    usage: Mapped[dict[str, Any] | None] = mapped_column()  # token totals, counted when the files are written
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    in_progress_at: Mapped[datetime | None] = mapped_column()
    failed_at: Mapped[datetime | None] = mapped_column()
    cancelling_at: Mapped[datetime | None] = mapped_column()
    finalizing_at: Mapped[datetime | None] = mapped_column()  # a writer's claim on the output files (a lease)
    finalized_at: Mapped[datetime | None] = mapped_column()  # output files written (completed_at/cancelled_at)


class ProviderBatch(Base):
    """A share of one job's tier sent through its provider's Batch API. The provider's file and batch ids are
    stored as soon as they exist, so a restart polls the batch it created instead of creating another; the
    batch's metadata carries `routeyard_batch` (this row's key) for the one moment before its id is stored."""

    __tablename__ = "provider_batches"
    __table_args__ = (Index("ix_provider_batches_job_status", "job_id", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    tier: Mapped[str] = mapped_column(String(10))
    model: Mapped[str] = mapped_column(String(200))
    status: Mapped[ProviderBatchStatus] = mapped_column(StateType(ProviderBatchStatus),
                                                        default=ProviderBatchStatus.PREPARING)
    n_requests: Mapped[int] = mapped_column(Integer)
    input_file_id: Mapped[str | None] = mapped_column(String(200))
    provider_batch_id: Mapped[str | None] = mapped_column(String(200))
    provider_status: Mapped[str | None] = mapped_column(String(40))  # the provider's own word, as last polled
    polls: Mapped[int] = mapped_column(Integer, default=0)
    next_poll_at: Mapped[datetime | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    merged_at: Mapped[datetime | None] = mapped_column()
