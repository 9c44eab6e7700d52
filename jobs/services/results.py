"""Job status and results, in Routeyard's own record, CSV, or the OpenAI Batch API output format."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.orm import Session

from db import jobs as store
from db.models import Item, Job
from routeyard.states import ItemStatus

ResultFormat = Literal["jsonl", "csv", "openai"]

RECORD_FIELDS = ["custom_id", "line", "status", "tier", "model", "score", "threshold", "router_version",
                 "answer", "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms", "attempts", "error",
                 "shadow_answer", "shadow_cost_usd"]


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
    rejected: list[tuple[int, str]]

    def to_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["created_at"] = self.created_at.isoformat()
        d["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        d["rejected"] = [{"line": n, "reason": r} for n, r in self.rejected]
        return d


def job_status(session: Session, job_id: str, rejected_limit: int = 100, tenant_id: str | None = None) -> JobStatusView:
    job: Job = store.get_job(session, job_id, tenant_id)
    counts = store.status_counts(session, job_id)
    tiers = store.tier_counts(session, job_id)
    rejected = [(r.line_no, r.reason) for r in store.rejected_lines(session, job_id)[:rejected_limit]]
    return JobStatusView(job.id, job.status, job.tag, job.source, job.router,
                         ",".join(store.router_versions(session, job_id)) or None, job.strong_fraction,
                         job.budget_usd, job.target_pgr, job.threshold,
                         job.strong_model, job.weak_model, job.n_items, job.n_rejected, counts,
                         tiers.get("strong", 0), sum(tiers.values()), job.created_at,
                         job.finished_at, rejected)


def record(item: Item) -> dict[str, Any]:
    return {"custom_id": item.custom_id, "line": item.line_no, "status": item.status, "tier": item.tier,
            "model": item.model, "score": item.score, "threshold": item.threshold,
            "router_version": item.router_version, "answer": item.answer, "prompt_tokens": item.prompt_tokens,
            "completion_tokens": item.completion_tokens, "cost_usd": item.cost_usd, "latency_ms": item.latency_ms,
            "attempts": item.attempts, "error": item.error, "shadow_answer": item.shadow_answer,
            "shadow_cost_usd": item.shadow_cost_usd}


def openai_batch_record(item: Item) -> dict[str, Any]:
    """One line of the OpenAI Batch API output file."""
    response = None
    if item.response is not None or item.status_code is not None:
        response = {"status_code": item.status_code, "request_id": (item.response or {}).get("id"),
                    "body": item.response if item.response is not None else {"error": {"message": item.error}}}
    error = None
    if item.status == ItemStatus.FAILED and item.status_code is None:
        error = {"code": "request_failed", "message": item.error}
    elif item.status not in (ItemStatus.SUCCEEDED, ItemStatus.FAILED):
        error = {"code": "not_finished", "message": f"item is {item.status}"}
    return {"id": f"batch_req_{item.id}", "custom_id": item.custom_id, "response": response, "error": error}


def page_results(session: Session, job_id: str, offset: int, limit: int, fmt: ResultFormat = "jsonl",
                 tenant_id: str | None = None) -> list[dict[str, Any]]:
    """One page of results in input order (`offset` counts items, not lines)."""
    store.get_job(session, job_id, tenant_id)
    make = openai_batch_record if fmt == "openai" else record
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
    make = openai_batch_record if fmt == "openai" else record
    for item in store.iter_items(session, job_id):
        yield json.dumps(make(item), ensure_ascii=False) + "\n"
