"""Tenants and their API keys, for the CLI (`routeyard tenant ...`) and the API's admin path alike.

A key is shown once, when it is made (create, rotate); only its SHA-256 is stored. Revoking a tenant removes
its key hash, so its key is refused by the very next request; its jobs are kept, and `rotate` gives it a new
key. The `local` tenant owns the CLI's jobs and never has a key.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db import catalog
from db.models import LOCAL_TENANT, Tenant
from routeyard.errors import Conflict, InvalidInput, NotFound

NAME_MAX = 200
ID_PREFIX = "tn_"

TenantState = Literal["active", "revoked", "no key"]


@dataclass(frozen=True)
class TenantView:
    id: str
    name: str
    state: TenantState
    created_at: datetime
    key_issued_at: datetime | None
    revoked_at: datetime | None
    jobs: int

    def to_dict(self) -> dict[str, Any]:
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(self).items()}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "ry_" + secrets.token_urlsafe(32)


def check_name(name: str) -> str:
    """The name as stored (surrounding spaces dropped), or InvalidInput saying what is wrong with it."""
    name = name.strip()
    if not name:
        raise InvalidInput("a tenant name cannot be empty")
    if len(name) > NAME_MAX:
        raise InvalidInput(f"tenant name is {len(name)} characters long; at most {NAME_MAX}")
    if not name.isprintable():
        raise InvalidInput(f"tenant name {name!r} contains a control character")
    if name.startswith(ID_PREFIX):
        raise InvalidInput(f"tenant names cannot start with {ID_PREFIX!r} (tenant ids do); pick another name")
    return name


def _taken(name: str) -> Conflict:
    return Conflict(f"a tenant named {name!r} already exists; pick another name")


def create_tenant(sf: sessionmaker[Session], name: str) -> tuple[str, str]:
    """Returns (tenant id, API key). A name already taken is a Conflict naming it."""
    name = check_name(name)
    key = new_key()
    tenant_id = f"{ID_PREFIX}{uuid.uuid4().hex[:16]}"
    with sf() as session:
        if catalog.tenant_by_name(session, name) is not None:
            raise _taken(name)
        catalog.add_tenant(session, tenant_id, name, hash_key(key))
        try:
            session.commit()
        except IntegrityError:  # created by someone else between the check and the commit
            session.rollback()
            if catalog.tenant_by_name(session, name) is not None:
                raise _taken(name) from None
            raise
    return tenant_id, key


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    """The tenant this key belongs to now; None for an unknown, revoked or rotated-away key."""
    return catalog.tenant_by_key_hash(session, hash_key(key))


def _view(tenant: Tenant, jobs: int) -> TenantView:
    state: TenantState = ("revoked" if tenant.revoked_at is not None
                          else "active" if tenant.key_hash is not None else "no key")
    return TenantView(tenant.id, tenant.name, state, tenant.created_at, tenant.key_issued_at, tenant.revoked_at,
                      jobs)


def list_tenants(sf: sessionmaker[Session]) -> list[TenantView]:
    with sf() as session:
        return [_view(tenant, jobs) for tenant, jobs in catalog.list_tenants(session)]


def _find(session: Session, name_or_id: str) -> Tenant:
    tenant = catalog.find_tenant(session, name_or_id, lock=True)
    if tenant is None:
        raise NotFound(f"no tenant {name_or_id!r} (by name or id)")
    if tenant.id == LOCAL_TENANT:
        raise InvalidInput(f"{name_or_id!r} is the tenant of jobs submitted from the CLI; it has no API key")
    return tenant


def revoke_tenant(sf: sessionmaker[Session], name_or_id: str) -> TenantView:
    """Refuse the tenant's key from the next request on (its jobs are kept). Revoking twice changes nothing."""
    with sf() as session:
        tenant = _find(session, name_or_id)
        catalog.set_tenant_key(session, tenant, None)
        session.commit()
        return _view(tenant, catalog.tenant_job_count(session, tenant.id))


def rotate_key(sf: sessionmaker[Session], name_or_id: str) -> tuple[TenantView, str]:
    """A new key for the tenant, returned once; the old key is refused from the next request on. A revoked
    tenant is active again with the new key."""
    key = new_key()
    with sf() as session:
        tenant = _find(session, name_or_id)
        catalog.set_tenant_key(session, tenant, hash_key(key))
        session.commit()
        return _view(tenant, catalog.tenant_job_count(session, tenant.id)), key


def tenant_view(sf: sessionmaker[Session], name_or_id: str) -> TenantView:
    with sf() as session:
        tenant = catalog.find_tenant(session, name_or_id)
        if tenant is None:
            raise NotFound(f"no tenant {name_or_id!r} (by name or id)")
        return _view(tenant, catalog.tenant_job_count(session, tenant.id))
