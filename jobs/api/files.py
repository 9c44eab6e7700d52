"""The OpenAI Files API (`/v1/files`), as `OpenAI(base_url=<routeyard>/v1, api_key=<tenant key>).files`
calls it: create (purpose `batch`), retrieve, content, list (cursor paging), delete. Tenant-scoped: another
tenant's file answers 404, exactly like a missing one. Errors in OpenAI's envelope (jobs/api/openai_compat.py).
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Response, UploadFile
from sqlalchemy.orm import Session, sessionmaker

from jobs.api.openai_compat import OpenAIRoute
from jobs.api.schemas import FileDeleted, FileList, FileObject, OpenAIError
from jobs.services import files as service

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": OpenAIError} for code in (400, 401, 404)}


def file_routes(sf: sessionmaker[Session], tenant: Callable[..., Awaitable[str]],
                max_bytes: int = service.MAX_FILE_BYTES) -> APIRouter:
    """The routes; `tenant` is the app's dependency that turns the bearer key into a tenant id (401 if none);
    an upload over `max_bytes` (ROUTEYARD_MAX_UPLOAD_BYTES) answers 413."""
    router = APIRouter(prefix="/v1/files", tags=["files (OpenAI)"], route_class=OpenAIRoute, responses=ERRORS)
    Tenant = Annotated[str, Depends(tenant)]

    @router.post("", response_model=FileObject, responses={413: {"model": OpenAIError}})
    def create_file(
        tenant_id: Tenant,
        file: UploadFile,
        purpose: Annotated[str, Form(description="batch")],
        expires_after_anchor: Annotated[str | None, Form(alias="expires_after[anchor]")] = None,
        expires_after_seconds: Annotated[int | None, Form(alias="expires_after[seconds]")] = None,
    ) -> FileObject:
        """Upload a batch input file (JSONL in the OpenAI Batch API input format)."""
        service.check_purpose(purpose)  # before reading what may be a large file
        expires = service.expiry_seconds(expires_after_anchor, expires_after_seconds)
        try:
            content = service.read_upload(file.file, max_bytes)
        except service.TooLarge as exc:
            raise HTTPException(413, str(exc)) from None  # Content Too Large
        upload = service.Upload(file.filename, purpose, content, expires)
        return FileObject.model_validate(service.create_file(sf, tenant_id, upload))

    @router.get("", response_model=FileList)
    def list_files(
        tenant_id: Tenant,
        after: Annotated[str | None, Query(description="the last id of the previous page")] = None,
        limit: Annotated[int, Query(ge=1, le=service.MAX_LIST)] = service.MAX_LIST,
        order: Annotated[Literal["asc", "desc"], Query(description="by created_at")] = "desc",
        purpose: Annotated[str | None, Query()] = None,
    ) -> FileList:
        return FileList.model_validate(service.list_files(sf, tenant_id, purpose=purpose, after=after, limit=limit,
                                                          order=order))

    @router.get("/{file_id}", response_model=FileObject)
    def retrieve_file(file_id: str, tenant_id: Tenant) -> FileObject:
        return FileObject.model_validate(service.retrieve_file(sf, tenant_id, file_id))

    @router.get("/{file_id}/content", response_class=Response,
                responses={200: {"content": {"application/octet-stream": {}}}})
    def file_content(file_id: str, tenant_id: Tenant) -> Response:
        """The file's bytes, exactly as stored."""
        filename, content = service.file_content(sf, tenant_id, file_id)
        return Response(content, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    @router.delete("/{file_id}", response_model=FileDeleted)
    def delete_file(file_id: str, tenant_id: Tenant) -> FileDeleted:
        return FileDeleted.model_validate(service.delete_file(sf, tenant_id, file_id))

    return router
