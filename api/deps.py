"""Request dependencies: settings, a database session per request, the caller's tenant from the API key, and the
dispatcher that sends jobs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from layercut import telemetry
from layercut.api.read_cache import ReadCache, read_cache_for
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


async def tenant_dep(
    settings: SettingsDep,
    cache: ReadCacheDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The tenant whose key the request carries; 401 without a valid key. Async with a cached fast path, so a
    status poll whose answer is cached touches neither the database nor the threadpool."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "send an API key as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = ("key", hash_key(credentials.credentials))
    tenant = cache.get(key) if cache is not None else None
    if tenant is None:
        generation = cache.generation() if cache is not None else None
        tenant = await run_in_threadpool(_lookup_tenant, settings, credentials.credentials)
        if tenant is not None and cache is not None:
            cache.put(key, tenant, generation)  # unknown keys are not cached: nothing to grow without bound
    if tenant is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"}
        )
    telemetry.CONTEXT["tenant"].set(tenant)  # this request's log lines name the tenant (the task's own context)
    return tenant


TenantDep = Annotated[str, Depends(tenant_dep)]


def dispatcher_dep(settings: SettingsDep) -> Dispatcher:
    """The dispatcher that hands this process's committed jobs to their runners (Celery, or in-process)."""
    return get_dispatcher(settings)


DispatcherDep = Annotated[Dispatcher, Depends(dispatcher_dep)]
