"""A tenant's routers over HTTP: its versions (its own, then the global default's and the shipped one) and
the quality report (GET /v1/reports/quality). Router names and versions only: never a server file path."""

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from jobs.services.quality import quality_report
from jobs.services.versions import version_rows
from routeyard.settings import Settings


class RouterVersionOut(BaseModel):
    router: str
    version: str
    owner: Literal["tenant", "global", "shipped"]  # the tenant's own, the global default's, the shipped router
    serving: bool  # the one serving this tenant's jobs now
    apgr: float | None  # held-out APGR when it was trained
    serving_apgr: float | None  # the router serving then, on the same held-out prompts
    rows: int | None
    created_at: datetime | None
    decision: str


def router_routes(sf: sessionmaker[Session], settings: Settings, tenant: Callable[..., Awaitable[str]]) -> APIRouter:
    router = APIRouter(tags=["routers"])
    Tenant = Annotated[str, Depends(tenant)]

    @router.get("/v1/router/versions", response_model=list[RouterVersionOut])
    def versions(tenant_id: Tenant) -> list[RouterVersionOut]:
        """The router versions that can serve this tenant, newest first; `serving` marks the one that does."""
        with sf() as session:
            rows = version_rows(session, settings, tenant_id)
        return [RouterVersionOut(router=r.router, version=r.version, serving=r.serving, apgr=r.apgr,
                                 serving_apgr=r.baseline_apgr, rows=r.rows, created_at=r.created_at,
                                 owner="shipped" if r.shipped else "tenant" if r.tenant else "global",
                                 decision="shipped default; serves until a trained version is promoted"
                                 if r.shipped else r.decision) for r in rows]

    @router.get("/v1/reports/quality")
    def quality(tenant_id: Tenant) -> dict[str, Any]:
        """The tenant's quality report (as `routeyard report quality --json`): per router version, held-out APGR
        when trained, the share of judged shadow pairs where the weak answer was as good, realised cost against
        all-strong; and per day."""
        with sf() as session:
            return quality_report(session, settings, tenant_id).to_dict()

    return router
