"""Tenants and their API keys. A key is shown once; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
import uuid

from sqlalchemy.orm import Session, sessionmaker

from db import catalog
from db.models import Tenant


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_tenant(sf: sessionmaker[Session], name: str) -> tuple[str, str]:
    """Returns (tenant id, API key)."""
    key = "ry_" + secrets.token_urlsafe(32)
    tenant_id = f"tn_{uuid.uuid4().hex[:16]}"
    with sf() as session:
        catalog.add_tenant(session, tenant_id, name, hash_key(key))
        session.commit()
    return tenant_id, key


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    return catalog.tenant_by_key_hash(session, hash_key(key))
