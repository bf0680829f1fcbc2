"""API keys: random secrets shown once, stored only as a SHA-256 hash, each mapped to one tenant."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from layercut.store.models import ApiKey, utcnow

KEY_PREFIX = "lc_"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, tenant: str, name: str | None = None) -> tuple[ApiKey, str]:
    """Store a new key for ``tenant``; returns the row and the secret (the only time it exists in clear)."""
    if not tenant or len(tenant) > 64 or not tenant[0].isalnum() or not all(c.isalnum() or c in "-_." for c in tenant):
        # the tenant names a folder under the artifact root: never '.', '..' or a hidden name
        raise ValueError("a tenant is 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(tenant=tenant, key_hash=hash_key(secret), prefix=secret[:10], name=name)
    session.add(row)
    session.commit()
    return row, secret


def tenant_for_key(session: Session, secret: str) -> str | None:
    """The tenant of an active key, or None (unknown or revoked)."""
    row = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(secret))).first()
    if row is None or row.revoked_at is not None:
        return None
    return row.tenant


def revoke_key(session: Session, prefix: str) -> bool:
    row = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))).first()
    if row is None:
        return False
    row.revoked_at = utcnow()
    session.commit()
    return True
