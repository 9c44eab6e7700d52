"""The HTTP API (FastAPI): submit, status, results, spend, cancel. `routeyard api` serves it.

Every request carries a tenant's API key (`Authorization: Bearer ry_...`); a tenant sees only its own jobs,
and another tenant's job answers 404 exactly like a job that does not exist.
"""

import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Query, UploadFile, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.session import open_database
from jobs import runner
from jobs.feedback import FeedbackError, FeedbackIn, record_feedback
from jobs.input_formats import detect_format
from jobs.query import export_results, job_status, page_results
from jobs.spend import spend_report
from jobs.submit import JobOptions, SubmitError, submit_job
from jobs.tenants import tenant_for_key
from routeyard import __version__
from routeyard.settings import Settings
from worker.pricing import UnknownPriceError


class Rejected(BaseModel):
    line: int
    reason: str


class SubmitResponse(BaseModel):
    job_id: str
    created: bool
    n_items: int
    rejected: list[Rejected]


class CancelResponse(BaseModel):
    job_id: str
    cancelled_items: int


class FeedbackBody(BaseModel):
    custom_id: str
    kind: Literal["prefer", "rating", "thumbs"]
    value: float = Field(ge=0.0, le=1.0, description="prefer: 1 strong, 0.5 tie, 0 weak; rating 0..1; thumbs 1/0")


class ResultsPage(BaseModel):
    items: list[dict[str, Any]]
    offset: int
    next_offset: int | None


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(title="Routeyard", version=__version__,
                  description="Route batches of LLM prompts between a strong and a weak model (RouteLLM).")

    @cache
    def db() -> sessionmaker[Session]:
        return open_database(get_settings().resolved_database_url)

    @cache
    def get_settings() -> Settings:
        return settings or Settings()

    def session() -> Iterator[Session]:
        with db()() as s:
            yield s

    def tenant(authorization: Annotated[str | None, Header()] = None,
               s: Session = Depends(session)) -> str:  # noqa: B008 - FastAPI's dependency idiom
        if not authorization or not authorization.lower().startswith("bearer "):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing header 'Authorization: Bearer <API key>'")
        found = tenant_for_key(s, authorization[7:].strip())
        if found is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown API key")
        return found.id

    Tenant = Annotated[str, Depends(tenant)]
    Db = Annotated[Session, Depends(session)]

    def not_found(exc: Exception) -> HTTPException:
        return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "mode": "embedded" if get_settings().embedded else "distributed"}

    @app.post("/v1/jobs", response_model=SubmitResponse, status_code=status.HTTP_201_CREATED)
    def submit(
        tenant_id: Tenant,
        file: Annotated[UploadFile, File(description="JSONL (OpenAI Batch input or plain) or CSV")],
        strong_fraction: Annotated[float, Form(ge=0.0, le=1.0)] = 0.3,
        budget_usd: Annotated[float | None, Form(gt=0.0)] = None,
        target_pgr: Annotated[float | None, Form(gt=0.0, le=1.5)] = None,
        shadow: Annotated[float | None, Form(ge=0.0, le=1.0)] = None,
        router: Annotated[str | None, Form(max_length=500)] = None,
        tag: Annotated[str | None, Form(max_length=200)] = None,
        input_format: Annotated[Literal["auto", "jsonl", "csv"], Form(alias="format")] = "auto",
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> SubmitResponse:
        s = get_settings()
        options = JobOptions(router=router or s.default_router, strong_fraction=strong_fraction,
                             idempotency_key=idempotency_key, tag=tag, tenant_id=tenant_id, budget_usd=budget_usd,
                             target_pgr=target_pgr, shadow_fraction=shadow)
        fmt = detect_format(Path(file.filename or "upload.jsonl"), input_format)
        try:
            result = submit_job(db(), s, file.file, fmt, options, source_name=file.filename)
        except (SubmitError, UnknownPriceError) as exc:
            status_code = status.HTTP_409_CONFLICT if "idempotency key" in str(exc) else 422
            raise HTTPException(status_code, str(exc)) from None
        if result.created:
            if s.embedded:  # no workers: run it here, on a thread of its own so the API stays responsive
                threading.Thread(target=runner.run_embedded, args=(db(), s, result.job_id), daemon=True,
                                 name=f"job-{result.job_id}").start()
            else:
                runner.enqueue(result.job_id)
        return SubmitResponse(job_id=result.job_id, created=result.created, n_items=result.n_items,
                              rejected=[Rejected(line=n, reason=r) for n, r in result.rejected])

    @app.get("/v1/jobs")
    def list_jobs(tenant_id: Tenant, s: Db, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict]:
        return [{"id": j.id, "status": j.status, "n_items": j.n_items, "tag": j.tag,
                 "created_at": j.created_at.isoformat()} for j in queries.list_jobs(s, limit, tenant_id)]

    @app.get("/v1/jobs/{job_id}")
    def get_status(job_id: str, tenant_id: Tenant, s: Db) -> dict[str, Any]:
        try:
            return job_status(s, job_id, tenant_id=tenant_id).to_dict()
        except queries.JobNotFound as exc:
            raise not_found(exc) from None

    @app.get("/v1/jobs/{job_id}/results", response_model=ResultsPage)
    def results_page(job_id: str, tenant_id: Tenant, s: Db, offset: Annotated[int, Query(ge=0)] = 0,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                     output_format: Annotated[Literal["jsonl", "openai"], Query(alias="format")] = "jsonl",
                     ) -> ResultsPage:
        try:
            items = page_results(s, job_id, offset, limit, output_format, tenant_id)
        except queries.JobNotFound as exc:
            raise not_found(exc) from None
        return ResultsPage(items=items, offset=offset, next_offset=offset + limit if len(items) == limit else None)

    @app.get("/v1/jobs/{job_id}/results/export")
    def results_export(job_id: str, tenant_id: Tenant,
                       output_format: Annotated[Literal["jsonl", "csv", "openai"], Query(alias="format")] = "jsonl",
                       ) -> StreamingResponse:
        s = db()()
        try:
            queries.get_job(s, job_id, tenant_id)
        except queries.JobNotFound as exc:
            s.close()
            raise not_found(exc) from None

        def stream() -> Iterator[str]:
            try:
                yield from export_results(s, job_id, output_format, tenant_id)
            finally:
                s.close()

        media = "text/csv" if output_format == "csv" else "application/x-ndjson"
        return StreamingResponse(stream(), media_type=media)

    @app.get("/v1/jobs/{job_id}/spend")
    def job_spend(job_id: str, tenant_id: Tenant, s: Db) -> dict[str, Any]:
        try:
            return spend_report(s, get_settings(), job_id, tenant_id=tenant_id).to_dict()
        except queries.JobNotFound as exc:
            raise not_found(exc) from None

    @app.get("/v1/spend")
    def spend(tenant_id: Tenant, s: Db) -> dict[str, Any]:
        return spend_report(s, get_settings(), tenant_id=tenant_id).to_dict()

    @app.post("/v1/jobs/{job_id}/feedback", status_code=status.HTTP_201_CREATED)
    def post_feedback(job_id: str, body: FeedbackBody, tenant_id: Tenant) -> dict[str, int]:
        try:
            return {"id": record_feedback(db(), FeedbackIn(job_id, body.custom_id, body.kind, body.value), tenant_id)}
        except queries.JobNotFound as exc:
            raise not_found(exc) from None
        except FeedbackError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.post("/v1/jobs/{job_id}/cancel", response_model=CancelResponse)
    def cancel(job_id: str, tenant_id: Tenant, s: Db) -> CancelResponse:
        try:
            job = queries.get_job(s, job_id, tenant_id, lock=True)
        except queries.JobNotFound as exc:
            raise not_found(exc) from None
        n = queries.cancel_job(s, job)
        s.commit()
        return CancelResponse(job_id=job_id, cancelled_items=n)

    return app

