"""Router versions: which one serves, what the shipped default is, the list users see, and rollback.

`serving` as a job's router means "the version serving now": the last promoted one, or the shipped default
router before any promotion (or ROUTEYARD_DEFAULT_ROUTER when it names another router).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from db import catalog
from db.models import LOCAL_TENANT, RouterVersion, utcnow
from routers.base import CONFIG_FILE, version_of
from routers.data import load_training_prompts
from routers.registry import DEFAULT_ROUTER, PRETRAINED_DIR, ROUTERS, check_spec, missing_ml_for
from routeyard.errors import InvalidInput, NotFound, UserError
from routeyard.settings import Settings

SERVING = "serving"  # the router spec that means "whatever version serves now"
SHIPPED = "shipped"  # `router rollback shipped`: the default router again, as before any promotion


@dataclass(frozen=True)
class RouterInfo:
    """A router spec described without loading it (`shipped_router`: what serves before any promotion)."""

    spec: str
    router: str
    version: str
    path: str  # the checkpoint directory, or the spec itself when nothing is saved (random) or it is a hub id
    rows: int | None  # training rows, from its config

    @property
    def label(self) -> str:
        return f"{self.router}@{self.version}"


@dataclass(frozen=True)
class VersionRow:
    """One line of `router versions`: a trained version from the database, or the shipped router."""

    router: str
    version: str
    path: str
    apgr: float | None
    baseline_apgr: float | None
    rows: int | None
    created_at: datetime | None
    decision: str
    serving: bool
    shipped: bool = False
    tenant: str | None = None  # whose version it is (None: the global default's, or the shipped router)


def fallback_spec(settings: Settings | None) -> str:
    """The router that serves before any promotion."""
    if settings is None or settings.default_router == SERVING:
        return DEFAULT_ROUTER
    return settings.default_router


def resolve_router_spec(sf: sessionmaker[Session], spec: str, settings: Settings | None = None,
                        tenant_id: str | None = None) -> str:
    """`serving` -> the directory of the version serving the tenant: its own promoted one, else the global
    default's, else the shipped default (tenant_id None: the global default's, else the shipped one)."""
    if spec != SERVING:
        return spec
    with sf() as session:
        current = (catalog.serving_version(session, tenant_id) if tenant_id is not None else None
                   ) or catalog.serving_version(session, None)
    return current.path if current else fallback_spec(settings)


def _router_dir(spec: str) -> Path | None:
    """The saved directory of a router spec; None for a registry name with no checkpoint or a hub id."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if spec in ROUTERS and (PRETRAINED_DIR / spec).is_dir():
        return PRETRAINED_DIR / spec
    return None


def check_router_spec(spec: str) -> None:
    """Refuse, before a job is stored, a router spec that cannot load (routers/registry.py:check_spec)."""
    check_spec(spec)


def _named_version(session: Session, spec: str, tenant_id: str | None) -> RouterVersion | None:
    """A stored version named by its version or `router@version`. For a tenant, only one that was promoted
    (serving now or before) and is its own or the global default's; never another tenant's."""
    name, _, version = spec.rpartition("@")
    for owner in (tenant_id, None) if tenant_id is not None else (catalog.ANY_TENANT,):
        row = catalog.version_named(session, version, owner)
        if row is not None and (not name or name == row.router) and (tenant_id is None or row.promoted_at):
            return row
    return None


def _shipped_named(spec: str, settings: Settings) -> str | None:
    """The shipped router's spec when `spec` names its version (`linear@c77cc1f0ccf5` or the version alone), as
    `router versions` lists it: the operator published it, so any tenant may name it. None otherwise."""
    shipped = shipped_router(settings)
    if shipped.version in ("-", "default"):  # a hub id or a router with nothing saved: no version to name
        return None
    return shipped.spec if spec in (shipped.label, shipped.version) else None


def job_router(sf: sessionmaker[Session], spec: str | None, settings: Settings, tenant_id: str | None) -> str:
    """The router a job records, checked before anything is stored. `spec` None: the operator's default
    (ROUTEYARD_DEFAULT_ROUTER). `tenant_id` None: the operator (the CLI), who may name anything that loads. A
    tenant (an API key) may name only what was published: `serving`, a registry name, a promoted version
    (`routeyard router versions`), the operator's or its own, or the shipped router's version. Directories and
    hub ids are the operator's to choose: the shared workers load them, so a tenant naming one could make them
    read any path on the host or download from the internet."""
    if spec is None:
        spec = settings.default_router
    elif spec != SERVING and spec not in ROUTERS and (tenant_id or not Path(spec).expanduser().is_dir()):
        with sf() as session:
            row = _named_version(session, spec, tenant_id)
        shipped = _shipped_named(spec, settings) if row is None else None
        if row is not None:
            spec = row.path
        elif shipped is not None:
            spec = shipped
        elif tenant_id is None and "@" in spec and not Path(spec).expanduser().exists():
            raise InvalidInput(f"no stored router version {spec[:200]!r}; see `routeyard router versions`")
        elif tenant_id is not None:
            raise InvalidInput(f"unknown router {spec[:200]!r}: name {SERVING!r}, one of {sorted(ROUTERS)}, a "
                               "promoted version or the shipped one (`router versions`); router directories and "
                               "hub ids are set by the operator (ROUTEYARD_DEFAULT_ROUTER)")
    resolved = resolve_router_spec(sf, spec, settings, tenant_id or LOCAL_TENANT)  # the CLI's jobs are local's
    check_router_spec(resolved)
    missing = missing_ml_for(resolved) if settings.embedded else None  # the job would run in this process
    if missing:
        raise UserError(f"router {resolved!r} needs the ML stack, and this install lacks it (no module "
                        f"{missing!r}): pip install 'routeyard[ml]', or run jobs on workers that have it "
                        "(ROUTEYARD_BROKER_URL)")
    return resolved


def router_info(spec: str) -> RouterInfo:
    folder = _router_dir(spec)
    if folder is None:  # nothing saved (random) or a hub id
        return RouterInfo(spec, spec if spec in ROUTERS else spec.rsplit("/", 1)[-1],
                          "default" if spec in ROUTERS else "-", spec, None)
    config = json.loads((folder / CONFIG_FILE).read_text())
    return RouterInfo(spec, str(config.get("router", spec)), version_of(folder), str(folder),
                      (config.get("train") or {}).get("rows"))


def public_router(spec: str) -> str:
    """A router spec as a tenant may see it: a saved router as `name@version`, never its path on the server."""
    return router_info(spec).label if _router_dir(spec) is not None else spec


def shipped_router(settings: Settings | None = None) -> RouterInfo:
    """The shipped default (or ROUTEYARD_DEFAULT_ROUTER when it names a router): serves before any promotion."""
    return router_info(fallback_spec(settings))


def training_prompts_of(spec: str) -> np.ndarray | None:
    """Fingerprints of the prompts a router spec trained on: empty for a registry name with no checkpoint (it
    learned nothing), None when unknown (a checkpoint saved without the record, or a hub id)."""
    folder = _router_dir(spec)
    if folder is None:
        return np.empty(0, dtype=np.uint64) if spec in ROUTERS else None
    return load_training_prompts(folder, version_of(folder))


def version_rows(session: Session, settings: Settings | None = None, tenant_id: str | None = None
                 ) -> list[VersionRow]:
    """The tenant's trained versions, newest first, then the global default's (what serves the tenant while
    none of its own is promoted), then the shipped router (serving while nothing is promoted). tenant_id None:
    the global default's versions and the shipped router."""
    own = [VersionRow(v.router, v.version, v.path, v.apgr, v.baseline_apgr, (v.data or {}).get("rows"),
                      v.created_at, v.decision, v.serving, tenant=tenant_id) for v in catalog.list_versions(session,
                                                                                                      tenant_id)]
    serves = any(r.serving for r in own)
    rows = list(own)
    if tenant_id is not None:
        for v in catalog.list_versions(session, None):
            rows.append(VersionRow(v.router, v.version, v.path, v.apgr, v.baseline_apgr, (v.data or {}).get("rows"),
                                   v.created_at, f"global default: {v.decision}", v.serving and not serves))
            serves = serves or v.serving
    shipped = shipped_router(settings)
    rows.append(VersionRow(shipped.router, shipped.version, shipped.path, None, None, shipped.rows, None,
                           f"shipped default ({shipped.spec}); serves until a trained version is promoted",
                           not serves, shipped=True))
    return rows


def rollback(sf: sessionmaker[Session], version: str, settings: Settings | None = None,
             tenant_id: str | None = catalog.ANY_TENANT) -> RouterVersion | RouterInfo:
    """Serve an earlier version again: a trained one (of the tenant's, when one is named), or, for the tenant
    (or the global default), the shipped router (its version, or `shipped`): a tenant then falls back to the
    global default, if one is promoted."""
    stamp = utcnow().isoformat(timespec="seconds")
    scope = None if tenant_id == catalog.ANY_TENANT else tenant_id
    name, _, bare = version.rpartition("@")  # `router@version`, as status and the API name it, or the version
    with sf() as session:
        target = catalog.version_named(session, bare, tenant_id)
        if target is not None and name and name != target.router:
            target = None
        shipped = shipped_router(settings)
        if target is None and version in (SHIPPED, shipped.version, shipped.label):
            catalog.serve_version(session, None, f"replaced by the shipped router {shipped.router} "
                                                 f"{shipped.version} at {stamp}", tenant_id=scope)
            session.commit()
            return shipped
        if target is None:
            raise NotFound(f"no router version {version!r}; see `routeyard router versions`")
        catalog.serve_version(session, target, f"served again (rolled back) at {stamp}")
        session.commit()
        return target
