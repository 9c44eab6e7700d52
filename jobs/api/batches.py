"""The OpenAI Batch API (`/v1/batches`), as `OpenAI(base_url=<routeyard>/v1, api_key=<tenant key>).batches`
calls it: create, retrieve, list (cursor paging), cancel. A batch is a Routeyard job with the same id, so
`/v1/jobs/{id}` (status, results, spend, feedback) works on it too. Tenant-scoped: another tenant's batch
answers 404. Errors in OpenAI's envelope (jobs/api/openai_compat.py). The service: jobs/services/batches.py.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from sqlalchemy.orm import Session, sessionmaker

from jobs.api.openai_compat import OpenAIRoute
from jobs.api.schemas import BatchCreateBody, BatchList, BatchObject, OpenAIError
from jobs.services import batches as service
from routeyard.settings import Settings

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": OpenAIError} for code in (400, 401, 404, 409)}


def batch_routes(sf: sessionmaker[Session], settings: Settings, tenant: Callable[..., Awaitable[str]]) -> APIRouter:
    """The routes; `tenant` is the app's dependency that turns the bearer key into a tenant id (401 if none)."""
    router = APIRouter(prefix="/v1/batches", tags=["batches (OpenAI)"], route_class=OpenAIRoute, responses=ERRORS)
    Tenant = Annotated[str, Depends(tenant)]

    @router.post("", response_model=BatchObject)
    def create_batch(request: Request, body: BatchCreateBody, tenant_id: Tenant,
                     idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> BatchObject:
        """Validate the input file and store its requests as a job, then run it; lines that cannot be run go to
        the error file, and a file with no valid line makes a failed batch (its `errors` name the lines)."""
        expires = body.output_expires_after.seconds if body.output_expires_after else None
        batch, job_id = service.create_batch(sf, settings, tenant_id, service.BatchRequest(
            body.input_file_id, body.endpoint, body.completion_window, body.metadata, expires), idempotency_key)
        if job_id is not None:
            request.app.state.runs.start(job_id)
            batch = service.retrieve_batch(sf, settings, tenant_id, batch["id"])  # an inline run has ended it
        return BatchObject.model_validate(batch)

    @router.get("", response_model=BatchList)
    def list_batches(tenant_id: Tenant,
                     after: Annotated[str | None, Query(description="the last id of the previous page")] = None,
                     limit: Annotated[int, Query(ge=1, le=100)] = 20) -> BatchList:
        return BatchList.model_validate(service.list_batches(sf, settings, tenant_id, after, limit))

    @router.get("/{batch_id}", response_model=BatchObject)
    def retrieve_batch(batch_id: str, tenant_id: Tenant) -> BatchObject:
        return BatchObject.model_validate(service.retrieve_batch(sf, settings, tenant_id, batch_id))

    @router.post("/{batch_id}/cancel", response_model=BatchObject)
    def cancel_batch(batch_id: str, tenant_id: Tenant) -> BatchObject:
        return BatchObject.model_validate(service.cancel_batch(sf, settings, tenant_id, batch_id))

    return router
