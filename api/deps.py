"""Request dependencies: settings, a database session per request, the caller's tenant from the API key, and the
dispatcher that sends jobs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from layercut import telemetry
from layercut.api.read_cache import ReadCache, read_cache_for
from layercut.artifacts import ArtifactStore, artifact_store
from layercut.jobs.dispatch import Dispatcher
from layercut.jobs.service import get_dispatcher
from layercut.settings import Settings, get_settings
from layercut.store.db import get_sessionmaker
from layercut.store.keys import hash_key, tenant_for_key

bearer = HTTPBearer(auto_error=False, description="an API key from `layercut keys create --tenant T`")


async def settings_dep() -> Settings:
    # async: a trivial dependency run on the event loop instead of a threadpool hop per request
    return get_settings()


SettingsDep = Annotated[Settings, Depends(settings_dep)]


def store_dep(settings: SettingsDep) -> ArtifactStore:
    """Where the artifacts live (the volume, or object storage): one store per process and configuration."""
    return artifact_store(settings)


StoreDep = Annotated[ArtifactStore, Depends(store_dep)]


def session_dep(settings: SettingsDep) -> Iterator[Session]:
    session = get_sessionmaker(settings.resolved_database_url)()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(session_dep)]


async def read_cache_dep(settings: SettingsDep) -> ReadCache | None:
    """The process's NOTIFY-coherent read cache (None on SQLite or when switched off)."""
    return read_cache_for(
        settings.resolved_database_url, settings.read_cache, settings.read_cache_entries, settings.read_cache_seconds
    )


ReadCacheDep = Annotated[ReadCache | None, Depends(read_cache_dep)]


def _lookup_tenant(settings: Settings, secret: str) -> str | None:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        return tenant_for_key(session, secret)


MISSING_KEY = "send an API key as 'Authorization: Bearer <key>'"
UNKNOWN_KEY = "unknown or revoked API key"
TENANT_SCOPE_KEY = "layercut.tenant"
"""Where ``layercut.api.limits`` leaves the tenant it checked before the body was read (``scope["state"]``)."""


def unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"})


def bearer_secret(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header value; None when there is none or another scheme."""
    scheme, _, secret = (authorization or "").strip().partition(" ")
    secret = secret.strip()
    return secret if scheme.lower() == "bearer" and secret else None


async def authenticate(settings: Settings, cache: ReadCache | None, secret: str | None) -> str:
    """The tenant whose key ``secret`` is; 401 without a key or with an unknown or revoked one. The one key check
    of the API: ``tenant_dep`` and the body-limit middleware (which checks before a body is read) both call it. A
    cached fast path, so a status poll whose answer is cached touches neither the database nor the threadpool."""
    if not secret:
        raise unauthorized(MISSING_KEY)
    key = ("key", hash_key(secret))
    tenant = cache.get(key) if cache is not None else None
    if tenant is None:
        generation = cache.generation() if cache is not None else None
        tenant = await run_in_threadpool(_lookup_tenant, settings, secret)
        if tenant is not None and cache is not None:
            cache.put(key, tenant, generation)  # unknown keys are not cached: nothing to grow without bound
    if tenant is None:
        raise unauthorized(UNKNOWN_KEY)
    return tenant


async def tenant_dep(
    request: Request,
    settings: SettingsDep,
    cache: ReadCacheDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The tenant whose key the request carries; 401 without a valid key. The middleware of
    ``layercut.api.limits`` has usually checked it already (before the body was read): then its answer is used."""
    tenant = request.scope.get("state", {}).get(TENANT_SCOPE_KEY)
    if tenant is None:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise unauthorized(MISSING_KEY)
        tenant = await authenticate(settings, cache, credentials.credentials)
    telemetry.CONTEXT["tenant"].set(tenant)  # this request's log lines name the tenant (the task's own context)
    return tenant


TenantDep = Annotated[str, Depends(tenant_dep)]


def dispatcher_dep(settings: SettingsDep) -> Dispatcher:
    """The dispatcher that hands this process's committed jobs to their runners (Celery, or in-process)."""
    return get_dispatcher(settings)


DispatcherDep = Annotated[Dispatcher, Depends(dispatcher_dep)]
