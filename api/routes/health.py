"""Liveness and readiness (no key needed; with a valid key readiness also says what failed)."""

from __future__ import annotations

import concurrent.futures
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from layercut.api.deps import ReadCacheDep, SettingsDep, authenticate, bearer_secret
from layercut.api.observe import metrics_answer
from layercut.artifacts import artifact_store
from layercut.settings import Settings
from layercut.store.db import get_engine

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])
CHECK_TIMEOUT_S = 3.0
_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(description="ok | unavailable", examples=["ok"])
    checks: dict[str, str] = Field(
        description="per dependency: ok, skipped, or unavailable (with a valid key: what failed)",
        examples=[{"database": "ok", "broker": "ok", "artifacts": "ok"}],
    )


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> Health:
    """Always 200 while the process serves requests (liveness); /readyz says whether its dependencies answer."""
    return Health(status="ok")


def _check_database(settings: Settings) -> None:
    with get_engine(settings.resolved_database_url).connect() as connection:
        connection.execute(text("SELECT 1"))


def _check_broker(settings: Settings) -> None:
    import redis

    client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        if not client.ping():
            raise RuntimeError("PING was not answered")
    finally:
        client.close()


def _check_artifacts(settings: Settings) -> None:
    artifact_store(settings).check()


def _run(check, settings: Settings) -> str:
    try:
        _pool.submit(check, settings).result(timeout=CHECK_TIMEOUT_S)
        return "ok"
    except concurrent.futures.TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_S:g} s"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="The database, the artifact store (and the broker, when configured) answer",
    responses={503: {"model": Readiness, "description": "a dependency is unreachable"}},
)
async def readyz(settings: SettingsDep, cache: ReadCacheDep, request: Request):
    """Without a key each dependency is only ``ok``, ``skipped`` or ``unavailable``; a caller with a valid key also
    reads what failed (which may name a host and port). Every failure is logged in full."""
    checks = await run_in_threadpool(_checks, settings)
    for name, value in checks.items():
        if value != "ok" and not value.startswith("skipped"):
            log.warning("readiness: %s: %s", name, value)
    try:
        await authenticate(settings, cache, bearer_secret(request.headers.get("authorization")))
    except Exception:  # noqa: BLE001 - no key, a wrong one, or no database to check it in: the plain answer
        checks = {name: _plain(value) for name, value in checks.items()}
    ok = all(v == "ok" or v.startswith("skipped") for v in checks.values())
    body = Readiness(status="ok" if ok else "unavailable", checks=checks)
    return body if ok else JSONResponse(body.model_dump(), status_code=503)


def _plain(value: str) -> str:
    return value if value == "ok" else "skipped" if value.startswith("skipped") else "unavailable"


def _checks(settings: Settings) -> dict[str, str]:
    checks = {"database": _run(_check_database, settings)}
    if settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        checks["broker"] = _run(_check_broker, settings)
    else:
        checks["broker"] = (
            "skipped (no redis broker configured: jobs run in-process)"
            if not settings.broker_url
            else "skipped (not a redis URL)"
        )
    checks["artifacts"] = _run(_check_artifacts, settings)
    return checks


@router.get("/metrics", include_in_schema=False)
def metrics(settings: SettingsDep) -> Response:
    """Prometheus: requests by route and status, their latency, job durations and failures, jobs by kind and
    status, queued jobs per queue and the broker's queue depth (no key: restrict it at the proxy if needed)."""
    body, content_type = metrics_answer(settings)
    return Response(body, media_type=content_type)
