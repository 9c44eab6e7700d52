"""The HTTP API (FastAPI): submit, status, results, spend, feedback, cancel, resume; tenants on the admin path
(jobs/api/admin.py). `routeyard api` serves it.

Every request carries a tenant's API key (`Authorization: Bearer ry_...`); a tenant sees only its own jobs,
and another tenant's job answers 404 exactly like a job that does not exist. Errors are mapped once: a
`UserError` answers its own status (422 invalid, 404 not found, 409 conflict) with `{"detail": message}`.

In embedded mode (no broker) jobs run on an executor that the app's lifespan owns: requests return at once,
and shutting the app down waits for running jobs (jobs still waiting for a thread are left queued). On
start-up the app resumes the tenant jobs a previous API process left unfinished (jobs/api/runs.py). Pass
`executor=` (e.g. one that runs inline) in tests.

/docs (Swagger UI) and /redoc load their scripts and styles from this package (fastapi-offline ships them),
never from a CDN, so they work offline.
"""

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Query, Request, UploadFile, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi_offline import FastAPIOffline
from sqlalchemy.orm import Session, sessionmaker

from db import jobs as store
from db.session import DATABASE_DOWN, database_unavailable, open_database
from jobs.api.admin import admin_routes
from jobs.api.batches import batch_routes
from jobs.api.files import file_routes
from jobs.api.guard import RequestGuard
from jobs.api.routers_api import router_routes
from jobs.api.runs import Runs
from jobs.api.schemas import (
    CancelResponse,
    ErrorResponse,
    FeedbackBody,
    FeedbackResponse,
    Health,
    JobStatusResponse,
    JobSummary,
    Rejected,
    ResultsPage,
    ResumeResponse,
    SpendResponse,
    SubmitResponse,
)
from jobs.api.text_check import check_request_text
from jobs.services import control
from jobs.services.feedback import FeedbackIn, record_feedback
from jobs.services.input_formats import detect_format
from jobs.services.results import export_results, job_status, page_results, rejection_dict
from jobs.services.spend import spend_report
from jobs.services.submit import JobOptions, submit_job
from jobs.services.tenants import tenant_for_key
from jobs.services.versions import public_router
from routeyard import __version__
from routeyard.errors import Conflict, Unavailable, UserError
from routeyard.settings import Settings
from routeyard.states import JOB_FINAL, ItemStatus, JobStatus
from worker.dispatch import Dispatcher

ExportFormat = Literal["jsonl", "csv", "openai", "openai-errors"]
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (404, 409, 422)}


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def create_app(settings: Settings | None = None, executor: Executor | None = None) -> FastAPI:
    settings = settings or Settings()
    sf: sessionmaker[Session] = open_database(settings.resolved_database_url)
    admin = admin_routes(sf, settings)  # a bad ROUTEYARD_ADMIN_KEY is refused here, before anything serves

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = None
        if executor is None and settings.embedded:
            owned = ThreadPoolExecutor(max_workers=2, thread_name_prefix="routeyard-job")
        app.state.dispatcher = Dispatcher(sf, settings, executor or owned)
        app.state.runs = Runs(app.state.dispatcher)
        if settings.embedded:  # jobs a previous API process left unfinished (a broker's are beat's to re-enqueue),
            # off the event loop: it reads the database, and an inline executor runs the jobs right there
            await asyncio.to_thread(app.state.runs.resume_left_unfinished, sf)
        try:
            yield
        finally:
            if owned is not None:  # jobs not started yet stay queued and are resumed by the next start
                owned.shutdown(wait=True, cancel_futures=True)

    app = FastAPIOffline(title="Routeyard", version=__version__, lifespan=lifespan, static_url="/docs/assets",
                         swagger_ui_parameters={"validatorUrl": None},  # no call to swagger.io's validator
                         description="Route batches of LLM prompts between a strong and a weak model (RouteLLM).")
    app.include_router(admin)

    @app.exception_handler(UserError)
    async def user_error(_request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, except that a NaN or infinity the client sent is echoed as text (JSON has no such
        number, so echoing it as one failed with a 500)."""
        return JSONResponse({"detail": jsonable_encoder(_finite(exc.errors()))}, status_code=422)

    @app.exception_handler(Unavailable)
    async def unavailable(_request: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.http_status,
                            headers={"Retry-After": str(exc.retry_after_s)})

    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        return await unavailable(request, database_unavailable(exc))

    for down in DATABASE_DOWN:  # a database outage is a 503 to retry, not a 500
        app.add_exception_handler(down, database_down)
    app.add_middleware(RequestGuard, sf=sf, max_upload_bytes=settings.max_upload_bytes)  # before any body is read

    def session() -> Iterator[Session]:
        with sf() as s:
            yield s

    def tenant(authorization: Annotated[str | None, Header()] = None,
               s: Session = Depends(session)) -> str:  # noqa: B008 - FastAPI's dependency idiom
        if not authorization or not authorization.lower().startswith("bearer "):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing header 'Authorization: Bearer <API key>'")
        found = tenant_for_key(s, authorization[7:].strip())
        if found is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown or revoked API key")
        return found.id

    async def checked_tenant(request: Request, tenant_id: str = Depends(tenant)) -> str:
        """The tenant, once the request's text is known to be storable (jobs/api/text_check.py)."""
        await check_request_text(request)
        return tenant_id

    Tenant = Annotated[str, Depends(checked_tenant)]
    Db = Annotated[Session, Depends(session)]
    # the OpenAI Files and Batches API (/v1/files, /v1/batches)
    app.include_router(file_routes(sf, checked_tenant, settings.max_upload_bytes))
    app.include_router(batch_routes(sf, settings, checked_tenant))
    app.include_router(router_routes(sf, settings, checked_tenant))

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        return Health(status="ok", mode="embedded" if settings.embedded else "distributed")

    @app.post("/v1/jobs", response_model=SubmitResponse, status_code=status.HTTP_201_CREATED, responses=ERRORS)
    def submit(
        request: Request,
        tenant_id: Tenant,
        file: Annotated[UploadFile, File(description="JSONL (OpenAI Batch input or plain) or CSV")],
        strong_fraction: Annotated[float, Form(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.3,
        budget_usd: Annotated[float | None, Form(gt=0.0, allow_inf_nan=False)] = None,
        target_pgr: Annotated[float | None, Form(gt=0.0, le=1.5, allow_inf_nan=False)] = None,
        shadow: Annotated[float | None, Form(ge=0.0, le=1.0, allow_inf_nan=False)] = None,
        judge: Annotated[Literal["pair", "grade"] | None, Form(description="judge the shadow pairs when the job "
                                                                           "completes: pair or grade")] = None,
        router: Annotated[str | None, Form(max_length=500)] = None,
        tag: Annotated[str | None, Form(max_length=200)] = None,
        input_format: Annotated[Literal["auto", "jsonl", "csv"], Form(alias="format")] = "auto",
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> SubmitResponse:
        options = JobOptions(router=router or None, strong_fraction=strong_fraction,
                             idempotency_key=idempotency_key, tag=tag, tenant_id=tenant_id, budget_usd=budget_usd,
                             target_pgr=target_pgr, shadow_fraction=shadow, judge=judge)
        fmt = detect_format(Path(file.filename or "upload.jsonl"), input_format)
        result = submit_job(sf, settings, file.file, fmt, options, source_name=file.filename)
        if result.created:
            request.app.state.runs.start(result.job_id)
        return SubmitResponse(job_id=result.job_id, created=result.created, n_items=result.n_items,
                              rejected=[Rejected.model_validate(rejection_dict(r)) for r in result.rejections])

    @app.get("/v1/jobs", response_model=list[JobSummary])
    def list_jobs(tenant_id: Tenant, s: Db, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[JobSummary]:
        return [JobSummary(id=j.id, status=j.status, n_items=j.n_items, tag=j.tag, created_at=j.created_at)
                for j in store.list_jobs(s, limit, tenant_id)]

    @app.get("/v1/jobs/{job_id}", response_model=JobStatusResponse, responses=ERRORS)
    def get_status(job_id: str, tenant_id: Tenant, s: Db) -> JobStatusResponse:
        view = job_status(s, job_id, tenant_id=tenant_id)
        return JobStatusResponse.model_validate({**view.to_dict(), "router": public_router(view.router), "rejected": [
            Rejected.model_validate(rejection_dict(r)) for r in view.rejected]})

    @app.get("/v1/jobs/{job_id}/results", response_model=ResultsPage, responses=ERRORS)
    def results_page(job_id: str, tenant_id: Tenant, s: Db, offset: Annotated[int, Query(ge=0)] = 0,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                     output_format: Annotated[Literal["jsonl", "openai"], Query(alias="format")] = "jsonl",
                     ) -> ResultsPage:
        items = page_results(s, job_id, offset, limit, output_format, tenant_id)
        return ResultsPage(items=items, offset=offset, next_offset=offset + limit if len(items) == limit else None)

    @app.get("/v1/jobs/{job_id}/results/export", responses=ERRORS)
    def results_export(job_id: str, tenant_id: Tenant,
                       output_format: Annotated[ExportFormat, Query(alias="format")] = "jsonl",
                       ) -> StreamingResponse:
        s = sf()
        try:
            store.get_job(s, job_id, tenant_id)
        except UserError:
            s.close()
            raise

        def stream() -> Iterator[str]:
            try:
                yield from export_results(s, job_id, output_format, tenant_id)
            finally:
                s.close()

        media = "text/csv" if output_format == "csv" else "application/x-ndjson"
        return StreamingResponse(stream(), media_type=media)

    @app.get("/v1/jobs/{job_id}/spend", response_model=SpendResponse, responses=ERRORS)
    def job_spend(job_id: str, tenant_id: Tenant, s: Db) -> SpendResponse:
        return SpendResponse.model_validate(spend_report(s, settings, job_id, tenant_id=tenant_id).to_dict())

    @app.get("/v1/spend", response_model=SpendResponse)
    def spend(tenant_id: Tenant, s: Db) -> SpendResponse:
        return SpendResponse.model_validate(spend_report(s, settings, tenant_id=tenant_id).to_dict())

    @app.post("/v1/jobs/{job_id}/feedback", response_model=FeedbackResponse, status_code=status.HTTP_201_CREATED,
              responses=ERRORS)
    def post_feedback(job_id: str, body: FeedbackBody, tenant_id: Tenant) -> FeedbackResponse:
        return FeedbackResponse(id=record_feedback(sf, FeedbackIn(job_id, body.custom_id, body.kind, body.value),
                                                   tenant_id))

    @app.post("/v1/jobs/{job_id}/cancel", response_model=CancelResponse, responses=ERRORS)
    def cancel(job_id: str, tenant_id: Tenant) -> CancelResponse:
        return CancelResponse(job_id=job_id, cancelled_items=control.cancel(sf, job_id, tenant_id))

    @app.post("/v1/jobs/{job_id}/resume", response_model=ResumeResponse, responses=ERRORS)
    def resume(request: Request, job_id: str, tenant_id: Tenant,
               retry_failed: Annotated[bool, Query(description="also call the failed items again")] = False,
               ) -> ResumeResponse:
        """Take an interrupted job up again: finished items are not called again, spend is not counted twice."""
        with sf() as s:
            job = store.get_job(s, job_id, tenant_id)
            failed = store.status_counts(s, job_id).get(ItemStatus.FAILED, 0)
        runs: Runs = request.app.state.runs
        if job.status in JOB_FINAL:  # cancelled, or failed: its router did not load (its items say why)
            raise Conflict(f"job {job_id!r} {'was cancelled' if job.status == JobStatus.CANCELLED else 'failed'}; "
                           f"a {job.status} job is not resumed (submit it again)")
        if job.status == JobStatus.COMPLETED and not (retry_failed and failed):
            hint = f"; {failed} item(s) failed: resume with retry_failed=true to call them again" if failed else ""
            return ResumeResponse(job_id=job_id, resumed=False, status=job.status,
                                  detail=f"the job has completed, nothing is left to call{hint}")
        if not runs.start(job_id, retry_failed=retry_failed):
            return ResumeResponse(job_id=job_id, resumed=False, status=job.status,
                                  detail="the job is already queued or running on this API process")
        with sf() as s:
            now = store.get_job(s, job_id).status
        where = "here" if settings.embedded else "on the workers"
        return ResumeResponse(job_id=job_id, resumed=True, status=now, detail=f"resumed {where}")

    return app
