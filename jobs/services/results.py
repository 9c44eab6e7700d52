"""Job status and results, in Routeyard's own record, CSV, or the OpenAI Batch API's output and error files.

One writer makes the OpenAI lines, for `results --format openai` (the output file), `--format openai-errors`
(the error file) and a batch's output and error files alike:

- output file: `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}` for each
  item that succeeded; `request_id` is the endpoint's x-request-id header, `body` the JSON exactly as returned.
- error file: the rest, in input order. An item the endpoint answered with an error status keeps that
  response (`error: null`, as OpenAI writes it); one that got no response (timeouts, connection errors), one
  cancelled before it was called, and each rejected input line get `response: null, error: {code, message}`.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.orm import Session

from db import jobs as store
from db import rejections as rejected_store
from db import runners
from db.failures import common_errors
from db.judging import judgment_counts, pair_count, pairs_in_flight
from db.models import Item, Job, RejectedLine
from jobs.services.input_formats import Rejection
from routeyard.states import ItemStatus, JudgmentStatus

ResultFormat = Literal["jsonl", "csv", "openai", "openai-errors"]

RECORD_FIELDS = ["custom_id", "line", "status", "tier", "model", "score", "threshold", "router_version",
                 "answer", "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms", "attempts", "error",
                 "shadow_answer", "shadow_cost_usd"]


@dataclass(frozen=True)
class JudgingCounts:
    """A job's shadow pairs and how far their judging got (`routeyard judge JOB` says why pairs lack a verdict)."""

    pairs: int
    judged: int
    errors: int  # the judge's replies had no verdict (or its calls failed)
    in_flight: int  # a runner holds them now (or held them when it died: taken back by the next run)

    @property
    def unjudged(self) -> int:
        return self.pairs - self.judged

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "unjudged": self.unjudged}


def judging_counts(session: Session, job_id: str) -> JudgingCounts | None:
    pairs = pair_count(session, job_id)
    if not pairs:
        return None
    counts = judgment_counts(session, job_id)
    return JudgingCounts(pairs, counts.get(JudgmentStatus.JUDGED, 0), counts.get(JudgmentStatus.ERROR, 0),
                         len(pairs_in_flight(session, job_id)))


@dataclass(frozen=True)
class JobStatusView:
    id: str
    status: str
    tag: str | None
    source: str | None
    router: str
    router_version: str | None
    strong_fraction: float
    budget_usd: float | None
    target_pgr: float | None
    threshold: float | None
    strong_model: str
    weak_model: str
    n_items: int
    n_rejected: int
    counts: dict[ItemStatus, int]
    strong_items: int  # items routed to the strong model (what a budget or a PGR target turned into)
    routed_items: int
    created_at: datetime
    finished_at: datetime | None
    rejected: list[Rejection]
    interrupted: bool = False  # scoring or running, embedded, and no live process runs it: `resume` continues it
    shadow_fraction: float | None = None  # the share of weak items also sent to the strong model (--shadow)
    judge: str | None = None  # the judge mode the job asked for (--judge)
    judging: JudgingCounts | None = None  # its shadow pairs and their verdicts; None: the job has no pairs
    # The failed items' most common errors, with how many items each: (error, items)
    common_errors: list[tuple[str, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["judging"] = self.judging.to_dict() if self.judging else None
        d["created_at"] = self.created_at.isoformat()
        d["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        d["rejected"] = [rejection_dict(r) for r in self.rejected]
        d["common_errors"] = [{"error": e, "items": n} for e, n in self.common_errors]
        return d


def job_status(session: Session, job_id: str, rejected_limit: int = 100, tenant_id: str | None = None,
               dead_after_s: float | None = None) -> JobStatusView:
    """`dead_after_s`: embedded (jobs are held by the process that runs them), to tell a job that stopped from
    one under way."""
    job: Job = store.get_job(session, job_id, tenant_id)
    counts = store.status_counts(session, job_id)
    tiers = store.tier_counts(session, job_id)
    rejected = [stored_rejection(r) for r in rejected_store.rejected_lines(session, job_id)[:rejected_limit]]
    return JobStatusView(job.id, job.status, job.tag, job.source, job.router,
                         ",".join(store.router_versions(session, job_id)) or None, job.strong_fraction,
                         job.budget_usd, job.target_pgr, job.threshold,
                         job.strong_model, job.weak_model, job.n_items, job.n_rejected, counts,
                         tiers.get("strong", 0), sum(tiers.values()), job.created_at,
                         job.finished_at, rejected,
                         dead_after_s is not None and runners.interrupted(session, job, dead_after_s),
                         job.shadow_fraction, job.judge, judging_counts(session, job_id),
                         common_errors(session, job_id) if counts.get(ItemStatus.FAILED) else [])


def stored_rejection(row: RejectedLine) -> Rejection:
    """A rejected line as stored (lines stored before codes were kept read as `invalid_request`)."""
    return Rejection(row.line_no, row.reason, row.code or "invalid_request", None, row.custom_id)


def rejection_dict(r: Rejection) -> dict[str, Any]:
    """A rejected line in JSON (the CLI's --json, the API): line, reason, code, custom_id."""
    return {"line": r.line_no, "reason": r.reason, "code": r.code, "custom_id": r.custom_id}


def record(item: Item) -> dict[str, Any]:
    return {"custom_id": item.custom_id, "line": item.line_no, "status": item.status, "tier": item.tier,
            "model": item.model, "score": item.score, "threshold": item.threshold,
            "router_version": item.router_version, "answer": item.answer, "prompt_tokens": item.prompt_tokens,
            "completion_tokens": item.completion_tokens, "cost_usd": item.cost_usd, "latency_ms": item.latency_ms,
            "attempts": item.attempts, "error": item.error, "shadow_answer": item.shadow_answer,
            "shadow_cost_usd": item.shadow_cost_usd}


def request_line_id(job_id: str, line_no: int) -> str:
    """The `id` of a line of the output or error file: stable, unique across jobs."""
    return "batch_req_" + hashlib.sha256(f"{job_id}:{line_no}".encode()).hexdigest()[:32]


def stored_response(item: Item) -> dict[str, Any] | None:
    """The endpoint's response as stored: {"status_code", "request_id", "body"} (older rows: the bare body)."""
    stored = item.response
    if stored is not None and set(stored) == {"status_code", "request_id", "body"}:
        return stored
    if stored is not None:
        return {"status_code": item.status_code, "request_id": None, "body": stored}
    if item.status_code is not None:  # an error status stored before error bodies were kept
        return {"status_code": item.status_code, "request_id": None,
                "body": {"error": {"message": item.error, "type": None, "param": None, "code": None}}}
    return None


def openai_line(item: Item) -> dict[str, Any]:
    """The item's line: in the output file if it succeeded, in the error file otherwise."""
    line: dict[str, Any] = {"id": request_line_id(item.job_id, item.line_no), "custom_id": item.custom_id}
    answered = stored_response(item) if item.status in (ItemStatus.SUCCEEDED, ItemStatus.FAILED) else None
    if answered is not None:
        return {**line, "response": answered, "error": None}
    if item.status == ItemStatus.FAILED:
        error = {"code": "request_failed", "message": item.error or "the request failed"}
    elif item.status == ItemStatus.CANCELLED:
        error = {"code": "batch_cancelled", "message": item.error or "the batch was cancelled before this request "
                                                                     "was sent"}
    else:
        error = {"code": "not_finished", "message": f"the request has not finished (it is {item.status})"}
    return {**line, "response": None, "error": error}


def rejected_line(job_id: str, row: RejectedLine) -> dict[str, Any]:
    """A rejected input line's line in the error file."""
    return {"id": request_line_id(job_id, row.line_no), "custom_id": row.custom_id, "response": None,
            "error": {"code": row.code or "invalid_request", "message": f"line {row.line_no}: {row.reason}"}}


@dataclass
class Usage:
    """Token totals of the answers written, as the Batch object's `usage` reports them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def add(self, item: Item) -> None:
        self.input_tokens += item.prompt_tokens or 0
        self.output_tokens += item.completion_tokens or 0
        usage = ((stored_response(item) or {}).get("body") or {}).get("usage") or {}
        if isinstance(usage, dict):
            self.cached_tokens += int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
            self.reasoning_tokens += int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)

    def to_dict(self) -> dict[str, Any]:
        return {"input_tokens": self.input_tokens, "input_tokens_details": {"cached_tokens": self.cached_tokens},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
                "total_tokens": self.input_tokens + self.output_tokens}


def _dumps(line: dict[str, Any]) -> str:
    return json.dumps(line, ensure_ascii=False) + "\n"


def openai_output_lines(session: Session, job_id: str, usage: Usage | None = None) -> Iterator[str]:
    """The OpenAI Batch API output file: one line per item that succeeded, in input order."""
    for item in store.iter_items(session, job_id):
        if item.status == ItemStatus.SUCCEEDED:
            if usage is not None:
                usage.add(item)
            yield _dumps(openai_line(item))


def openai_error_lines(session: Session, job_id: str) -> Iterator[str]:
    """The OpenAI Batch API error file: every item that did not succeed and every rejected input line, in
    input order."""
    unanswered = (item for item in store.iter_items(session, job_id) if item.status != ItemStatus.SUCCEEDED)
    entries: Iterator[Item | RejectedLine] = heapq.merge(unanswered, rejected_store.rejected_lines(session, job_id),
                                                        key=lambda e: e.line_no)
    for entry in entries:
        yield _dumps(openai_line(entry) if isinstance(entry, Item) else rejected_line(job_id, entry))


def page_results(session: Session, job_id: str, offset: int, limit: int, fmt: ResultFormat = "jsonl",
                 tenant_id: str | None = None) -> list[dict[str, Any]]:
    """One page of results in input order (`offset` counts items, not lines); in the openai formats, each item's
    line as the output file (succeeded) or the error file (the rest) has it."""
    store.get_job(session, job_id, tenant_id)
    make = openai_line if fmt in ("openai", "openai-errors") else record
    return [make(i) for i in store.items_page(session, job_id, offset, limit)]


def export_results(session: Session, job_id: str, fmt: ResultFormat, tenant_id: str | None = None) -> Iterator[str]:
    """The job's results as lines of text (each ending in a newline), in input order."""
    store.get_job(session, job_id, tenant_id)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=RECORD_FIELDS)
        writer.writeheader()
        yield buf.getvalue()
        for item in store.iter_items(session, job_id):
            buf.seek(0)
            buf.truncate()
            writer.writerow(record(item))
            yield buf.getvalue()
        return
    if fmt == "openai":
        yield from openai_output_lines(session, job_id)
        return
    if fmt == "openai-errors":
        yield from openai_error_lines(session, job_id)
        return
    for item in store.iter_items(session, job_id):
        yield _dumps(record(item))
