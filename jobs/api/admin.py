"""The admin path: tenants and their keys over HTTP, as `routeyard tenant ...` manages them on the CLI.

Off unless ROUTEYARD_ADMIN_KEY is set (at least 16 characters): every `/v1/admin/...` request then answers
404. With it set, a request needs `Authorization: Bearer <admin key>`; none answers 401, any other key (a
tenant's too) 403. A tenant's key is checked on every request, so a revoked or rotated-away key is refused by
the very next one.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, status
from sqlalchemy.orm import Session, sessionmaker

from jobs.api.schemas import ErrorResponse, TenantCreateBody, TenantKeyResponse, TenantResponse
from jobs.api.text_check import check_request_text
from jobs.services import tenants
from routeyard.errors import InvalidInput
from routeyard.settings import Settings

ADMIN_KEY_MIN = 16
RESPONSES: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (401, 403, 404)}


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def admin_routes(sf: sessionmaker[Session], settings: Settings) -> APIRouter:
    admin_key = settings.admin_key.get_secret_value()
    if admin_key and len(admin_key) < ADMIN_KEY_MIN:
        raise InvalidInput(f"ROUTEYARD_ADMIN_KEY is {len(admin_key)} characters long; use at least {ADMIN_KEY_MIN} "
                           "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    expected = _digest(admin_key) if admin_key else None

    def admin(authorization: Annotated[str | None, Header()] = None) -> None:
        if expected is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "the admin paths are off: set ROUTEYARD_ADMIN_KEY")
        if not authorization or not authorization.lower().startswith("bearer "):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing header 'Authorization: Bearer <admin key>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(_digest(authorization[7:].strip()), expected):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "this key is not the admin key")

    # the request's text is checked once the admin key is (jobs/api/text_check.py): a tenant name with a NUL is a 422
    router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(admin), Depends(check_request_text)],
                       responses=RESPONSES)

    def out(view: tenants.TenantView) -> TenantResponse:
        return TenantResponse.model_validate(view.__dict__)

    @router.get("/tenants", response_model=list[TenantResponse])
    def list_tenants() -> list[TenantResponse]:
        """Every tenant, with its key's state and how many jobs it owns."""
        return [out(view) for view in tenants.list_tenants(sf)]

    @router.post("/tenants", response_model=TenantKeyResponse, status_code=status.HTTP_201_CREATED,
                 responses={409: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
    def create_tenant(body: TenantCreateBody) -> TenantKeyResponse:
        """A new tenant and its API key (shown once)."""
        tenant_id, key = tenants.create_tenant(sf, body.name)
        return TenantKeyResponse(tenant=out(tenants.tenant_view(sf, tenant_id)), api_key=key)

    @router.post("/tenants/{tenant}/revoke", response_model=TenantResponse)
    def revoke(tenant: str) -> TenantResponse:
        """Refuse the tenant's key from now on (by name or id); its jobs are kept."""
        return out(tenants.revoke_tenant(sf, tenant))

    @router.post("/tenants/{tenant}/rotate", response_model=TenantKeyResponse)
    def rotate(tenant: str) -> TenantKeyResponse:
        """A new key for the tenant (shown once); the old one is refused from now on."""
        view, key = tenants.rotate_key(sf, tenant)
        return TenantKeyResponse(tenant=out(view), api_key=key)

    return router
